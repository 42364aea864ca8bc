"""Comparing two language models on texts: units (sentences, tokens, words, characters) aligned
across tokenizers, then every measure over the layer grid (the feature side is :mod:`repsim.networks.text`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ..core import distributed as D
from ..core.deprecation import deprecated_arguments
from ..core.validation import check_choice
from ..networks.hooks import Pool
from ..networks.text import (
    UNITS,
    _check_texts,
    sentence_features,
    text_batches,
    token_features,
    word_features,
)

_LEGACY_ORDER = ("unit", "layers_a", "layers_b", "measures", "pool", "batch_size", "max_length", "max_samples",
                 "device", "progress", "distributed", "measure_options")  # fmt: skip


@deprecated_arguments(positional=_LEGACY_ORDER, renamed={"max_units": "max_samples"})
def compare_texts(
    model_a: nn.Module,
    tokenizer_a,
    model_b: nn.Module,
    tokenizer_b,
    texts: Sequence[str],
    *,
    unit: str = "sentence",
    layers_a: Sequence[str] | str | None = None,
    layers_b: Sequence[str] | str | None = None,
    measures: Sequence[str] = ("linear_cka", "debiased_cka"),
    pool: Pool = "mask_mean",
    batch_size: int = 32,
    max_length: int | None = None,
    max_samples: int | None = None,
    device=None,
    progress: bool = True,
    distributed: bool | None = None,
    measure_options: Mapping[str, Mapping] | None = None,
):
    """Compare two language models layer by layer on ``texts``; a :class:`repsim.Comparison`.

    Each model reads the texts through its own tokenizer (``tokenizer_b=None``: ``tokenizer_a``).
    ``unit`` sets the samples: ``"sentence"`` (each text pooled by ``pool``), ``"token"`` (every
    real token; the two tokenizations must be identical, else use words), ``"word"`` or
    ``"char"`` (tokens averaged into the words/characters they overlap, :func:`word_features`;
    works across tokenizers). The features of every layer are kept (on CPU) and every measure of
    the registry (:func:`repsim.list_measures`) runs on them through :func:`repsim.measure_grid`;
    ``max_samples`` keeps the first units only (the all-samples measures cost O(n^2); its old name
    ``max_units`` still works until 0.5). Every argument after ``texts`` is keyword-only. The table's
    ``n`` is the number of units. Tokens and words of one sentence are not independent samples:
    for intervals resample whole sentences (``blocks=`` the units' sentence ids in
    :func:`repsim.bootstrap`, see :func:`token_features`).
    """
    from ..measures.registry import measure_grid
    from .comparison import Comparison
    from .routes import resolve_measures

    texts = _check_texts(texts)
    check_choice(unit, "unit", UNITS)
    specs = resolve_measures(measures, measure_options)  # each measure's entry and options, once
    unusable = [s.name for s in specs if s.batch_dependent or s.needs_labels or s.kind == "functional"]
    if unusable:
        raise ValueError(
            f"compare_texts compares layer features; {unusable} need labels or model outputs, or batches "
            "(minibatch_cka: use repsim.compare on repsim.text_batches)"
        )
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples >= 4):
        raise ValueError(f"max_samples must be an integer >= 4 or None, got {max_samples!r}")
    tokenizer_b = tokenizer_a if tokenizer_b is None else tokenizer_b
    common = dict(device=device, progress=progress, distributed=distributed)
    models, tokenizers, layers = (model_a, model_b), (tokenizer_a, tokenizer_b), (layers_a, layers_b)
    fa, fb = _unit_features(models, tokenizers, texts, layers, unit, pool, batch_size, max_length, common)
    names_a, names_b = list(fa), list(fb)
    xs, ys = list(fa.values()), list(fb.values())
    if max_samples is not None:
        xs, ys = [x[:max_samples] for x in xs], [y[:max_samples] for y in ys]
    n = xs[0].shape[0]
    rows = []
    for spec in specs:
        grid = measure_grid(xs, ys, spec.info, **spec.options).to("cpu", torch.float64).tolist()
        rows += [
            {"layer_a": a, "layer_b": b, "measure": spec.name, "value": grid[i][j], "n": n}
            for i, a in enumerate(names_a)
            for j, b in enumerate(names_b)
        ]
    table = pd.DataFrame(rows, columns=["layer_a", "layer_b", "measure", "value", "n"])
    return Comparison(table, names_a, names_b, specs=specs)


def _unit_features(models, tokenizers, texts, layers, unit: str, pool, batch_size, max_length, common: dict):
    """Both models' features of every unit of ``texts``, the rows of the two aligned (see compare_texts)."""
    (model_a, model_b), (tokenizer_a, tokenizer_b), (layers_a, layers_b) = models, tokenizers, layers
    distributed = common["distributed"]
    if unit in ("word", "char"):
        fa, units_a = word_features(
            model_a,
            tokenizer_a,
            texts,
            layers=layers_a,
            unit=unit,
            batch_size=batch_size,
            max_length=max_length,
            **common,
        )
        fb, units_b = word_features(
            model_b,
            tokenizer_b,
            texts,
            layers=layers_b,
            unit=unit,
            batch_size=batch_size,
            max_length=max_length,
            **common,
        )
        key = ["sentence", "unit"]
        joined = units_a[key].reset_index().merge(units_b[key].reset_index(), on=key, suffixes=("_a", "_b"))
        rows_a, rows_b = torch.tensor(joined["index_a"].to_numpy()), torch.tensor(joined["index_b"].to_numpy())
        fa, fb = {n: f[rows_a] for n, f in fa.items()}, {n: f[rows_b] for n, f in fb.items()}
    else:
        batches_a = text_batches(texts, tokenizer_a, batch_size=batch_size, max_length=max_length)
        batches_b = text_batches(texts, tokenizer_b, batch_size=batch_size, max_length=max_length)
        if unit == "token":
            _check_same_tokens(batches_a, batches_b)
        loader_a, loader_b = batches_a, batches_b
        if distributed is not False and D.is_distributed():
            loader_a, loader_b = D.shard(batches_a), D.shard(batches_b)
        if unit == "token":
            fa, _ = token_features(model_a, loader_a, layers=layers_a, **common)
            fb, _ = token_features(model_b, loader_b, layers=layers_b, **common)
        else:
            fa = sentence_features(model_a, loader_a, layers=layers_a, pool=pool, **common)
            fb = sentence_features(model_b, loader_b, layers=layers_b, pool=pool, **common)
    return fa, fb


def _check_same_tokens(batches_a: list[dict], batches_b: list[dict]) -> None:
    same = all(
        a["attention_mask"].shape == b["attention_mask"].shape and torch.equal(a["attention_mask"], b["attention_mask"])
        for a, b in zip(batches_a, batches_b, strict=True)
    )
    if not same:
        raise ValueError(
            "unit='token' needs both tokenizers to split every text into the same number of tokens, and they do "
            "not; compare on shared units instead: unit='word' or unit='char'"
        )
