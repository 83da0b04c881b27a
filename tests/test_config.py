"""Tests of the YAML run configuration: loading, overrides, every error message, paths and Beam args."""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from nnmf_tf.params import SolverParams
from pipeline.config import (
    SECTIONS,
    BeamConfig,
    ConfigError,
    RunConfig,
    SplitConfig,
    ValidationConfig,
    dump_yaml,
    load_config,
    to_dict,
)

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))

MINIMAL = """\
input:
  path: ratings.csv
output:
  path: out
"""


def write(folder: Path, text: str, name: str = "run.yaml") -> str:
    """Write ``text`` (dedented) as a config file and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems_of(path: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """The problems ``load_config`` reports, failing the test if it reports none."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_the_repository_ships_every_runner_shape():
    names = {path.name for path in CONFIGS}
    assert {"local.yaml", "dataflow.yaml", "dataflow-gpu.yaml", "flink.yaml", "spark.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_loads(path):
    config = load_config(str(path))
    assert isinstance(config, RunConfig)
    assert config.source == str(path)
    assert config.beam_pipeline_args()[0] == f"--runner={config.beam.runner}"


def test_local_config_values():
    local = next(path for path in CONFIGS if path.name == "local.yaml")
    config = load_config(str(local))
    assert config.input.path == str(local.parent.parent / "sample_data" / "ratings-*.csv")
    assert (config.input.format, config.input.header, config.input.field_delimiter) == ("csv", True, ",")
    assert config.input.column_settings == {
        "user_column": "user_id",
        "item_column": "item_id",
        "rating_column": "rating",
        "timestamp_column": "timestamp",
    }
    assert (config.input.user_id_type, config.input.item_id_type) == ("int", "int")
    assert config.model == SolverParams(rank=8, reg=0.05, bias=True, max_iter=10, seed=42)
    assert config.blocks.shape == (2, 2)
    assert config.split.holdout_fraction == 0.2 and config.split.evaluate
    assert config.recommend.top_n == 10
    assert config.output.path == os.path.abspath("runs/local")
    assert config.beam_pipeline_args() == [
        "--runner=DirectRunner",
        "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
    ]


def test_gpu_config_uses_mirrored_strategy_and_gpu_workers():
    gpu = next(path for path in CONFIGS if path.name == "dataflow-gpu.yaml")
    config = load_config(str(gpu))
    assert config.compute.strategy == "mirrored"
    assert config.input.path.startswith("gs://")
    args = config.beam_pipeline_args()
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver" in args
    assert "--experiments=use_runner_v2" in args
    assert any(arg.startswith("--sdk_container_image=") for arg in args)


def test_minimal_config_takes_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model == SolverParams()
    assert config.validation == ValidationConfig()
    assert config.beam == BeamConfig()
    assert config.input.timestamp_column is None
    assert config.beam_pipeline_args() == ["--runner=DirectRunner"]


def test_overrides_change_values_with_yaml_types(tmp_path):
    path = write(
        tmp_path,
        """\
        input:
          path: ratings.csv
          timestamp_column: ts
        output:
          path: out
        beam:
          options:
            direct_num_workers: 1
        """,
    )
    config = load_config(
        path,
        [
            "model.rank=30",
            "model.reg=0.1",
            "model.bias=false",
            "blocks.user_blocks=4",
            "input.timestamp_column=null",
            "beam.options.direct_num_workers=2",
            "beam.options.experiments=[a, b]",
            "compute.strategy=mirrored",
            "validation.rating_min=1",
        ],
    )
    assert config.model.rank == 30 and config.model.reg == 0.1 and config.model.bias is False
    assert config.blocks.user_blocks == 4
    assert config.input.timestamp_column is None
    assert config.beam.options == {"direct_num_workers": 2, "experiments": ["a", "b"]}
    assert config.compute.strategy == "mirrored"
    assert config.validation.rating_min == 1.0 and isinstance(config.validation.rating_min, float)


def test_exponent_floats_are_numbers_in_the_file_and_in_overrides(tmp_path):
    """``1e-3`` and ``1.0e30`` (no dot, unsigned exponent) are text to YAML 1.1 loaders; here
    they are floats, as in YAML 1.2. Ids-like text stays text."""
    path = write(
        tmp_path,
        """\
        input:
          path: ratings.csv
        output:
          path: out
        model:
          reg: 1e-3
          init_scale: 1.0e30
        """,
    )
    config = load_config(path)
    assert config.model.reg == 1e-3 and config.model.init_scale == 1e30
    config = load_config(path, ["model.reg=2E-2", "model.bias_reg=5e1", "input.user_column=e5"])
    assert config.model.reg == 0.02 and config.model.bias_reg == 50.0
    assert config.input.user_column == "e5"


def test_dumped_config_loads_back_equal_with_float_like_strings(tmp_path):
    """Strings that read as floats (``'1e3'``) are quoted by the dump, so they stay strings."""
    path = write(tmp_path, MINIMAL)
    config = load_config(path, ["input.user_column='1e3'", "beam.options.job_name='2E+5'"])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_yaml(config))
    again = load_config(str(dumped))
    assert again.input.user_column == "1e3" and again.beam.options["job_name"] == "2E+5"
    assert to_dict(again) == to_dict(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("input.delimiter='\"'", "input.delimiter must be a single character other than a quote or a line break"),
        ('input.delimiter="\\n"', "input.delimiter must be a single character other than a quote or a line break"),
        (f"split.seed={2**64}", "split.seed must be an int in [0, 9223372036854775807]"),
        (f"model.seed={2**70}", "model.seed must be below 2**63"),
    ],
)
def test_values_that_cannot_work_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, MINIMAL), [override])


def test_later_overrides_win(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["model.rank=3", "model.rank=5"])
    assert config.model.rank == 5


def test_malformed_overrides_are_all_reported(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  rank: 8\n")
    problems = problems_of(path, ("model.rank", "rank=3", "model..x=1", "model.rank.x=1", "model.rank=[1"))
    assert problems == [
        f"{path}: override must have the form section.key=value; got 'model.rank'",
        f"{path}: override must have the form section.key=value; got 'rank=3'",
        f"{path}: override must have the form section.key=value; got 'model..x=1'",
        f"{path}: model.rank must be a mapping of keys; got 8",
        f"{path}: override value of model.rank must be valid YAML; got '[1'",
    ]


def test_unknown_sections_and_keys_name_the_choices(tmp_path):
    path = write(tmp_path, MINIMAL + "modle:\n  rank: 3\nmodel:\n  rnak: 3\nblocks:\n  users: 2\n")
    problems = problems_of(path)
    sections = str(list(SECTIONS))
    model_keys = str([item.name for item in dataclasses.fields(SolverParams)])
    assert problems == [
        f"{path}: modle is not a known section; expected one of {sections}",
        f"{path}: model.rnak is not a known key; expected one of {model_keys}",
        f"{path}: blocks.users is not a known key; expected one of ['user_blocks', 'item_blocks']",
    ]


def test_wrong_types_and_ranges_are_reported_together(tmp_path):
    path = write(
        tmp_path,
        """\
        input:
          path: ratings.csv
          header: 1
          format: xml
        output:
          path: out
        validation:
          max_rejected_fraction: 1.5
        split:
          holdout_fraction: 1.0
          seed: -1
        model:
          rank: 0
          reg: ten
        blocks:
          user_blocks: 2.5
        compute:
          strategy: tpu
        recommend:
          exclude_rated: "no"
        evaluation:
          relevance_threshold: .nan
        beam:
          runner: ""
        """,
    )
    problems = problems_of(path)
    expected = [
        "input.format must be one of ['csv', 'tsv', 'parquet']; got 'xml'",
        "input.header must be true or false; got 1",
        "validation.max_rejected_fraction must be a number in [0, 1]; got 1.5",
        "split.holdout_fraction must be a number in [0, 1); got 1.0",
        "split.seed must be an int in [0, 9223372036854775807]; got -1",
        "blocks.user_blocks must be an int >= 1; got 2.5",
        "compute.strategy must be one of ['default', 'mirrored']; got 'tpu'",
        "recommend.exclude_rated must be true or false; got 'no'",
        "evaluation.relevance_threshold must be a finite number; got nan",
        "beam.runner must be a non-empty string; got ''",
        "model.rank must be an int >= 1; got 0",
        "model.reg must be a finite number in [0.0, inf); got 'ten'",
    ]
    assert sorted(problems) == sorted(f"{path}: {message}" for message in expected)


def test_the_documented_message_form(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  rank: 0\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: model.rank must be an int >= 1; got 0")):
        load_config(path)


def test_model_kernel_is_read_and_checked(tmp_path):
    assert load_config(write(tmp_path, MINIMAL + "model:\n  kernel: tensorflow\n")).model.kernel == "tensorflow"
    path = write(tmp_path, MINIMAL + "model:\n  kernel: gpu\n")
    assert problems_of(path) == [f"{path}: model.kernel must be one of ['auto', 'native', 'tensorflow']; got 'gpu'"]


def test_model_messages_reuse_solver_params_validation(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  tol: 2\n  objective: ranking\n  bias: true\n")
    problems = problems_of(path)
    assert problems == [
        f"{path}: model.tol must be a finite number in [0.0, 1.0]; got 2.0",
        f"{path}: model.bias must be false when objective is 'ranking'; got bias=True",
    ]
    with pytest.raises(ValueError) as info:
        SolverParams(tol=2.0, objective="ranking", bias=True)
    solver_wording = [
        problem.removeprefix(f"{path}: model.").replace("; got", " for NNMF; got") for problem in problems
    ]
    assert str(info.value) == "; ".join(solver_wording)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "input:\n  path: r.parquet\n  format: parquet\n  delimiter: ','\n",
            "input.delimiter applies only to csv or tsv input; got ',' with format 'parquet'",
        ),
        (
            "input:\n  path: r.parquet\n  format: parquet\n  header: false\n",
            "input.header applies only to csv or tsv input; got false with format 'parquet'",
        ),
        (
            "input:\n  path: r.parquet\n  format: parquet\n  compression: gzip\n",
            "input.compression must be 'auto' or 'none' for parquet input (the files carry their own "
            "compression); got 'gzip'",
        ),
        (
            "input:\n  path: r.csv\n  user_column: 0\n",
            "input.user_column may be an int position only for csv or tsv input with header: false; "
            "got 0 with format 'csv' and header True",
        ),
        (
            "input:\n  path: r.csv\n  header: false\n  user_column: 0\n  item_column: 1\n  rating_column: 2\n"
            "  timestamp_column: ts\n",
            "input.timestamp_column must be an int position when input.header is false; got 'ts'",
        ),
        (
            "input:\n  path: r.csv\n  item_column: user_id\n",
            "input columns must be distinct; got 'user_id' for several roles",
        ),
        (
            "input:\n  path: r.csv\nvalidation:\n  rating_min: 5\n  rating_max: 1\n",
            "validation.rating_min must be less than validation.rating_max (1.0); got 5.0",
        ),
        (
            "input:\n  path: r.csv\nevaluation:\n  relevance_threshold: 6\n",
            "evaluation.relevance_threshold must be within [validation.rating_min, validation.rating_max] "
            "= [0.5, 5.0]; got 6.0",
        ),
        (
            "input:\n  path: r.csv\nbeam:\n  options:\n    runner: FlinkRunner\n",
            "beam.options.runner must not be set (beam.runner names the runner); got 'FlinkRunner'",
        ),
        (
            "input:\n  path: r.csv\nbeam:\n  options:\n    project:\n",
            "beam.options.project must be a string, a number, true/false or a list of strings and numbers; "
            "got None",
        ),
        (
            "input:\n  path: r.csv\nbeam:\n  options:\n    --project: p\n",
            "beam.options key must be a Beam option name without dashes, like temp_location; got '--project'",
        ),
    ],
)
def test_cross_field_rules(tmp_path, text, message):
    path = write(tmp_path, text + "output:\n  path: out\n")
    assert problems_of(path) == [f"{path}: {message}"]


def test_int_positions_are_accepted_without_header(tmp_path):
    text = "input:\n  path: r.tsv\n  format: tsv\n  header: false\n  user_column: 0\n  item_column: 1\n"
    text += "  rating_column: 2\n  timestamp_column: 3\noutput:\n  path: out\n"
    config = load_config(write(tmp_path, text))
    assert list(config.input.column_settings.values()) == [0, 1, 2, 3]
    assert config.input.field_delimiter == "\t"


def test_missing_required_keys(tmp_path):
    path = write(tmp_path, "model:\n  rank: 4\n")
    assert problems_of(path) == [
        f"{path}: input.path is required and must be a non-empty string",
        f"{path}: output.path is required and must be a non-empty string",
    ]


def test_empty_file_reports_only_the_required_keys(tmp_path):
    assert len(problems_of(write(tmp_path, ""))) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- input\n- output\n", "the config file must be a mapping of sections; got ['input', 'output']"),
        ("input: [path\n", "the config file must be valid YAML; got expected ',' or ']', but got '<stream end>'"),
        ("input: 3\noutput:\n  path: out\n", "input must be a mapping of keys; got 3"),
    ],
)
def test_ill_formed_files(tmp_path, text, message):
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert re.fullmatch(rf"{re.escape(path)}(:\d+:\d+)?: {re.escape(message)}", problems[0])


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    assert problems_of(path) == [
        f"{path}: the config file must be a readable file; got FileNotFoundError: No such file or directory"
    ]


def test_python_object_tags_are_refused(tmp_path):
    marker = tmp_path / "created-by-yaml"
    path = write(tmp_path, f"input: !!python/object/apply:os.mkdir ['{marker}']\n")
    (problem,) = problems_of(path)
    assert re.fullmatch(
        rf"{re.escape(path)}:1:8: the config file must be valid YAML; got could not determine a constructor "
        r"for the tag 'tag:yaml.org,2002:python/object/apply:os.mkdir'",
        problem,
    )
    assert not marker.exists()


def test_relative_input_path_is_resolved_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write(folder, "input:\n  path: ../data/ratings-*.csv\noutput:\n  path: runs/a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path), ["compute.xla_cache_dir=cache/xla", "input.init_from=runs/old"])
    assert config.input.path == str(tmp_path / "data" / "ratings-*.csv")
    assert config.output.path == str(elsewhere / "runs" / "a")
    # Folders a run writes or reads back follow the working directory, as the output does.
    assert config.compute.xla_cache_dir == str(elsewhere / "cache" / "xla")
    assert config.input.init_from == str(elsewhere / "runs" / "old")


@pytest.mark.parametrize("location", ["gs://bucket/r-*.parquet", "s3://bucket/r-*.csv", "/abs/r-*.csv"])
def test_remote_and_absolute_paths_are_kept(tmp_path, location):
    config = load_config(write(tmp_path, MINIMAL), [f"input.path={location}", f"output.path={location}"])
    assert config.input.path == location
    assert config.output.path == location


def test_beam_pipeline_args(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + """\
beam:
  runner: DataflowRunner
  options:
    project: my-project
    max_num_workers: 8
    use_public_ips: false
    save_main_session: true
    experiments: [use_runner_v2, no_use_multiple_sdk_containers]
    setup_file: ./setup.py
""",
    )
    assert load_config(path).beam_pipeline_args() == [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--max_num_workers=8",
        "--save_main_session",
        "--experiments=use_runner_v2",
        "--experiments=no_use_multiple_sdk_containers",
        "--setup_file=./setup.py",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_dump_yaml_round_trips(tmp_path, path):
    config = load_config(str(path))
    dumped = dump_yaml(config)
    assert dumped.startswith(f"# Resolved from {path}\n")
    assert yaml.safe_load(dumped) == to_dict(config)
    reloaded = load_config(write(tmp_path, dumped))
    assert dataclasses.replace(reloaded, source=config.source) == config


def test_to_dict_is_plain_data():
    config = load_config(str(CONFIGS[0]))
    data = to_dict(config)
    assert list(data) == list(SECTIONS)
    assert data["model"] == dataclasses.asdict(config.model)


def test_sections_validate_on_construction_and_are_frozen():
    with pytest.raises(ConfigError, match=re.escape("split.holdout_fraction must be a number in [0, 1); got 1.0")):
        SplitConfig(holdout_fraction=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SplitConfig().seed = 3


def test_every_field_has_a_constraint():
    for name, cls in SECTIONS.items():
        if cls is not SolverParams:
            assert set(cls.CONSTRAINTS) == {item.name for item in dataclasses.fields(cls)}, name
            assert cls.SECTION == name
