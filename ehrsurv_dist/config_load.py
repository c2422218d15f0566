"""Loading a job configuration: YAML files, dotted ``key=value`` overrides, dumping and help.

Values resolve in this order, later wins::

    dataclass defaults < base mapping < YAML file (jobs/NAME.yaml) < overrides (train.lr=3e-4)

Errors name the dotted key and where its value came from, e.g.
``jobs/x.yaml: train.epochs: expected int, got 'abc' (str)``. The config dataclasses themselves
live in :mod:`ehrsurv_dist.config` (and the jobs' in :mod:`ehrsurv_dist.jobspec`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

import yaml

from ehrsurv_dist import atomic
from ehrsurv_dist.config_build import (
    build,
    init_fields,
    is_dataclass_type,
    plain,
    type_hints,
    type_name,
    union_members,
    unwrap_optional,
)
from ehrsurv_dist.errors import ConfigError, join_key

T = TypeVar("T")

# An override is "dotted.key=value" text (from the command line) or a (dotted key, value) pair,
# whose value is taken as is, not parsed as YAML (e.g. the CLI's `--cohort DIR`).
Override = str | tuple[str, Any]


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[Override] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Build a config of type ``cls`` from defaults, ``base``, a YAML file and overrides.

    Args:
        cls: The root config dataclass, e.g. ``JobConfig``.
        path: A YAML file whose top level is a mapping (empty file: all defaults); None for none.
        overrides: ``"dotted.key=value"`` strings, the value parsed as YAML (``1e-3``, ``true``,
            ``null``, ``[1, 2]``; text for ``str`` fields is taken verbatim), or
            ``(dotted_key, value)`` pairs taken as is. Applied in order, after the file.
        base: A nested mapping applied under the file (e.g. a preset's values).

    Returns:
        The validated config.

    Raises:
        ConfigError: Unreadable or invalid YAML (names the file and line), an unknown key (with
            a suggestion), a value of the wrong type or failing a ``__post_init__`` check (names
            the dotted key and, when it came from the file or an override, where).
    """
    _check_root(cls)
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    if base is not None:
        _merge(data, base)
    if path is not None:
        source = os.fspath(path)
        from_file = _read_yaml(source)
        _merge(data, from_file)
        _record_sources(sources, from_file, (), source)
    _apply(cls, data, sources, overrides)
    return _build_root(cls, data, sources)


def apply_overrides(cfg: T, overrides: Sequence[Override]) -> T:
    """A new config: ``cfg`` with ``overrides`` (as in :func:`load_config`) applied, revalidated.

    Raises:
        ConfigError: As :func:`load_config`.
    """
    cls = type(cfg)
    _check_root(cls)
    data = to_dict(cfg)
    sources: dict[tuple[str, ...], str] = {}
    _apply(cls, data, sources, overrides)
    return _build_root(cls, data, sources)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested plain dicts, lists and scalars (what :func:`dump_yaml` writes)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict() expects a config dataclass instance, got {type(cfg).__name__}")
    out: dict[str, Any] = plain(cfg)
    return out


def dump_yaml(cfg: Any, path: str | os.PathLike[str], header: str | None = None) -> None:
    """Write the resolved config as YAML, atomically and flushed to disk (``ehrsurv_dist.atomic``).

    ``load_config(type(cfg), path) == cfg`` holds for the written file.

    Args:
        cfg: A config dataclass instance.
        path: Destination, e.g. ``RUN_DIR/config.yaml``; its folder is created if missing.
        header: Optional text written first as ``#`` comment lines (e.g. the launch command).
    """
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    atomic.write_text(text, path, fsync=True)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """Every leaf option of ``cls``: ``(dotted_key, type, default, help)``, in declaration order.

    Nested sections are expanded; a field without a default reports ``dataclasses.MISSING``.
    """
    _check_root(cls)
    rows: list[tuple[str, str, Any, str]] = []
    _describe(cls, "", rows)
    return rows


def format_help(cls: type) -> str:
    """:func:`describe` rendered as text for ``--help``: one option per paragraph."""
    lines = []
    for key, type_str, default, help_text in describe(cls):
        shown = "(required)" if default is dataclasses.MISSING else _yaml_scalar(default)
        lines.append(f"  {key}: {type_str} = {shown}\n      {help_text}")
    return "\n".join(lines)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except OSError as e:
        raise ConfigError("", f"cannot read config: {e.strerror or e}", source=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"invalid YAML: {problem}", source=where) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            "",
            f"the top level must be a mapping of keys to values, got {type(loaded).__name__}",
            source=path,
        )
    return loaded


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge key by key, anything else replaces."""
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(dict(v) if isinstance(v, Mapping) else v)


def _record_sources(
    sources: dict[tuple[str, ...], str], value: Any, path: tuple[str, ...], source: str
) -> None:
    """Note ``source`` for each leaf under ``path``, so errors can say where a value came from."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _record_sources(sources, v, (*path, str(k)), source)
    else:
        sources[path] = source


def _apply(
    cls: type,
    data: dict[str, Any],
    sources: dict[tuple[str, ...], str],
    overrides: Sequence[Override],
) -> None:
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    for item in overrides:
        if isinstance(item, tuple):
            key, value = item
            source = f"override {key}"
            parts = _split_key(key, source)
            _field_type(cls, parts)
        else:
            key, sep, raw = item.partition("=")
            key = key.strip()
            source = f"override '{item}'"
            if not sep:
                raise ConfigError(
                    "", f"override '{item}' must look like KEY=VALUE, e.g. train.engine.lr=3e-4"
                )
            parts = _split_key(key, source)
            value = _parse_value(raw, _field_type(cls, parts), key, source)
        _set(data, parts, value)
        for p in [p for p in sources if p[: len(parts)] == parts]:
            del sources[p]
        _record_sources(sources, value, parts, source)


def _split_key(key: str, source: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(
            "", f"bad key {key!r}: expected dotted names like data.max_seq_len"
        ).with_source(source)
    return parts


def _parse_value(raw: str, tp: Any, key: str, source: str) -> Any:
    """Parse override text as YAML; text meant for a ``str`` field is kept verbatim."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(key, f"cannot parse {raw!r} as YAML: {problem}", source=source) from None
    members = union_members(tp)
    if str in members and not isinstance(value, str):
        # `name=2024`, `data.cohort=a: b`: the user meant the text, not YAML's reading of it.
        if not (value is None and type(None) in members):
            return raw
    return value


def _set(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _field_type(cls: type, parts: tuple[str, ...]) -> Any:
    """The annotation at a dotted path, checked against the dataclass tree."""
    tp: Any = cls
    for i, part in enumerate(parts):
        inner = unwrap_optional(tp)
        if is_dataclass_type(inner):
            hints = type_hints(inner)
            if part not in init_fields(inner):
                raise ConfigError.unknown_key(".".join(parts), _suggest(cls, ".".join(parts)))
            tp = hints[part]
        elif get_origin(inner) is dict:
            tp = get_args(inner)[1] if get_args(inner) else Any
        else:
            parent = ".".join(parts[:i])
            raise ConfigError(
                ".".join(parts), f"'{parent}' is an option of type {type_name(tp)}, not a section"
            )
    return tp


def _suggest(cls: type, key: str) -> str | None:
    """The key the user most likely meant: one with the same last name deeper in the same
    section (``train.lr`` -> ``train.engine.lr``), else the closest known dotted key other than
    a section the key already names (``train.lr`` is not ``train``), else one with the same
    last name in another section."""
    known = _all_keys(cls)
    parts = key.split(".")
    last = parts[-1]
    same_name = [k for k in known if k.rsplit(".", 1)[-1] == last and k != key]
    nested = [k for k in same_name if k.split(".")[: len(parts) - 1] == parts[:-1]]
    if nested:
        return nested[0]
    prefixes = {".".join(parts[:n]) for n in range(1, len(parts))}
    close = difflib.get_close_matches(key, [k for k in known if k not in prefixes], n=1, cutoff=0.6)
    if close:
        return close[0]
    return same_name[0] if same_name else None


@functools.cache
def _all_keys(cls: type) -> list[str]:
    keys: list[str] = []

    def walk(c: type, prefix: str) -> None:
        hints = type_hints(c)
        for name in init_fields(c):
            key = join_key(prefix, name)
            keys.append(key)
            inner = unwrap_optional(hints[name])
            if is_dataclass_type(inner):
                walk(inner, key)

    walk(cls, "")
    return keys


def _build_root(cls: type[T], data: dict[str, Any], sources: dict[tuple[str, ...], str]) -> T:
    try:
        built: T = build(cls, data, "")
        return built
    except ConfigError as e:
        if e._unknown and e.suggestion is None:
            e = copy.copy(e)
            e.suggestion = _suggest(cls, e.key)
        raise e.with_source(_source_of(e.key, sources)) from None


def _source_of(key: str, sources: dict[tuple[str, ...], str]) -> str | None:
    parts = tuple(p.split("[", 1)[0] for p in key.split(".")) if key else ()
    for n in range(len(parts), 0, -1):
        if parts[:n] in sources:
            return sources[parts[:n]]
    for path, source in sources.items():  # an unknown section: its leaves were recorded
        if parts and path[: len(parts)] == parts:
            return source
    return None


def _describe(cls: type, prefix: str, rows: list[tuple[str, str, Any, str]]) -> None:
    hints = type_hints(cls)
    for name, f in init_fields(cls).items():
        key = join_key(prefix, name)
        tp = hints[name]
        if is_dataclass_type(tp):
            _describe(tp, key, rows)
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append((key, type_name(tp), default, str(f.metadata.get("help", ""))))


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(plain(value), default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _check_root(cls: Any) -> None:
    if not is_dataclass_type(cls):
        raise TypeError(f"expected a config dataclass type, got {cls!r}")
