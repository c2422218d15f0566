"""Typed job configuration: dataclasses per concern, YAML files and dotted ``key=value`` overrides.

A job's configuration is a tree of plain dataclasses, one per concern (``DataConfig``,
``RayConfig``, ...). Every field is declared with :func:`option` (a leaf with a default and a help
string) or :func:`section` (a nested dataclass), and each dataclass checks its own values in
``__post_init__``, raising :class:`ConfigError` with the name of the offending field.

Values resolve in this order, later wins::

    dataclass defaults < base mapping < YAML file (jobs/NAME.yaml) < overrides (train.lr=3e-4)

so a job YAML holds only what differs from the defaults. The resolved tree is type-checked against
the annotations (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, nested dataclasses) and every error names the
dotted key, e.g. ``jobs/x.yaml: train.epochs: expected int, got 'abc' (str)``.

Adding a field: declare it on its dataclass with :func:`option` and a help string, and add a check
to that class's ``__post_init__`` if some values are invalid. Adding a section: write a new
``@dataclass(kw_only=True)`` class the same way and hang it on its parent with :func:`section`.
Nothing else needs registering: loading, overrides, dumping and :func:`describe` follow the
annotations.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "RayConfig",
    "SynthConfig",
    "apply_overrides",
    "describe",
    "dump_yaml",
    "format_help",
    "load_config",
    "option",
    "require",
    "section",
    "to_dict",
]

T = TypeVar("T")

# An override is "dotted.key=value" text (from the command line) or a (dotted key, value) pair,
# whose value is taken as is, not parsed as YAML (e.g. the CLI's `--cohort DIR`).
Override = str | tuple[str, Any]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A user-facing configuration error, rendered on one line.

    ``str(err)`` reads ``[source: ]key: message``, e.g.
    ``jobs/x.yaml: data.max_seq_len: must be > 0, got 0``.

    Args:
        key: Dotted key of the offending value, relative to the dataclass that raises it
            (``"max_seq_len"`` inside ``DataConfig.__post_init__``); the loader adds the parent
            prefix (``"data.max_seq_len"``). Empty for errors about the file as a whole.
        message: What is wrong, one line.
        source: Where the value came from: a file path, ``path:line:column``, or an override.
    """

    def __init__(self, key: str, message: str, *, source: str | None = None) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message.replace("\n", " ")
        self.source = source
        self.suggestion: str | None = None
        self._unknown = False

    @classmethod
    def unknown_key(cls, key: str, suggestion: str | None = None) -> ConfigError:
        """An error for a key that no dataclass declares, with an optional close match."""
        err = cls(key, "unknown key")
        err._unknown = True
        err.suggestion = suggestion
        return err

    def prefixed(self, prefix: str) -> ConfigError:
        """A copy whose key is ``prefix.key``: lifts a nested dataclass's error to its parent."""
        err = copy.copy(self)
        err.key = _join(prefix, self.key)
        return err

    def with_source(self, source: str | None) -> ConfigError:
        """A copy that names where the value came from (kept if one is already set)."""
        err = copy.copy(self)
        err.source = self.source or source
        return err

    def __str__(self) -> str:
        if self._unknown:
            body = f"unknown key '{self.key}'"
            if self.suggestion:
                body += f" (did you mean '{self.suggestion}'?)"
        elif self.key:
            body = f"{self.key}: {self.message}"
        else:
            body = self.message
        return f"{self.source}: {body}" if self.source else body


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(key, message)`` unless ``condition`` holds; for ``__post_init__``.

    Raises:
        ConfigError: When ``condition`` is false.
    """
    if not condition:
        raise ConfigError(key, message)


# --------------------------------------------------------------------------------------------
# Declaring fields
# --------------------------------------------------------------------------------------------


def option(default: T, help: str) -> T:
    """A config leaf with a default value and a help string (shown by ``describe``).

    Mutable defaults (lists, dicts, sets) are copied for each instance.
    """
    if not help.strip():
        raise TypeError("option(): help must be a non-empty string")
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(factory: Callable[[], T], help: str) -> T:
    """A nested config dataclass, built from its own defaults unless configured."""
    if not help.strip():
        raise TypeError("section(): help must be a non-empty string")
    return field(default_factory=factory, metadata={"help": help})


# --------------------------------------------------------------------------------------------
# Concern dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataConfig:
    """Reading a MEDS cohort and turning each subject into a batch row."""

    cohort: str = option(
        "", "Path or pyarrow filesystem URI of a MEDS cohort (the CLI's --cohort sets it)."
    )
    outcomes: str | None = option(
        None, "Outcome table (subject_id, event, time); null means COHORT/outcomes.parquet."
    )
    granularity: Literal["day", "hour", "minute", "second"] = option(
        "day", "A visit is the events that share their timestamp truncated to this unit."
    )
    max_seq_len: int = option(512, "Most input tokens per subject (> 0).")
    truncation: Literal["keep_recent", "keep_oldest"] = option(
        "keep_recent", "Which end of a too-long history is kept."
    )
    max_visits: int = option(
        256, "Most visits per subject (> 0); truncation decides which end is kept."
    )
    max_codes_per_visit: int = option(32, "Most codes kept per visit (> 0).")
    min_count: int = option(1, "A code enters the vocabulary if seen this often in train (>= 1).")
    max_vocab_size: int | None = option(
        None, "Keep only the most frequent codes, up to this many (> 0); null means no cap."
    )
    batch_size: int = option(32, "Subjects per batch, per worker (> 0).")
    pad_multiple: int | None = option(
        None,
        "Round each batch's padded length up to a multiple of this (> 0). null = auto: 8 when "
        "training on GPUs (tensor-core tiles), 1 on CPU, where rounding buys nothing and short "
        "EHR histories would lose a third of every batch to padding (docs/design.md).",
    )
    window_batches: int = option(
        64,
        "Length bucketing: sort subjects by length within windows of this many batches, then "
        "shuffle the batch order (> 0; 1 = no bucketing).",
    )
    cache: bool = option(
        True,
        "Encode each split once and keep it in Ray's object store for every epoch (compact: "
        "one row per subject). false re-reads and re-encodes the Parquet files every epoch "
        "(for cohorts larger than the object store).",
    )
    worker_cache_mb: float = option(
        512.0,
        "A train worker keeps the blocks of a split it reads whole every epoch (the train "
        "split of a 1-worker run; the validation split in every run) after its first complete "
        "read, up to this many MB per split, and collates later epochs from them, instead of "
        "starting a Ray Data execution in the worker every epoch (>= 0; 0 = never keep). The "
        "kept blocks are the object store's copies, pinned while kept. Needs data.cache; a "
        "train split divided between workers is read through Ray Data every epoch.",
    )
    prefetch_batches: int = option(
        4,
        "Batches a train worker buckets, pads and masks ahead in a background thread, "
        "overlapping collation with the training step; the thread of the next epoch starts "
        "while the current one is validated (>= 0; 0 = inline, no look-ahead).",
    )
    drop_bad_subjects: bool = option(
        False,
        "Drop subjects that fail validation, writing them to a rejects file, instead of "
        "refusing the cohort.",
    )
    split_seed: int = option(0, "Seed for any split drawn by the pipeline (>= 0).")

    def __post_init__(self) -> None:
        for name in (
            "max_seq_len",
            "max_visits",
            "max_codes_per_visit",
            "batch_size",
            "window_batches",
        ):
            value = getattr(self, name)
            require(value > 0, name, f"must be > 0, got {value}")
        require(self.min_count >= 1, "min_count", f"must be >= 1, got {self.min_count}")
        require(
            self.worker_cache_mb >= 0,
            "worker_cache_mb",
            f"must be >= 0, got {self.worker_cache_mb}",
        )
        require(
            self.prefetch_batches >= 0,
            "prefetch_batches",
            f"must be >= 0, got {self.prefetch_batches}",
        )
        require(
            self.pad_multiple is None or self.pad_multiple > 0,
            "pad_multiple",
            f"must be > 0 or null, got {self.pad_multiple}",
        )
        require(
            self.max_vocab_size is None or self.max_vocab_size > 0,
            "max_vocab_size",
            f"must be > 0 or null, got {self.max_vocab_size}",
        )
        require(self.split_seed >= 0, "split_seed", f"must be >= 0, got {self.split_seed}")
        require(
            self.outcomes is None or self.outcomes != "",
            "outcomes",
            "must be a path or null, got ''",
        )

    def resolved_pad_multiple(self, use_gpu: bool = False) -> int:
        """``pad_multiple``, or its automatic value: 8 on GPUs, 1 on CPU."""
        if self.pad_multiple is not None:
            return self.pad_multiple
        return 8 if use_gpu else 1


@dataclass(kw_only=True)
class SynthConfig:
    """The synthetic cohort generator (``ehrsurv synth``)."""

    preset: Literal["smoke", "local", "pod"] = option(
        "smoke", "Size preset: smoke (seconds), local (a laptop), pod (a cluster)."
    )
    subjects: int | None = option(None, "Number of subjects (> 0); null means the preset's.")
    seed: int = option(42, "Generator seed (>= 0); the same seed gives the same cohort.")
    shards: int | None = option(
        None, "Number of Parquet data shards (> 0); null means the preset's."
    )
    signal: float = option(1.0, "Multiplies the hazard's feature coefficients (> 0).")
    frailty: float = option(
        0.5, "Standard deviation of the unobserved per-subject log-frailty (>= 0)."
    )
    dropout: float = option(0.04, "Per-visit probability of loss to follow-up, in [0, 1).")

    def __post_init__(self) -> None:
        for name in ("subjects", "shards"):
            value = getattr(self, name)
            require(value is None or value > 0, name, f"must be > 0 or null, got {value}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.signal > 0, "signal", f"must be > 0, got {self.signal}")
        require(self.frailty >= 0, "frailty", f"must be >= 0, got {self.frailty}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True)
class RayConfig:
    """Where Ray runs."""

    address: str | None = option(
        None,
        "Ray cluster address ('auto', 'ray://host:10001'); null means RAY_ADDRESS if set, "
        "else an in-process local Ray.",
    )
    num_cpus: int | None = option(
        None, "CPUs for an in-process local Ray (> 0); null means all of this machine's."
    )

    def __post_init__(self) -> None:
        require(
            self.address is None or self.address.strip() != "",
            "address",
            "must be an address or null, got ''",
        )
        require(
            self.num_cpus is None or self.num_cpus > 0,
            "num_cpus",
            f"must be > 0 or null, got {self.num_cpus}",
        )


@dataclass(kw_only=True)
class JobConfig:
    """A training job: ``ehrsurv pretrain|finetune|tune --config jobs/NAME.yaml``."""

    name: str = option("ehrsurv", "Job name, used in run and Ray job names.")
    seed: int = option(0, "Global seed for initialisation, masking and shuffling (>= 0).")
    data: DataConfig = section(DataConfig, "Cohort reading and batching.")
    ray: RayConfig = section(RayConfig, "Ray cluster connection.")

    def __post_init__(self) -> None:
        require(self.name.strip() != "", "name", "must be non-empty")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


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
    out: dict[str, Any] = _plain(cfg)
    return out


def dump_yaml(cfg: Any, path: str | os.PathLike[str], header: str | None = None) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder, then rename).

    ``load_config(type(cfg), path) == cfg`` holds for the written file.

    Args:
        cfg: A config dataclass instance.
        path: Destination, e.g. ``RUN_DIR/config.yaml``; its folder is created if missing.
        header: Optional text written first as ``#`` comment lines (e.g. the launch command).
    """
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".config-", suffix=".yaml.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


# --------------------------------------------------------------------------------------------
# Internals: YAML, merging, overrides
# --------------------------------------------------------------------------------------------


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
                    "", f"override '{item}' must look like KEY=VALUE, e.g. train.lr=3e-4"
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
    members = _union_members(tp)
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
        inner = _unwrap_optional(tp)
        if _is_dataclass_type(inner):
            hints = _hints(inner)
            if part not in _init_fields(inner):
                raise ConfigError.unknown_key(".".join(parts), _suggest(cls, ".".join(parts)))
            tp = hints[part]
        elif get_origin(inner) is dict:
            tp = get_args(inner)[1] if get_args(inner) else Any
        else:
            parent = ".".join(parts[:i])
            raise ConfigError(
                ".".join(parts), f"'{parent}' is an option of type {_type_name(tp)}, not a section"
            )
    return tp


def _suggest(cls: type, key: str) -> str | None:
    """The closest known dotted key, or one with the same last name in another section."""
    known = _all_keys(cls)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    last = key.rsplit(".", 1)[-1]
    same_name = [k for k in known if k.rsplit(".", 1)[-1] == last]
    return same_name[0] if same_name else None


@functools.cache
def _all_keys(cls: type) -> list[str]:
    keys: list[str] = []

    def walk(c: type, prefix: str) -> None:
        hints = _hints(c)
        for name in _init_fields(c):
            key = _join(prefix, name)
            keys.append(key)
            inner = _unwrap_optional(hints[name])
            if _is_dataclass_type(inner):
                walk(inner, key)

    walk(cls, "")
    return keys


# --------------------------------------------------------------------------------------------
# Internals: building and type checking
# --------------------------------------------------------------------------------------------


def _build_root(cls: type[T], data: dict[str, Any], sources: dict[tuple[str, ...], str]) -> T:
    try:
        built: T = _build(cls, data, "")
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


def _build(cls: type, data: Mapping[Any, Any], prefix: str) -> Any:
    fields_ = _init_fields(cls)
    for k in data:
        if not isinstance(k, str) or k not in fields_:
            raise ConfigError.unknown_key(_join(prefix, str(k)))
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields_.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required, but not set")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # raised by __post_init__ with a key relative to `cls`
        raise e.prefixed(prefix) from None


def _convert(value: Any, tp: Any, key: str) -> Any:
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
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if value is None:  # `data:` with every line below it commented out
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(
                key, f"expected a mapping of {tp.__name__} options, got {_show(value)}"
            )
        return _build(tp, value, key)
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
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _mismatch(key, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (dict, Mapping):
        key_tp, val_tp = args or (str, Any)
        if not isinstance(value, Mapping):
            raise _mismatch(key, tp, value)
        out = {}
        for k, v in value.items():
            out[_convert(k, key_tp, f"{key} (a key)")] = _convert(v, val_tp, _join(key, str(k)))
        return out
    raise TypeError(f"{key}: unsupported config annotation {tp!r}")


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    members = [a for a in get_args(tp) if a is not type(None)]
    if value is None and len(members) < len(get_args(tp)):
        return None
    errors: list[ConfigError] = []
    for member in members:
        try:
            return _convert(value, member, key)
        except ConfigError as e:
            errors.append(e)
    deeper = [e for e in errors if e.key != key]
    if deeper:  # e.g. a list item or a nested section failed: that error is the useful one
        raise deeper[0]
    raise _mismatch(key, tp, value)


def _mismatch(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(key, f"expected {_type_name(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    """A readable annotation: ``int | None``, ``list[int]``, ``{day,hour}`` for a Literal."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return "{" + ",".join(args) + "}"
        return "{" + ",".join(repr(a) for a in args) + "}"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _describe(cls: type, prefix: str, rows: list[tuple[str, str, Any, str]]) -> None:
    hints = _hints(cls)
    for name, f in _init_fields(cls).items():
        key = _join(prefix, name)
        tp = hints[name]
        if _is_dataclass_type(tp):
            _describe(tp, key, rows)
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append((key, _type_name(tp), default, str(f.metadata.get("help", ""))))


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _check_root(cls: Any) -> None:
    if not _is_dataclass_type(cls):
        raise TypeError(f"expected a config dataclass type, got {cls!r}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; ``tp`` itself otherwise."""
    if get_origin(tp) is Union or get_origin(tp) is types.UnionType:
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _union_members(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) is Union or get_origin(tp) is types.UnionType:
        return get_args(tp)
    return (tp,)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


@functools.cache
def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}.{key}"
