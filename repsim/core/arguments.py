"""Keyword-only arguments with a deprecation period: the data arguments of a public function are
positional, every other one keyword-only (docs/guide/api-conventions.md); calls written against the
older positional signatures, or with an argument's old name, keep working with a DeprecationWarning."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence


def keyword_only(legacy: Sequence[str], renamed: Mapping[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Accept the old positional use and old names of a function whose options became keyword-only.

    ``legacy``: the names, in the old order, that used to follow the positional data arguments
    (their current names); ``renamed``: {old name: current name}. Each old use warns once per call
    (DeprecationWarning, removed in 0.5); the wrapped function keeps its signature and docstring.
    """
    renamed = dict(renamed or {})

    def wrap(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

        @functools.wraps(fn)
        def call(*args, **kwargs):
            extra = args[len(positional) :]
            if extra:
                names = list(legacy[: len(extra)])
                if len(extra) > len(legacy):
                    raise TypeError(f"{fn.__name__}() takes {len(positional)} positional arguments; name the rest")
                warnings.warn(
                    f"{fn.__name__}(): pass {', '.join(n + '=' for n in names)} by keyword; positional use of "
                    "options is deprecated and stops working in 0.5",
                    DeprecationWarning,
                    stacklevel=2,
                )
                clash = sorted(set(names) & set(kwargs))
                if clash:
                    raise TypeError(f"{fn.__name__}() got multiple values for {clash}")
                kwargs.update(zip(names, extra, strict=True))
                args = args[: len(positional)]
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}(): pass {new}= only ({old}= is its old name)")
                    warnings.warn(f"{fn.__name__}(): {old}= is now {new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        call.renamed = dict(renamed)  # for the API-convention test and the docs
        return call

    return wrap
