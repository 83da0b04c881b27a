"""Scaling benchmark: the whole Beam job at 1M, 5M and 20M ratings next to Spark ALS.

    python benchmarks/scale.py [--sizes 1m,5m,20m] [--skip-spark] [--skip-kernel] [--workdir DIR]
                               [--blocks 8] [--mode in_memory|multi_processing] [--workers N]
                               [--intra-op-threads N] [--source OTHER_CHECKOUT]

For each size, ratings come from the project's generator (:mod:`pipeline.generate`: planted
non-negative rank-10 model, Zipf item popularity, log-normal user activity) as sharded Parquet,
cached in ``--workdir`` between runs. Then, one after the other:

* **our pipeline**, end to end on the DirectRunner (``nnmf-pipeline run`` in a child process:
  read, validate, deduplicate, split, block, 10 iterations at rank 20, top-10 for every user,
  held-out metrics, write every table). Wall time is the child's, interpreter start included;
  peak memory is the largest sum of RSS over the child's whole process tree (Beam workers
  included), sampled every 0.2 s with psutil. The run's ``metrics.json`` gives the busy seconds
  per stage (``seconds_*``) and per iteration (``halfstep_seconds_*``).
* **Spark ALS** (pyspark ``local[2]``, ``nonnegative=True``, same rank, iterations and λ,
  explicit feedback) in another child process, reading the same Parquet files. Its input is an
  80% random sample (the pipeline trains on its 80% hash split), cached and counted before the
  clock starts: the figure is ``ALS.fit`` alone. Peak RSS is the JVM's.
* **kernel efficiency**: in this process (no Beam), the same blocks are built and one iteration
  of half-steps is timed per kernel, the native one (``model.kernel: native``, if it builds
  here) and TensorFlow's ops as the baseline, passes alternating; achieved GFLOP/s count
  ``2·nnz·k²`` for the Grams plus ``2·k²`` per row for each inner step that row took and for
  its warm-start gradient (one matvec each; the unpadded, useful work), next to a 2048³
  ``tf.matmul`` measured in the same process. For the TensorFlow ops, two ceilings are
  measured alongside: their dense shapes alone (the inner step's batched k × k matvec compiled
  by XLA, the Grams' batched products of 32 × k pieces), and the GFLOP/s the iteration's FLOP
  mix would reach at those rates if gathers, segment sums and set-up cost nothing. A tighter
  one times the Grams' gathers of the other side's factor rows together with the piece
  products on the run's own chunks, and adds the inner steps at the matvec ceiling.

Prints one table (size, users, items, our wall s, our peak RSS GB, our s per M ratings, Spark
fit s, Spark peak RSS GB, ratio = our wall / Spark fit), then the per-stage breakdown and the
GFLOP/s lines. Requires the ``bench`` extra (``pip install pyspark psutil``) unless
``--skip-spark`` (psutil is always needed).

A second pass capped at one inner step splits the time into the Grams (with each row's set-up)
and the steps.

Runner choice, measured at 5M on this 2-core machine (2026-11, rank 20, 10 iterations),
before the compiled solver: ``--mode in_memory`` (default: the FnApiRunner in one process, one
worker, TensorFlow's default two intra-op threads) 72 s, 3.1 GB peak with 8×8 blocks;
``multi_processing`` with 2 workers × 1 intra-op thread 72 s but 7.8 GB (each worker imports
TensorFlow and holds its own copies of the blocks), with TensorFlow's default threads 125 s and
8.2 GB. With the current code, ``--set beam.options.direct_running_mode=multi_threading --set
beam.options.direct_num_workers=2`` took 47.3 s and 4.8 GB (max RSS) against 39-44 s and ~3.2 GB
in memory. Blocks, in memory, with the current code (one ``python -m pipeline run`` each, λ 0.05,
peak RSS from ``/usr/bin/time``): 2×2 45.3 s / 4.5 GB, 4×4 43.4 s / 3.7 GB, 8×8 42.9 s /
3.2 GB: the wall time is flat from 4×4 on and the peak falls with the
block size (it is set while one block's ratings are grouped, deduplicated and indexed), hence
8 by default.

Wall times move with whatever else runs on the machine: each measured run prints the 1-minute
load average before and after it, and the CPU seconds of the pipeline's process tree are
printed next to its wall time. ``--source`` runs the pipeline from another checkout of the code
(same data, same flags): before/after comparisons.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "local.yaml"


@dataclass(frozen=True)
class Size:
    label: str
    users: int
    items: int
    ratings: int
    shards: int


SIZES = {
    "1m": Size("1m", 40_000, 4_000, 1_000_000, 4),
    "5m": Size("5m", 200_000, 20_000, 5_000_000, 8),
    "20m": Size("20m", 800_000, 80_000, 20_000_000, 16),
}
GENERATOR = {"rank": 10, "seed": 1}


# ---------------------------------------------------------------------------------------------
# Process-tree memory sampling


class TreeSampler:
    """Peak RSS of a process and all its descendants (summed), sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2, name_filter: str | None = None):
        import psutil

        self._root = psutil.Process(pid)
        self._interval, self._filter = interval, name_filter
        self.peak = 0
        self.peak_filtered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root] + self._root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = filtered = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    if self._filter and self._filter in proc.name():
                        filtered += rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.peak_filtered = max(self.peak_filtered, filtered)
            self._stop.wait(self._interval)


def run_measured(cmd: list[str], log: Path, name_filter: str | None = None, cwd: Path = REPO, env=None):
    """Run ``cmd``; its wall seconds, its memory sampler, its exit status and the CPU seconds
    (user + system) of its process tree (children reaped by it included)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        with TreeSampler(proc.pid, name_filter=name_filter) as sampler:
            status = proc.wait()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Other processes on the machine distort wall times: say how busy it was.
    print(f"    ({Path(cmd[1]).name if cmd[1] != '-m' else cmd[2]}: 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; this machine has {os.cpu_count()} cores)", flush=True)
    return wall, sampler, status, cpu


# ---------------------------------------------------------------------------------------------
# Data


def ensure_data(size: Size, workdir: Path) -> Path:
    """Generated Parquet shards for ``size`` (cached: regenerated only when missing)."""
    folder = workdir / f"data-{size.label}"
    marker = folder / "generated.json"
    spec = {"users": size.users, "items": size.items, "ratings": size.ratings, "shards": size.shards, **GENERATOR}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    cmd = [
        sys.executable, "-m", "pipeline.generate", "--out", str(folder), "--users", str(size.users),
        "--items", str(size.items), "--ratings", str(size.ratings), "--rank", str(GENERATOR["rank"]),
        "--shards", str(size.shards), "--format", "parquet", "--seed", str(GENERATOR["seed"]),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    marker.write_text(json.dumps(spec))
    print(f"[{size.label}] generated {size.ratings} ratings in {time.perf_counter() - started:.1f} s -> {folder}", flush=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Our pipeline


def pipeline_command(data: Path, out: Path, args) -> list[str]:
    workers = args.workers or (2 if args.mode == "multi_processing" else 1)
    sets = {
        "input.path": f"{data}/*.parquet",
        "input.format": "parquet",
        "input.timestamp_column": "timestamp",
        "model.rank": args.rank,
        "model.max_iter": args.iterations,
        "model.bias": "false",
        "model.reg": args.reg,
        "blocks.user_blocks": args.blocks,
        "blocks.item_blocks": args.blocks,
        "beam.options.direct_running_mode": args.mode,
        "beam.options.direct_num_workers": workers,
    }
    threads = args.intra_op_threads
    if threads is None and args.mode == "multi_processing":
        threads = 1  # one TensorFlow thread per worker process (DESIGN §7: ~20% faster than 2 each)
    if threads is not None:
        sets["compute.intra_op_threads"] = threads
    cmd = [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "run", "--config", str(CONFIG)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd + ["--output", str(out), "--overwrite"]


@dataclass
class OurResult:
    wall: float
    peak_rss: int
    cpu: float
    metrics: dict = field(default_factory=dict)


def run_ours(size: Size, data: Path, workdir: Path, args) -> OurResult:
    out = workdir / f"run-{size.label}"
    log = workdir / f"run-{size.label}.log"
    cwd, env = REPO, None
    if args.source:  # another checkout of the code (before/after comparisons)
        cwd, env = args.source.resolve(), {**os.environ, "PYTHONPATH": str(args.source.resolve())}
    wall, sampler, status, cpu = run_measured(pipeline_command(data, out, args), log, cwd=cwd, env=env)
    if status != 0:
        print(f"[{size.label}] pipeline FAILED (exit {status}); see {log}:\n" + log.read_text()[-3000:], flush=True)
        return OurResult(wall, sampler.peak, cpu, {})
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"[{size.label}] pipeline: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {sampler.peak / 2**30:.2f} GB", flush=True)
    return OurResult(wall, sampler.peak, cpu, metrics)


# ---------------------------------------------------------------------------------------------
# Spark ALS (child process: ``scale.py --spark-child ...``)


def spark_child(args) -> int:
    import warnings

    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession, functions as F

    warnings.filterwarnings("ignore", category=FutureWarning)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", args.spark_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    paths = sorted(glob.glob(f"{args.spark_child}/*.parquet"))
    frame = spark.read.parquet(*paths).select(
        F.col("user_id").cast("int").alias("user"), F.col("item_id").cast("int").alias("item"),
        F.col("rating").cast("float").alias("rating"),
    )
    train, _ = frame.randomSplit([0.8, 0.2], seed=42)
    train = train.cache()
    n = train.count()
    als = ALS(
        rank=args.rank, maxIter=args.iterations, regParam=args.reg, nonnegative=True, implicitPrefs=False,
        userCol="user", itemCol="item", ratingCol="rating", seed=42,
    )
    started = time.perf_counter()
    model = als.fit(train)
    # ALS.fit materialises both factor tables before returning (they are cached and counted).
    seconds = time.perf_counter() - started
    print("SPARK_RESULT " + json.dumps({"fit_seconds": seconds, "train_ratings": n, "users": model.userFactors.count()}), flush=True)
    spark.stop()
    return 0


@dataclass
class SparkResult:
    fit: float
    peak_jvm: int
    train_ratings: int


def run_spark(size: Size, data: Path, workdir: Path, args) -> SparkResult | None:
    log = workdir / f"spark-{size.label}.log"
    memory = args.spark_memory or ("10g" if size.ratings > 5_000_000 else "4g")
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--spark-child", str(data), "--rank", str(args.rank),
        "--iterations", str(args.iterations), "--reg", str(args.reg), "--spark-memory", memory,
    ]
    _, sampler, status, _ = run_measured(cmd, log, name_filter="java")
    lines = [line for line in log.read_text().splitlines() if line.startswith("SPARK_RESULT ")]
    if status != 0 or not lines:
        print(f"[{size.label}] Spark FAILED (exit {status}); see {log}:\n" + log.read_text()[-3000:], flush=True)
        return None
    result = json.loads(lines[-1].split(" ", 1)[1])
    print(f"[{size.label}] Spark ALS: fit {result['fit_seconds']:.1f} s on {result['train_ratings']} ratings, "
          f"JVM peak RSS {sampler.peak_filtered / 2**30:.2f} GB (driver memory {memory})", flush=True)
    return SparkResult(result["fit_seconds"], sampler.peak_filtered, result["train_ratings"])


# ---------------------------------------------------------------------------------------------
# Kernel efficiency (in this process, no Beam)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a, b = tf.random.uniform((n, n)), tf.random.uniform((n, n))
    tf.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            c = tf.matmul(a, b)
        c.numpy()
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * n**3 / best / 1e9


def shape_ceilings(k: int, rows: int = 4096, steps: int = 20, repeats: int = 10) -> dict:
    """GFLOP/s of the kernel's two dense shapes alone, on random data in this process, run as
    the half-step runs its chunks (one call per intra-op thread at once): the inner step (a
    batched k × k matvec and the projection, compiled by XLA like the solver's loop, ``rows``
    rows per call) and the Grams' batched products of ``PIECE`` × k pieces (``tf.matmul``).
    Nothing else in the half-step can go faster than these, so they bound its GFLOP/s."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tensorflow as tf

    from nnmf_tf.device import compute_threads
    from nnmf_tf.halfstep import PIECE

    threads = compute_threads()
    rng = np.random.default_rng(0)
    gram = tf.constant(rng.random((rows, k, k), dtype=np.float32) / k)
    z0 = tf.constant(rng.random((rows, k), dtype=np.float32))
    pieces = tf.constant(rng.random((rows, PIECE, k), dtype=np.float32))

    # A compiled while loop, as in the solver: the same 20 steps unrolled in Python compile
    # to code half as fast (14.5-15.7 against 24.3-29.3 GFLOP/s on 2 cores).
    @tf.function(jit_compile=True)
    def projected_steps(gram, z):
        def one_step(i, z):
            return i + 1, tf.maximum(z - 0.1 * tf.linalg.matvec(gram, z), 0.0)

        return tf.while_loop(lambda i, z: i < steps, one_step, (0, z))[1]

    piece_grams = tf.function(lambda p: tf.matmul(p, p, transpose_a=True))

    def best(call) -> float:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: call().numpy(), range(threads)))
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                list(pool.map(lambda _: call().numpy(), range(threads)))
                times.append(time.perf_counter() - started)
        return min(times)

    return {
        "matvec_gflops": threads * 2.0 * rows * k * k * steps / best(lambda: projected_steps(gram, z0)) / 1e9,
        "piece_gflops": threads * 2.0 * rows * PIECE * k * k / best(lambda: piece_grams(pieces)) / 1e9,
    }


def gram_phase_seconds(row_blocks, other_factors, k: int, repeats: int = 3) -> float:
    """Seconds for the Grams' gathers and piece products alone over a half-step's blocks:
    the kernel's own pieces (``halfstep.sparse_layout``), each chunk gathering the other side's
    factor rows for its pieces and multiplying them, run as ``_run_chunks`` runs them (one
    chunk per intra-op thread at once); the fastest of ``repeats`` passes. No segment sums,
    right-hand sides, assembly or solver: a floor under the Gram build of this formulation."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tensorflow as tf

    from nnmf_tf.device import compute_threads
    from nnmf_tf.halfstep import sparse_layout
    from nnmf_tf.params import SolverParams

    features = tf.constant(np.vstack([other_factors, np.zeros((1, k), np.float32)]))
    piece_cols = []
    for block in row_blocks:
        layout = sparse_layout(block.ratings, SolverParams(rank=k, kernel="tensorflow"))
        piece_cols += [tf.constant(chunk[2]) for chunk in layout.chunks]

    @tf.function
    def gather_and_multiply(features, cols):
        padded = tf.gather(features, cols)
        return tf.matmul(padded, padded, transpose_a=True)

    def one_pass() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(compute_threads()) as pool:
            list(pool.map(lambda cols: gather_and_multiply(features, cols).numpy(), piece_cols))
        return time.perf_counter() - started

    one_pass()
    return min(one_pass() for _ in range(repeats))


def build_blocks(data: Path, n_blocks: int, seed: int = 42, holdout: float = 0.2):
    """User and item blocks as the pipeline builds them (same hashing, split and indices)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import blocks
    from pipeline.split import split_holdout

    table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{data}/*.parquet"))])
    train, held = split_holdout(table, holdout, seed)
    del table
    user_of = blocks.user_block_of(train.column("user_id"), n_blocks)
    held_of = blocks.user_block_of(held.column("user_id"), n_blocks)
    item_ids = np.unique(train.column("item_id").to_numpy())
    item_of = blocks.item_block_of(item_ids, n_blocks)
    vocab = {b: item_ids[item_of == b] for b in range(n_blocks)}
    user_blocks, entries = [], {}
    for b in range(n_blocks):
        block, parts = blocks.build_user_block(
            b, train.filter(pa.array(user_of == b)), held.filter(pa.array(held_of == b)), vocab, n_blocks
        )
        user_blocks.append(block)
        for item_block, part in parts.items():
            entries.setdefault(item_block, []).append((b, part))
    sizes = {b.block: len(b.ids) for b in user_blocks}
    item_blocks = [blocks.build_item_block(b, vocab[b], entries.get(b, []), sizes) for b in range(n_blocks)]
    mean = float(train.column("rating").to_numpy().astype(np.float64).mean())
    return user_blocks, item_blocks, vocab, mean


def kernel_efficiency(data: Path, args, repeats: int = 3) -> dict:
    """One iteration of half-steps on the pipeline's blocks per kernel (the native one, if it
    builds here, and TensorFlow's ops as the baseline, alternating): a warm-up pass, then the
    fastest of ``repeats`` timed ones, and the same half-steps capped at one inner step (≈ the
    Gram build alone), to split the cost. Each block's layout is built once per kernel,
    outside the timing, as a run builds it once for all its iterations."""
    import tensorflow as tf

    from nnmf_tf import native
    from nnmf_tf.halfstep import half_step, sparse_layout
    from nnmf_tf.params import SolverParams
    from pipeline.blocks import FactorBlock, concat_factors
    from pipeline.factorize import initial_block

    user_blocks, item_blocks, vocab, mean = build_blocks(data, args.blocks)
    params = SolverParams(rank=args.rank, reg=args.reg, bias=False, max_iter=args.iterations)
    k = params.rank
    users = dict(initial_block("user", b.block, b.ids, params, mean) for b in user_blocks)
    items = dict(initial_block("item", b, vocab[b], params, mean) for b in vocab)
    kernels = ["tensorflow"] + (["native"] if native.solve_rows_op() is not None else [])
    layouts = {
        (kernel, b.side, b.block): sparse_layout(b.ratings, params.replace(kernel=kernel))
        for kernel in kernels
        for b in user_blocks + item_blocks
    }

    def side(row_blocks, other, current, solver):
        # Converted once for all blocks, as the pipeline's half-step does.
        other_factors = tf.constant(concat_factors(other, k).factors)
        out, stats = {}, {"seconds": 0.0, "flops": 0.0, "gram_flops": 0.0, "rows": 0, "nnz": 0, "inner": [], "steps": 0}
        for block in row_blocks:
            started = time.perf_counter()
            layout = layouts[solver.kernel, block.side, block.block]
            result = half_step(block.ratings, other_factors, current[block.block].factors, solver, layout=layout)
            stats["seconds"] += time.perf_counter() - started
            rows, nnz = block.ratings.shape[0], block.ratings.nnz
            stats["gram_flops"] += 2.0 * nnz * k * k
            # Each row's own steps, plus the gradient at its warm start: the useful work.
            stats["flops"] += 2.0 * nnz * k * k + 2.0 * k * k * (result.row_steps + rows)
            stats["rows"] += rows
            stats["nnz"] += nnz
            stats["inner"].append(result.inner_iters)
            stats["steps"] += result.row_steps
            out[block.block] = FactorBlock(result.factors)
        return out, stats

    solvers = {kernel: params.replace(kernel=kernel) for kernel in kernels}
    # A first pass traces, compiles and builds; the item side starts from the same users.
    new_users, _ = side(user_blocks, items, users, solvers["tensorflow"])
    for solver in solvers.values():
        side(user_blocks, items, users, solver)
        side(item_blocks, new_users, items, solver)
    # Each figure is the fastest of `repeats` passes over the same inputs, the kernels taking
    # turns so that both see the same machine: a 1M half-step takes a few tenths of a second.
    passes = {kernel: {"user": [], "item": [], "user_one": [], "item_one": []} for kernel in kernels}
    for _ in range(repeats):
        for kernel, solver in solvers.items():
            one = solver.replace(inner_max_iter=1)
            passes[kernel]["user"].append(side(user_blocks, items, users, solver)[1])
            passes[kernel]["item"].append(side(item_blocks, new_users, items, solver)[1])
            passes[kernel]["user_one"].append(side(user_blocks, items, users, one)[1]["seconds"])
            passes[kernel]["item_one"].append(side(item_blocks, new_users, items, one)[1]["seconds"])
    result = {"kernels": {}, "matmul_gflops": matmul_gflops(), **shape_ceilings(k)}
    for kernel, runs in passes.items():
        result["kernels"][kernel] = {}
        for name in ("user", "item"):
            stats = min(runs[name], key=lambda s: s["seconds"])
            stats["one_step_seconds"] = min(runs[f"{name}_one"])
            result["kernels"][kernel][name] = stats
    tf_stats = result["kernels"]["tensorflow"]
    tf_stats["user"]["gram_phase_seconds"] = gram_phase_seconds(user_blocks, concat_factors(items, k).factors, k, repeats)
    tf_stats["item"]["gram_phase_seconds"] = gram_phase_seconds(item_blocks, concat_factors(new_users, k).factors, k, repeats)
    return result


# ---------------------------------------------------------------------------------------------
# Report


def print_report(rows: list[dict], args) -> None:
    from pipeline.report import STAGES

    print()
    print(f"DirectRunner {args.mode} (workers: {args.workers or (2 if args.mode == 'multi_processing' else 1)}), "
          f"{args.blocks}x{args.blocks} blocks, rank {args.rank}, {args.iterations} iterations, λ={args.reg}")
    header = (f"{'size':>5} {'users':>8} {'items':>7} {'our wall s':>10} {'our CPU s':>9} {'our peak GB':>11} {'our s/M':>8} "
              f"{'Spark fit s':>11} {'Spark GB':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        size, ours, spark = row["size"], row["ours"], row.get("spark")
        per_m = ours.wall / (size.ratings / 1e6)
        spark_fit = f"{spark.fit:11.1f}" if spark else f"{'-':>11}"
        spark_gb = f"{spark.peak_jvm / 2**30:9.2f}" if spark else f"{'-':>9}"
        ratio = f"{ours.wall / spark.fit:6.2f}" if spark else f"{'-':>6}"
        print(f"{size.label:>5} {size.users:>8} {size.items:>7} {ours.wall:10.1f} {ours.cpu:9.1f} {ours.peak_rss / 2**30:11.2f} "
              f"{per_m:8.2f} {spark_fit} {spark_gb} {ratio}")
    print("ratio = our whole pipeline's wall time / Spark ALS fit alone (< 1: we are faster); "
          "our CPU s = user + system seconds of the pipeline's process tree; s/M = wall s per million ratings")

    print("\nBusy seconds per stage (metrics.json seconds_*, summed over workers), and the rest of the wall time:")
    print(f"{'size':>5} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'run total':>9} {'wall':>7} {'other':>7}")
    for row in rows:
        m, ours = row["ours"].metrics, row["ours"]
        if not m:
            print(f"{row['size'].label:>5} (failed)")
            continue
        busy = [m.get(f"seconds_{s}", 0.0) for s in STAGES]
        print(f"{row['size'].label:>5} " + " ".join(f"{b:9.1f}" for b in busy)
              + f" {m.get('seconds_total', float('nan')):9.1f} {ours.wall:7.1f} {ours.wall - sum(busy):7.1f}")
    print("(other = wall − Σ busy: interpreter start, imports, Beam stages, shuffles, side inputs)")
    for row in rows:
        m = row["ours"].metrics
        if not m:
            continue
        steps = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in m.items() if k.startswith("halfstep_seconds_"))
        print(f"{row['size'].label:>5} halfstep_seconds per iteration: " + " ".join(f"{v:.2f}" for _, v in steps)
              + f"  (Σ {sum(v for _, v in steps):.1f})")
        print(f"{row['size'].label:>5} held-out RMSE {m.get('heldout_rmse', float('nan')):.4f}, "
              f"NDCG@10 {m.get('heldout_ndcg_at_10', float('nan')):.4f} "
              f"(popularity baseline NDCG@10 {m.get('baseline_ndcg_at_10', float('nan')):.4f}), "
              f"final train loss {m.get(f'train_loss_{args.iterations}', float('nan')):.1f}")

    if any(row.get("kernel") for row in rows):
        print("\nHalf-step kernel efficiency (in-process, same blocks; FLOPs = 2·nnz·k² Grams + 2·k² per row for "
              "each inner step it took and its warm-start gradient):")
    for row in rows:
        kernel = row.get("kernel")
        if not kernel:
            continue
        peak = kernel["matmul_gflops"]
        iteration = {}
        for name, stats in kernel["kernels"].items():
            total_flops = total_seconds = 0.0
            for side in ("user", "item"):
                s = stats[side]
                gflops = s["flops"] / s["seconds"] / 1e9
                total_flops += s["flops"]
                total_seconds += s["seconds"]
                print(f"{row['size'].label:>5} {name:>10} {side:>4} half-step: {s['rows']} rows, {s['nnz']} nnz, "
                      f"inner steps {max(s['inner'])} at most, {s['steps'] / max(s['rows'], 1):.1f} per row, "
                      f"{s['seconds']:.3f} s, {s['flops'] / 1e9:.2f} GFLOP -> {gflops:.2f} GFLOP/s "
                      f"({100 * gflops / peak:.1f}% of matmul); capped at 1 inner step {s['one_step_seconds']:.3f} s")
            iteration[name] = (total_seconds, total_flops)
            gflops = total_flops / total_seconds / 1e9
            print(f"{row['size'].label:>5} {name:>10} iteration: {total_seconds:.3f} s, {gflops:.2f} GFLOP/s; this "
                  f"machine's tf.matmul (2048³, same process): {peak:.1f} GFLOP/s -> {100 * gflops / peak:.1f}% "
                  f"(target ≥ 20%)")
        if "native" in iteration:
            ratio = iteration["tensorflow"][0] / iteration["native"][0]
            print(f"{row['size'].label:>5} native kernel: {ratio:.2f}x faster than the TensorFlow ops per iteration "
                  f"(same blocks, same process, alternating passes)")
        tf_stats = kernel["kernels"]["tensorflow"]
        total_seconds, total_flops = iteration["tensorflow"]
        gram_flops = sum(tf_stats[side]["gram_flops"] for side in ("user", "item"))
        bound = total_flops / (gram_flops / kernel["piece_gflops"] + (total_flops - gram_flops) / kernel["matvec_gflops"])
        print(f"{'':>5} TensorFlow ops' ceilings, same process: the inner step's batched {args.rank}×{args.rank} matvec "
              f"alone {kernel['matvec_gflops']:.1f} GFLOP/s ({100 * kernel['matvec_gflops'] / peak:.1f}% of matmul), "
              f"the Grams' batched piece products alone {kernel['piece_gflops']:.1f} GFLOP/s "
              f"({100 * kernel['piece_gflops'] / peak:.1f}%); their iteration's FLOPs at those rates, with "
              f"gathers, sums and set-up free: {bound:.1f} GFLOP/s ({100 * bound / peak:.1f}%)")
        gathers = sum(tf_stats[side]["gram_phase_seconds"] for side in ("user", "item"))
        floor = total_flops / (gathers + (total_flops - gram_flops) / kernel["matvec_gflops"] / 1e9)
        print(f"{'':>5} their Grams' gathers and piece products alone, on this run's chunks: "
              f"{tf_stats['user']['gram_phase_seconds']:.3f} s (user) + {tf_stats['item']['gram_phase_seconds']:.3f} s "
              f"(item) = {gram_flops / gathers / 1e9:.1f} GFLOP/s of Gram FLOPs; with the inner steps at the matvec "
              f"ceiling and sums and set-up free: {floor / 1e9:.1f} GFLOP/s ({100 * floor / 1e9 / peak:.1f}% of matmul)")
        m = row["ours"].metrics
        if m.get("seconds_factorize"):
            flops = iteration.get("native", iteration["tensorflow"])[1]
            in_pipeline = flops * args.iterations / m["seconds_factorize"] / 1e9
            print(f"{row['size'].label:>5} in the pipeline: about {flops * args.iterations / 1e9:.1f} GFLOP over "
                  f"seconds_factorize {m['seconds_factorize']:.1f} -> {in_pipeline:.2f} GFLOP/s "
                  f"({100 * in_pipeline / peak:.1f}% of matmul)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1m,5m,20m", help="comma-separated, from " + ",".join(SIZES) + " (default: all)")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--skip-kernel", action="store_true", help="skip the in-process kernel GFLOP/s measurement")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--blocks", type=int, default=8, help="user blocks = item blocks (default: %(default)s)")
    parser.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    parser.add_argument("--workers", type=int, default=None, help="direct_num_workers (default: 1, or 2 multi-processing)")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="compute.intra_op_threads (default: the config's in memory, 1 per worker multi-processing)")
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--reg", type=float, default=0.1)
    parser.add_argument("--spark-memory", default=None, help="Spark driver memory (default: 4g up to 5M, 10g above)")
    parser.add_argument("--source", type=Path, default=None,
                        help="run the pipeline from this source tree instead of this checkout (before/after comparisons)")
    parser.add_argument("--spark-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.spark_child:
        return spark_child(args)

    sizes = [SIZES[s.strip().lower()] for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="nnmf-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for size in sizes:
            data = ensure_data(size, workdir)
            row = {"size": size, "ours": run_ours(size, data, workdir, args)}
            if not args.skip_spark:
                row["spark"] = run_spark(size, data, workdir, args)
            rows.append(row)
        if not args.skip_kernel:
            # Last, in this process: TensorFlow must not run here before the children are done
            # (it would only compete with them for the two cores).
            for row in rows:
                row["kernel"] = kernel_efficiency(ensure_data(row["size"], workdir), args)
        print_report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
