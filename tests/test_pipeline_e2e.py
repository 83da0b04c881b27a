"""End-to-end runs of ``pipeline.main.run`` on generated ratings, checked against known answers.

The data is a planted non-negative low-rank model (~200 users x 80 items, ~4000 ratings plus a
few duplicate pairs, 40 one-rating users and 20 one-rating items, some of which end up held out
entirely) written as CSV shards in a temporary folder. Every run below is a
module-scoped fixture, so each configuration runs once and is shared by the tests that read it:

=================  ===========================================================================
``run_1x1``        1x1 blocks, biased model, 20 % held out, DirectRunner in process
``run_4x4``        the same model on a 4x4 block grid
``run_4x4_multi``  ``run_4x4`` with ``direct_running_mode=multi_processing``, 2 workers
``run_plain``      1x1 blocks, unbiased model, nothing held out
``run_strings``    string user ids ("u12"), integer item ids
=================  ===========================================================================

The expected training set is rebuilt independently (latest timestamp wins for duplicate pairs)
and split with :func:`pipeline.split.split_holdout`; the expected factors come from
:func:`nnmf_tf.solver.fit` on that training set from the pipeline's initial factors.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nnmf_tf.data import SparseRatings
from nnmf_tf.solver import fit, initial_model
from pipeline import blocks, schemas
from pipeline.config import RunConfig, load_config
from pipeline.main import run
from pipeline.output import OutputExistsError
from pipeline.split import split_holdout

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = str(REPO / "configs" / "local.yaml")
TABLES = ("user_factors", "item_factors", "recommendations", "rejected", "metrics")
HEADER = "user_id,item_id,rating,timestamp"
RANK = 4
MAX_ITER = 5
TOP_N = 75
"""Larger than some users' candidate counts (~95 training items minus their ~1-35 ratings), so
the "min(top_n, candidates)" rule is exercised in both directions."""

IN_PROCESS = ["beam.options.direct_running_mode=in_memory", "beam.options.direct_num_workers=1"]
MULTI_PROCESS = ["beam.options.direct_running_mode=multi_processing", "beam.options.direct_num_workers=2"]


# ----------------------------------------------------------------------------- generated data


@dataclass(frozen=True)
class Ratings:
    """What was written: one entry per data line, in file order."""

    folder: Path
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    sources: np.ndarray
    lines: np.ndarray

    @property
    def glob(self) -> str:
        return str(self.folder / "r-*.csv")

    def latest(self) -> pd.DataFrame:
        """One row per (user, item) pair, the one with the largest timestamp (duplicates policy
        ``latest``), computed independently of ``pipeline.dedup``."""
        frame = pd.DataFrame(
            {"user_id": self.users, "item_id": self.items, "rating": self.ratings.astype(np.float32),
             "timestamp": self.timestamps, "source": self.sources, "row": self.lines}
        )
        return frame.sort_values("timestamp").drop_duplicates(["user_id", "item_id"], keep="last")

    def split(self, fraction: float, seed: int, id_types=("int", "int")) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, held-out) as the pipeline should split the deduplicated ratings."""
        kept = self.latest()
        table = pa.Table.from_pandas(kept, preserve_index=False).cast(schemas.ratings_schema(*id_types))
        train, heldout = split_holdout(table, fraction, seed)
        return train.to_pandas(), heldout.to_pandas()


def _planted(rng: np.random.Generator, n_users: int, n_items: int, n_ratings: int, rank: int = 3):
    """Pair indices and ratings from a non-negative rank-``rank`` model, ratings on a 0.5 grid in [1, 5]."""
    w = rng.gamma(2.0, 1.0, (n_users, rank))
    h = rng.gamma(2.0, 1.0, (n_items, rank))
    scale = np.sqrt(3.4 / (w @ h.T).mean())
    w, h = w * scale, h * scale
    pairs = rng.choice(n_users * n_items, n_ratings, replace=False)
    u, i = pairs // n_items, pairs % n_items
    truth = np.einsum("nk,nk->n", w[u], h[i]) + rng.normal(0.0, 0.3, n_ratings)
    return u, i, np.clip(np.round(truth * 2) / 2, 1.0, 5.0)


def write_ratings(
    folder: Path,
    seed: int,
    *,
    n_users: int = 200,
    n_items: int = 80,
    n_ratings: int = 4000,
    n_duplicates: int = 40,
    n_cold_users: int = 0,
    n_cold_items: int = 0,
    shards: int = 3,
    user_prefix: str | None = None,
) -> Ratings:
    """Write ``r-<k>.csv`` shards of planted ratings (plus re-rated pairs) into ``folder``.

    ``n_cold_users`` extra users rate one item 5.0 each, and ``n_cold_items`` extra items are
    rated once each: the split holds some of them out entirely, so held-out users and items
    unknown to the model exist.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    u, i, r = _planted(rng, n_users, n_items, n_ratings)
    u = np.concatenate([u, n_users + np.arange(n_cold_users)])
    i = np.concatenate([i, rng.integers(0, n_items, n_cold_users)])
    r = np.concatenate([r, np.full(n_cold_users, 5.0)])
    n_users, n_ratings = n_users + n_cold_users, n_ratings + n_cold_users
    u = np.concatenate([u, rng.integers(0, n_users, n_cold_items)])
    i = np.concatenate([i, n_items + np.arange(n_cold_items)])
    r = np.concatenate([r, rng.integers(2, 11, n_cold_items) / 2.0])
    n_items, n_ratings = n_items + n_cold_items, n_ratings + n_cold_items
    # A few pairs rated again with another value and another (distinct) timestamp.
    again = rng.choice(n_ratings, n_duplicates, replace=False)
    u, i = np.concatenate([u, u[again]]), np.concatenate([i, i[again]])
    r = np.concatenate([r, np.clip(6.0 - r[again], 1.0, 5.0)])
    timestamps = 1_500_000_000 + rng.permutation(len(u)) * 17
    # Sparse, non-contiguous ids.
    user_numbers = np.sort(rng.choice(1_000_000, n_users, replace=False))
    item_numbers = np.sort(rng.choice(100_000, n_items, replace=False))
    users = user_numbers[u] if user_prefix is None else np.array([f"{user_prefix}{n}" for n in user_numbers[u]], object)
    items = item_numbers[i]

    order = rng.permutation(len(u))
    sources, lines = np.empty(len(u), object), np.zeros(len(u), np.int64)
    for shard, rows in enumerate(np.array_split(order, shards)):
        path = folder / f"r-{shard}.csv"
        text = [HEADER] + [f"{users[k]},{items[k]},{r[k]:g},{timestamps[k]}" for k in rows]
        path.write_text("\n".join(text) + "\n")
        sources[rows], lines[rows] = str(path), np.arange(2, len(rows) + 2)
    return Ratings(folder, users, items, r, timestamps, sources, lines)


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    config: RunConfig
    metrics: dict
    data: Ratings

    @property
    def out(self) -> str:
        return self.config.output.path

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(os.path.join(self.out, name))

    def factors(self, side: str) -> pd.DataFrame:
        frame = self.table(f"{side}_factors")
        return frame.sort_values(f"{side}_id").reset_index(drop=True)

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        types = (self.config.input.user_id_type, self.config.input.item_id_type)
        return self.data.split(self.config.split.holdout_fraction, self.config.split.seed, types)


def make_config(data: Ratings, out: Path, *overrides: str) -> RunConfig:
    base = [
        f"input.path={data.glob}",
        f"output.path={out}",
        f"model.rank={RANK}",
        f"model.max_iter={MAX_ITER}",
        f"recommend.top_n={TOP_N}",
    ]
    return load_config(LOCAL_CONFIG, base + list(overrides))


def _run(data: Ratings, out: Path, *overrides: str) -> Run:
    config = make_config(data, out, *overrides)
    return Run(config, run(config), data)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Ratings:
    return write_ratings(tmp_path_factory.mktemp("ratings"), seed=20240501, n_cold_users=40, n_cold_items=20)


@pytest.fixture(scope="module")
def run_1x1(data, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("run_1x1") / "out"
    return _run(data, out, "blocks.user_blocks=1", "blocks.item_blocks=1", "model.bias=true", *IN_PROCESS)


@pytest.fixture(scope="module")
def run_4x4(data, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("run_4x4") / "out"
    return _run(data, out, "blocks.user_blocks=4", "blocks.item_blocks=4", "model.bias=true", *IN_PROCESS)


@pytest.fixture(scope="module")
def run_4x4_multi(data, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("run_4x4_multi") / "out"
    return _run(data, out, "blocks.user_blocks=4", "blocks.item_blocks=4", "model.bias=true", *MULTI_PROCESS)


@pytest.fixture(scope="module")
def run_plain(data, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("run_plain") / "out"
    return _run(
        data, out, "blocks.user_blocks=1", "blocks.item_blocks=1", "model.bias=false", "split.holdout_fraction=0",
        *IN_PROCESS,
    )


@pytest.fixture(scope="module")
def run_strings(tmp_path_factory) -> Run:
    data = write_ratings(tmp_path_factory.mktemp("string_ratings"), seed=7, n_ratings=1500, user_prefix="u")
    out = tmp_path_factory.mktemp("run_strings") / "out"
    return _run(
        data, out, "input.user_id_type=string", "input.item_id_type=int", "blocks.user_blocks=2",
        "blocks.item_blocks=2", "model.max_iter=2", *IN_PROCESS,
    )


# ----------------------------------------------------------------------------- 1. pipeline == solver


def _solver_reference(run_: Run):
    """``fit`` on the run's training set, from the initial factors the pipeline derives from the ids."""
    train, _ = run_.split()
    user_ids, rows = np.unique(train["user_id"].to_numpy(), return_inverse=True)
    item_ids, cols = np.unique(train["item_id"].to_numpy(), return_inverse=True)
    ratings = SparseRatings(rows, cols, train["rating"].to_numpy(np.float32), (len(user_ids), len(item_ids)))
    params = run_.config.model
    init = initial_model(ratings, params, row_keys=blocks.row_keys(user_ids), col_keys=blocks.row_keys(item_ids))
    return user_ids, item_ids, fit(ratings, params, init=init)


@pytest.mark.parametrize("name", ["run_1x1", "run_plain"])
def test_factors_equal_the_in_process_solver(name, request):
    run_: Run = request.getfixturevalue(name)
    user_ids, item_ids, result = _solver_reference(run_)
    expected = result.factors
    users, items = run_.factors("user"), run_.factors("item")
    np.testing.assert_array_equal(users["user_id"].to_numpy(), user_ids)
    np.testing.assert_array_equal(items["item_id"].to_numpy(), item_ids)
    tolerance = dict(rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.stack(users["factors"]), expected.user_factors, **tolerance, err_msg="user factors")
    np.testing.assert_allclose(np.stack(items["factors"]), expected.item_factors, **tolerance, err_msg="item factors")
    if run_.config.model.bias:
        assert expected.biased
        np.testing.assert_allclose(users["bias"].to_numpy(), expected.user_bias, **tolerance, err_msg="user bias")
        np.testing.assert_allclose(items["bias"].to_numpy(), expected.item_bias, **tolerance, err_msg="item bias")
    else:
        assert "bias" not in users.columns and "bias" not in items.columns
    losses = [run_.metrics[f"train_loss_{t}"] for t in range(1, MAX_ITER + 1)]
    np.testing.assert_allclose(losses, result.objective_history, rtol=1e-4)


def test_no_holdout_means_no_evaluation(run_plain, data):
    metrics = run_plain.table("metrics")
    # Only the count of held-out ratings (zero); no held-out RMSE or ranking metrics.
    assert set(metrics.loc[metrics["name"].str.startswith("heldout_"), "name"]) == {"heldout_ratings"}
    assert run_plain.metrics["heldout_ratings"] == 0
    assert run_plain.metrics["train_ratings"] == len(data.latest())


# ----------------------------------------------------------------------------- 2. blocked == unblocked


def _final_loss(run_: Run) -> float:
    metrics = run_.table("metrics")
    losses = metrics[metrics["name"] == "train_loss"]
    return float(losses.loc[losses["iteration"].idxmax(), "value"])


def test_4x4_blocks_fit_the_same_model_as_1x1(run_1x1, run_4x4):
    assert _final_loss(run_4x4) == pytest.approx(_final_loss(run_1x1), rel=5e-3)
    rmse_1, rmse_4 = (r.table("metrics").set_index("name").loc["heldout_rmse", "value"] for r in (run_1x1, run_4x4))
    assert np.isfinite(rmse_1) and rmse_4 == pytest.approx(rmse_1, rel=5e-3)
    # Same rows, so the factors themselves should agree closely too.
    for side in ("user", "item"):
        a, b = run_1x1.factors(side), run_4x4.factors(side)
        np.testing.assert_array_equal(a[f"{side}_id"], b[f"{side}_id"])
        np.testing.assert_allclose(np.stack(b["factors"]), np.stack(a["factors"]), rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- 3. in process == multi-process


def test_multi_processing_runner_gives_the_same_tables(run_4x4, run_4x4_multi):
    for side in ("user", "item"):
        a, b = run_4x4.factors(side), run_4x4_multi.factors(side)
        np.testing.assert_array_equal(a[f"{side}_id"], b[f"{side}_id"])
        np.testing.assert_allclose(np.stack(b["factors"]), np.stack(a["factors"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b["bias"], a["bias"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b["n_ratings"], a["n_ratings"])
    keys = ["user_id", "rank"]
    recs_a = run_4x4.table("recommendations").sort_values(keys).reset_index(drop=True)
    recs_b = run_4x4_multi.table("recommendations").sort_values(keys).reset_index(drop=True)
    assert len(recs_a) == len(recs_b)
    np.testing.assert_allclose(recs_b["score"], recs_a["score"], rtol=1e-5, atol=1e-5)
    assert _model_metrics(run_4x4_multi) == pytest.approx(_model_metrics(run_4x4), rel=1e-6)


def _model_metrics(run_: Run) -> dict:
    """The run's metrics without wall-clock timings."""
    return {name: value for name, value in run_.metrics.items() if "seconds" not in name}


# ----------------------------------------------------------------------------- 4. the published tables


BLOCK_RUNS = ["run_1x1", "run_4x4"]


@pytest.mark.parametrize("name", ["run_1x1", "run_4x4", "run_4x4_multi"])
def test_published_folder_holds_the_tables_and_reports_only(name, request):
    """The rating blocks the iterations read (stored under the staging folder) are gone,
    whether the workers ran in this process or in others."""
    run_: Run = request.getfixturevalue(name)
    expected = {*TABLES, "metrics.json", "manifest.json", "report.html", "_SUCCESS"}
    assert set(os.listdir(run_.out)) == expected


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_every_table_reads_back_in_pandas_pyarrow_and_duckdb(name, request):
    run_: Run = request.getfixturevalue(name)
    manifest = json.loads(Path(run_.out, "manifest.json").read_text())
    for table in TABLES:
        folder = os.path.join(run_.out, table)
        by_pandas = pd.read_parquet(folder)
        by_arrow = pq.read_table(folder)
        n_duck = duckdb.sql(f"select count(*) from '{folder}/*.parquet'").fetchall()[0][0]
        assert len(by_pandas) == by_arrow.num_rows == n_duck == manifest["row_counts"][table], table
    factors = pq.read_table(os.path.join(run_.out, "user_factors"))
    assert factors.schema.field("user_id").type == pa.int64()
    assert factors.schema.field("factors").type == pa.list_(pa.float32(), RANK)
    assert factors.schema.field("bias").type == pa.float32()
    items = pq.read_table(os.path.join(run_.out, "item_factors"))
    assert items.schema.field("item_id").type == pa.int64()
    assert items.schema.field("factors").type == pa.list_(pa.float32(), RANK)
    recs = pq.read_table(os.path.join(run_.out, "recommendations"))
    assert recs.schema.field("user_id").type == pa.int64() and recs.schema.field("item_id").type == pa.int64()
    # pandas: ids stay int64, each factor row is a float32 vector of length rank.
    users = pd.read_parquet(os.path.join(run_.out, "user_factors"))
    assert users["user_id"].dtype == np.int64
    first = users["factors"].iloc[0]
    assert first.dtype == np.float32 and first.shape == (RANK,)
    # DuckDB: native BIGINT ids and FLOAT lists, no casts needed to compute with them. Parquet has
    # no fixed-size list type (pyarrow restores it from the stored Arrow schema), so DuckDB sees a
    # FLOAT list; every row must still hold exactly `rank` values.
    folder = os.path.join(run_.out, "user_factors")
    relation = duckdb.sql(f"select user_id, factors, factors[1] as f1 from '{folder}/*.parquet'")
    assert [str(t) for t in relation.types[:2]] in (["BIGINT", "FLOAT[]"], ["BIGINT", f"FLOAT[{RANK}]"])
    lengths = duckdb.sql("select min(len(factors)), max(len(factors)), min(f1) from relation").fetchall()
    assert lengths[0][:2] == (RANK, RANK) and lengths[0][2] >= 0.0


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_factor_tables_hold_each_training_user_and_item_once(name, request):
    run_: Run = request.getfixturevalue(name)
    train, _ = run_.split()
    for side in ("user", "item"):
        table = run_.factors(side)
        counts = train.groupby(f"{side}_id").size()
        assert len(table) == len(counts), f"{side}_factors rows != distinct training {side}s"
        assert table[f"{side}_id"].is_unique
        np.testing.assert_array_equal(table[f"{side}_id"].to_numpy(), counts.index.to_numpy())
        np.testing.assert_array_equal(table["n_ratings"].to_numpy(), counts.to_numpy())
        matrix = np.stack(table["factors"])
        assert matrix.shape == (len(counts), RANK)
        assert np.all(np.isfinite(matrix)) and matrix.min() >= 0.0, "NNMF factors must be non-negative"


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_recommendations_are_the_top_unrated_items(name, request):
    run_: Run = request.getfixturevalue(name)
    train, _ = run_.split()
    recs = run_.table("recommendations")
    users, items = run_.factors("user").set_index("user_id"), run_.factors("item")
    item_ids = items["item_id"].to_numpy()
    h, b_i = np.stack(items["factors"]).astype(np.float64), items["bias"].to_numpy(np.float64)
    mean = train["rating"].astype(np.float64).mean()
    rated = train.groupby("user_id")["item_id"].apply(set)
    expected_users = {u for u, s in rated.items() if len(s) < len(item_ids)}
    assert set(recs["user_id"]) == expected_users
    short = 0
    for user, group in recs.groupby("user_id"):
        group = group.sort_values("rank")
        candidates = np.array([i not in rated[user] for i in item_ids])
        n = min(TOP_N, int(candidates.sum()))
        short += n < TOP_N
        assert group["rank"].tolist() == list(range(1, n + 1)), f"user {user}: ranks"
        assert not set(group["item_id"]) & rated[user], f"user {user}: recommended an item rated in training"
        assert group["item_id"].is_unique
        # Scores are the model's predictions, best first, and no unlisted candidate beats them.
        w = np.asarray(users.loc[user, "factors"], np.float64)
        predicted = mean + users.loc[user, "bias"] + b_i + h @ w
        position = {item: k for k, item in enumerate(item_ids)}
        listed = np.array([position[i] for i in group["item_id"]])
        np.testing.assert_allclose(group["score"], predicted[listed], rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(group["score"].to_numpy()) <= 1e-6)
        others = candidates.copy()
        others[listed] = False
        if others.any():
            assert predicted[others].max() <= group["score"].min() + 1e-4, f"user {user}: a better item was left out"
    assert 0 < short < len(expected_users), "test data should include users with fewer and more candidates than top_n"


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_metrics_table_json_and_manifest(name, request, data):
    run_: Run = request.getfixturevalue(name)
    train, heldout = run_.split()
    out = Path(run_.out)
    assert (out / "_SUCCESS").exists()
    assert not Path(run_.out + ".staging").exists()
    metrics = run_.table("metrics")
    losses = metrics[metrics["name"] == "train_loss"].sort_values("iteration")
    assert losses["iteration"].tolist() == list(range(1, MAX_ITER + 1))
    values = losses["value"].to_numpy()
    assert np.all(values[1:] <= values[:-1] * (1 + 1e-6)), f"training loss increased: {values}"
    run_level = metrics[metrics["iteration"].isna()].set_index("name")["value"]
    assert run_level["rows_read"] == len(data.users)  # one per data line written
    assert run_level["rows_rejected"] == 0
    assert run_level["duplicates_dropped"] == len(data.users) - len(data.latest())
    assert run_level["train_ratings"] == len(train) and run_level["heldout_ratings"] == len(heldout)
    assert 0.0 < run_level["heldout_rmse"] < 1.0
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(run_.metrics)
    # Busy seconds for every stage, the Parquet writes included.
    stages = {name[len("seconds_"):] for name in run_.metrics if name.startswith("seconds_")} - {"total"}
    assert stages == {"read", "validate", "block", "factorize", "recommend", "write"}
    manifest = json.loads((out / "manifest.json").read_text())
    for table in TABLES:
        assert manifest["row_counts"][table] == pq.read_table(out / table).num_rows, table
    assert manifest["config"]["blocks"] == {"user_blocks": run_.config.blocks.user_blocks,
                                            "item_blocks": run_.config.blocks.item_blocks}
    assert sorted(entry["path"] for entry in manifest["inputs"]) == sorted(set(data.sources))


def _predictions(run_: Run, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """What the model predicts for (user, item) pairs, from the published factor tables: the
    factors where both ids are known, else the global mean plus any known bias."""
    train, _ = run_.split()
    mean = train["rating"].astype(np.float64).mean()
    user_table, item_table = run_.factors("user").set_index("user_id"), run_.factors("item").set_index("item_id")
    out = np.full(len(users), mean)
    for k, (user, item) in enumerate(zip(users, items)):
        known_user, known_item = user in user_table.index, item in item_table.index
        if known_user:
            out[k] += user_table.loc[user, "bias"]
        if known_item:
            out[k] += item_table.loc[item, "bias"]
        if known_user and known_item:
            out[k] += float(np.dot(user_table.loc[user, "factors"], item_table.loc[item, "factors"]))
    return out


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_heldout_rmse_matches_the_factor_tables(name, request):
    run_: Run = request.getfixturevalue(name)
    train, heldout = run_.split()
    assert not set(heldout["user_id"]) <= set(train["user_id"]), "test data should hold out some users entirely"
    assert not set(heldout["item_id"]) <= set(train["item_id"]), "test data should hold out some items entirely"
    predicted = _predictions(run_, heldout["user_id"].to_numpy(), heldout["item_id"].to_numpy())
    predicted = np.clip(predicted, run_.config.validation.rating_min, run_.config.validation.rating_max)
    error = predicted - heldout["rating"].to_numpy(np.float64)
    assert run_.metrics["heldout_rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-4)
    assert run_.metrics["heldout_mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-4)


def _expected_ranking_metrics(run_: Run) -> dict[str, float]:
    """Precision/recall/NDCG@k averaged over every held-out user with a relevant rating.

    A user known to the model is ranked by its recommendations (training items excluded); a
    held-out user unknown to the model by the fallback ranking: the item biases, ties by
    ascending item id (as every ranking)."""
    k, threshold = run_.config.evaluation.k, run_.config.evaluation.relevance_threshold
    train, heldout = run_.split()
    recs = run_.table("recommendations").sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)
    items = run_.factors("item").sort_values("item_id")
    fallback = items["item_id"].to_numpy()[np.argsort(-items["bias"].to_numpy(), kind="stable")][:k].tolist()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for user, group in heldout[heldout["rating"] >= threshold].groupby("user_id"):
        relevant = set(group["item_id"])
        ranked = recs[user][:k] if user in recs.index else fallback
        hits = np.array([item in relevant for item in ranked] + [False] * (k - len(ranked)))
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(relevant))
        ndcg.append(discounts[hits].sum() / discounts[: min(len(relevant), k)].sum())
    return {"users": len(precision), "precision": np.mean(precision), "recall": np.mean(recall), "ndcg": np.mean(ndcg)}


@pytest.mark.parametrize("name", BLOCK_RUNS)
def test_ranking_metrics_count_every_heldout_user(name, request):
    run_: Run = request.getfixturevalue(name)
    expected = _expected_ranking_metrics(run_)
    k = run_.config.evaluation.k
    assert run_.metrics["heldout_ranked_users"] == expected["users"]
    assert run_.metrics[f"heldout_precision_at_{k}"] == pytest.approx(expected["precision"], rel=1e-6)
    assert run_.metrics[f"heldout_recall_at_{k}"] == pytest.approx(expected["recall"], rel=1e-6)
    assert run_.metrics[f"heldout_ndcg_at_{k}"] == pytest.approx(expected["ndcg"], rel=1e-6)


def test_string_ids_stay_strings(run_strings):
    out = run_strings.out
    users, items = pq.read_table(os.path.join(out, "user_factors")), pq.read_table(os.path.join(out, "item_factors"))
    recs = pq.read_table(os.path.join(out, "recommendations"))
    assert users.schema.field("user_id").type == pa.string()
    assert recs.schema.field("user_id").type == pa.string()
    assert items.schema.field("item_id").type == pa.int64() and recs.schema.field("item_id").type == pa.int64()
    train, _ = run_strings.split()
    assert sorted(users.column("user_id").to_pylist()) == sorted(train["user_id"].unique())
    assert all(u.startswith("u") for u in recs.column("user_id").to_pylist())
    assert pd.read_parquet(os.path.join(out, "user_factors"))["user_id"].map(type).eq(str).all()
    folder = os.path.join(out, "recommendations")
    relation = duckdb.sql(f"select user_id, item_id from '{folder}/*.parquet'")
    assert [str(t) for t in relation.types] == ["VARCHAR", "BIGINT"]


# ----------------------------------------------------------------------------- 5. output safety


def test_published_output_is_not_replaced_without_overwrite(run_1x1):
    before = {p: p.stat().st_mtime_ns for p in Path(run_1x1.out).rglob("*")}
    with pytest.raises(OutputExistsError):
        run(run_1x1.config)
    assert {p: p.stat().st_mtime_ns for p in Path(run_1x1.out).rglob("*")} == before
    assert not Path(run_1x1.out + ".staging").exists()


def test_leftover_staging_does_not_block_a_rerun_and_overwrite_replaces(data, tmp_path):
    out = tmp_path / "out"
    staging = Path(str(out) + ".staging")
    (staging / "user_factors").mkdir(parents=True)
    (staging / "user_factors" / "part-99999-of-99999.parquet").write_bytes(b"half written by a killed run")
    (staging / "leftover.txt").write_text("junk")
    quick = ("blocks.user_blocks=1", "blocks.item_blocks=1", "model.max_iter=1", *IN_PROCESS)

    first = _run(data, out, *quick)
    assert (out / "_SUCCESS").exists() and not staging.exists()
    assert not (out / "leftover.txt").exists()
    assert not (out / "user_factors" / "part-99999-of-99999.parquet").exists()
    train, _ = first.split()
    assert len(pd.read_parquet(out / "user_factors")) == train["user_id"].nunique()

    (out / "marker").write_text("from the previous run")
    with pytest.raises(OutputExistsError):
        _run(data, out, *quick)
    assert (out / "marker").exists()
    second = _run(data, out, *quick, "output.overwrite=true")
    assert (out / "_SUCCESS").exists() and not (out / "marker").exists()
    assert _model_metrics(second) == pytest.approx(_model_metrics(first))


# ----------------------------------------------------------------------------- 6. bad rows


BAD_LINES = [
    ("{u},{i},abc,1600000001", "rating"),
    ("{u},{i},9,1600000002", "rating"),
    (",{i},3,1600000003", "user_id"),
]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> tuple[Ratings, list[tuple[str, int, str]]]:
    """Two good shards plus a shard whose lines 3, 5 and 7 are invalid: (data, [(path, line, field)]).

    The shard's four valid lines repeat pairs of the good shards, so they are duplicates."""
    data = write_ratings(tmp_path_factory.mktemp("bad_ratings"), seed=11, n_ratings=600, n_duplicates=0, shards=2)
    path = data.folder / "r-9.csv"
    good = [f"{data.users[k]},{data.items[k]},{data.ratings[k]:g},{data.timestamps[k]}" for k in range(4)]
    u, i = data.users[0], 999_999_999
    lines = [HEADER, good[0], BAD_LINES[0][0], good[1], BAD_LINES[1][0], good[2], BAD_LINES[2][0], good[3]]
    path.write_text("\n".join(line.format(u=u, i=i) for line in lines) + "\n")
    bad = [(str(path), 3, "rating"), (str(path), 5, "rating"), (str(path), 7, "user_id")]
    return data, bad


def test_invalid_rows_go_to_the_rejected_table(bad_data, tmp_path):
    data, bad = bad_data
    out = tmp_path / "out"
    result = _run(data, out, "model.max_iter=1", "blocks.user_blocks=2", "blocks.item_blocks=1", *IN_PROCESS)
    rejected = pd.read_parquet(out / "rejected").sort_values("row")
    assert list(zip(rejected["source"], rejected["row"], rejected["field"])) == bad
    reasons = rejected["reason"].tolist()
    assert "rating" in reasons[0] and "'abc'" in reasons[0]
    assert "rating" in reasons[1] and "'9'" in reasons[1]
    assert "user_id" in reasons[2]
    assert rejected["value"].tolist()[:2] == ["abc", "9"]
    n_lines = len(data.users) + 7  # the good shards plus every data line of r-9.csv
    assert result.metrics["rows_read"] == n_lines
    assert result.metrics["rows_rejected"] == len(bad)
    assert result.metrics["duplicates_dropped"] == 4
    kept = result.metrics["train_ratings"] + result.metrics["heldout_ratings"]
    assert kept + result.metrics["duplicates_dropped"] == n_lines - len(bad)
    assert json.loads((out / "manifest.json").read_text())["row_counts"]["rejected"] == len(bad)


def test_too_many_rejections_fail_the_run_and_publish_nothing(bad_data, tmp_path):
    data, _ = bad_data
    out = tmp_path / "out"
    config = make_config(data, out, "validation.max_rejected_fraction=0.0", "model.max_iter=1", *IN_PROCESS)
    with pytest.raises(Exception, match="max_rejected_fraction"):
        run(config)
    assert not (out / "_SUCCESS").exists()
    assert not (out / "user_factors").exists()


# ----------------------------------------------------------------------------- 7. command line


def test_cli_run_publishes(data, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "cli-out"
    status = main([
        "run", "--config", LOCAL_CONFIG,
        "--set", f"input.path={data.glob}",
        "--set", "model.max_iter=1", "--set", f"model.rank={RANK}",
        "--set", "beam.options.direct_running_mode=in_memory",
        "--output", str(out),
    ])
    assert status == 0
    assert (out / "_SUCCESS").exists() and (out / "metrics.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows_read"] == len(data.users)
    config = load_config(LOCAL_CONFIG, [f"input.path={data.glob}", f"output.path={out}"])
    train, _ = data.split(config.split.holdout_fraction, config.split.seed)
    assert len(pd.read_parquet(out / "user_factors")) == train["user_id"].nunique()


def test_manifest_tensorflow_version_without_importing_it(monkeypatch):
    """A launcher that ran no stage has not imported TensorFlow; the manifest still names the
    installed version, read from the package metadata."""
    import tensorflow

    from pipeline.main import _tensorflow_version

    assert _tensorflow_version() == tensorflow.__version__
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert _tensorflow_version() == tensorflow.__version__


# ----------------------------------------------------------------------------- 8. failed gate, Beam options


def test_rejected_rows_stay_readable_when_the_gate_stops_the_run(bad_data, tmp_path):
    """The error names the finalized rejected table under the staging folder, which holds every bad row."""
    data, bad = bad_data
    out = tmp_path / "out"
    config = make_config(data, out, "validation.max_rejected_fraction=0.0", "model.max_iter=1", *IN_PROCESS)
    rejected_folder = os.path.join(str(out) + ".staging", "rejected")
    with pytest.raises(Exception, match="max_rejected_fraction") as error:
        run(config)
    assert f"in {rejected_folder}; nothing was published" in str(error.value)
    assert not any(name.startswith("beam-temp") for name in os.listdir(rejected_folder))
    rejected = pd.read_parquet(rejected_folder).sort_values("row")
    assert list(zip(rejected["source"], rejected["row"], rejected["field"])) == bad
    assert not out.exists()


def test_manifest_records_the_beam_options_used(data, tmp_path):
    """Command-line Beam options win over the config's and the manifest says so."""
    from pipeline.cli import main

    out = tmp_path / "cli-mt"
    status = main([
        "run", "--config", LOCAL_CONFIG, "--set", f"input.path={data.glob}",
        "--set", "model.max_iter=1", "--set", f"model.rank={RANK}", "--output", str(out),
        "--direct_running_mode=multi_threading", "--direct_num_workers=2", "--job_name=nightly",
    ])
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["beam"] == {
        "runner": "DirectRunner",
        "options": {"direct_running_mode": "multi_threading", "direct_num_workers": 2, "job_name": "nightly"},
    }


def test_used_beam_section_takes_the_command_line_values():
    """Config options keep their place with the command line's value (even a default one);
    options only the command line names are added; the runner too."""
    from pipeline.main import used_beam_section

    config = load_config(LOCAL_CONFIG, ["beam.options.direct_num_workers=2"])
    section = used_beam_section(config, ["--runner=FnApiRunner", "--direct_num_workers", "1", "--job_name=x"])
    assert section == {
        "runner": "FnApiRunner",
        "options": {"direct_running_mode": "in_memory", "direct_num_workers": 1, "job_name": "x"},
    }
    assert used_beam_section(config, []) == {"runner": "DirectRunner", "options": dict(config.beam.options)}
