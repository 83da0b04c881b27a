"""Warm start versus cold start on the nightly-retrain shape: yesterday's data plus 5% new ratings.

    python benchmarks/warm_start.py [--ratings 200000] [--iterations 15]

Runs the pipeline on 95% of a generated data set (yesterday), then on all of it twice: cold
(seeded random start) and warm (``input.init_from`` = yesterday's output). Prints both
training-loss curves and the first iteration at which the warm run reaches the cold run's
final loss.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]


def _run(data: Path, out: Path, iterations: int, *extra: str) -> list[float]:
    from pipeline.config import load_config
    from pipeline.main import run

    overrides = [
        f"input.path={data}/*.parquet", "input.format=parquet", "input.timestamp_column=timestamp",
        "input.user_id_type=int", "input.item_id_type=int", "model.rank=20", "model.bias=false",
        "model.reg=0.1", f"model.max_iter={iterations}", "blocks.user_blocks=2", "blocks.item_blocks=2",
        f"output.path={out}", "output.overwrite=true", *extra,
    ]
    metrics = run(load_config(str(REPO / "configs" / "local.yaml"), overrides))
    return [metrics[f"train_loss_{t}"] for t in range(1, iterations + 1)]


def main(argv=None) -> int:
    from pipeline.generate import generate_ratings, write_shards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_users, n_items = args.ratings // 40, args.ratings // 200
        table = pa.concat_tables(list(generate_ratings(n_users, n_items, args.ratings, rank=10, seed=11,
                                                      rating_min=1.0, rating_max=5.0)))
        table = table.sort_by("timestamp")
        write_shards([table.slice(0, int(0.95 * table.num_rows))], str(root / "yesterday_in"), 4, "parquet")
        write_shards([table], str(root / "today_in"), 4, "parquet")
        _run(root / "yesterday_in", root / "yesterday", args.iterations)
        cold = _run(root / "today_in", root / "cold", args.iterations)
        warm = _run(root / "today_in", root / "warm", args.iterations, f"input.init_from={root / 'yesterday'}")
    target = cold[-1]
    reached = next((t + 1 for t, loss in enumerate(warm) if loss <= target), None)
    print(f"{args.ratings:,} ratings ({n_users:,} users x {n_items:,} items), 5% new; rank 20; "
          f"{args.iterations} iterations each")
    print(f"{'iteration':>9} {'cold loss':>14} {'warm loss':>14}")
    for t, (c, w) in enumerate(zip(cold, warm), start=1):
        print(f"{t:>9} {c:>14.1f} {w:>14.1f}")
    print(f"cold run's final loss {target:.1f} reached by the warm run at iteration "
          f"{reached if reached else 'never (within the budget)'} of {args.iterations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
