"""Accuracy and fit time of nnmf_tf on MovieLens 100K, unbiased and biased, over a small grid.

    python benchmarks/ml100k.py [--quick] [--data PATH] [--repeats 3]

Protocol (``shared/data/README.md``): rows permuted with ``numpy.random.default_rng(42)``, the
first 80% train and the rest test; train permuted again with seed 43, 90% fit and 10%
validation. RMSE and MAE clip predictions to [1, 5]; a pair whose user or item is unseen in
the training data is predicted by the model's fallback: the mean training rating (unbiased),
or the global mean plus whichever bias is known (biased).

For every (rank, bias) the hyperparameters are chosen by validation RMSE (fit on the 90%,
evaluated on the 10%), then the model is refitted on the whole train split and evaluated on
test. Fit seconds are the median of ``--repeats`` refits in this process (TensorFlow's
tracing done); the first call of a fresh process is timed separately at rank 20.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnmf_tf.data import SparseRatings
from nnmf_tf.metrics import mae, rmse
from nnmf_tf.model import Factors, predict
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import FitResult, fit

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/ml-100k/u.data"
CLIP = (1.0, 5.0)
MAX_ITER = 20
TIMED_RANK = 20

#: Fixed for every model: penalties ``reg · n^0.5`` on the factors and a count-free
#: ``bias_reg`` on the biases (see ``nnmf_tf/params.py``); 20 inner steps per half-step
#: (as accurate as the default 50 here, in 40-60% of the time).
BASE = {"max_iter": MAX_ITER, "inner_max_iter": 20, "reg_exponent": 0.5, "bias_reg": 3.0, "bias_reg_exponent": 0.0}
#: Searched per (rank, bias): ``reg``, and the prediction at the prior, ``rank · factor_center²``.
GRID = {"ranks": (10, 20, 50), "reg": (1.0, 1.2, 1.4), "prior": {False: (1.0, 2.0), True: (0.5, 1.0)}}
QUICK_GRID = {"ranks": (TIMED_RANK,), "reg": (1.2,), "prior": {False: (2.0,), True: (1.0,)}}


@dataclass(frozen=True)
class Split:
    """Training ratings as a matrix over every user and item, and held-out (user, item, rating)."""

    train: SparseRatings
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User index, item index and rating of every row of ``u.data`` (ids made contiguous)."""
    raw = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))
    users = np.unique(raw[:, 0], return_inverse=True)[1]
    items = np.unique(raw[:, 1], return_inverse=True)[1]
    return users, items, raw[:, 2].astype(np.float64)


def split(rows: np.ndarray, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` permuted with ``default_rng(seed)``: the first ``fraction`` and the rest."""
    permuted = rows[np.random.default_rng(seed).permutation(len(rows))]
    cut = int(fraction * len(rows))
    return permuted[:cut], permuted[cut:]


def make_split(data: tuple[np.ndarray, ...], train: np.ndarray, held_out: np.ndarray) -> Split:
    """The rows ``train`` of ``data`` as a matrix over every user and item, and the rows ``held_out``."""
    users, items, ratings = data
    shape = (int(users.max()) + 1, int(items.max()) + 1)
    matrix = SparseRatings(users[train], items[train], ratings[train], shape)
    return Split(matrix, users[held_out], items[held_out], ratings[held_out])


def protocol_splits(data: tuple[np.ndarray, ...]) -> tuple[Split, Split]:
    """(fit → validation, train → test) under the evaluation protocol."""
    train, test = split(np.arange(len(data[2])), 42, 0.8)
    fit_rows, validation = split(train, 43, 0.9)
    return make_split(data, fit_rows, validation), make_split(data, train, test)


def predictions(factors: Factors, data: Split) -> np.ndarray:
    """Predicted ratings of the held-out pairs, with the fallback for unseen users and items."""
    seen_user = data.train.row_counts()[data.users] > 0
    seen_item = data.train.col_counts()[data.items] > 0
    predicted = predict(factors, data.users, data.items).astype(np.float64)
    if factors.biased:
        fallback = factors.global_mean + np.where(seen_user, factors.user_bias[data.users], 0.0)
        fallback = fallback + np.where(seen_item, factors.item_bias[data.items], 0.0)
    else:
        fallback = np.full(len(data.ratings), data.train.mean())
    return np.where(seen_user & seen_item, predicted, fallback)


def timed_fit(data: Split, params: SolverParams) -> tuple[FitResult, float]:
    """A fit and its wall time in seconds."""
    started = time.perf_counter()
    result = fit(data.train, params)
    return result, time.perf_counter() - started


def candidates(grid: dict, rank: int, bias: bool) -> list[SolverParams]:
    """The parameters searched for one (rank, bias)."""
    return [
        SolverParams(rank=rank, bias=bias, reg=reg, factor_center=round(float(np.sqrt(prior / rank)), 4), **BASE)
        for reg, prior in itertools.product(grid["reg"], grid["prior"][bias])
    ]


def tune_and_test(grid: dict, validation: Split, test: Split, repeats: int) -> list[dict]:
    """One row per (rank, bias): chosen parameters, validation and test errors, fit time."""
    rows = []
    for rank, bias in itertools.product(grid["ranks"], (False, True)):
        scored = []
        for params in candidates(grid, rank, bias):
            result, _ = timed_fit(validation, params)
            scored.append((rmse(predictions(result.factors, validation), validation.ratings, CLIP), params))
        val_rmse, best = min(scored, key=lambda pair: pair[0])
        runs = [timed_fit(test, best) for _ in range(repeats)]
        result = runs[0][0]
        predicted = predictions(result.factors, test)
        rows.append(
            {
                "params": best,
                "val_rmse": val_rmse,
                "test_rmse": rmse(predicted, test.ratings, CLIP),
                "test_mae": mae(predicted, test.ratings, CLIP),
                "seconds": statistics.median(seconds for _, seconds in runs),
                "iterations": result.n_iter,
            }
        )
    return rows


def first_calls(path: str, params: SolverParams) -> tuple[float, float]:
    """Seconds of the first and the second fit of ``params`` on the train split in this process.

    Run in a fresh interpreter, so the first includes TensorFlow's start-up and tracing.
    """
    test = protocol_splits(load(Path(path)))[1]
    return timed_fit(test, params)[1], timed_fit(test, params)[1]


def print_table(rows: list[dict]) -> None:
    """Print one line per (rank, bias) of :func:`tune_and_test`."""
    header = (
        f"{'rank':>4} {'bias':>5} {'reg':>5} {'alpha':>5} {'center':>6} {'b_reg':>5} {'beta':>4} "
        f"{'val RMSE':>8} {'test RMSE':>9} {'test MAE':>8} {'fit s':>6} {'iters':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        p = row["params"]
        bias_columns = f"{p.effective_bias_reg:>5g} {p.bias_reg_exponent:>4g}" if p.bias else f"{'-':>5} {'-':>4}"
        print(
            f"{p.rank:>4} {str(p.bias):>5} {p.reg:>5g} {p.reg_exponent:>5g} {p.factor_center:>6.4f} {bias_columns} "
            f"{row['val_rmse']:>8.4f} {row['test_rmse']:>9.4f} {row['test_mae']:>8.4f} {row['seconds']:>6.2f} "
            f"{row['iterations']:>5}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid (rank 20, one setting each) for smoke runs")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"u.data of MovieLens 100K (default {DEFAULT_DATA})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="refits timed per chosen model (median reported)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if not args.data.is_file():
        print(f"MovieLens 100K not found at {args.data}; nothing to benchmark (pass --data PATH).")
        return 0

    validation, test = protocol_splits(load(args.data))
    grid = QUICK_GRID if args.quick else GRID
    print(
        f"MovieLens 100K: {test.train.nnz} train / {len(test.ratings)} test ratings, "
        f"{validation.train.nnz} fit / {len(validation.ratings)} validation; {MAX_ITER} outer iterations, "
        f"fixed {BASE}"
    )
    rows = tune_and_test(grid, validation, test, args.repeats)
    print_table(rows)

    for bias in (False, True):
        best = min((row for row in rows if row["params"].bias == bias), key=lambda row: row["val_rmse"])
        label = "biased" if bias else "unbiased"
        print(f"best {label} (by validation): rank {best['params'].rank}, test RMSE {best['test_rmse']:.4f}")
    timed = [row for row in rows if row["params"].rank == TIMED_RANK]
    for row in timed:
        print(f"rank {TIMED_RANK} bias={row['params'].bias} fit: {row['seconds']:.2f} s (median of {args.repeats})")
    if timed:
        params = timed[0]["params"]
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            first, second = pool.apply(first_calls, (str(args.data), params))
        print(
            f"rank {TIMED_RANK} bias={params.bias} in a fresh process: first call {first:.2f} s, "
            f"second call {second:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
