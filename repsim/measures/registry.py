"""One registry for every measure: ``measure``, ``measure_grid``, ``list_measures``.

Each family module registers its measures at import with :func:`register`, declaring what the
measure is (similarity or distance, metric or not, the invariances it has, whether it streams
exactly, its cost, what it needs). The tests read these declarations and check each one, so a
declaration is a promise, not a comment.

Invariances are of the *feature* space (the same map applied to every sample of one side):

* ``orthogonal``: x -> x Q, Q orthogonal
* ``isotropic_scaling``: x -> a x, a > 0
* ``translation``: x -> x + b (one vector added to every sample)
* ``permutation``: x -> x P, P a permutation of the features
* ``invertible_linear``: x -> x A, A invertible
* ``affine``: x -> x A + b, A invertible
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from ..core.deprecation import renamed_keywords, warn_deprecated
from .quadratic import QuadraticForm

INVARIANCES = ("orthogonal", "isotropic_scaling", "translation", "permutation", "invertible_linear", "affine")
FAMILIES = ("cka", "rsa", "cca", "alignment", "rsm", "neighbours", "topology", "statistics", "functional", "gram")


@dataclass(frozen=True)
class MeasureInfo:
    """What the registry knows about one measure."""

    name: str
    family: str
    fn: Callable[..., Tensor]
    """``fn(x, y, **options)`` -> float64 0-d tensor (validates its own inputs)."""
    larger_is_more_similar: bool
    metric: bool
    """A distance satisfying the triangle inequality (on the equivalence classes of its invariances)."""
    invariances: frozenset[str]
    streaming: bool
    """Exact from float64 second moments over batches (see :class:`repsim.StreamingMoments`)."""
    cost: str
    symmetric: bool = True
    identity_value: float | None = None
    """Value for identical inputs (1 for most similarities, 0 for distances); None if not fixed."""
    attainable_best: float | None = None
    """The most similar value the measure can take (its maximum for a similarity, its minimum for a
    distance); None if it has no finite one. What :func:`repsim.calibrate` normalises by. Declared
    at registration; it defaults to ``identity_value``, the best value for every measure whose
    identical inputs score best."""
    needs_equal_widths: bool = False
    needs_labels: bool = False
    needs_outputs: bool = False
    """Functional measure: inputs are model outputs (logits), not features."""
    grid: Callable[..., Tensor] | None = None
    """``grid(xs, ys, **options)`` -> (L, M) float64 tensor with per-layer work shared; ``ys=None`` = xs."""
    from_moments: Callable[..., Tensor] | None = None
    """``from_moments(m: Moments, **options)`` -> 0-d float64, for streaming measures; it takes the
    subset of ``fn``'s options that matter to it (others, such as ``dtype``, are not passed)."""
    accumulator: Callable[..., object] | None = None
    """``accumulator(dtype=..., **options)`` -> an object with ``update(xs, ys)``/``compute()`` that
    streams this measure exactly (for streaming measures whose state is not :class:`Moments`)."""
    defaults: Mapping[str, object] = field(default_factory=dict)
    """Options fixed by this registry entry (aliases such as ``debiased_cka``)."""
    workspace: Callable[..., int] | None = None
    """``workspace(n, dims_x, dims_y, limit, **options)`` -> peak temporary bytes of the grid on n
    samples (``dims_y=None``: a self-grid; ``limit``: the blocked grids' workspace limit), for
    memory plans (:mod:`repsim.pipeline.plans`); None: a conservative generic estimate."""
    reference: str = ""
    invariances_given: Callable[..., tuple[str, ...]] | None = None
    """For a measure whose invariances depend on its options: ``invariances_given(**options)``; see
    :meth:`invariances_at`. ``invariances`` holds those of the default options."""
    renamed: Mapping[str, str] = field(default_factory=dict)
    """Deprecated option names and their current ones (accepted with a DeprecationWarning)."""
    differentiable: bool = False
    """Autograd gives the gradient of the value with respect to ``x`` and ``y`` (float64
    ``torch.autograd.gradcheck`` holds at generic inputs; tests/test_autograd.py checks it). Where
    the measure makes discrete choices (a matching, kNN sets) it is differentiable almost
    everywhere, the choice held fixed, like ReLU. A measure that is not (ranks, kNN counts,
    argmax, host libraries) returns a value detached from the graph, never a wrong gradient.
    ``differentiable_given`` holds the option-dependent form (see :meth:`differentiable_at`)."""
    differentiable_given: Callable[..., bool] | None = None
    symmetric_given: Callable[..., bool] | None = None
    """For a measure whose symmetry depends on its options: ``symmetric_given(**options)``; see
    :meth:`symmetric_at`. ``symmetric`` holds that of the default options."""
    needs_package: str | None = None
    """The optional package the measure imports (``"ripser"``, ``"gudhi"``), or None; see :meth:`available`."""
    null_grid: Callable[..., Tensor] | None = None
    """``null_grid(xs, ys, perms, **options)`` -> (L, M, B) float64: the grid with y's samples permuted
    by each row of ``perms`` (B, n), from per-layer state computed once (the neighbour measures:
    y[perm]'s lists are y's lists relabelled); None: the engines call the grid per permutation."""
    quadratic: Callable[..., QuadraticForm | None] | None = None
    """``quadratic(**options)`` -> the measure's quadratic form with these options
    (:class:`~repsim.measures.quadratic.QuadraticForm`: how to build a layer's matrices and finish
    the statistic), or None: the permutation, bootstrap and calibration engines
    (:mod:`repsim.inference`) then use their fast paths instead of recomputing the measure."""
    gram_pass: str | None = None
    """The stored Gram pass of :func:`repsim.compare` this measure fuses into (``"cka"``: linear CKA's
    HSIC terms; ``"rsa"``: RSA's RDM rows, :func:`repsim.measures.blocked.gram_grids_blocked`), or None."""
    sketch_corrected: Callable[..., Tensor] | None = None
    """``sketch_corrected(moments, k, projected_x, projected_y)``: the measure from the moments of
    features projected to k dims (``compare(..., sketch=k)``), corrected for the projection; None:
    the measure is computed from the projected moments as they are."""

    def options(self) -> list[str]:
        """The keyword options the measure takes (beyond x and y)."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def resolve_options(self, options: Mapping[str, object]) -> dict[str, object]:
        """``options`` with this entry's fixed ``defaults`` added; a ValueError for an unknown option
        or one the entry fixes (set it on the base measure)."""
        options = renamed_options(self.name, self.renamed, options)
        clash = sorted(set(options) & set(self.defaults))
        if clash:
            raise ValueError(f"{self.name} fixes {clash}; use the base measure to set them")
        allowed = set(self.options())
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"{self.name} takes no option(s) {unknown}; its options are {sorted(allowed)}")
        return {**self.defaults, **options}

    def option_defaults(self) -> dict[str, object]:
        """The options with their defaults, this entry's fixed ``defaults`` applied."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        return {**{p.name: p.default for p in params if p.default is not p.empty}, **self.defaults}

    def invariances_at(self, **options) -> frozenset[str]:
        """The invariances with these options (the others at their defaults)."""
        if self.invariances_given is None:
            return self.invariances
        return frozenset(self.invariances_given(**{**self.option_defaults(), **options}))

    def symmetric_at(self, **options) -> bool:
        """Whether the measure is symmetric with these options (the others at their defaults)."""
        if self.symmetric_given is None:
            return self.symmetric
        return bool(self.symmetric_given(**{**self.option_defaults(), **options}))

    def differentiable_at(self, **options) -> bool:
        """Whether autograd differentiates the measure with these options (the others at their defaults)."""
        if self.differentiable_given is None:
            return self.differentiable
        return bool(self.differentiable_given(**{**self.option_defaults(), **options}))

    def available(self) -> bool:
        """Whether the optional package the measure needs (if any) is installed."""
        return self.needs_package is None or importlib.util.find_spec(self.needs_package) is not None

    def quadratic_form(self, **options) -> QuadraticForm | None:
        """The quadratic form of the measure with these options (others at their defaults), or None."""
        if self.quadratic is None:
            return None
        return self.quadratic(**{**self.option_defaults(), **options})


_REGISTRY: dict[str, MeasureInfo] = {}


def renamed_options(measure: str, renamed: Mapping[str, str], options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with deprecated names replaced by the current ones (one DeprecationWarning each):
    the library keeps one vocabulary (``debiased``, ``n_repeats``, ...) and old names keep working."""
    return renamed_keywords(measure, renamed, options, stacklevel=6, error=ValueError)


def _check_declaration(name: str, fn, family: str, streams_without_a_form: bool) -> None:
    """The declaration errors of :func:`register` (programming errors, raised at import time)."""
    if fn is None:
        raise TypeError(f"{name}: register(fn=...) takes the measure's function")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    if streams_without_a_form:
        raise ValueError(f"{name}: a streaming measure must give from_moments or an accumulator")
    if name in _REGISTRY:
        raise ValueError(f"measure {name!r} is registered twice")


def register(
    name: str,
    *,
    family: str,
    larger_is_more_similar: bool,
    metric: bool = False,
    invariances: tuple[str, ...] | frozenset[str] | Callable[..., tuple[str, ...]] = (),
    streaming: bool = False,
    cost: str,
    differentiable: bool | Callable[..., bool],
    symmetric: bool | Callable[..., bool] = True,
    identity_value: float | None = None,
    attainable_best: float | object | None = ...,
    needs_equal_widths: bool = False,
    needs_labels: bool = False,
    needs_outputs: bool = False,
    grid: Callable[..., Tensor] | None = None,
    from_moments: Callable[..., Tensor] | None = None,
    accumulator: Callable[..., object] | None = None,
    defaults: Mapping[str, object] | None = None,
    reference: str = "",
    fn: Callable[..., Tensor] | None = None,
    workspace: Callable[..., int] | None = None,
    quadratic: Callable[..., QuadraticForm | None] | None = None,
    renamed: Mapping[str, str] | None = None,
    needs_package: str | None = None,
    gram_pass: str | None = None,
    sketch_corrected: Callable[..., Tensor] | None = None,
    null_grid: Callable[..., Tensor] | None = None,
):
    """Register ``fn`` under ``name`` (what the kinds of :mod:`repsim.measures.kinds` call; a measure
    is declared with a kind, not with this).

    ``attainable_best`` left out means ``identity_value``; pass it (or None) where they differ.
    ``invariances``, ``symmetric`` and ``differentiable`` may be functions of the options
    (``invariances(**options) -> tuple``): the entry's fields hold their values at the defaults,
    :meth:`MeasureInfo.invariances_at`, ``symmetric_at``, ``differentiable_at`` the others.
    ``differentiable`` has no default: every declaration says whether autograd differentiates it.

    Raises at import time (a programming error, not a user one) for unknown families or
    invariances and for duplicate names.
    """
    _check_declaration(name, fn, family, streaming and from_moments is None and accumulator is None)
    given = invariances if callable(invariances) else None
    info = MeasureInfo(
        name=name,
        family=family,
        fn=fn,
        larger_is_more_similar=larger_is_more_similar,
        metric=metric,
        invariances=frozenset() if given is not None else frozenset(invariances),
        streaming=streaming,
        cost=cost,
        needs_package=needs_package,
        identity_value=identity_value,
        attainable_best=identity_value if attainable_best is ... else attainable_best,
        needs_equal_widths=needs_equal_widths,
        needs_labels=needs_labels,
        needs_outputs=needs_outputs,
        grid=grid,
        from_moments=from_moments,
        accumulator=accumulator,
        defaults=dict(defaults or {}),
        reference=reference,
        workspace=workspace,
        invariances_given=given,
        quadratic=quadratic,
        renamed=dict(renamed or {}),
        gram_pass=gram_pass,
        sketch_corrected=sketch_corrected,
        null_grid=null_grid,
    )
    info = _with_option_dependent(info, given, symmetric, differentiable)
    unknown = set(info.invariances) - set(INVARIANCES)
    if unknown:
        raise ValueError(f"unknown invariance(s) {sorted(unknown)}; choose from {INVARIANCES}")
    _REGISTRY[name] = info
    return fn


@contextlib.contextmanager
def temporary_measure(name: str | None = None, *, like: str | None = None, **fields) -> Iterator[MeasureInfo | None]:
    """Register a measure for the length of a ``with`` block (for tests and experiments); on exit
    the registry is exactly as before, whatever was registered inside the block.

    ``temporary_measure("my_cka", like="linear_cka", fn=my_fn, grid=None)``: the entry of ``like``
    with ``name`` and the given ``fields`` (any :class:`MeasureInfo` field) replaced;
    ``temporary_measure("my_cka", fn=..., family=..., ...)``: a new entry (the arguments of
    :func:`register`); ``temporary_measure()``: nothing registered on entry, but measures declared
    inside the block (``@layer_measure(...)``) are removed on exit. Yields the entry (or None).

    Example:
        >>> with repsim.temporary_measure("cka_copy", like="linear_cka") as info:
        ...     repsim.measure(x, y, "cka_copy")
    """
    _load_families()
    before = dict(_REGISTRY)
    try:
        info = None
        if name is not None:
            if name in _REGISTRY:
                raise ValueError(f"measure {name!r} is registered already; choose another name")
            if like is not None:
                info = dataclasses.replace(get_measure(like), name=name, **fields)
                _REGISTRY[name] = info
            else:
                register(name, **fields)
                info = _REGISTRY[name]
        elif like is not None or fields:
            raise TypeError("temporary_measure(like=..., **fields) needs the new entry's name")
        yield info
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


def _with_option_dependent(info: MeasureInfo, invariances_given, symmetric, differentiable) -> MeasureInfo:
    """The entry with its possibly option-dependent properties (invariances, symmetry,
    differentiability: a value, or a function of the options) set to their values at the default
    options; ``*_given`` keep the functions for ``*_at(**options)``."""
    info = dataclasses.replace(
        info,
        symmetric=True if callable(symmetric) else symmetric,
        symmetric_given=symmetric if callable(symmetric) else None,
        differentiable=False if callable(differentiable) else differentiable,
        differentiable_given=differentiable if callable(differentiable) else None,
    )
    if invariances_given is not None:
        info = dataclasses.replace(info, invariances=frozenset(invariances_given(**info.option_defaults())))
    return dataclasses.replace(info, symmetric=info.symmetric_at(), differentiable=info.differentiable_at())


def get_measure(name: str) -> MeasureInfo:
    """The registry entry of ``name``; a ValueError listing the registered names otherwise."""
    _load_families()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown measure {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _old_order(face: str, first, second, third):
    """``face(name, x, y)`` (before 0.4) read as ``face(x, y, name)``, with a DeprecationWarning."""
    warn_deprecated(f"{face}(name, x, y) is now {face}(x, y, name): data first, then the measure", stacklevel=4)
    return second, third, first


def measure(x, y, measure: str | None = None, **options) -> Tensor:
    """The registered measure ``measure`` between ``x`` (n, p) and ``y`` (n, q): a float64 0-d tensor.

    Data first, then the measure's name, then its options by keyword (the order of every
    inference function: ``permutation_test(x, y, "linear_cka")``). The old order
    ``measure("svcca", x, y)`` still works, with a DeprecationWarning.

    Example:
        >>> repsim.measure(x, y, "svcca")
        >>> repsim.measure(x, y, "angular_shape", alpha=0.5)
    """
    if isinstance(x, str):
        x, y, measure = _old_order("measure", x, y, measure)
    if "name" in options and measure is None:  # the old keyword
        measure = renamed_keywords("measure", {"name": "measure"}, {"name": options.pop("name")})["measure"]
    if measure is None:
        raise TypeError("measure(x, y, measure, **options) takes the two representations and the measure's name")
    info = get_measure(measure)
    return info.fn(x, y, **info.resolve_options(options))


def measure_grid(xs, ys=None, measure: str | None = None, **options) -> Tensor:
    """``measure`` between every layer of ``xs`` and every layer of ``ys``: an (L, M) float64 tensor.

    ``xs``/``ys`` are lists (or dicts) of (n, d_l) tensors of the same samples; ``ys=None``
    compares ``xs`` with itself (``measure_grid(xs, None, "procrustes")`` or
    ``measure_grid(xs, measure="procrustes")``). Per-layer work (centring, decompositions,
    neighbour lists) is done once per layer where the measure has a batched grid. The old order
    ``measure_grid("procrustes", xs, ys)`` still works, with a DeprecationWarning.
    """
    from ..core.validation import as_layer_lists

    if isinstance(xs, str):
        xs, ys, measure = _old_order("measure_grid", xs, ys, measure)
    if "name" in options and measure is None:
        measure = renamed_keywords("measure_grid", {"name": "measure"}, {"name": options.pop("name")})["measure"]
    if measure is None:
        raise TypeError("measure_grid(xs, ys, measure, **options) takes the layers and the measure's name")
    info = measure if isinstance(measure, MeasureInfo) else get_measure(measure)  # an entry: no second look-up
    opts = info.resolve_options(options)
    if info.grid is not None:
        return info.grid(xs, ys, **opts)
    # Measures without a batched kernel (few, and said so in list_measures' "batched" column).
    xs_list, ys_list = as_layer_lists(xs, ys, 1)
    rows = [torch.stack([info.fn(x, y, **opts) for y in ys_list]) for x in xs_list]
    return torch.stack(rows).to(torch.float64)


def list_measures() -> pd.DataFrame:
    """Every registered measure and its metadata, one row each, sorted by family and name."""
    _load_families()
    rows = []
    for info in _REGISTRY.values():
        row = {
            "name": info.name,
            "family": info.family,
            "larger_is_more_similar": info.larger_is_more_similar,
            "metric": info.metric,
            "symmetric": info.symmetric,
            "differentiable": info.differentiable,
            "streaming": info.streaming,
            "batched": info.grid is not None and getattr(info.grid, "batched", True),
            "cost": info.cost,
            "needs_equal_widths": info.needs_equal_widths,
            "needs_labels": info.needs_labels,
            "needs_outputs": info.needs_outputs,
            "needs_package": info.needs_package,
            "identity_value": info.identity_value,
            "attainable_best": info.attainable_best,
            "options": ", ".join(info.options()),
            "reference": info.reference,
        }
        row.update({f"inv_{inv}": inv in info.invariances for inv in INVARIANCES})
        rows.append(row)
    order = {f: i for i, f in enumerate(FAMILIES)}
    df = pd.DataFrame(rows)
    return df.sort_values(["family", "name"], key=lambda s: s.map(order) if s.name == "family" else s).reset_index(
        drop=True
    )


def call_with_supported(fn: Callable[..., Tensor], *args, **options) -> Tensor:
    """Call ``fn`` with the options its signature names (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return fn(*args, **options)


def registered_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def _load_families() -> None:
    # Importing the package imports every family module, each of which registers its measures.
    from .. import measures  # noqa: F401


def registry_markdown() -> str:
    """The registry as a Markdown table (what docs/guide/choosing.md embeds; a test keeps them equal)."""
    table = list_measures()
    short = {"orthogonal": "O", "isotropic_scaling": "S", "translation": "T", "permutation": "P",
             "invertible_linear": "IL", "affine": "A"}  # fmt: skip
    lines = [
        "| measure | family | kind | metric | invariances | streaming | batched grid | autograd | cost | needs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        invs = " ".join(code for inv, code in short.items() if getattr(row, f"inv_{inv}")) or "none"
        needs = [
            what
            for flag, what in (
                (row.needs_equal_widths, "equal widths"),
                (row.needs_labels, "labels"),
                (row.needs_outputs, "model outputs"),
                (isinstance(row.needs_package, str), f"package {row.needs_package}"),
            )
            if flag
        ]
        lines.append(
            f"| `{row.name}` | {row.family} | {'similarity' if row.larger_is_more_similar else 'distance'} "
            f"| {'yes' if row.metric else 'no'} | {invs} | {'exact' if row.streaming else 'capped'} "
            f"| {'yes' if row.batched else 'loop'} | {'yes' if row.differentiable else 'no'} | {row.cost} "
            f"| {', '.join(needs) or '-'} |"
        )
    return "\n".join(lines) + "\n"
