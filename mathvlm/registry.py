"""String → constructor registries, so configs name components instead of importing them.

Kinds: ``model``, ``loss``, ``source``, ``row_transform``, ``step``, ``evaluator``, ``reward``, ``job``.
A component registers itself where it is defined::

    @registry.register("loss", "next_token")
    def next_token_loss(...): ...

and a config names it: ``config.loss.terms = [{"name": "next_token", "weight": 1.0}]``. Lookup imports the
package that owns the kind first, so a config may name anything that package defines without the caller
importing it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

# Which package defines the components of each kind; imported on first lookup.
_HOME = {
    "model": "mathvlm.models",
    "loss": "mathvlm.losses",
    "source": "mathvlm.data",
    "row_transform": "mathvlm.experiments",  # experiments' changes to the data (data.row_transforms)
    "step": "mathvlm.train",
    "evaluator": "mathvlm.eval",
    "reward": "mathvlm.eval.rewards",
    "job": "mathvlm.train",
}
_TABLES: dict[str, dict[str, Any]] = {kind: {} for kind in _HOME}


def _table(kind: str) -> dict[str, Any]:
    if kind not in _TABLES:
        raise KeyError(f"unknown registry kind {kind!r}; kinds are {sorted(_TABLES)}")
    return _TABLES[kind]


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: ``@register("model", "decoder_lm")`` makes the object findable as that name."""
    table = _table(kind)

    def decorate(obj):
        if name in table and table[name] is not obj:
            previous = table[name]
            raise ValueError(
                f"{kind} {name!r} is registered twice: {_where(previous)} and {_where(obj)}; "
                "rename one of them")
        table[name] = obj
        return obj

    return decorate


def get(kind: str, name: str) -> Any:
    """The object registered as ``name``; the error lists what is registered for that kind."""
    table = _table(kind)
    if name not in table:
        importlib.import_module(_HOME[kind])
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise KeyError(f"no {kind} named {name!r}; registered {kind}s: {known}")
    return table[name]


def names(kind: str) -> list[str]:
    """Every registered name of a kind (after importing its home package)."""
    importlib.import_module(_HOME[kind])
    return sorted(_table(kind))


def _where(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
