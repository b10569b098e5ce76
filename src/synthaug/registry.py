"""Name-keyed registries, in the manner of timm's ``register_model`` / ``create_model``.

A registry can *declare* a name with the import path of its implementation (``"pkg.module:attr"``) before
that module is imported: config validation then checks names without importing torch or diffusers, and
:meth:`Registry.get` imports the implementation on first use. The implementation module still registers
itself with ``@REGISTRY.register(name)``, which fills in the declared entry.
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Annotated, Callable, Generic, TypeVar

from pydantic import AfterValidator
from synthaug.config_hints import closest
from synthaug.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError, ValueError):
    """An unknown registry name; a ValueError too, so config validators report it as a field error."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to classes or factories.

    Args:
        kind: what the registry holds, used in error messages ("generator", "loss", ...).
        declared: ``{name: "module:attribute"}`` entries imported lazily on first :meth:`get`.
    """

    def __init__(self, kind: str, declared: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, T | str] = dict(declared or {})

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            current = self._entries.get(name)
            if current is not None and not (isinstance(current, str) and current == _path_of(obj)):
                raise ValueError(f"{self.kind} {name!r} is already registered (as {current!r}).")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Returns the entry registered as ``name``, importing a declared implementation on first use.

        Raises:
            UnknownNameError: if no entry has that name; the message lists the valid names.
        """
        try:
            entry = self._entries[name]
        except KeyError:
            close = closest(str(name), self._entries)
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}; " + (f"did you mean {close!r}? " if close else "")
                + f"valid names: {', '.join(sorted(self._entries))}."
            ) from None
        if isinstance(entry, str):
            module, attr = entry.split(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern`` (``"*bsm*"``), sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` if registered or declared (for config validation; imports nothing), else
        :class:`UnknownNameError`."""
        if name not in self._entries:
            self.get(name)
        return name


def _path_of(obj: object) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def registered(registry: Registry) -> type:
    """A pydantic field type: a string that must name an entry of ``registry``."""
    return Annotated[str, AfterValidator(registry.check)]
