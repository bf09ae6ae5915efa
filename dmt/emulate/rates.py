"""The link rates of `dmt emulate`: given (--cross-host-mbit, --intra-host-mbit), at a GPU's ratio
of the two (--ratio-of), or time-dilated to stand for a GPU cluster (--like, see dilate.py).

--ratio-of P: each rank's link gets R_in (--intra-host-mbit, default the faithful maximum) and each
host's uplink L x R_in x nic / intra of preset P (per GPU, presets.py): the host's L ranks share
it as they would share L NICs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from dmt.emulate.network import MAX_MBIT
from dmt.errors import UserError


@dataclass(frozen=True)
class Rates:
    cross_host_mbit: float  # each host's link (two tiers: its uplink)
    intra_host_mbit: float | None  # each rank's link into its host's switch; None: one tier
    train_args: list[str] = field(default_factory=list)  # with any batch the dilation chose
    dilation: dict | None = None
    compute_slowdown: float | None = None  # --like on a machine too fast for the links (dmt/slowdown.py)


def ratio_rates(preset: str, ranks_per_host: int, intra_host_mbit: float | None) -> tuple[float, float]:
    """-> (intra, uplink) Mbit/s at the preset's ratio of NVLink to NIC per GPU."""
    from dmt.cost.presets import PRESETS

    p = PRESETS[preset]
    intra = intra_host_mbit if intra_host_mbit is not None else float(MAX_MBIT)
    return intra, ranks_per_host * intra * p.nic_gbps / p.intra_gbps


def choose_rates(args: argparse.Namespace, train_args: list[str]) -> Rates:
    chosen = [name for name in ("ratio_of", "like") if getattr(args, name, None)]
    if len(chosen) > 1:
        raise UserError("give either --ratio-of or --like, not both")
    if args.like:
        if args.cross_host_mbit is not None or args.intra_host_mbit is not None:
            raise UserError("--like chooses both link rates itself: drop --cross-host-mbit / --intra-host-mbit")
        from dmt.emulate.dilate import dilate, print_dilation

        d = dilate(args.like, args.hosts, args.ranks_per_host, train_args)
        print_dilation(d)
        return Rates(d.uplink_mbit, d.intra_mbit, d.train_args, d.as_dict(), d.compute_slowdown)
    if args.ratio_of:
        if args.cross_host_mbit is not None:
            raise UserError("--ratio-of picks the cross-host rate itself: drop --cross-host-mbit")
        intra, up = ratio_rates(args.ratio_of, args.ranks_per_host, args.intra_host_mbit)
        print(f"{args.ratio_of} ratio: {intra:g} Mbit/s per rank into its host's switch, {up:.1f} Mbit/s per uplink")
        return Rates(up, intra, train_args)
    if args.cross_host_mbit is None:
        raise UserError("dmt emulate needs --cross-host-mbit R (or --ratio-of / --like to choose the rates)")
    return Rates(args.cross_host_mbit, args.intra_host_mbit, train_args)
