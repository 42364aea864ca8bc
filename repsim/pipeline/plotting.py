"""Plots of similarity results (seaborn on matplotlib's non-interactive backend when headless)."""

from __future__ import annotations

import pandas as pd


def heatmap(
    matrix: pd.DataFrame,
    title: str = "",
    ax=None,
    annot: bool | None = None,
    vmin=None,
    vmax=None,
    marks: pd.DataFrame | None = None,
    **kwargs,
):
    """Annotated heatmap of a layer-by-layer matrix; returns the matplotlib Axes.

    ``marks``: a boolean frame of the same shape; True cells are hatched (``compare`` marks cells
    whose adjusted p-value is not significant, or whose interval includes 0).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        rows, cols = matrix.shape
        _, ax = plt.subplots(figsize=(max(4.0, 0.9 * cols + 2.5), max(3.0, 0.7 * rows + 1.5)), layout="constrained")
    if annot is None:
        annot = matrix.size <= 144
    sns.heatmap(
        matrix,
        ax=ax,
        annot=annot,
        fmt=".2f",
        cmap="magma",
        vmin=vmin,
        vmax=vmax,
        square=False,
        cbar_kws={"label": title or None},
        **kwargs,
    )
    if marks is not None:
        from matplotlib.patches import Rectangle

        for i, j in zip(*marks.to_numpy().astype(bool).nonzero(), strict=True):
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
        ax.set_title(f"{title}\n(hatched: not significant)" if title else "hatched: not significant")
    else:
        ax.set_title(title)
    return ax


def lines(
    table: pd.DataFrame, x: str, y: str = "value", hue: str | None = None, col: str | None = None, title: str = ""
):
    """One-call line plot of a tidy table (e.g. alignment over training); returns the seaborn FacetGrid."""
    import seaborn as sns

    grid = sns.relplot(
        data=table,
        x=x,
        y=y,
        hue=hue,
        col=col,
        kind="line",
        marker="o",
        facet_kws={"sharey": False},
        height=3.2,
        aspect=1.3,
    )
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid
