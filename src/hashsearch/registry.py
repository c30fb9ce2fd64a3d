"""A small plug-in registry shared by every plug-in family (backbones, hashers, index back ends)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory; the CLI's choices, the docs and the tests all read it.

    Examples
    --------
    >>> hashers = Registry("hasher")
    >>> @hashers.register("lsh")
    ... class LSH: ...
    >>> hashers.names()
    ['lsh']
    """

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.builtins = builtins
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under `name`; a class also gets `cls.name = name`."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(factory, type):
                setattr(factory, "name", name)  # noqa: B010 - the class attribute every plug-in reads
            self._factories[name] = factory
            return factory

        return decorate

    def _load_builtins(self) -> None:
        # The built-in plug-ins register themselves when their package is imported.
        if self.builtins:
            importlib.import_module(self.builtins)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as `name`, or a ValueError that lists the choices."""
        self._load_builtins()
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def create(self, name: str, **params: Any) -> T:
        """Build the plug-in registered as `name` with `params`."""
        return self.get(name)(**params)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._factories
