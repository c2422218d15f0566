"""Building a config dataclass from plain data, checking every value against its annotation.

:func:`build` turns a nested mapping into the dataclass tree, converting each value with
:func:`convert` (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, nested dataclasses); every error is a
:class:`~ehrsurv_dist.errors.ConfigError` naming the dotted key. The annotation helpers here are
shared with the loader (:mod:`ehrsurv_dist.config_load`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ehrsurv_dist.errors import ConfigError, join_key


def build(cls: type, data: Mapping[Any, Any], prefix: str) -> Any:
    fields_ = init_fields(cls)
    for k in data:
        if not isinstance(k, str) or k not in fields_:
            raise ConfigError.unknown_key(join_key(prefix, str(k)))
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields_.items():
        key = join_key(prefix, name)
        if name in data:
            kwargs[name] = convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required, but not set")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # raised by __post_init__ with a key relative to `cls`
        raise e.prefixed(prefix) from None


def convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in that type."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(key, tp, value)
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, tp, key)
    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(key, f"must be one of {choices}; got {value!r}")
    if is_dataclass_type(tp):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = plain(value)
        if value is None:  # `data:` with every line below it commented out
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(
                key, f"expected a mapping of {tp.__name__} options, got {_show(value)}"
            )
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(key, tp, value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `1e-3` (no dot) as a string; accept any float() spelling.
            try:
                return float(value)
            except ValueError:
                pass
        raise _mismatch(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(key, tp, value)
    if origin in (list, Sequence):
        (item_tp,) = args or (Any,)
        if not isinstance(value, list | tuple):
            raise _mismatch(key, tp, value)
        return [convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _mismatch(key, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
        return tuple(
            convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (dict, Mapping):
        key_tp, val_tp = args or (str, Any)
        if not isinstance(value, Mapping):
            raise _mismatch(key, tp, value)
        out = {}
        for k, v in value.items():
            out[convert(k, key_tp, f"{key} (a key)")] = convert(v, val_tp, join_key(key, str(k)))
        return out
    raise TypeError(f"{key}: unsupported config annotation {tp!r}")


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    members = [a for a in get_args(tp) if a is not type(None)]
    if value is None and len(members) < len(get_args(tp)):
        return None
    errors: list[ConfigError] = []
    for member in members:
        try:
            return convert(value, member, key)
        except ConfigError as e:
            errors.append(e)
    deeper = [e for e in errors if e.key != key]
    if deeper:  # e.g. a list item or a nested section failed: that error is the useful one
        raise deeper[0]
    raise _mismatch(key, tp, value)


def _mismatch(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(key, f"expected {type_name(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def type_name(tp: Any) -> str:
    """A readable annotation: ``int | None``, ``list[int]``, ``{day,hour}`` for a Literal."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return "{" + ",".join(args) + "}"
        return "{" + ",".join(repr(a) for a in args) + "}"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; ``tp`` itself otherwise."""
    if get_origin(tp) is Union or get_origin(tp) is types.UnionType:
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def union_members(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) is Union or get_origin(tp) is types.UnionType:
        return get_args(tp)
    return (tp,)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


@functools.cache
def init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}
