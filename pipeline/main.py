"""The main job: read → validate → block → factorize → recommend/evaluate → write → publish.

::

    ReadRatings ─► ValidateRatings ─┬─► rejected ─────────────────────────────► rejected/
                                    └─► valid ─► BlockRatings ─► Factorize ─┬─► user_factors/, item_factors/
                                                                            └─► RecommendAndEvaluate ─► recommendations/
    counts, per-iteration loss, held-out metrics ─────────────────────────────► metrics/ (+ metrics.json)

:func:`run` builds this graph for a :class:`~pipeline.config.RunConfig`, runs it on the
configured Beam runner, then publishes the output folder (see :mod:`pipeline.output`).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
import typing
from typing import Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import output, tables
from pipeline.block_ratings import BlockRatings
from pipeline.config import RunConfig, to_dict
from pipeline.factorize import Factorize, training_loss
from pipeline.read import ReadRatings, ReadSettings, match_input_files
from pipeline.recommend import EVALUATION, RecommendAndEvaluate, summarize_evaluation
from pipeline.validate import ValidateRatings, ValidationSettings, check_rejected_fraction

_log = logging.getLogger(__name__)


def read_settings(config: RunConfig) -> ReadSettings:
    """The reader's slice of the configuration."""
    fields = {f.name for f in dataclasses.fields(ReadSettings)}
    return ReadSettings(**{k: v for k, v in dataclasses.asdict(config.input).items() if k in fields})


def validation_settings(config: RunConfig) -> ValidationSettings:
    """The validator's slice of the configuration."""
    v = config.validation
    return ValidationSettings(
        rating_min=v.rating_min,
        rating_max=v.rating_max,
        max_rejected_fraction=v.max_rejected_fraction,
        user_id_type=config.input.user_id_type,
        item_id_type=config.input.item_id_type,
    )


def _rows(table) -> int:
    return table.num_rows


def _gate(n_read: int, n_rejected: int, limit: float) -> bool:
    check_rejected_fraction(n_read, n_rejected, limit)
    return True


def _factor_table(block, factors: dict, schema):
    part = factors[block.block]
    return tables.factor_table(schema, block.ids, part.factors, part.bias, block.ratings.row_counts())


def _metrics_rows(stats, evaluation, counts, n_read, n_rejected, k) -> "typing.Any":
    rows: list[tuple[str, int | None, float]] = [("rows_read", None, float(n_read)), ("rows_rejected", None, float(n_rejected))]
    totals: dict[str, float] = {}
    for name, value in counts:
        totals[name] = totals.get(name, 0.0) + value
    rows += [(name, None, value) for name, value in sorted(totals.items())]
    rows += [("train_loss", iteration, loss) for iteration, loss in training_loss(stats)]
    seconds: dict[int, float] = {}
    for row in stats:
        seconds[row["iteration"]] = seconds.get(row["iteration"], 0.0) + row["seconds"]
    rows += [("halfstep_seconds", iteration, value) for iteration, value in sorted(seconds.items())]
    if evaluation:
        rows += [(f"heldout_{name}", None, value) for name, value in summarize_evaluation(evaluation, k).items()]
    return tables.metrics_table(rows)


def build(pipeline: beam.Pipeline, config: RunConfig, folder: str) -> None:
    """Add the whole job to ``pipeline``, writing its tables under ``folder``."""
    schema = lambda name: tables.schema_of(name, config)  # noqa: E731
    count = lambda label, pcoll: pcoll | f"{label}Rows" >> beam.Map(_rows) | f"Sum{label}" >> beam.CombineGlobally(sum)  # noqa: E731

    raw = pipeline | "ReadRatings" >> ReadRatings(read_settings(config))
    validated = raw | "ValidateRatings" >> ValidateRatings(validation_settings(config))
    n_read, n_rejected = count("Read", raw), count("Rejected", validated.rejected)
    gate = n_read | "CheckRejectedFraction" >> beam.Map(
        _gate, pvalue.AsSingleton(n_rejected), config.validation.max_rejected_fraction
    )
    blocked = validated.valid | "BlockRatings" >> BlockRatings(
        config.blocks.user_blocks,
        config.blocks.item_blocks,
        config.validation.duplicates,
        config.split.holdout_fraction,
        config.split.seed,
        gate=gate,
    )
    model_inputs = {
        "user_blocks": blocked.user_blocks,
        "item_blocks": blocked.item_blocks,
        "item_vocab": blocked.item_vocab,
        "global_mean": blocked.global_mean,
    }
    factors = model_inputs | "Factorize" >> Factorize(config.model, config.compute)
    scored = {**model_inputs, **factors} | "RecommendAndEvaluate" >> RecommendAndEvaluate(
        config, schema(tables.RECOMMENDATIONS)
    )

    for name, blocks_pc, factor_pc in (
        (tables.USER_FACTORS, blocked.user_blocks, factors["user_factors"]),
        (tables.ITEM_FACTORS, blocked.item_blocks, factors["item_factors"]),
    ):
        label = "".join(part.capitalize() for part in name.split("_"))
        (
            blocks_pc
            | f"{label}Table" >> beam.Map(_factor_table, pvalue.AsDict(factor_pc), schema(name)).with_output_types(typing.Any)
            | f"Write{label}" >> output.WriteTable(folder, name, schema(name))
        )
    scored.recommendations | "WriteRecommendations" >> output.WriteTable(folder, tables.RECOMMENDATIONS, schema(tables.RECOMMENDATIONS))
    validated.rejected | "WriteRejected" >> output.WriteTable(folder, tables.REJECTED, schema(tables.REJECTED))

    as_list = lambda label, pcoll: pvalue.AsSingleton(pcoll | f"Collect{label}" >> beam.combiners.ToList())  # noqa: E731
    (
        pipeline
        | "StartMetrics" >> beam.Create([None])
        | "MetricsTable"
        >> beam.Map(
            lambda _, stats, evaluation, counts, read, rejected: _metrics_rows(
                stats, evaluation, counts, read, rejected, config.evaluation.k
            ),
            as_list("Stats", factors["stats"]),
            as_list("Evaluation", scored[EVALUATION]),
            as_list("Counts", blocked.counts),
            pvalue.AsSingleton(n_read),
            pvalue.AsSingleton(n_rejected),
        ).with_output_types(typing.Any)
        | "WriteMetrics" >> output.WriteTable(folder, tables.METRICS, schema(tables.METRICS), num_shards=1)
    )


def pipeline_options(config: RunConfig, beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options: the config's ``beam`` section, then the command line's (which win)."""
    return PipelineOptions(list(config.beam_pipeline_args()) + list(beam_args))


def _runner(options: PipelineOptions):
    """The DirectRunner's in-process engine, named directly: the DirectRunner would first try
    to download the Prism runner, which fails offline. It honours ``direct_running_mode``."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


def _manifest(config: RunConfig, folder: str, seconds: float) -> dict:
    import numpy
    import pyarrow
    import tensorflow

    counts = {name: output.read_table(folder, name).num_rows for name in tables.TABLES}
    inputs = []
    for path in match_input_files(config.input.path):
        from apache_beam.io.filesystems import FileSystems

        inputs.append({"path": path, "bytes": FileSystems.match([path])[0].metadata_list[0].size_in_bytes})
    return {
        "row_counts": counts,
        "config": to_dict(config),
        "inputs": inputs,
        "seconds": seconds,
        "versions": {
            "python": platform.python_version(),
            "apache_beam": beam.__version__,
            "tensorflow": tensorflow.__version__,
            "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }


def run(config: RunConfig, beam_args: Sequence[str] = ()) -> dict:
    """Run the job and publish its output folder; return the run's metrics as a dict.

    Raises
    ------
    OutputExistsError
        The output holds a published run and ``output.overwrite`` is false.
    """
    target = config.output.path
    output.check_output(target, config.output.overwrite)
    folder = output.prepare_staging(target)
    options = pipeline_options(config, beam_args)
    started = time.perf_counter()
    with beam.Pipeline(runner=_runner(options), options=options) as pipeline:
        build(pipeline, config, folder)
    seconds = time.perf_counter() - started
    metrics = output.read_table(folder, tables.METRICS).to_pylist()
    summary = {
        (row["name"] if row["iteration"] is None else f"{row['name']}_{row['iteration']}"): row["value"] for row in metrics
    }
    output.write_json(output.join(folder, "metrics.json"), summary)
    output.write_json(output.join(folder, "manifest.json"), _manifest(config, folder, seconds))
    output.publish(folder, target)
    _log.info("published %s in %.1f s", target, seconds)
    return summary
