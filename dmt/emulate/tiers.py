"""Each tier's wire bytes during the training loop against what our counters say was sent.

Two tiers (summary.json `link_train`, one entry per host, read by the host's first rank):
uplink_* are the host's uplink counters, ports_* the sums over its ranks' ports on the host's
switch (ports_rx_bytes: everything the host's ranks sent). So, per host,

    cross-host wire  = uplink tx                     intra-host wire = ports rx - uplink tx

TCP payload = wire bytes - HEADER_BYTES per packet. Our side, over the loop's steps:

    cross  = the all-to-all bytes the host's ranks counted sending across hosts
             + 2 (W - 1) / W of the dense gradients all-reduced over groups spanning hosts
               (gloo's ring in rank order leaves each host on one edge)
    intra  = the all-to-all bytes sent inside the host
             + (L - 1) such ring edges inside the host, and 2 (L - 1) / L of each rank's
               gradients all-reduced inside its host (SPTT's Tower Modules)

Intra-host all-to-all bytes are the summary's mean per step and rank times L and the steps. The
kernel may count one large TCP segment as one packet on a rank's port and as several on the
uplink (segmentation offload), so header bytes differ between devices: compare payloads.
"""

from __future__ import annotations

HEADER_BYTES = 66  # per packet on the wire: Ethernet 14 + IPv4 20 + TCP with timestamps 32


def link_tiers(summary: dict) -> dict:
    """-> {"hosts": [per host {cross, intra}: {wire_bytes, payload_bytes, counted_bytes}], "cross", "intra"}"""
    world = summary["world"]
    hosts, per_host = world["hosts"], world["ranks_per_host"]
    w = hosts * per_host
    steps = _loop_steps(summary)
    comm = summary["comm"]
    out = []
    for link in summary.get("link_train") or []:
        if "uplink_tx_bytes" not in link:
            continue
        spanning = link["allreduce_payload_bytes_per_rank"]  # per rank, over the loop
        inside = max(0.0, comm["allreduce_bytes"] * steps - spanning) if per_host > 1 else 0.0
        ring = 2 * (w - 1) / w * spanning
        cross_wire = link["uplink_tx_bytes"]
        cross_payload = cross_wire - HEADER_BYTES * link["uplink_tx_packets"]
        sent_payload = link["ports_rx_bytes"] - HEADER_BYTES * link["ports_rx_packets"]
        out.append(
            {
                "host": link["host"],
                "cross": {
                    "wire_bytes": cross_wire,
                    "payload_bytes": cross_payload,
                    "counted_bytes": link["counted_cross_host_bytes"] + ring,
                },
                "intra": {
                    "wire_bytes": link["ports_rx_bytes"] - cross_wire,
                    "payload_bytes": sent_payload - cross_payload,
                    "counted_bytes": comm["intra_host_bytes"] * steps * per_host
                    + (per_host - 1) * ring
                    + per_host * 2 * (per_host - 1) / per_host * inside,
                },
            }
        )
    totals = {}
    for tier in ("cross", "intra"):
        totals[tier] = {k: sum(h[tier][k] for h in out) for k in ("wire_bytes", "payload_bytes", "counted_bytes")}
    return {"hosts": out, **totals}


def _loop_steps(summary: dict) -> int:
    """Steps the training loop ran (a resumed run starts at its checkpoint's step)."""
    return summary["steps"] - summary.get("start_step", 0)
