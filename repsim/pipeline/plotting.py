"""Plots of similarity results (seaborn on matplotlib's non-interactive backend when headless)."""

from __future__ import annotations

import pandas as pd

SEQUENTIAL, DIVERGING = "magma", "vlag"


def colour_scale(matrix: pd.DataFrame, measure=None) -> dict:
    """The colour map and limits of a heatmap of ``measure`` (a registry name or entry, ``minibatch_cka``, or
    None).

    One rule for every heatmap repsim draws (``Comparison.heatmap``, ``repsim compare``, ``repsim many``):

    * a similarity whose best value is 1 (CKA, RSA, CCA, kNN overlaps...): [0, 1] on a sequential
      map, or, as soon as one value is negative (debiased CKA, RSA grids often are), [-1, 1] on a
      diverging map centred on 0, so a negative value never takes the colour of 0;
    * anything else (distances, unbounded scores): 0 to the largest value on a sequential map, or a
      diverging map centred on 0, symmetric, when a value is negative.

    Returns keyword arguments for ``seaborn.heatmap`` (``cmap``, ``vmin``, ``vmax``, ``center``).
    """
    from ..measures.registry import MeasureInfo, get_measure

    if isinstance(measure, MeasureInfo):
        info = measure
    else:
        try:
            info = None if measure is None else get_measure(measure)
        except ValueError:  # compare's own minibatch_cka: a CKA estimate, best value 1
            info = None
    unit = (info is None and measure is not None) or (
        info is not None and info.larger_is_more_similar and info.attainable_best == 1.0
    )
    values = matrix.to_numpy(dtype=float)
    finite = values[pd.notna(values)]
    signed = bool((finite < 0).any())
    top = float(abs(finite).max()) if finite.size else 1.0
    if unit:
        top = max(1.0, top)
        return {"cmap": DIVERGING, "vmin": -top, "vmax": top, "center": 0.0} if signed else {
            "cmap": SEQUENTIAL, "vmin": 0.0, "vmax": top, "center": None}  # fmt: skip
    top = top or 1.0
    if signed:
        return {"cmap": DIVERGING, "vmin": -top, "vmax": top, "center": 0.0}
    return {"cmap": SEQUENTIAL, "vmin": 0.0, "vmax": top, "center": None}


def heatmap(
    matrix: pd.DataFrame,
    title: str = "",
    ax=None,
    annot: bool | None = None,
    vmin=None,
    vmax=None,
    marks: pd.DataFrame | None = None,
    measure=None,
    **kwargs,
):
    """Annotated heatmap of a layer-by-layer matrix; returns the matplotlib Axes.

    The colours follow :func:`colour_scale` for ``measure`` (a diverging map centred on 0 as soon
    as a value is negative); ``vmin``/``vmax``/``cmap`` given here win. ``marks``: a boolean frame
    of the same shape; True cells are hatched (``compare`` marks cells whose adjusted p-value is not
    significant, or whose interval includes 0).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        rows, cols = matrix.shape
        _, ax = plt.subplots(figsize=(max(4.0, 0.9 * cols + 2.5), max(3.0, 0.7 * rows + 1.5)), layout="constrained")
    if annot is None:
        annot = matrix.size <= 144
    scale = colour_scale(matrix, measure)
    scale.update({k: v for k, v in (("vmin", vmin), ("vmax", vmax)) if v is not None})
    scale.update({k: kwargs.pop(k) for k in ("cmap", "center") if k in kwargs})
    if scale["center"] == 0.0 and scale["vmin"] == -scale["vmax"]:
        scale["center"] = None  # symmetric limits already put 0 at the map's middle (seaborn's center re-maps)
    sns.heatmap(
        matrix,
        ax=ax,
        annot=annot,
        fmt=".2f",
        square=False,
        cbar_kws={"label": title or None},
        **scale,
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
