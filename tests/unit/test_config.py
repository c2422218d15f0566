"""Config loading: YAML + dotted overrides -> typed dataclasses, with one-line errors naming keys."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args, get_type_hints

import pytest

from ehrsurv_dist.config import (
    ConfigError,
    DataConfig,
    JobConfig,
    RayConfig,
    SynthConfig,
    apply_overrides,
    describe,
    dump_yaml,
    format_help,
    load_config,
    option,
    require,
    section,
    to_dict,
)
from ehrsurv_dist.jobspec import FinetuneSpec, ModelSpec
from ehrsurv_dist.models.config import (
    ATTENTION_MODES,
    VISIT_POOLINGS,
    BEHRTConfig,
    HierarchicalConfig,
    LoRAConfig,
    LSTMConfig,
)
from ehrsurv_dist.schema import RISK_SCORES

# --- A test-only tree exercising every supported annotation -----------------------------------


@dataclass(kw_only=True)
class _Inner:
    """Innermost section, with its own check."""

    x: int = option(1, "A positive int.")

    def __post_init__(self) -> None:
        require(self.x > 0, "x", f"must be > 0, got {self.x}")


@dataclass(kw_only=True)
class _Middle:
    """A section holding a section."""

    inner: _Inner = section(_Inner, "The inner section.")


@dataclass(kw_only=True)
class _Tree:
    """Root of the test tree."""

    lr: float = option(1e-3, "A float.")
    sizes: list[int] = option([1, 2], "A list of ints.")
    weights: dict[str, float] = option({}, "Named floats.")
    pair: tuple[int, ...] = option((1,), "A tuple of ints.")
    mode: Literal["a", "b"] | None = option(None, "An optional choice.")
    middle: _Middle = section(_Middle, "Two levels of nesting.")


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- Resolution and types -----------------------------------------------------------------------


def test_defaults_without_file_or_overrides() -> None:
    assert load_config(JobConfig) == JobConfig()
    assert load_config(JobConfig).data.max_seq_len == 512


def test_yaml_and_overrides_resolve_with_types(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: demo\ndata:\n  cohort: /data/cohort\n  max_seq_len: 128\n  granularity: hour\n",
    )
    cfg = load_config(
        JobConfig,
        path,
        overrides=[
            "data.max_seq_len=256",
            "data.drop_bad_subjects=true",
            "data.max_vocab_size=1000",
            "ray.num_cpus=2",
        ],
    )
    assert cfg.name == "demo"
    assert cfg.data.cohort == "/data/cohort"
    assert cfg.data.granularity == "hour"
    assert cfg.data.max_seq_len == 256 and type(cfg.data.max_seq_len) is int
    assert cfg.data.drop_bad_subjects is True
    assert cfg.data.max_vocab_size == 1000
    assert cfg.ray.num_cpus == 2
    assert cfg.data.batch_size == 32  # untouched default
    assert cfg.ray.address is None


def test_precedence_default_base_file_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  batch_size: 8\n  min_count: 3\n")
    base = {"data": {"batch_size": 4, "min_count": 2, "max_visits": 10}}
    cfg = load_config(JobConfig, path, overrides=["data.min_count=5"], base=base)
    assert cfg.data.max_visits == 10  # base over default
    assert cfg.data.batch_size == 8  # file over base
    assert cfg.data.min_count == 5  # override over file
    assert cfg.data.max_codes_per_visit == 32  # default


def test_float_list_dict_tuple_and_optional_values(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` (no dot) as a string; a float field must accept it.
    path = _write(tmp_path, "lr: 1e-3\nsizes: [3, 4]\nweights: {a: 1, b: 0.5}\npair: [5, 6]\n")
    cfg = load_config(_Tree, path)
    assert cfg.lr == pytest.approx(1e-3) and type(cfg.lr) is float
    assert cfg.sizes == [3, 4]
    assert cfg.weights == {"a": 1.0, "b": 0.5} and type(cfg.weights["a"]) is float
    assert cfg.pair == (5, 6)
    cfg = load_config(
        _Tree, overrides=["lr=3", "sizes=[1,2,3]", "weights.c=2", "mode=b", "middle.inner.x=7"]
    )
    assert cfg.lr == 3.0 and type(cfg.lr) is float  # int accepted for float
    assert cfg.sizes == [1, 2, 3]
    assert cfg.weights == {"c": 2.0}
    assert cfg.mode == "b"
    assert cfg.middle.inner.x == 7
    assert load_config(_Tree, overrides=["mode=b", "mode=null"]).mode is None


def test_optional_fields_accept_null() -> None:
    # `key=` is YAML's empty value: null, as `address:` in a file.
    cfg = load_config(JobConfig, overrides=["data.max_vocab_size=null", "ray.address="])
    assert cfg.data.max_vocab_size is None and cfg.ray.address is None
    cfg = load_config(JobConfig, overrides=["ray.address=auto", "data.outcomes=/x/o.parquet"])
    assert cfg.ray.address == "auto" and cfg.data.outcomes == "/x/o.parquet"


def test_str_fields_keep_override_text_verbatim() -> None:
    cfg = load_config(JobConfig, overrides=["name=2024", "data.cohort=gs://b/cohort: v1"])
    assert cfg.name == "2024"
    assert cfg.data.cohort == "gs://b/cohort: v1"
    # A (key, value) pair is taken as is: what the CLI's --cohort uses.
    cfg = load_config(JobConfig, overrides=[("data.cohort", "/tmp/a #b")])
    assert cfg.data.cohort == "/tmp/a #b"


def test_empty_file_and_empty_section_give_defaults(tmp_path: Path) -> None:
    assert load_config(JobConfig, _write(tmp_path, "")) == JobConfig()
    assert load_config(JobConfig, _write(tmp_path, "data:\n# batch_size: 8\n")) == JobConfig()


# --- Errors -------------------------------------------------------------------------------------


def test_unknown_key_in_override_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, overrides=["data.max_seq_lenn=3"])
    assert _error(ei) == "unknown key 'data.max_seq_lenn' (did you mean 'data.max_seq_len'?)"
    with pytest.raises(ConfigError) as ei:
        load_config(_Tree, overrides=["lrr=3"])
    assert _error(ei) == "unknown key 'lrr' (did you mean 'lr'?)"


def test_unknown_key_in_yaml_names_file_and_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, path)
    assert _error(ei) == f"{path}: unknown key 'data.batch_sise' (did you mean 'data.batch_size'?)"
    # A key put at the wrong level: the suggestion finds it in its section.
    path = _write(tmp_path, "max_seq_len: 8\n")
    with pytest.raises(ConfigError, match=r"did you mean 'data\.max_seq_len'"):
        load_config(JobConfig, path)


def test_str_for_int_names_key_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, overrides=["data.batch_size=abc"])
    assert _error(ei).endswith("data.batch_size: expected int, got 'abc' (str)")
    path = _write(tmp_path, "data:\n  batch_size: abc\n")
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, path)
    assert _error(ei) == f"{path}: data.batch_size: expected int, got 'abc' (str)"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=true", "seed: expected int, got True (bool)"),
        ("seed=1.5", "seed: expected int, got 1.5 (float)"),
        ("data.drop_bad_subjects=1", "data.drop_bad_subjects: expected bool, got 1 (int)"),
        ("data.max_vocab_size=abc", "data.max_vocab_size: expected int | None, got 'abc' (str)"),
    ],
)
def test_wrong_scalar_types(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, overrides=[override])
    assert _error(ei) == f"override '{override}': {expected}"


def test_float_field_accepts_float_text_and_rejects_words() -> None:
    assert load_config(SynthConfig, overrides=["signal=1e-3"]).signal == pytest.approx(1e-3)
    assert load_config(SynthConfig, overrides=["signal=2"]).signal == 2.0
    with pytest.raises(ConfigError) as ei:
        load_config(SynthConfig, overrides=["signal=abc"])
    assert _error(ei).endswith("signal: expected float, got 'abc' (str)")
    with pytest.raises(ConfigError, match=r"signal: expected float, got True \(bool\)"):
        load_config(SynthConfig, overrides=["signal=true"])


def test_literal_error_lists_choices() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, overrides=["data.granularity=week"])
    assert _error(ei).endswith(
        "data.granularity: must be one of 'day', 'hour', 'minute', 'second'; got 'week'"
    )


def test_list_item_and_dict_value_errors_name_the_item() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_Tree, overrides=["sizes=[1, x]"])
    assert _error(ei).endswith("sizes[1]: expected int, got 'x' (str)")
    with pytest.raises(ConfigError) as ei:
        load_config(_Tree, base={"weights": {"a": "heavy"}})
    assert _error(ei) == "weights.a: expected float, got 'heavy' (str)"
    with pytest.raises(ConfigError, match=r"^middle: expected a mapping of _Middle options"):
        load_config(_Tree, base={"middle": 3})


def test_post_init_error_carries_dotted_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  max_seq_len: 0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, path)
    assert _error(ei) == f"{path}: data.max_seq_len: must be > 0, got 0"
    with pytest.raises(ConfigError) as ei:
        load_config(_Tree, base={"middle": {"inner": {"x": -1}}})
    assert _error(ei) == "middle.inner.x: must be > 0, got -1"
    # Constructed directly, the error names the key relative to its own class.
    with pytest.raises(ConfigError, match=r"^max_seq_len: must be > 0"):
        DataConfig(max_seq_len=0)


@pytest.mark.parametrize(
    ("cls", "override", "key"),
    [
        (JobConfig, "seed=-1", "seed"),
        (JobConfig, "name=", "name"),
        (JobConfig, "data.min_count=0", "data.min_count"),
        (JobConfig, "data.max_vocab_size=0", "data.max_vocab_size"),
        (JobConfig, "data.batch_size=0", "data.batch_size"),
        (JobConfig, "ray.num_cpus=0", "ray.num_cpus"),
        (JobConfig, "ray.address=' '", "ray.address"),
        (SynthConfig, "dropout=1", "dropout"),
        (SynthConfig, "frailty=-0.1", "frailty"),
        (SynthConfig, "signal=0", "signal"),
        (SynthConfig, "subjects=0", "subjects"),
        (SynthConfig, "preset=huge", "preset"),
    ],
)
def test_validation_names_key(cls: type, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(cls, overrides=[override])
    assert ei.value.key == key
    assert f": {key}: " in _error(ei)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: demo\ndata:\n  max_seq_len: 8\n   batch_size: 4\n")
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, path)
    assert _error(ei).startswith(f"{path}:4:")
    assert "invalid YAML" in _error(ei)


def test_duplicate_yaml_key_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  batch_size: 4\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as ei:
        load_config(JobConfig, path)
    assert _error(ei).startswith(f"{path}:3:")
    assert "duplicate key 'batch_size'" in _error(ei)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_is_an_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"top level must be a mapping") as ei:
        load_config(JobConfig, path)
    assert _error(ei).startswith(f"{path}: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"cannot read config") as ei:
        load_config(JobConfig, path)
    assert _error(ei).startswith(path)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"override 'data.batch_size' must look like KEY=VALUE"):
        load_config(JobConfig, overrides=["data.batch_size"])
    with pytest.raises(ConfigError, match=r"bad key"):
        load_config(JobConfig, overrides=["data..batch_size=3"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' is an option of type int"):
        load_config(JobConfig, overrides=["data.batch_size.x=3"])
    with pytest.raises(ConfigError, match=r"cannot parse '\[1,' as YAML"):
        load_config(_Tree, overrides=["sizes=[1,"])
    with pytest.raises(TypeError):
        load_config(JobConfig, overrides="seed=1")  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    err = ConfigError("x", "bad").prefixed("a.b")
    assert (err.key, str(err)) == ("a.b.x", "a.b.x: bad")


# --- Overrides on an instance, dump and round trip --------------------------------------------


def test_apply_overrides_returns_new_validated_instance() -> None:
    cfg = JobConfig()
    new = apply_overrides(cfg, ["data.batch_size=8", "seed=3"])
    assert (new.data.batch_size, new.seed) == (8, 3)
    assert (cfg.data.batch_size, cfg.seed) == (32, 0)  # the original is untouched
    with pytest.raises(ConfigError, match=r"^override 'data.batch_size=-1': data.batch_size"):
        apply_overrides(cfg, ["data.batch_size=-1"])


def test_dump_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        JobConfig,
        overrides=[
            "name=2024",
            "data.cohort=gs://bucket/cohort",
            "data.granularity=minute",
            "data.max_vocab_size=500",
            "data.drop_bad_subjects=true",
            "ray.address=auto",
        ],
    )
    run_dir = tmp_path / "run"
    path = run_dir / "config.yaml"
    dump_yaml(cfg, path, header="ehrsurv pretrain --config jobs/x.yaml\nresolved")
    assert load_config(JobConfig, path) == cfg
    assert os.listdir(run_dir) == ["config.yaml"]  # no temp file left behind
    text = path.read_text()
    assert text.startswith("# ehrsurv pretrain --config jobs/x.yaml\n# resolved\n")
    assert "name: '2024'" in text  # str stays str through YAML

    tree = load_config(_Tree, overrides=["lr=1e-5", "weights.a=0.25", "mode=a", "pair=[2, 3]"])
    dump_yaml(tree, tmp_path / "tree.yaml")
    assert load_config(_Tree, tmp_path / "tree.yaml") == tree
    dump_yaml(SynthConfig(), tmp_path / "synth.yaml")  # overwrite-safe, other roots too
    dump_yaml(SynthConfig(seed=7), tmp_path / "synth.yaml")
    assert load_config(SynthConfig, tmp_path / "synth.yaml") == SynthConfig(seed=7)


def test_to_dict_is_plain_nested_data() -> None:
    d = to_dict(JobConfig())
    assert d["data"]["max_seq_len"] == 512
    assert d["ray"] == {"address": None, "num_cpus": None, "object_store_mb": None}
    assert to_dict(_Tree())["pair"] == [1]
    with pytest.raises(TypeError):
        to_dict({"a": 1})


# --- Help text ----------------------------------------------------------------------------------


def _walk_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[object], bool]]:
    """Every field of a config tree as (dotted key, field, is_section), sections expanded."""
    hints = get_type_hints(cls)
    out: list[tuple[str, dataclasses.Field[object], bool]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        is_section = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        out.append((prefix + f.name, f, is_section))
        if is_section:
            out += _walk_fields(tp, f"{prefix}{f.name}.")
    return out


def _leaf_keys(cls: type) -> list[str]:
    return [key for key, _, is_section in _walk_fields(cls) if not is_section]


@pytest.mark.parametrize("cls", [JobConfig, SynthConfig, DataConfig, RayConfig])
def test_every_field_and_section_has_help(cls: type) -> None:
    missing = [
        key for key, f, _ in _walk_fields(cls) if not str(f.metadata.get("help", "")).strip()
    ]
    assert not missing, f"fields without help (declare them with option()/section()): {missing}"


@pytest.mark.parametrize("cls", [JobConfig, SynthConfig])
def test_describe_lists_every_leaf_with_help(cls: type) -> None:
    rows = describe(cls)
    assert [key for key, *_ in rows] == _leaf_keys(cls)
    for key, type_str, _default, help_text in rows:
        assert type_str and help_text.strip(), key
    assert len({key for key, *_ in rows}) == len(rows)


def test_describe_rows_for_job_config() -> None:
    rows = {key: (type_str, default) for key, type_str, default, _ in describe(JobConfig)}
    assert rows["data.max_seq_len"] == ("int", 512)
    assert rows["data.granularity"] == ("{day,hour,minute,second}", "day")
    assert rows["data.max_vocab_size"] == ("int | None", None)
    assert rows["ray.address"] == ("str | None", None)
    assert "data.max_seq_len: int = 512" in format_help(JobConfig)
    assert describe(_Tree)[1] == ("sizes", "list[int]", [1, 2], "A list of ints.")
    assert describe(_Tree)[-1][0] == "middle.inner.x"


def test_option_requires_help() -> None:
    with pytest.raises(TypeError):
        option(1, " ")
    with pytest.raises(TypeError):
        section(_Inner, "")


def test_pad_multiple_auto_is_8_on_gpu_and_1_on_cpu() -> None:
    auto = DataConfig()
    assert auto.pad_multiple is None
    assert auto.resolved_pad_multiple(use_gpu=True) == 8
    assert auto.resolved_pad_multiple(use_gpu=False) == 1
    fixed = DataConfig(pad_multiple=16)
    assert fixed.resolved_pad_multiple(use_gpu=True) == fixed.resolved_pad_multiple() == 16
    with pytest.raises(ConfigError, match="pad_multiple"):
        DataConfig(pad_multiple=0)
    with pytest.raises(ConfigError, match="window_batches"):
        DataConfig(window_batches=0)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: BEHRTConfig(hidden_dim=0), "hidden_dim"),
        (lambda: BEHRTConfig(hidden_dim=30, num_heads=4), "hidden_dim"),
        (lambda: BEHRTConfig(vocab_size=2), "vocab_size"),
        (lambda: BEHRTConfig(attention="both"), "attention"),  # type: ignore[arg-type]
        (lambda: BEHRTConfig(tie_mlm_weights=True, embedding_dim=64), "tie_mlm_weights"),
        (lambda: HierarchicalConfig(max_time_delta=0), "max_time_delta"),
        (lambda: HierarchicalConfig(head_dropout=1.0), "head_dropout"),
        (lambda: LSTMConfig(num_layers=0), "num_layers"),
        (lambda: LoRAConfig(alpha=0), "alpha"),
        (lambda: LoRAConfig(target_attention=False), "target_ffn"),
    ],
)
def test_model_configs_raise_config_errors_naming_the_field(build, key) -> None:  # type: ignore[no-untyped-def]
    # one validation style: the model configs raise ConfigError keyed like the job config's
    with pytest.raises(ConfigError) as ei:
        build()
    assert ei.value.key == key and str(ei.value).startswith(f"{key}: ")


def test_job_choices_are_the_model_and_schema_lists() -> None:
    model = get_type_hints(ModelSpec)
    assert get_args(model["attention"]) == ATTENTION_MODES
    assert get_args(model["visit_pooling"]) == VISIT_POOLINGS
    # finetune.risk_score's choices are schema.RISK_SCORES, the one list of risk-score names
    assert get_args(get_type_hints(FinetuneSpec)["risk_score"]) == RISK_SCORES
