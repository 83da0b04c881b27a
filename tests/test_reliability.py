"""Reliability of the main job: reproducible across shard layouts, safe when killed, warm starts,
degenerate data.

Each run uses a few hundred generated ratings so a pipeline run takes a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nnmf_tf.data import SparseRatings
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import fit
from pipeline.config import load_config
from pipeline.generate import generate_ratings, write_shards
from pipeline.blocks import FactorBlock
from pipeline.main import UnusableInputError, run
from pipeline.output import SUCCESS, OutputExistsError, publish, staging_path
from pipeline.warm_start import warm_factors

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = str(REPO / "configs" / "local.yaml")


@pytest.fixture(scope="module")
def ratings() -> pa.Table:
    """~1500 ratings from a planted model, integer ids."""
    return pa.concat_tables(list(generate_ratings(120, 60, 1500, rank=3, seed=7, rating_min=1.0, rating_max=5.0)))


def _config(tmp: Path, input_glob: str, out: str, *extra: str):
    overrides = [
        f"input.path={input_glob}",
        f"output.path={tmp / out}",
        "model.rank=4",
        "model.max_iter=4",
        "blocks.user_blocks=2",
        "blocks.item_blocks=2",
        *extra,
    ]
    return load_config(LOCAL_CONFIG, overrides)


def _factors(folder: Path, name: str, id_column: str) -> pd.DataFrame:
    return pd.read_parquet(folder / name).sort_values(id_column).reset_index(drop=True)


def test_same_model_whatever_the_order_and_number_of_shards(ratings, tmp_path):
    """Shuffled rows in 5 shards give the factors and recommendations of ordered rows in 2 shards."""
    write_shards([ratings], str(tmp_path / "two"), 2, "csv")
    shuffled = ratings.take(np.random.default_rng(3).permutation(ratings.num_rows))
    write_shards([shuffled], str(tmp_path / "five"), 5, "csv")
    run(_config(tmp_path, str(tmp_path / "two" / "*.csv"), "a"))
    run(_config(tmp_path, str(tmp_path / "five" / "*.csv"), "b"))
    for name, id_column in (("user_factors", "user_id"), ("item_factors", "item_id")):
        a, b = _factors(tmp_path / "a", name, id_column), _factors(tmp_path / "b", name, id_column)
        assert a[id_column].tolist() == b[id_column].tolist()
        np.testing.assert_allclose(np.stack(a["factors"]), np.stack(b["factors"]), rtol=1e-5, atol=1e-6)
    recs_a = pd.read_parquet(tmp_path / "a" / "recommendations").sort_values(["user_id", "rank"])
    recs_b = pd.read_parquet(tmp_path / "b" / "recommendations").sort_values(["user_id", "rank"])
    assert recs_a[["user_id", "rank", "item_id"]].values.tolist() == recs_b[["user_id", "rank", "item_id"]].values.tolist()


def test_killed_run_publishes_nothing_and_rerun_works(ratings, tmp_path):
    """SIGKILL in the middle of a run leaves no _SUCCESS and no output folder; the rerun publishes."""
    write_shards([ratings], str(tmp_path / "in"), 2, "csv")
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "pipeline", "run", "--config", LOCAL_CONFIG,
        "--set", f"input.path={tmp_path / 'in' / '*.csv'}", "--set", "model.max_iter=30",
        "--output", str(out), "--log-level", "WARNING",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = Path(staging_path(str(out)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not staging.exists():
        time.sleep(0.2)
    assert staging.exists(), "the run never started writing"
    time.sleep(2.0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / SUCCESS).exists()
    assert not out.exists()
    run(_config(tmp_path, str(tmp_path / "in" / "*.csv"), "out"))
    assert (out / SUCCESS).exists()
    assert not staging.exists()


def test_warm_start_begins_near_the_earlier_optimum(ratings, tmp_path):
    """A warm start on 5% more ratings begins below where the cold start is after 3 iterations
    and reaches the cold start's 10-iteration loss within 3 iterations."""
    n = ratings.num_rows
    base = ratings.slice(0, int(n * 0.95))
    write_shards([base], str(tmp_path / "base"), 2, "csv")
    write_shards([ratings], str(tmp_path / "all"), 2, "csv")
    run(_config(tmp_path, str(tmp_path / "base" / "*.csv"), "yesterday", "model.max_iter=10"))
    cold = run(_config(tmp_path, str(tmp_path / "all" / "*.csv"), "cold", "model.max_iter=10"))
    warm = run(
        _config(tmp_path, str(tmp_path / "all" / "*.csv"), "warm", "model.max_iter=3",
                f"input.init_from={tmp_path / 'yesterday'}")
    )
    assert warm["train_loss_1"] < cold["train_loss_3"]
    assert warm["train_loss_3"] <= cold["train_loss_10"] * 1.01


def test_warm_factors_copy_known_rows_and_keep_fresh_ones_for_new_ids():
    """Known ids take the earlier factors and bias; new ids keep fresh values; vanished ids vanish."""
    fresh = FactorBlock(np.full((3, 2), 9.0, np.float32), np.zeros(3, np.float32))
    previous = pa.table(
        {
            "user_id": pa.array([30, 10, 99], pa.int64()),
            "factors": pa.FixedSizeListArray.from_arrays(pa.array([3, 3, 1, 1, 7, 7], pa.float32()), 2),
            "bias": pa.array([0.3, 0.1, 0.9], pa.float32()),
            "n_ratings": pa.array([1, 1, 1], pa.int64()),
        }
    )
    warm = warm_factors("user", fresh, np.array([10, 20, 30]), previous)
    np.testing.assert_array_equal(warm.factors, [[1, 1], [9, 9], [3, 3]])
    np.testing.assert_allclose(warm.bias, [0.1, 0.0, 0.3])
    assert warm.factors.shape[0] == 3  # id 99 vanished


def test_warm_start_rejects_a_run_of_another_rank(ratings, tmp_path):
    write_shards([ratings], str(tmp_path / "in"), 2, "csv")
    glob = str(tmp_path / "in" / "*.csv")
    run(_config(tmp_path, glob, "first"))
    with pytest.raises(ValueError, match="rank 4; this run has rank 6"):
        run(_config(tmp_path, glob, "second", "model.rank=6", f"input.init_from={tmp_path / 'first'}"))
    with pytest.raises(ValueError, match="is not a published run"):
        run(_config(tmp_path, glob, "third", f"input.init_from={tmp_path / 'missing'}"))


@pytest.mark.parametrize(
    "rows, cols, values, shape, rank",
    [
        ([0, 0, 0], [0, 1, 2], [4.0, 4.0, 4.0], (1, 3), 2),  # one user
        ([0, 1, 2], [0, 0, 0], [3.0, 5.0, 1.0], (3, 1), 2),  # one item
        ([0, 0, 1, 2], [0, 1, 1, 2], [3.0, 3.0, 3.0, 3.0], (3, 3), 2),  # every rating equal
        ([0, 1, 1], [1, 0, 2], [5.0, 1.0, 2.0], (2, 3), 8),  # rank above both sizes
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_degenerate_data_gives_finite_non_negative_factors(rows, cols, values, shape, rank, bias):
    ratings = SparseRatings(np.array(rows), np.array(cols), np.array(values), shape)
    result = fit(ratings, SolverParams(rank=rank, reg=0.05, bias=bias, max_iter=10))
    for array in (result.factors.user_factors, result.factors.item_factors):
        assert np.all(np.isfinite(array)) and np.all(array >= 0)
    assert np.isfinite(result.objective_history[-1])
    assert result.objective_history[-1] <= result.initial_objective + 1e-6


def test_users_whose_ratings_were_all_held_out_are_evaluated_by_the_fallback(tmp_path):
    """A user with one rating that is held out has no factors; the run still evaluates it."""
    lines = ["user_id,item_id,rating,timestamp"]
    rng = np.random.default_rng(0)
    for user in range(40):
        for item in rng.choice(30, size=8, replace=False):
            lines.append(f"{user},{item},{rng.integers(1, 6)},1")
    lines += [f"{1000 + u},{u % 30},5,1" for u in range(40)]
    os.makedirs(tmp_path / "in")
    (tmp_path / "in" / "r.csv").write_text("\n".join(lines) + "\n")
    metrics = run(_config(tmp_path, str(tmp_path / "in" / "*.csv"), "out", "split.holdout_fraction=0.5"))
    users = len(pd.read_parquet(tmp_path / "out" / "user_factors"))
    assert users < 80  # some one-rating users were held out entirely
    assert np.isfinite(metrics["heldout_rmse"])
    assert metrics["heldout_ranked_users"] > 0


# ----------------------------------------------------------------------------- output safety, empty input, warm-start errors


@pytest.fixture
def small_input(ratings, tmp_path) -> str:
    """The ratings as two CSV shards under ``tmp_path / "in"``; returns their glob."""
    write_shards([ratings], str(tmp_path / "in"), 2, "csv")
    return str(tmp_path / "in" / "*.csv")


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", ["folder", "hidden_file", "file"])
def test_output_that_is_not_a_published_run_is_never_replaced(small_input, tmp_path, kind, overwrite):
    """A folder of other files (hidden ones too) or a plain file at the output path is refused,
    even with overwrite; nothing in it changes and no staging folder is made."""
    out = tmp_path / "mine"
    if kind == "file":
        out.write_text("keep")
    else:
        out.mkdir()
        (out / ("important.txt" if kind == "folder" else ".env")).write_text("keep")
    before = _snapshot(out)
    extra = ["output.overwrite=true"] if overwrite else []
    with pytest.raises(OutputExistsError, match="even with --overwrite") as error:
        run(_config(tmp_path, small_input, "mine", *extra))
    assert str(out) in str(error.value)
    assert _snapshot(out) == before
    assert not Path(staging_path(str(out))).exists()


def test_output_folder_holding_the_input_is_refused_even_when_a_published_run(small_input, tmp_path):
    """Inputs inside the output folder would be deleted by publishing: refused, inputs kept."""
    inside = tmp_path / "in"
    (inside / SUCCESS).write_text("")
    (inside / "manifest.json").write_text("{}")
    before = _snapshot(inside)
    with pytest.raises(OutputExistsError, match="inside"):
        run(_config(tmp_path, small_input, "in", "output.overwrite=true"))
    assert _snapshot(inside) == before


def test_empty_existing_output_folder_is_published_into(small_input, tmp_path):
    (tmp_path / "out").mkdir()
    run(_config(tmp_path, small_input, "out", "model.max_iter=1"))
    assert (tmp_path / "out" / SUCCESS).exists() and (tmp_path / "out" / "manifest.json").exists()


def test_object_store_folder_placeholders_are_not_files(monkeypatch):
    """Consoles create an empty ``out/`` object for a new folder on GCS or S3: such a folder is
    empty, not a folder of other files."""
    import posixpath

    from apache_beam.io.filesystem import FileMetadata

    import pipeline.output as output_module

    listed = {"gs://bucket/out/**": [FileMetadata("gs://bucket/out/", 0), FileMetadata("gs://bucket/out/sub/", 0)]}

    class _Match:
        def __init__(self, pattern):
            self.metadata_list = listed.get(pattern, [])

    monkeypatch.setattr(output_module, "join", posixpath.join)  # gs:// without the gcp extra
    monkeypatch.setattr(output_module.FileSystems, "exists", staticmethod(lambda path: False))
    monkeypatch.setattr(output_module.FileSystems, "match", staticmethod(lambda patterns, limits=None: [_Match(p) for p in patterns]))
    output_module.check_output("gs://bucket/out", overwrite=False)
    listed["gs://bucket/out/**"].append(FileMetadata("gs://bucket/out/notes.txt", 12))
    with pytest.raises(OutputExistsError, match="holds files but is not a published run"):
        output_module.check_output("gs://bucket/out", overwrite=False)


def test_publish_checks_the_output_again(tmp_path):
    """Files that appeared at the output while the run worked are not deleted by publish."""
    staging = tmp_path / "out.staging"
    staging.mkdir()
    (staging / "table").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "late.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        publish(str(staging), str(tmp_path / "out"), overwrite=True)
    assert (tmp_path / "out" / "late.txt").read_text() == "keep"
    assert (staging / "table").read_text() == "new"


def test_zero_accepted_ratings_fail_and_publish_nothing(tmp_path):
    """A header-only file and an empty file: the run names the files and the pattern, publishes nothing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("user_id,item_id,rating,timestamp\n")
    (tmp_path / "in" / "b.csv").write_text("")
    glob = str(tmp_path / "in" / "*.csv")
    with pytest.raises(UnusableInputError, match=r"no ratings accepted from 2 files matching '.*in/\*\.csv': 0 rows read, 0 rejected"):
        run(_config(tmp_path, glob, "out"))
    assert not (tmp_path / "out").exists()
    assert not list(Path(staging_path(str(tmp_path / "out")), "user_factors").glob("*.parquet"))


def _published_run(folder: Path, rank: int, id_type: pa.DataType) -> None:
    """A minimal published run: factor tables of ``rank`` with ``id_type`` ids, ``_SUCCESS`` and a manifest."""
    import pyarrow.parquet as pq

    for side in ("user", "item"):
        (folder / f"{side}_factors").mkdir(parents=True)
        table = pa.table({
            f"{side}_id": pa.array(["1"] if id_type == pa.string() else [1], id_type),
            "factors": pa.FixedSizeListArray.from_arrays(pa.array([0.5] * rank, pa.float32()), rank),
            "bias": pa.array([0.0], pa.float32()),
            "n_ratings": pa.array([1], pa.int64()),
        })
        pq.write_table(table, folder / f"{side}_factors" / "part-00000-of-00001.parquet")
    (folder / "manifest.json").write_text("{}")
    (folder / SUCCESS).write_text("")


@pytest.mark.parametrize(
    "previous, overrides, message",
    [
        (None, [], "is not a published run"),
        ((8, pa.int64()), ["--set", "model.rank=4"], "has factors of rank 8; this run has rank 4"),
        ((4, pa.string()), ["--set", "model.rank=4"], "has user_id of type string; this run expects int64"),
        ((4, pa.int64()), ["--set", "model.rank=4", "--set", "model.bias=false"],
         "was fitted with model.bias=true; this run has model.bias=false"),
    ],
)
def test_cli_reports_an_unusable_warm_start_as_a_config_error(small_input, tmp_path, capsys, previous, overrides, message):
    """Exit status 2 and one ``error:`` line naming the problem; nothing is written."""
    from pipeline.cli import main

    previous_folder = tmp_path / "previous"
    if previous is not None:
        _published_run(previous_folder, *previous)
    status = main([
        "run", "--config", LOCAL_CONFIG, "--set", f"input.path={small_input}",
        "--set", f"input.init_from={previous_folder}", *overrides, "--output", str(tmp_path / "out"),
    ])
    assert status == 2
    err = capsys.readouterr().err
    assert f"error: {LOCAL_CONFIG}: input.init_from: {previous_folder}" in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not Path(staging_path(str(tmp_path / "out"))).exists()
