"""Tests of the command-line interface, without running Beam or TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
LOCAL = str(REPO / "configs" / "local.yaml")


@pytest.fixture
def bad_config(tmp_path) -> str:
    """A config file with two problems in two sections."""
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  path: r.csv\noutput:\n  path: out\nmodel:\n  rank: 0\nblocks:\n  user_blocks: 0\n")
    return str(path)


@pytest.fixture
def fake_main(monkeypatch) -> list[tuple[RunConfig, list[str]]]:
    """Stand in for ``pipeline.main``; returns the list of ``run`` calls it receives."""
    calls: list[tuple[RunConfig, list[str]]] = []
    module = types.ModuleType("pipeline.main")
    module.run = lambda config, beam_args: calls.append((config, beam_args)) or {}
    module.UnusableInputError = type("UnusableInputError", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "pipeline.main", module)
    return calls


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "generate", "demo", "validate-config"):
        assert command in out


def test_validate_config_prints_the_resolved_config(capsys):
    assert main(["validate-config", "--config", LOCAL, "--set", "model.rank=16"]) == 0
    captured = capsys.readouterr()
    data = yaml.safe_load(captured.out)
    assert data["model"]["rank"] == 16
    assert data["input"]["path"] == str(REPO / "sample_data" / "ratings-*.csv")
    assert captured.err == ""


def test_validate_config_reports_every_problem(bad_config, capsys):
    assert main(["validate-config", "--config", bad_config]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: {bad_config}: blocks.user_blocks must be an int >= 1; got 0",
        f"error: {bad_config}: model.rank must be an int >= 1; got 0",
    ]


def test_validate_config_rejects_unknown_arguments(capsys):
    assert main(["validate-config", "--config", LOCAL, "--runner=DataflowRunner"]) == 2
    assert "unrecognized arguments: --runner=DataflowRunner" in capsys.readouterr().err


def test_run_with_bad_config_stops_before_importing_the_pipeline(bad_config, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "pipeline.main", raising=False)
    assert main(["run", "--config", bad_config]) == 2
    assert "pipeline.main" not in sys.modules
    assert f"error: {bad_config}: model.rank must be an int >= 1; got 0" in capsys.readouterr().err


def test_run_passes_config_and_beam_args(fake_main, tmp_path):
    output = tmp_path / "run 1"
    argv = [
        "run",
        "--config",
        LOCAL,
        "--set",
        "model.rank=4",
        "--output",
        str(output),
        "--overwrite",
        "--runner=FnApiRunner",
        "--direct_num_workers",
        "2",
    ]
    assert main(argv) == 0
    ((config, beam_args),) = fake_main
    assert config.model.rank == 4
    assert config.output.path == str(output)
    assert config.output.overwrite is True
    # The config's own Beam options are added by pipeline.main.run; the command line's follow them.
    assert beam_args == [
        "--runner=FnApiRunner",
        "--direct_num_workers",
        "2",
    ]


def test_run_output_shorthand_keeps_yaml_like_paths_as_strings(fake_main):
    assert main(["run", "--config", LOCAL, "--output", "123"]) == 0
    ((config, _),) = fake_main
    assert config.output.path == str(Path("123").resolve())


def test_run_reports_missing_or_unreadable_input_in_one_line(tmp_path, capsys):
    """No file matching the input, or a file without a configured column, is found before any
    work: one error line naming the pattern or the file, status 1, nothing written."""
    out = tmp_path / "out"
    missing = str(tmp_path / "none-*.csv")
    assert main(["run", "--config", LOCAL, "--set", f"input.path={missing}", "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: no input file matches {missing!r}"
    bad = tmp_path / "ratings.csv"
    bad.write_text("user_id,item,rating,timestamp\n1,2,3,4\n")
    assert main(["run", "--config", LOCAL, "--set", f"input.path={bad}", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: header has no column 'item_id' (item_column)"), err
    assert not out.exists() and not (tmp_path / "out.staging").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["validation.rating_max=3.0", "evaluation.relevance_threshold=3.0"], "rows read were rejected"),
        (["model.init_scale=1e30", "model.max_iter=1"], "non-finite objective"),
    ],
    ids=["too_many_rejected", "diverged"],
)
def test_run_reports_unusable_input_and_a_broken_fit_in_one_line(tmp_path, capsys, overrides, message):
    """Failures found while the pipeline runs (the input gate, a fit that overflows) end with
    one error line and status 1; nothing is published."""
    out = tmp_path / "out"
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["run", "--config", LOCAL, "--output", str(out), *sets]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not out.exists()


def test_generate_is_registered(capsys):
    pytest.importorskip("pipeline.generate")
    assert main(["generate", "--help"]) == 0
    assert "usage: nnmf-pipeline generate" in capsys.readouterr().out


def test_generate_parses_its_own_arguments(monkeypatch):
    received = []
    module = types.ModuleType("pipeline.generate")
    module.add_arguments = lambda parser: parser.add_argument("--users", type=int, required=True)
    module.main = lambda args: received.append(args.users) or 3
    monkeypatch.setitem(sys.modules, "pipeline.generate", module)
    assert main(["generate", "--users", "7"]) == 3
    assert received == [7]
    assert main(["generate"]) == 2


def test_demo_runs_the_library_demo(monkeypatch):
    calls = []
    module = types.ModuleType("nnmf_tf.demo")
    module.main = lambda: calls.append("demo")
    monkeypatch.setitem(sys.modules, "nnmf_tf.demo", module)
    assert main(["demo"]) == 0
    assert calls == ["demo"]


def test_module_entry_point_fails_fast_without_heavy_imports(bad_config):
    script = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["nnmf-pipeline", "run", "--config", {bad_config!r}, "--runner=DataflowRunner"]
        try:
            runpy.run_module("pipeline", run_name="__main__")
        except SystemExit as exc:
            heavy = sorted(name for name in ("apache_beam", "tensorflow", "pipeline.main") if name in sys.modules)
            print(exc.code, heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "2 []"
    assert f"error: {bad_config}: model.rank must be an int >= 1; got 0" in result.stderr
