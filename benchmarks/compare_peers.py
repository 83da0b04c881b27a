"""Side-by-side accuracy and fit time of nnmf_tf and Spark ALS, one table per dataset.

    python benchmarks/compare_peers.py [--quick] [--skip-spark] [--datasets ml-100k synthetic-1m]
                                       [--rank 20] [--iterations 10] [--repeats 3] [--data PATH]

Datasets: MovieLens 100K (skipped when absent) and a generated set of 1M ratings
(:func:`pipeline.generate.generate_ratings`, 20k users x 4k items, integer ratings 1-5), both
evaluated with the protocol of ``shared/data/README.md``: a seeded 80/20 permutation split,
tuning on a 90/10 split of train, predictions clipped to [1, 5] with the global-mean fallback,
ranking at K=10 with rated items excluded and ties by ascending item id.

Models, all at the same rank and iteration count: nnmf_tf with the rating objective (unbiased
and biased), nnmf_tf with the ranking objective, Spark ALS explicit (non-negative and
unconstrained) and a popularity baseline. Each model's regularisation (and the ranking
objective's unobserved weight) is chosen on the validation split — by RMSE for rating models,
by NDCG@10 for the ranking objective — then refitted on the full train split and evaluated on
test. Fit time is the median over ``--repeats`` refits of the fit call alone: ``nnmf_tf.solver.fit``
after a warm-up fit (TensorFlow tracing excluded), ``ALS.fit`` on a cached and counted DataFrame.

Requires the ``bench`` extra (pyspark) unless ``--skip-spark``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from nnmf_tf.data import SparseRatings
from nnmf_tf.metrics import mae, ranking_metrics, rmse
from nnmf_tf.model import Factors, predict
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import fit
from nnmf_tf.topn import top_n
from pipeline.generate import generate_ratings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/ml-100k/u.data"
DATASETS = ("ml-100k", "synthetic-1m")
K = 10
RELEVANCE = 4.0
CLIP = (1.0, 5.0)
SYNTHETIC = {"n_users": 20_000, "n_items": 4_000, "n_ratings": 1_000_000, "seed": 1}
SPARK_NONNEG = "Spark ALS non-negative"

#: Rating models, two families searched together on validation: plain weighted-λ (count
#: exponent 1, shrinkage toward 0) over ``WEIGHTED_REG_GRID``, and the shrinkage tuned by
#: ``benchmarks/ml100k.py`` — count exponent 0.5 on the factor penalty, count-free bias
#: penalty, factors shrunk toward a positive centre — over ``OUR_REG_GRID`` × the prediction
#: at the prior, ``rank · factor_center²`` (``PRIOR_GRID``).
SHRINKAGE = {"reg_exponent": 0.5, "bias_reg": 3.0, "bias_reg_exponent": 0.0}
WEIGHTED_REG_GRID = (0.05, 0.1)
OUR_REG_GRID = (1.0, 1.2, 1.4, 1.6)
PRIOR_GRID = {False: (1.0, 2.0, 3.0), True: (0.5, 1.0)}
QUICK_PRIOR_GRID = {False: (2.0,), True: (1.0,)}
QUICK_OUR_REG_GRID = (1.4,)
RANKING_REG_GRID = (0.05, 0.15)
UNOBSERVED_GRID = (0.01, 0.03, 0.1, 0.3)
SPARK_REG_GRID = (0.03, 0.05, 0.1, 0.2)
QUICK_REG_GRID = (0.05, 0.1)
QUICK_UNOBSERVED_GRID = (0.1,)


@dataclass(frozen=True)
class Triples:
    """Raw ratings: external user id, item id and rating of each row."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, index: np.ndarray) -> "Triples":
        """The rows at ``index``, in that order."""
        return Triples(self.users[index], self.items[index], self.ratings[index])


def protocol_split(data: Triples, seed: int, fraction: float) -> tuple[Triples, Triples]:
    """Rows permuted with ``default_rng(seed)``; the first ``fraction`` of them, and the rest."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = int(round(fraction * len(data)))
    return data.take(order[:cut]), data.take(order[cut:])


def _index(train_ids: np.ndarray, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense indices of the train ids (sorted by id), and of the test ids in the same vocabulary.

    A test id absent from train gets an index ``>= n`` (distinct per id), so it never matches
    a trained row or column.
    """
    vocab, train_index = np.unique(train_ids, return_inverse=True)
    position = np.minimum(np.searchsorted(vocab, test_ids), len(vocab) - 1)
    known = vocab[position] == test_ids
    _, unseen = np.unique(test_ids[~known], return_inverse=True)
    test_index = position.astype(np.int64)
    test_index[~known] = len(vocab) + unseen
    return train_index, test_index, len(vocab)


@dataclass(frozen=True)
class Split:
    """Training ratings indexed by their own vocabulary, and held-out pairs in the same indices.

    Held-out users and items unseen in training have indices ``>= n_users`` / ``>= n_items``.
    """

    train: SparseRatings
    test_users: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray

    @classmethod
    def build(cls, train: Triples, test: Triples) -> "Split":
        """Index ``train`` and ``test`` by the users and items of ``train``."""
        rows, test_users, n_users = _index(train.users, test.users)
        cols, test_items, n_items = _index(train.items, test.items)
        ratings = SparseRatings(rows, cols, train.ratings.astype(np.float32), (n_users, n_items))
        return cls(ratings, test_users, test_items, test.ratings.astype(np.float64))

    @property
    def n_users(self) -> int:
        """Users in training."""
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        """Items in training."""
        return self.train.shape[1]

    @cached_property
    def mean(self) -> float:
        """Mean training rating: the fallback prediction."""
        return self.train.mean()

    @cached_property
    def exclude(self) -> SparseRatings:
        """Training pairs, with one extra empty row: the fallback user for unseen users."""
        t = self.train
        return SparseRatings(t.rows, t.cols, t.values, (self.n_users + 1, self.n_items))

    @cached_property
    def relevant(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Users with a held-out rating ``>= RELEVANCE``, and each one's relevant item indices."""
        mask = self.test_ratings >= RELEVANCE
        users, items = self.test_users[mask], self.test_items[mask]
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        unique, starts = np.unique(users, return_index=True)
        return unique, np.split(items, starts[1:])


@dataclass(frozen=True)
class Dataset:
    """One dataset's tuning split (fit / validation) and final split (train / test)."""

    name: str
    n_ratings: int
    tuning: Split
    final: Split

    @classmethod
    def prepare(cls, name: str, data: Triples) -> "Dataset":
        """The protocol's splits: 80/20 with seed 42, then train 90/10 with seed 43."""
        train, test = protocol_split(data, 42, 0.8)
        fit_part, validation = protocol_split(train, 43, 0.9)
        return cls(name, len(data), Split.build(fit_part, validation), Split.build(train, test))


def load_movielens(path: Path) -> Triples:
    """MovieLens ``u.data``: tab-separated user, item, rating, timestamp."""
    data = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))
    return Triples(data[:, 0], data[:, 1], data[:, 2].astype(np.float32))


def load_synthetic() -> Triples:
    """The seeded generated set: integer ratings 1-5 on a planted non-negative model."""
    table = pa.concat_tables(
        generate_ratings(**SYNTHETIC, rating_min=1.0, rating_max=5.0, rating_step=1.0)
    )
    return Triples(
        table.column("user_id").to_numpy(), table.column("item_id").to_numpy(), table.column("rating").to_numpy()
    )


def ranking_scores(ranked: np.ndarray, split: Split) -> dict[str, float]:
    """P@K, R@K and NDCG@K of ``ranked`` (one row per trained user, then the fallback row)."""
    users, relevant = split.relevant
    return ranking_metrics(ranked[np.minimum(users, split.n_users)], relevant, K)


def fallback_predictions(factors: Factors, split: Split) -> np.ndarray:
    """Held-out predictions: the model where both are known, else μ plus any known bias."""
    users, items = split.test_users, split.test_items
    user_known, item_known = users < split.n_users, items < split.n_items
    known = user_known & item_known
    out = np.full(len(users), factors.global_mean if factors.biased else split.mean, np.float64)
    out[known] = predict(factors, users[known], items[known])
    if factors.biased:
        out[user_known & ~item_known] += factors.user_bias[users[user_known & ~item_known]]
        out[item_known & ~user_known] += factors.item_bias[items[item_known & ~user_known]]
    return out


def factor_ranking(factors: Factors, split: Split) -> np.ndarray:
    """Top-K items of every trained user and of an all-zero fallback user, via :func:`top_n`."""
    w = np.vstack([factors.user_factors, np.zeros((1, factors.rank), np.float32)])
    if factors.biased:
        bias = np.append(factors.user_bias, np.float32(0.0))
        model = Factors(w, factors.item_factors, bias, factors.item_bias, factors.global_mean)
    else:
        model = Factors(w, factors.item_factors)
    items, _ = top_n(model, K, exclude=split.exclude)
    return items


def numpy_ranking(user_factors: np.ndarray, item_factors: np.ndarray, split: Split, block: int = 1024) -> np.ndarray:
    """Top-K by ``w_u · h_i`` in numpy, with the candidate and tie rules of :func:`top_n`.

    Rows are the trained users, then an all-zero fallback user; training pairs are excluded,
    ties go to the lower item index, and rows with fewer than K candidates are padded with -1.
    """
    w = np.vstack([user_factors, np.zeros((1, user_factors.shape[1]), np.float32)])
    exclude = split.exclude
    out = np.full((w.shape[0], K), -1, np.int64)
    for start in range(0, w.shape[0], block):
        stop = min(start + block, w.shape[0])
        scores = w[start:stop] @ item_factors.T
        lo, hi = exclude.row_splits[start], exclude.row_splits[stop]
        scores[exclude.rows[lo:hi] - start, exclude.cols[lo:hi]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        found = np.isfinite(np.take_along_axis(scores, order, axis=1))
        out[start:stop, : order.shape[1]] = np.where(found, order, -1)
    return out


class Peer(Protocol):
    """A model under comparison: how to fit it and what it predicts and recommends."""

    name: str
    grid: list[dict[str, float]]
    criterion: str

    def fit(self, split: Split, hp: dict[str, float]) -> tuple[Any, float]:
        """The fitted model and the seconds of the fit call alone."""

    def predictions(self, model: Any, split: Split) -> np.ndarray | None:
        """Held-out predictions with the fallback applied, or None for a ranking-only model."""

    def ranking(self, model: Any, split: Split) -> np.ndarray:
        """Top-K item indices per trained user, then one fallback row."""


@dataclass
class OursPeer:
    """``nnmf_tf.solver.fit`` with fixed base parameters and a grid over some of them."""

    name: str
    base: SolverParams
    grid: list[dict[str, float]]
    criterion: str = "rmse"

    def fit(self, split: Split, hp: dict[str, float]) -> tuple[Factors, float]:
        """Fit on ``split.train``; time the ``fit`` call."""
        params = self.base.replace(**hp)
        started = time.perf_counter()
        result = fit(split.train, params)
        return result.factors, time.perf_counter() - started

    def predictions(self, model: Factors, split: Split) -> np.ndarray:
        """Model predictions, the fallback for unseen users or items."""
        return fallback_predictions(model, split)

    def ranking(self, model: Factors, split: Split) -> np.ndarray:
        """Top-K by raw score (biases included), rated items excluded."""
        return factor_ranking(model, split)


@dataclass
class PopularityPeer:
    """Most-rated training items first; no rating predictions."""

    name: str = "popularity"
    grid: list[dict[str, float]] = field(default_factory=lambda: [{}])
    criterion: str = "ndcg"

    def fit(self, split: Split, hp: dict[str, float]) -> tuple[np.ndarray, float]:
        """Count each item's training ratings."""
        started = time.perf_counter()
        counts = split.train.col_counts().astype(np.float32)
        return counts, time.perf_counter() - started

    def predictions(self, model: np.ndarray, split: Split) -> None:
        """No rating predictions."""
        return None

    def ranking(self, model: np.ndarray, split: Split) -> np.ndarray:
        """Items by count, rated items excluded."""
        ones = np.ones((split.n_users + 1, 1), np.float32)
        items, _ = top_n(Factors(ones, model[:, None]), K, exclude=split.exclude)
        return items


class SparkFrames:
    """Cached, counted Spark DataFrames of each split's train and held-out pairs."""

    def __init__(self, spark: Any) -> None:
        self._spark = spark
        self._frames: dict[int, tuple[Split, Any, Any]] = {}

    def get(self, split: Split) -> tuple[Any, Any]:
        """The train DataFrame (user, item, rating) and held-out DataFrame (row, user, item)."""
        if id(split) not in self._frames:
            t = split.train
            train = self._cached(pa.table({"user": t.rows, "item": t.cols, "rating": t.values}))
            test = self._cached(pa.table({
                "row": np.arange(len(split.test_users), dtype=np.int64),
                "user": split.test_users.astype(np.int32),
                "item": split.test_items.astype(np.int32),
            }))
            self._frames[id(split)] = (split, train, test)
        _, train, test = self._frames[id(split)]
        return train, test

    def _cached(self, table: pa.Table) -> Any:
        frame = self._spark.createDataFrame(table).cache()
        frame.count()
        return frame

    def release(self) -> None:
        """Unpersist every DataFrame."""
        for _, train, test in self._frames.values():
            train.unpersist()
            test.unpersist()
        self._frames.clear()


def spark_factors(frame: Any, n: int, rank: int) -> np.ndarray:
    """An ALS factor DataFrame (id, features) as an ``(n, rank)`` array; missing ids are zero."""
    table = frame.toArrow()
    out = np.zeros((n, rank), np.float32)
    features = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    out[table.column("id").to_numpy()] = features.reshape(-1, rank)
    return out


@dataclass
class SparkPeer:
    """``pyspark.ml.recommendation.ALS``, explicit feedback."""

    name: str
    frames: SparkFrames
    nonnegative: bool
    rank: int
    iterations: int
    grid: list[dict[str, float]]
    criterion: str = "rmse"

    def fit(self, split: Split, hp: dict[str, float]) -> tuple[Any, float]:
        """Fit on the cached train DataFrame; time the ``als.fit`` call."""
        from pyspark.ml.recommendation import ALS

        train, _ = self.frames.get(split)
        als = ALS(
            rank=self.rank, maxIter=self.iterations, regParam=hp["regParam"], nonnegative=self.nonnegative,
            userCol="user", itemCol="item", ratingCol="rating", coldStartStrategy="nan", seed=42,
        )
        started = time.perf_counter()
        model = als.fit(train)
        return model, time.perf_counter() - started

    def predictions(self, model: Any, split: Split) -> np.ndarray:
        """``model.transform`` on the held-out pairs; NaN (cold start) becomes the global mean."""
        _, test = self.frames.get(split)
        table = model.transform(test).select("row", "prediction").toArrow()
        out = np.empty(len(split.test_users), np.float64)
        out[table.column("row").to_numpy()] = table.column("prediction").to_numpy()
        return np.where(np.isnan(out), split.mean, out)

    def ranking(self, model: Any, split: Split) -> np.ndarray:
        """Top-K from the factor matrices in numpy, rated items excluded."""
        w = spark_factors(model.userFactors, split.n_users, self.rank)
        h = spark_factors(model.itemFactors, split.n_items, self.rank)
        return numpy_ranking(w, h, split)


def start_spark() -> tuple[Any, float]:
    """A local[2] Spark session with a 4 GB driver, and the seconds it took to start."""
    from pyspark.sql import SparkSession

    warnings.filterwarnings("ignore", category=FutureWarning, module="pyspark")
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark, time.perf_counter() - started


def validation_score(peer: Peer, hp: dict[str, float], split: Split) -> float:
    """The tuning criterion of ``peer`` at ``hp``, on the validation pairs of ``split``."""
    model, _ = peer.fit(split, hp)
    if peer.criterion == "rmse":
        return rmse(peer.predictions(model, split), split.test_ratings, clip=CLIP)
    return ranking_scores(peer.ranking(model, split), split)["ndcg"]


def tune(peer: Peer, split: Split) -> dict[str, float]:
    """The grid point with the best validation score (lowest RMSE or highest NDCG@K)."""
    if len(peer.grid) == 1:
        return peer.grid[0]
    scores = [validation_score(peer, hp, split) for hp in peer.grid]
    best = int(np.argmin(scores) if peer.criterion == "rmse" else np.argmax(scores))
    return peer.grid[best]


@dataclass(frozen=True)
class Row:
    """One model's line of the table."""

    name: str
    hyperparameters: str
    metrics: dict[str, float]
    seconds: float


def benchmark(peer: Peer, dataset: Dataset, repeats: int) -> Row:
    """Tune on validation, refit ``repeats`` times on train, evaluate the last refit on test."""
    hp = tune(peer, dataset.tuning)
    runs = [peer.fit(dataset.final, hp) for _ in range(repeats)]
    model = runs[-1][0]
    predicted = peer.predictions(model, dataset.final)
    actual = dataset.final.test_ratings
    metrics = {
        "rmse": float("nan") if predicted is None else rmse(predicted, actual, clip=CLIP),
        "mae": float("nan") if predicted is None else mae(predicted, actual, clip=CLIP),
        **ranking_scores(peer.ranking(model, dataset.final), dataset.final),
    }
    label = " ".join(f"{key}={value:g}" for key, value in hp.items()) or "-"
    return Row(peer.name, label, metrics, statistics.median(seconds for _, seconds in runs))


def our_peers(rank: int, iterations: int, quick: bool) -> list[OursPeer]:
    """nnmf_tf with the rating objective (unbiased, biased) and with the ranking objective."""
    base = SolverParams(rank=rank, max_iter=iterations)
    regs = QUICK_OUR_REG_GRID if quick else OUR_REG_GRID
    priors = QUICK_PRIOR_GRID if quick else PRIOR_GRID
    ranking_regs = QUICK_REG_GRID if quick else RANKING_REG_GRID
    weights = QUICK_UNOBSERVED_GRID if quick else UNOBSERVED_GRID

    def rating_grid(bias: bool) -> list[dict[str, float]]:
        centers = [round(float(np.sqrt(prior / rank)), 4) for prior in priors[bias]]
        shrunk = [{"reg": r, **SHRINKAGE, "factor_center": c} for r in regs for c in centers]
        return shrunk if quick else [{"reg": r} for r in WEIGHTED_REG_GRID] + shrunk

    return [
        OursPeer("nnmf_tf rating", base, rating_grid(False)),
        OursPeer("nnmf_tf rating biased", base.replace(bias=True), rating_grid(True)),
        OursPeer(
            "nnmf_tf ranking",
            base.replace(objective="ranking"),
            [{"reg": r, "unobserved_weight": w} for w in weights for r in ranking_regs],
            criterion="ndcg",
        ),
    ]


def spark_peers(frames: SparkFrames, rank: int, iterations: int, quick: bool) -> list[SparkPeer]:
    """Spark ALS explicit, non-negative and unconstrained."""
    grid = [{"regParam": r} for r in (QUICK_REG_GRID if quick else SPARK_REG_GRID)]
    return [
        SparkPeer(SPARK_NONNEG, frames, True, rank, iterations, grid),
        SparkPeer("Spark ALS unconstrained", frames, False, rank, iterations, grid),
    ]


def _number(value: float, digits: int = 4) -> str:
    return "-" if np.isnan(value) else f"{value:.{digits}f}"


def format_table(dataset: Dataset, rows: list[Row], rank: int, iterations: int, repeats: int) -> str:
    """A Markdown table of ``rows`` under a one-line description of the dataset and the run."""
    split = dataset.final
    reference = {row.name: row.seconds for row in rows}.get(SPARK_NONNEG)
    lines = [
        f"{dataset.name}: {dataset.n_ratings} ratings; train {split.train.nnz} ({split.n_users} users x "
        f"{split.n_items} items), test {len(split.test_ratings)}, {len(split.relevant[0])} users ranked; "
        f"rank {rank}, {iterations} iterations, fit s = median of {repeats}",
        "",
        "| model | hyperparameters | RMSE | MAE | P@10 | R@10 | NDCG@10 | fit s | fit / Spark NN |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        m = row.metrics
        ratio = "-" if reference is None else f"{row.seconds / reference:.2f}"
        lines.append(
            f"| {row.name} | {row.hyperparameters} | {_number(m['rmse'])} | {_number(m['mae'])} | "
            f"{_number(m['precision'])} | {_number(m['recall'])} | {_number(m['ndcg'])} | "
            f"{row.seconds:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def load_dataset(name: str, data_path: Path) -> Dataset | None:
    """The named dataset with its splits, or None (with a message) when its file is absent."""
    if name == "ml-100k":
        if not data_path.exists():
            print(f"MovieLens 100K not found at {data_path}; skipping it (pass --data)")
            return None
        return Dataset.prepare(name, load_movielens(data_path))
    return Dataset.prepare(name, load_synthetic())


def warm_up(split: Split, rank: int, iterations: int) -> float:
    """Seconds of a first ``fit`` call on ``split``, which also traces TensorFlow's functions and
    compiles the solver; a biased fit follows (untimed) to compile its one-wider shape too."""
    started = time.perf_counter()
    fit(split.train, SolverParams(rank=rank, max_iter=iterations))
    seconds = time.perf_counter() - started
    fit(split.train, SolverParams(rank=rank, max_iter=1, bias=True))
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` means a tiny grid, one repeat and ML-100K only."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens 100K u.data")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny grid, 1 repeat, ML-100K only")
    parser.add_argument("--skip-spark", action="store_true", help="only nnmf_tf and popularity")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.datasets = 1, ["ml-100k"]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every requested dataset and print its table."""
    args = parse_args(argv)
    started = time.perf_counter()
    spark, frames = None, None
    if not args.skip_spark:
        spark, spark_seconds = start_spark()
        frames = SparkFrames(spark)
        print(f"Spark session (local[2], driver 4g) started in {spark_seconds:.1f} s")
    first_call = None
    try:
        for name in args.datasets:
            dataset = load_dataset(name, args.data)
            if dataset is None:
                continue
            if first_call is None:
                first_call = warm_up(dataset.final, args.rank, args.iterations)
            peers: list[Peer] = [*our_peers(args.rank, args.iterations, args.quick)]
            if frames is not None:
                peers += spark_peers(frames, args.rank, args.iterations, args.quick)
            rows = [benchmark(peer, dataset, args.repeats) for peer in [*peers, PopularityPeer()]]
            print()
            print(format_table(dataset, rows, args.rank, args.iterations, args.repeats))
            if frames is not None:
                frames.release()
    finally:
        if spark is not None:
            spark.stop()
    print()
    if first_call is not None:
        print(f"first nnmf_tf fit call of the process (TensorFlow tracing included): {first_call:.2f} s")
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
