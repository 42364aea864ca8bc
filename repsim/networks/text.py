"""Language models as inputs: texts to batches, sentence/token/word features, models with different tokenizers.

Nothing here imports ``transformers``: a tokenizer is any callable that behaves like a Hugging
Face tokenizer (``tokenizer(texts, ...)`` returning ``input_ids``, ``attention_mask`` and, for
fast tokenizers, ``offset_mapping``), and a model any module whose ``forward`` takes those by
keyword. Install the ``text`` extra (``pip install repsim-toolkit[text]``) for ``transformers``.

Units of comparison (``unit=``): ``"sentence"`` (one row per text, tokens pooled by ``pool``),
``"token"`` (one row per real token; both models must tokenise identically), ``"word"`` and
``"char"`` (rows are the words, or non-space characters, of the texts; each model's tokens are
averaged into the units they overlap, through the tokenizer's character offsets, so that two
models with different tokenizers give row-aligned features).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from ..core import distributed as D
from ..core.budget import parse_memory
from ..core.deprecation import deprecated_arguments
from ..core.validation import check_choice
from .batches import model_inputs
from .collect import Rows, collect
from .features import resolve_device
from .hooks import SEQUENCE_POOLS, Pool, default_layers, with_hidden_states

__all__ = [
    "UNITS",
    "sentence_features",
    "text_batches",
    "text_units",
    "token_features",
    "word_features",
]

UNITS = ("sentence", "word", "char", "token")
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits/underscores, or one punctuation mark
_NO_LIMIT = 100_000  # tokenizers without a length limit report model_max_length ~ 1e30


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}; wrap one text as [text]")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts must be a list of strings; texts[{bad}] is a {type(texts[bad]).__name__}")
    if not texts:
        raise ValueError("texts is empty; give at least one text")
    blank = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if blank is not None:
        raise ValueError(f"texts[{blank}] is empty or whitespace; every text must have something to tokenise")
    return list(texts)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


@deprecated_arguments(
    positional=(
        "batch_size",
        "max_length",
        "padding_side",
        "pad_to",
        "add_special_tokens",
        "position_ids",
        "return_offsets",
    )
)
def text_batches(
    texts: Sequence[str],
    tokenizer,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    padding_side: str | None = None,
    pad_to: int | None = None,
    add_special_tokens: bool = True,
    position_ids: bool | None = None,
    return_offsets: bool = False,
) -> list[dict[str, Tensor]] | tuple[list[dict[str, Tensor]], list[Tensor]]:
    """Tokenise ``texts`` into the dict batches :func:`repsim.compare` takes, in the texts' order.

    Each batch holds the tokenizer's model inputs (``tokenizer.model_input_names``: ``input_ids``,
    ``attention_mask`` and, for BERT-style tokenizers, ``token_type_ids`` unless all are 0, which
    is BERT's default and which GPT-2 would add an embedding for), padded to the longest
    text of the batch (or to ``pad_to``) on ``padding_side`` (default: the tokenizer's own,
    "right" if it has none). The attention mask is 1 for real tokens, 0 for padding; padding uses
    the tokenizer's pad token (its end-of-text token when it has none, as for GPT-2), without
    changing the tokenizer. ``max_length`` truncates (default: the tokenizer's
    ``model_max_length``, when it has a real one). Special tokens (CLS/SEP, BOS) are added as the
    tokenizer does unless ``add_special_tokens=False``.

    ``position_ids`` (default: with left padding only) adds ``position_ids`` = 0, 1, ... counted
    over the real tokens, so that left padding does not shift absolute positions: without them
    a left-padded GPT-2 or BERT reads its text at other positions and its features change (models
    with relative positions, Llama's rotary or T5's buckets, do not care). A model whose
    ``forward`` does not take ``position_ids`` never receives them from ``compare``.

    ``return_offsets=True`` (fast tokenizers) also returns, per batch, the (n, T, 2) character
    spans ``[start, end)`` of every token in its text ((0, 0) for special and padding tokens),
    which :func:`word_features` uses to pool tokens into words.
    """
    texts = _check_texts(texts)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    side = check_choice(side, "padding_side", ("left", "right"))
    if max_length is None:
        limit = getattr(tokenizer, "model_max_length", None)
        max_length = int(limit) if isinstance(limit, (int, float)) and 0 < limit < _NO_LIMIT else None
    elif not (isinstance(max_length, int) and max_length >= 1):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    names = list(getattr(tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
    if "attention_mask" not in names:
        names.append("attention_mask")
    pad_id = _pad_id(tokenizer)
    batches: list[dict[str, Tensor]] = []
    offsets: list[Tensor] = []
    for start in range(0, len(texts), batch_size):
        enc = _encode(
            tokenizer, texts[start : start + batch_size], start, add_special_tokens, max_length, return_offsets
        )
        width = max(len(row) for row in enc["input_ids"])
        if pad_to is not None:
            if pad_to < width:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest text of a batch ({width} tokens)")
            width = pad_to
        batch = _padded(enc, names, width, pad_id, side)
        if position_ids or (position_ids is None and side == "left"):
            batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)
        batches.append(batch)
        if return_offsets:
            spans = [[list(span) for span in row] for row in enc["offset_mapping"]]
            offsets.append(_pad(spans, width, [0, 0], side))
    return (batches, offsets) if return_offsets else batches


def _encode(tokenizer, chunk: Sequence[str], start: int, add_special_tokens: bool, max_length, offsets: bool):
    """The tokenizer's unpadded encoding of one batch of texts (``start``: the first one's index)."""
    kwargs = {"return_offsets_mapping": True} if offsets else {}
    try:
        enc = tokenizer(
            chunk,
            add_special_tokens=add_special_tokens,
            truncation=max_length is not None,
            max_length=max_length,
            padding=False,
            **kwargs,
        )
    except NotImplementedError as err:  # slow (Python) tokenizers have no offsets
        raise ValueError(
            f"return_offsets needs a fast tokenizer (PreTrainedTokenizerFast); {type(tokenizer).__name__} "
            "gives no character offsets"
        ) from err
    empty = next((i for i, row in enumerate(enc["input_ids"]) if len(row) == 0), None)
    if empty is not None:
        raise ValueError(f"texts[{start + empty}] tokenises to no tokens; drop it or add special tokens")
    return enc


def _padded(enc, names: list[str], width: int, pad_id: int, side: str) -> dict[str, Tensor]:
    """One batch's model inputs padded to ``width`` on ``side`` (an all-zero token_type_ids left out)."""
    ids = enc["input_ids"]
    batch: dict[str, Tensor] = {}
    for name in names:
        rows = [[1] * len(r) for r in ids] if name == "attention_mask" and name not in enc else enc.get(name)
        if rows is None:
            continue
        fill = pad_id if name == "input_ids" else 0
        batch[name] = _pad([list(r) for r in rows], width, fill, side)
    if "token_type_ids" in batch and not bool(batch["token_type_ids"].any()):
        del batch["token_type_ids"]  # one segment: BERT's default anyway, and GPT-2 would embed them
    return batch


def _pad(rows: list[list], width: int, fill, side: str) -> Tensor:
    padded = [([fill] * (width - len(r)) + r) if side == "left" else (r + [fill] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.int64)


def _collect(
    model: nn.Module,
    batches: Iterable,
    layers,
    pool: Pool,
    device,
    progress: bool,
    distributed: bool | None,
    dtype: torch.dtype | None,
    desc: str,
) -> tuple[dict[str, Tensor], Tensor]:
    """Features of every batch (rows: sentences, or tokens for pool="tokens") and each row's sentence id.

    Under a process group each rank runs its shard (see :mod:`repsim.core.distributed`); the rows are
    gathered and put in the global order (a sentence's tokens keep theirs), as by
    :func:`repsim.extract_features`. Sentence ids number the sentences 0, 1, ... in that order.
    """
    shard = D.shard_of(batches, distributed)
    model, layers = with_hidden_states(model, layers)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers) if layers is not None else default_layers(model)
    tokens = pool == "tokens"

    def adapt(batch) -> tuple[Mapping, None, None]:
        inputs = model_inputs(batch, model)
        if not isinstance(inputs, Mapping):
            raise ValueError("batches must be dicts of model inputs (see repsim.text_batches)")
        return inputs, None, None

    sink = Rows(layers, None, parse_memory(None), dtype, what="tokens" if tokens else "sentences")
    collect(model, batches, layers, pool, sink, shard=shard, adapt=adapt, device=resolve_device(device, model),
            progress=progress, desc=desc, token_rows=tokens)  # fmt: skip
    feats, _, all_keys = sink.result(shard)
    sentence_ids = torch.unique(all_keys, return_inverse=True)[1]
    return feats, sentence_ids


@deprecated_arguments(positional=("layers", "pool", "device", "progress", "distributed", "dtype"))
def sentence_features(
    model: nn.Module,
    batches: Iterable,
    *,
    layers: Sequence[str] | str | None = None,
    pool: Pool = "mask_mean",
    device=None,
    progress: bool = True,
    distributed: bool | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One row per text: each layer's token sequence pooled by ``pool`` ({layer: (n, d) on CPU}).

    ``batches``: dict batches (:func:`text_batches`); ``layers``: module names (default
    :func:`repsim.default_layers`) or ``"hidden_states"``; ``pool``: ``"mask_mean"`` (default),
    ``"mask_max"``, ``"first"``, ``"last"`` or a callable (:func:`repsim.networks.hooks.pool_features`).
    """
    if not callable(pool) and pool not in SEQUENCE_POOLS:
        hint = {
            "tokens": "; for one row per token use repsim.token_features",
            "mean": "; 'mask_mean' leaves padding out",
        }
        raise ValueError(f"pool must be one of {SEQUENCE_POOLS} or a callable, got {pool!r}{hint.get(pool, '')}")
    return _collect(model, batches, layers, pool, device, progress, distributed, dtype, "sentence features")[0]


@deprecated_arguments(positional=("layers", "device", "progress", "distributed", "dtype"))
def token_features(
    model: nn.Module,
    batches: Iterable,
    *,
    layers: Sequence[str] | str | None = None,
    device=None,
    progress: bool = True,
    distributed: bool | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """One row per real (non-pad) token: ({layer: (N_tokens, d) on CPU}, sentence_ids (N_tokens,)).

    Rows go sentence by sentence in the batches' order and, within a sentence, in token order
    (special tokens included, padding left out, on either padding side). ``sentence_ids[i]`` is
    the index of row i's text, so that resampling can move a sentence's tokens together: tokens of
    one sentence are not independent samples. Under ``torchrun`` the batches must be sharded
    (:func:`repsim.core.distributed.shard`); every rank returns all rows in the global order.
    """
    return _collect(model, batches, layers, "tokens", device, progress, distributed, dtype, "token features")


def text_units(texts: Sequence[str], unit: str = "word") -> pd.DataFrame:
    """The units of ``texts``: columns sentence, unit (index in its sentence), start, end, text.

    ``"word"``: maximal runs of word characters and single punctuation marks (regex
    ``\\w+|[^\\w\\s]``), so "don't." is "don", "'", "t", "."; ``"char"``: every non-space character.
    ``start``/``end`` are character positions, ``text[start:end]`` the unit.
    """
    texts = _check_texts(texts)
    check_choice(unit, "unit", ("word", "char"))
    pattern = WORD_PATTERN if unit == "word" else re.compile(r"\S")
    rows = [
        (s, u, m.start(), m.end(), m.group())
        for s, text in enumerate(texts)
        for u, m in enumerate(pattern.finditer(text))
    ]
    return pd.DataFrame(rows, columns=["sentence", "unit", "start", "end", "text"])


@deprecated_arguments(
    positional=("layers", "unit", "batch_size", "max_length", "device", "progress", "distributed", "dtype")
)
def word_features(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    layers: Sequence[str] | str | None = None,
    unit: str = "word",
    batch_size: int = 32,
    max_length: int | None = None,
    device=None,
    progress: bool = True,
    distributed: bool | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """One row per word (or character) of ``texts``: ({layer: (N_units, d) on CPU}, units table).

    Each unit's feature is the mean of the features of the tokens whose character span overlaps
    it (``tokenizer``'s ``offset_mapping``; special tokens have none and are left out):
    f(w) = (1 / |T(w)|) sum_{t in T(w)} h_t, T(w) = {t : start_t < end_w and start_w < end_t}.
    A token spanning two units counts for both. The rows are the units of :func:`text_units`
    that at least one token overlaps (all of them unless truncation cut a text), listed in the
    returned table, so two models with different tokenizers are row-aligned by joining their
    tables on (sentence, unit) -- :func:`compare_texts` does so.

    Under a process group the texts' batches are sharded over the ranks and every rank returns
    all rows (as :func:`token_features`).
    """
    texts = _check_texts(texts)
    check_choice(unit, "unit", ("word", "char"))
    batches, offsets = text_batches(texts, tokenizer, batch_size=batch_size, max_length=max_length, return_offsets=True)
    loader = D.shard(batches) if distributed is not False and D.is_distributed() else batches
    feats, sentence_ids = token_features(
        model, loader, layers=layers, device=device, progress=progress, distributed=distributed, dtype=dtype
    )
    spans = torch.cat([o[b["attention_mask"].bool()] for o, b in zip(offsets, batches, strict=True)])
    units = text_units(texts, unit)
    weights, kept = _unit_weights(units, sentence_ids, spans)
    out = {name: (weights @ f.to(torch.float64)).to(f.dtype) for name, f in feats.items()}
    return out, units[kept.numpy()].reset_index(drop=True)


def _unit_weights(units: pd.DataFrame, sentence_ids: Tensor, spans: Tensor) -> tuple[_UnitMean, Tensor]:
    """The (kept units x tokens) averaging map of token-unit overlaps, and which units are kept."""
    starts, ends = spans[:, 0], spans[:, 1]
    real = ends > starts  # special tokens have empty spans
    bounds = torch.searchsorted(sentence_ids, torch.arange(int(sentence_ids.max()) + 2))
    unit_start = torch.tensor(units["start"].to_numpy())
    unit_end = torch.tensor(units["end"].to_numpy())
    unit_sentence = torch.tensor(units["sentence"].to_numpy())
    unit_bounds = torch.searchsorted(unit_sentence, torch.arange(int(sentence_ids.max()) + 2))
    rows, cols, counts = [], [], torch.zeros(len(units), dtype=torch.int64)
    for s in range(bounds.shape[0] - 1):
        t0, t1 = int(bounds[s]), int(bounds[s + 1])
        u0, u1 = int(unit_bounds[s]), int(unit_bounds[s + 1])
        overlap = (
            (starts[None, t0:t1] < unit_end[u0:u1, None])
            & (unit_start[u0:u1, None] < ends[None, t0:t1])
            & real[None, t0:t1]
        )
        u, t = overlap.nonzero(as_tuple=True)
        rows.append(u + u0)
        cols.append(t + t0)
        counts[u0:u1] = overlap.sum(dim=1)
    rows_t, cols_t = torch.cat(rows), torch.cat(cols)
    kept = counts > 0
    if not bool(kept.any()):
        raise ValueError("no token overlaps any unit: does the tokenizer report character offsets?")
    new_index = torch.cumsum(kept.to(torch.int64), 0) - 1
    return _UnitMean(new_index[rows_t], cols_t, 1.0 / counts[rows_t].to(torch.float64), int(kept.sum())), kept


class _UnitMean:
    """f(w) = sum over the (unit, token, weight) triples of weight * h_token: each unit's token mean."""

    def __init__(self, rows: Tensor, cols: Tensor, weights: Tensor, n_units: int) -> None:
        self.rows, self.cols, self.weights, self.n_units = rows, cols, weights, n_units

    def __matmul__(self, tokens: Tensor) -> Tensor:
        out = torch.zeros(self.n_units, tokens.shape[1], dtype=tokens.dtype)
        return out.index_add_(0, self.rows, tokens[self.cols] * self.weights[:, None].to(tokens.dtype))
