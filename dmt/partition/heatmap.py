"""Heatmap of the interaction matrix with features ordered tower by tower and tower borders drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmt.figures import save_figure


def draw_heatmap(
    matrix: np.ndarray, names: list[str], towers: list[list[str]], path: str | Path, title: str = ""
) -> Path:
    """matrix [F, F] in `names` order -> PNG at `path`. Blocks on the diagonal are the towers:
    a good partition puts the bright cells inside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    position = {f: i for i, f in enumerate(names)}
    order = [position[f] for t in towers for f in t]
    ordered = np.asarray(matrix)[np.ix_(order, order)]
    num = len(order)
    size = min(12.0, max(5.0, 0.28 * num + 2.0))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    top = max(float(ordered.max(initial=0.0)), 1e-12)
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=top)  # square-root scale: weak blocks stay visible
    image = ax.imshow(ordered, cmap="viridis", interpolation="nearest", norm=norm)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="interaction (normalised, square-root scale)")
    edge = -0.5
    for tower in towers:
        ax.add_patch(plt.Rectangle((edge, edge), len(tower), len(tower), fill=False, edgecolor="red", linewidth=2.0))
        edge += len(tower)
    labels = [names[i] for i in order]
    fontsize = 8 if num <= 40 else 5
    if num <= 80:
        ax.set_xticks(range(num), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(num), labels, fontsize=fontsize)
    ax.set_title(title or f"feature interactions, {len(towers)} towers (red)")
    return save_figure(fig, path)
