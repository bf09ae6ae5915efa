"""What `dmt emulate` prints after a run: each link's bytes, the tiers against our counters, faults."""

from __future__ import annotations


def print_emulation(summary: dict) -> None:
    for link in summary["link_bytes"]:
        name = "uplink" if summary["emulation"].get("intra_host_mbit") else "link"
        print(f"host {link['host']} {name}: {link['tx_bytes']:,} B sent, {link['rx_bytes']:,} B received")
    tiers = summary.get("link_tiers")
    if tiers:
        for tier in ("intra", "cross"):
            t = tiers[tier]
            share = t["payload_bytes"] / t["counted_bytes"] - 1 if t["counted_bytes"] else float("nan")
            print(
                f"{tier}-host tier, training loop: {t['wire_bytes']:,} B on the wire, {t['payload_bytes']:,} B of TCP "
                f"payload, {t['counted_bytes']:,.0f} B counted ({100 * share:+.2f}%)"
            )
    faults = summary.get("faults")
    if faults:
        for a in faults["applied"]:
            state = "on" if a["on"] else "off"
            print(f"fault {a['kind']} host {a['host']} {state} at {a['at_s']:.1f} s")
        if faults.get("stalled_s") is not None:
            print(f"training stalled {faults['stalled_s']:.1f} s beyond its usual pace")
        if "killed" in faults:
            k = faults["killed"]
            print(
                f"rank {k['rank']} killed at step {k['step']}; restarted from the checkpoint of step "
                f"{k['last_checkpoint_step']} ({faults['steps_redone']} steps redone)"
            )
