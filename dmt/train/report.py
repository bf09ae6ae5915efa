"""Terminal tables of run summaries."""

from __future__ import annotations


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(s: dict) -> None:
    gap = None if s.get("optimal_auc") is None else s["optimal_auc"] - s["auc"]
    print(
        f"{s['model']} ({s['mode']}, {s['world']['hosts']}x{s['world']['ranks_per_host']}): "
        f"AUC {s['auc']:.4f} (optimal {_fmt(s.get('optimal_auc'), '.4f')}, gap {_fmt(gap, '.4f')}), "
        f"logloss {s['logloss']:.4f}, NE {s['ne']:.4f}, "
        f"{s['examples_per_s']:.0f} examples/s, step {_fmt((s.get('step_ms') or {}).get('median'), '.1f')} ms, "
        f"per step and rank: {s['comm']['cross_host_bytes']:,.0f} B cross-host, "
        f"{s['comm']['intra_host_bytes']:,.0f} B intra-host, {s['comm']['messages']:.0f} messages"
    )


def print_comparison(rows: list[dict]) -> None:
    """Side-by-side table of several runs."""
    head = (
        f"{'run':<16}{'model':<10}{'AUC':>8}{'logloss':>9}{'examples/s':>12}{'step ms':>9}"
        f"{'cross-host B/step':>19}{'intra-host B/step':>19}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["summary"]
        print(
            f"{r['name']:<16}{s['model']:<10}{s['auc']:>8.4f}{s['logloss']:>9.4f}{s['examples_per_s']:>12.0f}"
            f"{s['step_ms']['median']:>9.1f}{s['comm']['cross_host_bytes']:>19,.0f}{s['comm']['intra_host_bytes']:>19,.0f}"
        )
