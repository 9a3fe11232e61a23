"""The architecture registry: every model family the stack can convert, validate and run.

Each module of this package defines one family (an `Architecture` subclass decorated with
`@register`); modules are discovered, so adding a family is adding a module (docs/architectures.md
has a worked example). Sources, convert, metadata, validate, certify and the runtime ask
`architecture_for(config)` and read nothing about a family from anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import FormatError, UnsupportedError
from .base import Architecture, Hyperparams

class UnsupportedArchitecture(UnsupportedError):
    """No registered family serves this model (gate C0 at conversion)."""


_BY_HF_NAME: dict[str, type[Architecture]] = {}
_BY_MODEL_TYPE: dict[str, type[Architecture]] = {}
_BY_GGUF_ARCH: dict[str, type[Architecture]] = {}
_loaded = False


def register(cls: type[Architecture]) -> type[Architecture]:
    for table, keys in ((_BY_HF_NAME, cls.hf_names), (_BY_MODEL_TYPE, cls.model_types)):
        for key in keys:
            if key in table and table[key] is not cls:
                raise RuntimeError(f"{key} is claimed by both {table[key].__name__} and {cls.__name__}")
            table[key] = cls
    if (gguf_name := cls.gguf_name_of_arch()) is not None:
        _BY_GGUF_ARCH.setdefault(gguf_name, cls)
    return cls


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True


def supported() -> list[str]:
    """Every HF architecture name served, sorted."""
    _load_families()
    return sorted(_BY_HF_NAME)


def families() -> list[type[Architecture]]:
    _load_families()
    return sorted(set(_BY_HF_NAME.values()), key=lambda cls: cls.family)


def family_of(config: dict[str, Any], path: Any = None) -> type[Architecture]:
    """The family class for an HF config (by `architectures[0]`, else by `model_type`)."""
    _load_families()
    if not isinstance(config, dict):
        raise FormatError("the model config is not a JSON object", path)
    names, model_type = config.get("architectures") or [], config.get("model_type")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and isinstance(model_type, (str, type(None)))):
        raise FormatError("config.json: 'architectures' must be a list of names and 'model_type' a name", path)
    name = names[0] if names else None
    if name in _BY_HF_NAME:
        return _BY_HF_NAME[name]
    if name is None and config.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[config["model_type"]]
    named = name or f"model_type {config.get('model_type')!r}"
    raise UnsupportedArchitecture(f"architecture {named} is not supported (supported: {', '.join(supported())})", path)


def architecture_for(config: dict[str, Any], path: Any = None) -> Architecture:
    """The family instance for an HF config, its hyperparameters normalised (or a one-line error)."""
    return family_of(config, path)(config, path)


def family_for_gguf(gguf_arch: Any, path: Any = None) -> type[Architecture]:
    _load_families()
    if not isinstance(gguf_arch, str) or gguf_arch not in _BY_GGUF_ARCH:
        raise UnsupportedArchitecture(f"GGUF architecture {gguf_arch!r} is not supported "
                               f"(supported: {', '.join(sorted(_BY_GGUF_ARCH))})", path)
    return _BY_GGUF_ARCH[gguf_arch]


__all__ = ["Architecture", "Hyperparams", "UnsupportedArchitecture", "architecture_for", "families", "family_for_gguf",
           "family_of", "register", "supported"]
