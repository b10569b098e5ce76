"""Name-keyed registries, in the manner of timm's ``register_model`` / ``create_model``."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Callable, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; a ValueError too, so config validators report it as a field error."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to classes or factories.

    Args:
        kind: what the registry holds, used in error messages ("generator", "loss", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered.")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Returns the entry registered as ``name``.

        Raises:
            KeyError: if no entry has that name; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries))}."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern`` (``"*bsm*"``), sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` if registered (for config validation), else :class:`UnknownNameError`."""
        self.get(name)
        return name


def registered(registry: Registry) -> type:
    """A pydantic field type: a string that must name an entry of ``registry``."""
    return Annotated[str, AfterValidator(registry.check)]
