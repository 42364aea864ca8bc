"""Measure kinds: declare a measure once, and its kind builds everything else.

A measure is written as a *declaration*: a function whose signature is the public one (``x``, ``y``,
then its options, keyword-only, with their defaults written once) and whose body is its docstring
(the formula and the reference), decorated by its kind with the measure's properties. The kind
supplies the computation from the parts it is given and returns the public function, with the
declaration's name, signature and docstring; it also builds the batched layer grid (``fn.grid(xs, ys)``) and, where the
kind streams, the exact streaming form, and registers all of it (:mod:`repsim.measures.registry`).

* :func:`moment_measure`: a function of the second moments (CCA, Procrustes and shape metrics,
  regression, neuron matching). Parts: ``prepare(scatter, n, **options)`` (per layer, once) and
  ``pair(prep_x, prep_y, s_xy, n, **options)``. Built: the one-shot function, a grid with one
  product of the concatenated centred layers, the exact streaming form from
  :class:`~repsim.measures.moments.Moments` (``streaming=True``).
* :func:`layer_measure`: every other measure. Parts: ``prepare(x, **options)`` (per layer, once:
  neighbour lists, a statistic, a kernel) and ``pair(prep_x, prep_y, **options)``; or, for a
  measure with its own batched kernel over all layer pairs, ``grid(xs, ys, **options)`` on
  validated layer lists. Built: the one-shot function and the grid; a streaming accumulator can be
  declared (``accumulator=``).

Both kinds validate their inputs the same way (:func:`repsim.measures.registry` callers never see
an unvalidated tensor): floating, finite, 2-D, the same samples, at least ``min_samples`` rows, no
constant representation; an ``options_check(**options)`` declared with the measure refuses bad
options before any work. Option-dependent properties are declared on the entry too: ``invariances``
may be a function of the options (RSA's depend on ``rdm=``); ``quadratic`` names the quadratic form
the permutation, bootstrap and calibration engines use (:mod:`repsim.inference`), as a function of
the options, when the measure has one. Every declaration says ``differentiable=`` (True, False, or a
function of the options): where it is False the kind detaches the inputs, so the value is a
constant to autograd rather than a wrong gradient (tests/test_autograd.py checks both ways).

Example (the whole of a measure; see docs/guide/contributing.md)::

    @moment_measure("procrustes", differentiable=True, prepare=trace, pair=procrustes_pair, family="alignment",
                    larger_is_more_similar=False, metric=True, invariances=ROTATION,
                    cost="O(n d^2 + d^3)", identity_value=0.0, reference="Ding et al. 2021")
    def procrustes(x, y, *, dtype=None):
        '''Orthogonal Procrustes distance ... (formula, reference)'''
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..core.deprecation import renamed_keywords
from ..core.validation import as_feature_pair, as_layer_lists
from . import _moment_grid as mg
from .registry import register, renamed_options

__all__ = ["MomentParts", "diagonal_only", "layer_measure", "moment_measure"]

diagonal_only = mg.diagonal_only  # public here: a moment prepare that reads only its scatter's diagonal


class _Parts(NamedTuple):
    prepare: Callable[..., object]
    pair: Callable[..., Tensor]
    prepare_y: Callable[..., object] | None = None
    center: bool = True
    swap: bool = False


class MomentParts(_Parts):
    """How a moment measure is computed for one setting of its options.

    ``prepare`` / ``pair``: see :func:`moment_measure`; ``prepare_y``: y's preparation when it
    differs from x's (regression: x is whitened, y needs only its trace); ``center=False`` works
    with moments about the origin; ``swap=True`` computes the measure with x and y exchanged
    (regression's ``predict="x"``). ``centre=`` is the deprecated spelling of ``center=``."""

    __slots__ = ()

    def __new__(cls, prepare, pair, prepare_y=None, center: bool = True, swap: bool = False, **old):
        if set(old) - {"centre"}:
            raise TypeError(f"MomentParts() got unexpected argument(s) {sorted(set(old) - {'centre'})}")
        if old:
            center = renamed_keywords("MomentParts", {"centre": "center"}, old, stacklevel=4)["center"]
        return super().__new__(cls, prepare, pair, prepare_y, center, swap)


def _check_declaration_body(declaration: Callable) -> None:
    """A declaration's body is its docstring only: code there would never run (the kind computes)."""
    try:
        source = textwrap.dedent(inspect.getsource(declaration))
    except (OSError, TypeError):  # no source (an interactive session): nothing to check
        return
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    body = node.body
    docstring = bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    if not docstring or len(body) > 1:
        raise TypeError(
            f"{declaration.__name__}: a measure's declaration has a docstring (the formula and the reference) "
            "and no code: the kind computes it from its parts"
        )


def _declared_options(declaration: Callable) -> tuple[inspect.Signature, dict[str, Any]]:
    """The declaration's signature and its options (everything after ``x, y``) with their defaults."""
    sig = inspect.signature(declaration)
    params = list(sig.parameters.values())
    if [p.name for p in params[:2]] != ["x", "y"]:
        raise TypeError(f"{declaration.__name__}: a measure's declaration starts with (x, y, ...)")
    options = {}
    for p in params[2:]:
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
            raise TypeError(f"{declaration.__name__}: option {p.name!r} must be keyword-only with a default")
        options[p.name] = p.default
    return sig, options


def _options_in(sig: inspect.Signature) -> dict[str, Any]:
    """The options of a checked declaration's signature with their defaults (after ``x, y``)."""
    return {p.name: p.default for p in list(sig.parameters.values())[2:]}


def _grid_signature(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())
    xs = inspect.Parameter("xs", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ys = inspect.Parameter("ys", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    return sig.replace(parameters=[xs, ys, *params[2:]])


def _options_of(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{name}() got unexpected option(s) {unknown}; its options are {sorted(defaults)}")
    return {**defaults, **given}


def _detach_rule(differentiable) -> Callable[[dict[str, Any]], bool] | None:
    """When a call must detach its inputs: never for a differentiable measure; at the options where
    ``differentiable(**options)`` is False for an option-dependent one; always otherwise. A measure
    autograd cannot follow (ranks, kNN counts, host libraries) so returns a constant, never a wrong
    gradient, and a host library never meets a tensor that requires grad."""
    if callable(differentiable):
        return lambda options: not differentiable(**options)
    return None if differentiable else (lambda options: True)


def _detached(layers):
    if isinstance(layers, Tensor):
        return layers.detach()
    if isinstance(layers, Mapping):
        return {k: _detached(v) for k, v in layers.items()}
    if isinstance(layers, (list, tuple)):
        return [_detached(v) for v in layers]
    return layers  # None, or what validation will refuse


def _built(
    declaration: Callable, sig: inspect.Signature, body: Callable, renamed: dict[str, str], detach=None
) -> Callable:
    """``body(x, y, options)`` behind the declaration's name, signature and docstring."""
    name, defaults = declaration.__name__, _options_in(sig)

    @functools.wraps(declaration)
    def fn(x, y, **given):
        options = _options_of(name, defaults, renamed_options(name, renamed, given))
        if detach is not None and detach(options):
            x, y = _detached(x), _detached(y)
        return body(x, y, options)

    fn.__signature__ = sig  # type: ignore[attr-defined]
    return fn


def _grid_function(
    declaration: Callable, sig: inspect.Signature, body: Callable, renamed: dict[str, str], detach=None
) -> Callable:
    name, defaults = declaration.__name__, _options_in(sig)

    def grid(xs, ys=None, **given):
        options = _options_of(name, defaults, renamed_options(name, renamed, given))
        if detach is not None and detach(options):
            same = ys is xs
            xs = _detached(xs)
            ys = xs if same else _detached(ys)
        return body(xs, ys, options)

    grid.__name__ = grid.__qualname__ = f"{name}_grid"
    grid.__module__ = declaration.__module__
    grid.__doc__ = f":func:`{name}` between every layer of ``xs`` and every layer of ``ys`` (``None``: ``xs``): (L, M)."
    grid.__signature__ = _grid_signature(sig)  # type: ignore[attr-defined]
    return grid


def _differentiable(name: str, properties: dict[str, Any]):
    if "differentiable" not in properties:
        raise TypeError(f"{name}: declare differentiable=True or False (or a function of the options)")
    return properties["differentiable"]


def moment_measure(
    name: str,
    *,
    prepare: Callable[..., object] | None = None,
    pair: Callable[..., Tensor] | None = None,
    parts: Callable[..., MomentParts] | None = None,
    options_check: Callable[..., None] | None = None,
    min_samples: int = 3,
    renamed: dict[str, str] | None = None,
    **properties,
) -> Callable[[Callable], Callable]:
    """Declare a measure that is a function of the second moments; it streams exactly.

    Give ``prepare`` and ``pair`` (the same for every option), or ``parts(**options) ->
    MomentParts`` when the computation depends on an option (angular_shape's ``alpha``,
    regression's ``predict``). Every option except ``dtype`` (the precision of the products) is
    passed to ``prepare`` and ``pair``, which ignore what they do not use (``**_``).
    ``renamed={"old": "new"}`` keeps a deprecated option name working (with a DeprecationWarning).
    ``properties``: the registry's (see :func:`repsim.measures.registry.register`).
    """
    renamed = dict(renamed or {})
    if (parts is None) == (prepare is None or pair is None):
        raise TypeError(f"{name}: give prepare and pair, or parts")
    fixed = MomentParts(prepare, pair) if parts is None else None

    def declare(declaration: Callable) -> Callable:
        _check_declaration_body(declaration)
        sig, declared = _declared_options(declaration)
        moment_options = {k: v for k, v in declared.items() if k != "dtype"}  # dtype: the products' only

        def resolved(options: dict[str, Any]) -> tuple[torch.dtype | None, dict[str, Any], MomentParts]:
            options = dict(options)
            dtype = options.pop("dtype", None)
            if options_check is not None:
                options_check(**options)
            return dtype, options, fixed if fixed is not None else parts(**options)

        def one_shot(x, y, options):
            dtype, options, p = resolved(options)
            x, y = mg.validated_pair(x, y, min_samples)
            if p.swap:
                x, y = y, x
            return mg.one_shot(x, y, dtype, p.prepare, p.pair, prepare_y=p.prepare_y, centred=p.center, **options)

        def grid(xs, ys, options):
            dtype, options, p = resolved(options)
            xs, ys = as_layer_lists(xs, ys, min_samples, varying=True)
            if p.swap:
                return mg.grid(ys, xs, dtype, p.prepare, p.pair, min_samples, p.prepare_y, p.center, True, **options).T
            return mg.grid(xs, ys, dtype, p.prepare, p.pair, min_samples, p.prepare_y, p.center, True, **options)

        def from_moments(m, **given):
            _, options, p = resolved(_options_of(name, moment_options, renamed_options(name, renamed, given)))
            m = m.swapped() if p.swap else m
            return mg.from_moments(m, p.prepare, p.pair, prepare_y=p.prepare_y, centred=p.center, **options)

        detach = _detach_rule(_differentiable(name, properties))
        fn = _built(declaration, sig, one_shot, renamed, detach)
        fn.grid = _grid_function(declaration, sig, grid, renamed, detach)  # type: ignore[attr-defined]
        register(
            name,
            fn=fn,
            grid=fn.grid,
            from_moments=from_moments,
            streaming=True,
            renamed=renamed,
            **properties,
        )
        return fn

    return declare


def _takes(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _layer_names(count_x: int, count_y: int | None) -> tuple[list[str], list[str]]:
    """What errors call the layers: ``x``/``y`` for one pair, ``xs[i]``/``ys[j]`` in a grid."""
    if count_y is None:
        return ["x"], ["y"]
    return [f"xs[{i}]" for i in range(count_x)], [f"ys[{j}]" for j in range(count_y)]


def layer_measure(
    name: str,
    *,
    prepare: Callable[..., object] | None = None,
    pair: Callable[..., Tensor] | None = None,
    grid: Callable[..., Tensor] | None = None,
    validate_pair: Callable[..., tuple[Tensor, Tensor]] | None = None,
    validate_layers: Callable[..., tuple[list[Tensor], list[Tensor]]] | None = None,
    options_check: Callable[..., None] | None = None,
    min_samples: int | Callable[..., int] = 3,
    reason: str | Callable[..., str] = "",
    aliases: dict[str, dict[str, Any]] | None = None,
    renamed: dict[str, str] | None = None,
    null_grid: Callable[..., Tensor] | None = None,
    **properties,
) -> Callable[[Callable], Callable]:
    """Declare a measure computed per layer pair: ``prepare(x, **options)`` once per layer and
    ``pair(prep_x, prep_y, **options)`` per pair, or ``grid(xs, ys, **options)`` for every pair at
    once (a batched kernel). ``ys`` is ``xs`` itself for a self-grid, so a grid can share work.
    Without ``prepare`` the pair gets the validated layers and the grid is a loop over pairs.

    Errors name the layer: a ``prepare`` with a ``name`` parameter gets ``"x"``, ``"y"``, ``"xs[2]"``...;
    a ``grid`` with a ``names`` parameter gets both lists.

    Validation: floating, finite, 2-D, the same samples, at least ``min_samples`` rows (an int,
    or a function of the options; ``reason``, a string or a function of the options, says why),
    no constant layer. A measure that needs other checks (model outputs) gives both
    ``validate_pair(x, y) -> (x, y)`` and ``validate_layers(xs, ys) -> (xs, ys)`` (``ys=None``: a
    self-grid, returned as ``xs`` itself).
    ``aliases``: further registry entries of the same function, ``{name: {"defaults": {...},
    other properties}}`` (``debiased_cka`` is ``linear_cka`` with ``debiased=True``).
    ``null_grid(xs, ys, perms, **options, names=...)``: the grid under each permutation of y's
    samples, (L, M, B), from per-layer state computed once (neighbour lists, relabelled), for the
    permutation engines (:attr:`~repsim.MeasureInfo.null_grid`).
    ``properties``: the registry's.
    """
    renamed = dict(renamed or {})
    if (grid is None) == (pair is None):
        raise TypeError(f"{name}: give pair (and prepare, if a layer has work to share), or grid")
    if (validate_pair is None) != (validate_layers is None):
        raise TypeError(f"{name}: give both validate_pair and validate_layers, or neither")
    parts = _LayerParts(prepare, pair, grid, validate_pair, validate_layers, options_check, min_samples, reason)
    parts.null_grid = null_grid

    def declare(declaration: Callable) -> Callable:
        _check_declaration_body(declaration)
        sig, _ = _declared_options(declaration)
        detach = _detach_rule(_differentiable(name, properties))
        fn = _built(declaration, sig, parts.one_shot, renamed, detach)
        grid_fn = _grid_function(declaration, sig, parts.all_pairs, renamed, detach)
        grid_fn.batched = grid is not None or prepare is not None  # type: ignore[attr-defined]  # list_measures
        fn.grid = grid_fn  # type: ignore[attr-defined]
        nulls = None
        if null_grid is not None:
            defaults = _options_in(sig)

            def nulls(xs, ys, perms, **given):
                options = _options_of(name, defaults, renamed_options(name, renamed, given))
                return parts.permuted_pairs(xs, ys, perms, options)

        register(name, fn=fn, grid=grid_fn, renamed=renamed, null_grid=nulls, **properties)
        for alias, overrides in (aliases or {}).items():
            register(alias, fn=fn, grid=grid_fn, renamed=renamed, null_grid=nulls, **{**properties, **overrides})
        return fn

    return declare


class _LayerParts:
    """What :func:`layer_measure` computes from its parts: validation, then per-layer preparation and
    the pairs (or the batched grid)."""

    def __init__(self, prepare, pair, grid, validate_pair, validate_layers, options_check, min_samples, reason):
        self.prepare = prepare or (lambda x, **_: x)
        self.pair, self.grid = pair, grid
        self.validate_pair, self.validate_layers = validate_pair, validate_layers
        self.options_check, self.min_samples, self.reason = options_check, min_samples, reason
        self.named_prepare = _takes(self.prepare, "name")
        self.named_grid = grid is not None and _takes(grid, "names")

    def _needed(self, options) -> tuple[int, str]:
        return (
            self.min_samples(**options) if callable(self.min_samples) else self.min_samples,
            self.reason(**options) if callable(self.reason) else self.reason,
        )

    def _compute(self, xs, ys, options, names) -> Tensor:
        if self.grid is not None:
            extra = {"names": names} if self.named_grid else {}
            return self.grid(xs, ys, **options, **extra).to(torch.float64)

        def prep(t, nm):
            return self.prepare(t, name=nm, **options) if self.named_prepare else self.prepare(t, **options)

        preps_x = [prep(x, nm) for x, nm in zip(xs, names[0], strict=True)]
        preps_y = preps_x if ys is xs else [prep(y, nm) for y, nm in zip(ys, names[1], strict=True)]
        rows = [torch.stack([self.pair(a, b, **options) for b in preps_y]) for a in preps_x]
        return torch.stack(rows).to(torch.float64)

    def _validated(self, xs, ys, options):
        if self.options_check is not None:
            self.options_check(**options)
        if self.validate_layers is not None:
            return self.validate_layers(xs, ys)
        return as_layer_lists(xs, ys, *self._needed(options), varying=True)

    def all_pairs(self, xs, ys, options) -> Tensor:
        xs, ys = self._validated(xs, ys, options)
        return self._compute(xs, ys, options, _layer_names(len(xs), len(ys)))

    def permuted_pairs(self, xs, ys, perms, options) -> Tensor:
        """(L, M, B): the grid with y's samples permuted by each of ``perms`` (the declared null_grid)."""
        xs, ys = self._validated(xs, ys, options)
        return self.null_grid(xs, ys, perms, **options, names=_layer_names(len(xs), len(ys))).to(torch.float64)

    def one_shot(self, x, y, options) -> Tensor:
        if self.options_check is not None:
            self.options_check(**options)
        if self.validate_pair is not None:
            x, y = self.validate_pair(x, y)
        else:
            x, y = as_feature_pair(x, y, *self._needed(options), varying=True)  # errors name x and y
        return self._compute([x], [y], options, _layer_names(1, None))[0, 0]
