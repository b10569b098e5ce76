"""What to say about a key a config section does not have: the likely spelling, or where the key belongs.

Pydantic reports an unknown key as "Extra inputs are not permitted"; :func:`unknown_key_hint` adds the fix a
user needs — ``did you mean 'guidance_scale'?`` for a typo, ``'extractor_source' belongs under
evaluation.fidelity`` for a key in the wrong section, or the keys the section has. Plain pydantic (no torch), so
config validation stays light.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Iterable, Iterator, Sequence

from pydantic import BaseModel


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` most likely means: one it abbreviates (``min_prob``), else the closest spelling
    (``balanced_softmax`` → ``balanced-softmax``); None when none is close."""
    known = sorted(known)
    prefixed = [k for k in known if k.startswith(name) and len(name) >= 3]
    return (prefixed or difflib.get_close_matches(name, known, n=1, cutoff=0.7) or [None])[0]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field annotation can hold (through ``Optional``, unions, ``list``, ``dict``,
    ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def _section(root: type[BaseModel], loc: Sequence[Any]) -> list[type[BaseModel]]:
    """The models that can sit at ``loc`` under ``root`` (list indices and union tags are stepped over)."""
    current = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        inner = [m for model in current if part in model.model_fields
                 for m in models_in(model.model_fields[part].annotation)]
        if inner:
            current = inner
        elif any(part in model.model_fields for model in current):
            return []  # a plain field (a dict of free keys, say): no known keys below it
        else:  # a discriminated union's tag (filters.0.confidence): the member it names
            current = [m for m in current if _tag(m) == part] or current
    return current


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("name")
    return field.default if field is not None else None


def _paths(model: type[BaseModel], prefix: str = "", seen: frozenset = frozenset()) -> Iterator[tuple[str, str]]:
    """(dotted section, key) for every key in ``model`` and the sections below it."""
    for name, field in model.model_fields.items():
        yield prefix, name
        for inner in models_in(field.annotation):
            if inner not in seen:
                yield from _paths(inner, f"{prefix}{name}.", seen | {model})


def unknown_key_hint(root: type[BaseModel], loc: Sequence[Any]) -> str:
    """The fix for unknown key ``loc[-1]`` in the section at ``loc[:-1]`` of ``root`` ("" when none is found)."""
    key = str(loc[-1])
    known = sorted({name for model in _section(root, loc[:-1]) for name in model.model_fields})
    if close := closest(key, known):
        return f"did you mean {close!r}?"
    elsewhere = sorted({section.rstrip(".") or "the top level" for section, name in _paths(root) if name == key})
    if elsewhere:
        return f"{key!r} belongs under {' or '.join(elsewhere)}."
    if known:
        return f"this section's keys: {', '.join(known)}."
    return ""
