"""End-to-end pipeline on MovieLens 100K next to the in-process fit of the same model.

    python benchmarks/pipeline_ml100k.py [--data PATH] [--repeats 3] [--blocks 2]

Runs the whole Beam job (read the TSV, validate, block, 10 iterations at rank 20 on 2×2
blocks, top-10 for every user, evaluate, write Parquet) on the DirectRunner, and
``nnmf_tf.fit`` on the same training ratings in-process. Prints the median wall time of each,
their ratio, and the per-half-step time measured inside the pipeline, so the gap shows what
Beam's fixed costs add.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-100k" / "u.data"


def pipeline_run(data: Path, out: Path, blocks: int, rank: int, iterations: int, mode: str):
    from pipeline.config import load_config
    from pipeline.main import run

    overrides = [
        f"input.path={data}", "input.format=tsv", "input.header=false",
        "input.user_column=0", "input.item_column=1", "input.rating_column=2", "input.timestamp_column=3",
        "input.user_id_type=int", "input.item_id_type=int", "validation.rating_min=1", "validation.rating_max=5",
        f"blocks.user_blocks={blocks}", f"blocks.item_blocks={blocks}", f"model.rank={rank}",
        f"model.max_iter={iterations}", "model.bias=false", "model.reg=0.1", f"output.path={out}",
        "output.overwrite=true", f"beam.options.direct_running_mode={mode}",
    ]
    config = load_config(str(REPO / "configs" / "local.yaml"), overrides)
    started = time.perf_counter()
    metrics = run(config)
    return time.perf_counter() - started, metrics, config


def in_process_fit(config) -> float:
    """Seconds of ``nnmf_tf.fit`` on the same training ratings as the pipeline (MovieLens has no duplicates)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from nnmf_tf.data import SparseRatings
    from nnmf_tf.solver import fit
    from pipeline.split import split_holdout

    table = pacsv.read_csv(
        config.input.path,
        read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
    )
    table = table.set_column(2, "rating", table.column("rating").cast(pa.float32()))
    train, _ = split_holdout(table, config.split.holdout_fraction, config.split.seed)
    users, rows = np.unique(train.column("user_id").to_numpy(), return_inverse=True)
    items, cols = np.unique(train.column("item_id").to_numpy(), return_inverse=True)
    ratings = SparseRatings(rows, cols, train.column("rating").to_numpy(), (len(users), len(items)))
    started = time.perf_counter()
    fit(ratings, config.model)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"MovieLens 100K not found at {args.data}; skipping (pass --data)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        pipeline_times, fit_times = [], []
        for _ in range(args.repeats):
            seconds, metrics, config = pipeline_run(args.data, out, args.blocks, args.rank, args.iterations, args.mode)
            pipeline_times.append(seconds)
            fit_times.append(in_process_fit(config))
    p, f = statistics.median(pipeline_times), statistics.median(fit_times)
    print(f"MovieLens 100K, rank {args.rank}, {args.iterations} iterations, {args.blocks}x{args.blocks} blocks, "
          f"DirectRunner {args.mode}, median of {args.repeats}")
    print(f"  pipeline end to end : {p:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in pipeline_times)})")
    print(f"  in-process nnmf_tf  : {f:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in fit_times)})")
    print(f"  ratio               : {p / f:7.2f} x")
    inside = sum(v for k, v in metrics.items() if k.startswith("halfstep_seconds_"))
    print(f"  inside the pipeline's half-steps (last run): {inside:.2f} s; the rest is reading, blocking, "
          f"top-N, writing and Beam's per-stage costs")
    print(f"  held-out RMSE {metrics.get('heldout_rmse', float('nan')):.4f}, NDCG@10 {metrics.get('heldout_ndcg_at_10', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
