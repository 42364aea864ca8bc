"""The result of :func:`repsim.compare` (:class:`Comparison`), and the inference columns added to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from ..core.io import atomic_write_text
from ..measures.registry import MeasureInfo, registered_names
from .plans import MemoryPlan


@dataclass
class Comparison:
    """The result of :func:`compare`: a tidy table and views of it."""

    table: pd.DataFrame
    """Columns: layer_a, layer_b, measure, value, n (samples the value is computed on), route (how:
    ``moments``, ``stored``, ``capped at k``, ``minibatch b`` or ``sketch k``; see :mod:`repsim.pipeline.plans`)."""
    layers_a: list[str] = field(default_factory=list)
    layers_b: list[str] = field(default_factory=list)
    plan: MemoryPlan | None = None
    """The memory plan the comparison ran under (routes, bytes, multiply-adds per measure)."""
    specs: list[Any] = field(default_factory=list, repr=False)
    """Each measure as the pass resolved it (:class:`repsim.pipeline.routes.MeasureSpec`: registry
    entry, options, kind, route); empty for tables made elsewhere."""
    samples: tuple[list[Tensor | None], list[Tensor | None]] | None = field(default=None, repr=False)
    """The features inference runs on (the first ``sample_cap`` samples of every layer of both models)."""
    blocks: Tensor | None = field(default=None, repr=False)
    """Block id of each of those samples where they are not independent (pool="tokens": their sentences)."""

    @property
    def measures(self) -> list[str]:
        return list(dict.fromkeys(self.table["measure"]))

    def _measure(self, measure: str | None) -> str:
        if measure is None:
            return self.measures[0]
        if measure not in self.measures:
            raise ValueError(f"measure {measure!r} is not in this comparison; it has {self.measures}")
        return measure

    def matrix(self, measure: str | None = None) -> pd.DataFrame:
        """layer_a x layer_b matrix of one measure (default: the first), in layer order."""
        measure = self._measure(measure)
        sub = self.table[self.table["measure"] == measure]
        m = sub.pivot(index="layer_a", columns="layer_b", values="value")
        rows = [layer for layer in self.layers_a if layer in m.index] or list(m.index)
        cols = [layer for layer in self.layers_b if layer in m.columns] or list(m.columns)
        return m.loc[rows, cols]

    def heatmap(self, measure: str | None = None, ax=None, **kwargs):
        """Seaborn heatmap of one measure over the layer grid; returns the Axes."""
        from .plotting import heatmap

        measure = self._measure(measure)
        # the colour scale comes from the measure (plotting.colour_scale), the same in every heatmap
        info = self._info(measure)
        return heatmap(self.matrix(measure), title=measure, ax=ax, marks=self._not_significant(measure),
                       measure=info if info is not None else measure, **kwargs)  # fmt: skip

    def _info(self, measure: str) -> MeasureInfo | None:
        """The registry entry of a measure of this table (None: batch-dependent, not a registry measure)."""
        for spec in self.specs:
            if spec.name == measure:
                return spec.info
        from ..measures.registry import get_measure  # a table made without the pass (compare_many, files)

        return get_measure(measure) if measure in registered_names() else None

    def _not_significant(self, measure: str, alpha: float = 0.05) -> pd.DataFrame | None:
        """Cells to hatch: adjusted p >= alpha, or (without p-values) an interval that includes 0."""
        sub = self.table[self.table["measure"] == measure]
        if "p_adjusted" in sub and sub["p_adjusted"].notna().any():
            flags = sub.assign(flag=sub["p_adjusted"] >= alpha)
        elif "ci_low" in sub and sub["ci_low"].notna().any():
            flags = sub.assign(flag=(sub["ci_low"] <= 0) & (sub["ci_high"] >= 0))
        else:
            return None
        matrix = self.matrix(measure)
        return flags.pivot(index="layer_a", columns="layer_b", values="flag").loc[matrix.index, matrix.columns]

    def to_csv(self, path) -> Path:
        """Write the tidy table atomically; returns the path."""
        return atomic_write_text(path, self.table.to_csv(index=False))


INFERENCE_KEYS = {"permutations": 0, "bootstrap": 0, "ci": 0.95, "adjust": "holm", "seed": 0}
# calibrate: permutations of calibrated similarity per cell and of each measure's "<max>" row, at level alpha
INFERENCE_KEYS |= {"calibrate": 0, "alpha": 0.05}


# the vocabulary of permutation_test / bootstrap / calibrate, accepted as the same keys
INFERENCE_SYNONYMS = {"n_permutations": "permutations", "n_resamples": "bootstrap"}


def check_inference(inference: Mapping | None) -> dict | None:
    if not inference:
        return None
    for synonym, key in INFERENCE_SYNONYMS.items():
        if synonym in inference:
            if key in inference:
                raise ValueError(f"inference: pass {key!r} or {synonym!r}, not both (they are the same count)")
            inference = {key if k == synonym else k: v for k, v in inference.items()}
    unknown = sorted(set(inference) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"inference takes the keys {sorted(INFERENCE_KEYS)}; got unknown {unknown}")
    spec = {**INFERENCE_KEYS, **inference}
    if not (spec["permutations"] or spec["bootstrap"] or spec["calibrate"]):
        raise ValueError(
            "inference needs permutations > 0, bootstrap > 0 or calibrate > 0 (e.g. {'permutations': 1000})"
        )
    return spec


def add_inference(result: Comparison, spec: dict, progress: bool) -> None:
    """p_value, p_adjusted, ci_low, ci_high, n_inference on the first sample_cap samples (``result.samples``);
    calibrated and threshold columns with ``spec["calibrate"]``. A cell whose inference cannot run gets
    NaN and its reason in ``inference_error``; the other cells keep theirs."""
    from ..inference import inference_table

    xa, xb = result.samples
    if any(t is None for t in xa + xb):
        return
    measures = [s.name for s in result.specs if not s.batch_dependent]
    options = {s.name: s.options for s in result.specs if s.options}
    if spec["calibrate"]:
        _add_calibration(result, measures, options, spec, progress)
    if not (spec["permutations"] or spec["bootstrap"]):
        return
    extra = inference_table(
        xa,
        xb,
        result.layers_a,
        result.layers_b,
        measures,
        permutations=spec["permutations"],
        bootstrap_resamples=spec["bootstrap"],
        ci=spec["ci"],
        adjust=spec["adjust"],
        seed=spec["seed"],
        measure_options=options,
        progress=progress,
        blocks=result.blocks,
    )
    if len(extra):
        result.table = result.table.merge(extra, on=["layer_a", "layer_b", "measure"], how="left")


def _add_calibration(result: Comparison, measures: list[str], options: dict, spec: dict, progress: bool) -> None:
    """calibrated and threshold columns, and one "<max>" row per measure (repsim.inference.calibration_table)."""
    from ..inference.grid import calibration_table

    xa, xb = result.samples  # add_inference checked they are all there
    cells, aggregates = calibration_table(
        xa, xb, result.layers_a, result.layers_b, measures,
        spec["calibrate"], spec["alpha"], spec["seed"], options, progress, blocks=result.blocks,
    )  # fmt: skip
    merged = result.table.merge(cells, on=["layer_a", "layer_b", "measure"], how="left")
    result.table = pd.concat([merged, aggregates], ignore_index=True) if len(aggregates) else merged
