"""The one registry style: a named ``dict`` filled by a decorator, looked up with a one-line error.

The seed's auto classes keep their public ``_model_mapping`` / ``_config_mapping`` dicts (users write to
them directly); :class:`ClassByConfig` is their shared lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from specforge.errors import SpecforgeError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> entry``; ``@registry.register(name)`` adds one, ``registry.get(name)`` looks it up."""

    def __init__(self, what: str, flag: str = "") -> None:
        self.what, self.flag = what, flag
        self.entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (a later registration replaces it)."""

        def deco(obj: T) -> T:
            self.entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry called ``name``; unknown names raise one line listing the known ones."""
        if name not in self.entries:
            where = f"{self.flag} " if self.flag else ""
            raise SpecforgeError(f"unknown {self.what} {where}'{name}'; choose one of {', '.join(self.names())}.")
        return self.entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


class ClassByConfig:
    """Pick a class from ``_model_mapping`` (config class -> class or list of classes); among several, the
    one named by ``config.architectures[0]`` wins."""

    _model_mapping: ClassVar[dict] = {}
    _kind = "model"

    @classmethod
    def _get_model_class(cls, config: Any) -> Any:
        classes = None
        for conf_cls in type(config).__mro__:  # exact class first, then its bases
            if conf_cls in cls._model_mapping:
                classes = _as_list(cls._model_mapping[conf_cls])
                break
        if not classes:
            known = ", ".join(c.__name__ for c in cls._model_mapping) or "none"
            raise SpecforgeError(
                f"no {cls._kind} registered for config class {type(config).__name__} (registered: {known}); "
                f"add it to {cls.__name__}._model_mapping.")
        arch = (getattr(config, "architectures", None) or [None])[0]
        for c in classes:
            if c.__name__ == arch:
                return c
        return classes[0]
