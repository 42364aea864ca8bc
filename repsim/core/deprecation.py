"""One home for keeping old call forms working while the public API keeps one vocabulary.

:func:`deprecated_arguments` wraps a public function so that

* an argument under its old name (``renamed={"chunk_size": "block_size"}``) is passed on under its
  new one, with a :class:`DeprecationWarning` naming both;
* arguments that used to be positional and are now keyword-only (``positional=("n_permutations",
  "seed")``, in their old order) are still accepted positionally, with a warning that names them.

The wrapped function keeps its signature (``inspect.signature`` reads the new one), so the API
convention test (tests/test_api_conventions.py) checks what users see. Measures' own options are
renamed through the registry's ``renamed=`` (:func:`repsim.measures.registry.renamed_options`),
which calls :func:`renamed_keywords` here. Old forms are removed in 0.5.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence

__all__ = ["deprecated_arguments", "renamed_keywords", "warn_deprecated"]


def warn_deprecated(message: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning that says the old form goes in 0.5 (``stacklevel`` 3: the caller's caller)."""
    warnings.warn(f"{message} (the old form will be removed in 0.5)", DeprecationWarning, stacklevel=stacklevel)


def renamed_keywords(
    owner: str,
    renamed: Mapping[str, str],
    kwargs: Mapping[str, object],
    stacklevel: int = 4,
    error: type[Exception] = TypeError,
) -> dict:
    """``kwargs`` with each old name in ``renamed`` replaced by its new one (one warning each);
    ``error`` if both the old and the new name are given."""
    out = dict(kwargs)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise error(f"{owner}: pass {new}= only ({old}= is its old name)")
            warn_deprecated(f"{owner}: {old}= is now {new}=", stacklevel=stacklevel)
            out[new] = out.pop(old)
    return out


def deprecated_arguments(
    *, renamed: Mapping[str, str] | None = None, positional: Sequence[str] = ()
) -> Callable[[Callable], Callable]:
    """Keep the old call forms of the decorated function working, with a DeprecationWarning.

    ``renamed``: old keyword name -> new name. ``positional``: the parameters, in their old order,
    that followed the positional ones and are keyword-only now.
    """
    renamed = dict(renamed or {})
    positional = tuple(positional)

    def wrap(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters.values()
        n_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        name = fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if len(args) > n_positional and positional and not takes_varargs:
                extra = args[n_positional:]
                if len(extra) > len(positional):
                    raise TypeError(f"{name}() takes {n_positional} positional arguments; pass the rest by name")
                moved = dict(zip(positional, extra, strict=False))
                clash = sorted(set(moved) & set(kwargs))
                if clash:
                    raise TypeError(f"{name}() got multiple values for {clash}")
                warn_deprecated(
                    f"{name}: pass {', '.join(f'{k}=' for k in moved)} by name (keyword-only now)", stacklevel=3
                )
                args, kwargs = args[:n_positional], {**kwargs, **moved}
            if renamed:
                kwargs = renamed_keywords(name, renamed, kwargs, stacklevel=4)
            return fn(*args, **kwargs)

        wrapper.__deprecated_arguments__ = {"renamed": renamed, "positional": positional}  # type: ignore[attr-defined]
        return wrapper

    return wrap
