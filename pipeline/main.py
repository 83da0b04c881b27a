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
import sys
import time
import typing
from importlib import metadata
from typing import Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import block_store, output, tables
from pipeline.block_ratings import BlockRatings, rows_per_source
from pipeline.config import RunConfig, to_dict
from pipeline.factorize import Factorize, training_loss
from pipeline.report import write_report
from pipeline.read import ReadRatings, ReadSettings, match_input_files
from pipeline.recommend import EVALUATION, RecommendAndEvaluate, summarize_evaluation
from pipeline.timing import stage_seconds
from pipeline.warm_start import ReadPreviousFactors, check_previous_run
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


class UnusableInputError(ValueError):
    """The input read is unusable: too many rows rejected, or none accepted. Nothing is
    published."""


def _gate(n_read: int, n_rejected: int, rejected_files: list[str], limit: float, rejected_folder: str,
          pattern: str, n_files: int) -> bool:
    """Stop the run before blocking when its input is unusable: too many rows rejected, or none accepted.

    ``rejected_files`` (the finalized rejected table, a side input) is only there to make
    this check wait for the table to be written: when the run stops here, the rejected rows
    stay readable in ``rejected_folder`` under the staging folder, whose path the error names.

    Raises
    ------
    UnusableInputError
        More than ``limit`` of the rows read were rejected, or no row was accepted.
    """
    del rejected_files
    kept = f"{rejected_folder}; nothing was published"
    try:
        check_rejected_fraction(n_read, n_rejected, limit)
    except ValueError as error:
        raise UnusableInputError(f"{error}, in {kept}") from error
    if n_read == n_rejected:
        files = f"{n_files} file{'' if n_files == 1 else 's'} matching {pattern!r}"
        reasons = f"; the rejected table gives each row's reason, in {kept}" if n_rejected else "; nothing was published"
        raise UnusableInputError(f"no ratings accepted from {files}: {n_read} rows read, {n_rejected} rejected{reasons}")
    return True


def _factor_table(block, factors: dict, schema):
    part = factors[block.block]
    return tables.factor_table(schema, block.ids, part.factors, part.bias, block.ratings.row_counts())


def _metrics_rows(stats: list[dict], evaluation: list[dict], counts: list[tuple], k: int) -> "typing.Any":
    """The metrics table: counts (run-level and per file), per-iteration loss and time, held-out metrics.

    Per file, rows read = rows used + rows rejected + duplicates dropped; ``file_rows_used``
    is derived from that identity.
    """
    totals: dict[tuple[str, str | None], float] = {}
    for name, source, value in counts:
        totals[name, source] = totals.get((name, source), 0.0) + value
    for source in sorted({s for (name, s) in totals if name == "file_rows_read"}):
        rejected = totals.setdefault(("file_rows_rejected", source), 0.0)
        duplicate = totals.setdefault(("file_rows_duplicate", source), 0.0)
        totals["file_rows_used", source] = totals["file_rows_read", source] - rejected - duplicate
    rows: list[tuple] = [(name, None, source, value) for (name, source), value in sorted(totals.items(), key=str)]
    rows += [("train_loss", iteration, None, loss) for iteration, loss in training_loss(stats)]
    seconds: dict[int, float] = {}
    for row in stats:
        seconds[row["iteration"]] = seconds.get(row["iteration"], 0.0) + row["seconds"]
    rows += [("halfstep_seconds", iteration, None, value) for iteration, value in sorted(seconds.items())]
    if evaluation:
        rows += [(name, None, None, value) for name, value in summarize_evaluation(evaluation, k).items()]
    return tables.metrics_table(rows)


def _file_counts(table, name: str) -> list[tuple]:
    return [(name, source, count) for source, count in rows_per_source(table)]


def build(pipeline: beam.Pipeline, config: RunConfig, folder: str, block_folder: str, n_files: int) -> None:
    """Add the whole job to ``pipeline``, writing its tables under ``folder`` and the rating
    blocks the iterations read under ``block_folder``; ``n_files`` (the input files matched)
    is only quoted by the error of a run that accepted no rating."""
    schema = lambda name: tables.schema_of(name, config)  # noqa: E731
    count = lambda label, pcoll: pcoll | f"{label}Rows" >> beam.Map(_rows) | f"Sum{label}" >> beam.CombineGlobally(sum)  # noqa: E731

    raw = pipeline | "ReadRatings" >> ReadRatings(read_settings(config))
    validated = raw | "ValidateRatings" >> ValidateRatings(validation_settings(config))
    n_read, n_rejected = count("Read", raw), count("Rejected", validated.rejected)
    file_counts = [
        pcoll | f"Count{label}PerFile" >> beam.FlatMap(_file_counts, name).with_output_types(typing.Any)
        for label, pcoll, name in (("Read", raw, "file_rows_read"), ("Rejected", validated.rejected, "file_rows_rejected"))
    ]
    rejected_files = validated.rejected | "WriteRejected" >> output.WriteTable(folder, tables.REJECTED, schema(tables.REJECTED))
    gate = n_read | "CheckInputUsable" >> beam.Map(
        _gate,
        pvalue.AsSingleton(n_rejected),
        pvalue.AsList(rejected_files),
        config.validation.max_rejected_fraction,
        output.join(folder, tables.REJECTED),
        config.input.path,
        n_files,
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
    if config.input.init_from:
        for side, n_blocks in (("user", config.blocks.user_blocks), ("item", config.blocks.item_blocks)):
            model_inputs[f"previous_{side}_factors"] = pipeline | f"ReadPrevious{side.capitalize()}Factors" >> (
                ReadPreviousFactors(config.input.init_from, side, n_blocks)
            )
    factors = model_inputs | "Factorize" >> Factorize(config.model, config.compute, block_folder)
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

    sizes = [
        n_read | "NameRowsRead" >> beam.Map(lambda n: ("rows_read", None, n)),
        n_rejected | "NameRowsRejected" >> beam.Map(lambda n: ("rows_rejected", None, n)),
        blocked.user_blocks | "CountUsers" >> beam.Map(lambda b: ("users", None, len(b.ids))),
        blocked.item_vocab | "CountItems" >> beam.Map(lambda kv: ("items", None, len(kv[1]))),
    ]
    run_counts = (blocked.counts, *file_counts, *sizes) | "FlattenCounts" >> beam.Flatten()
    as_list = lambda label, pcoll: pvalue.AsSingleton(pcoll | f"Collect{label}" >> beam.combiners.ToList())  # noqa: E731
    (
        pipeline
        | "StartMetrics" >> beam.Create([None])
        | "MetricsTable"
        >> beam.Map(
            lambda _, stats, evaluation, counts: _metrics_rows(stats, evaluation, counts, config.evaluation.k),
            as_list("Stats", factors["stats"]),
            as_list("Evaluation", scored[EVALUATION]),
            as_list("Counts", run_counts),
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


def _tensorflow_version() -> str | None:
    """The installed TensorFlow's version, without importing it where no stage ran here
    (a remote runner's launcher): the module's when loaded, else the distribution's."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"].__version__
    for distribution in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def used_beam_section(config: RunConfig, beam_args: Sequence[str]) -> dict[str, typing.Any]:
    """The ``beam`` section as the run used it: the config's runner and options, with the
    values the command line gave (which win) and the options only the command line named.

    An option the command line set to its default value is not listed when the config does
    not name it either: absent and default mean the same.
    """
    used = pipeline_options(config, beam_args).get_all_options(retain_unknown_options=True)
    given = PipelineOptions(list(beam_args)).get_all_options(drop_default=True, retain_unknown_options=True)
    names = [*config.beam.options, *(name for name in given if name not in config.beam.options and name != "runner")]
    options = {name: used.get(name, config.beam.options.get(name)) for name in names}
    return {"runner": used.get("runner") or config.beam.runner, "options": options}


def _manifest(config: RunConfig, beam_args: Sequence[str], folder: str, seconds: float) -> dict:
    """What ``manifest.json`` records: row counts, the configuration as run (Beam options
    from the command line included), the input files with sizes, the time and the versions."""
    import numpy
    import pyarrow

    from apache_beam.io.filesystems import FileSystems

    counts = {name: output.count_rows(folder, name) for name in tables.TABLES}
    matched = FileSystems.match([config.input.path])[0].metadata_list
    inputs = [{"path": m.path, "bytes": m.size_in_bytes} for m in sorted(matched, key=lambda m: m.path)]
    return {
        "row_counts": counts,
        "config": {**to_dict(config), "beam": used_beam_section(config, beam_args)},
        "inputs": inputs,
        "seconds": seconds,
        "versions": {
            "python": platform.python_version(),
            "apache_beam": beam.__version__,
            "tensorflow": _tensorflow_version(),
            "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }


def _summary_key(row: dict) -> str:
    """Flat ``metrics.json`` key of a metrics row: ``name``, ``name_<iteration>`` or ``name[<source>]``."""
    if row["iteration"] is not None:
        return f"{row['name']}_{row['iteration']}"
    if row["source"] is not None:
        return f"{row['name']}[{row['source']}]"
    return row["name"]


def run(config: RunConfig, beam_args: Sequence[str] = ()) -> dict:
    """Run the job and publish its output folder; return the run's metrics as a dict.

    Raises
    ------
    OutputExistsError
        The output holds a published run and ``output.overwrite`` is false, or something that
        is not a published run (see :func:`pipeline.output.check_output`).
    WarmStartError
        ``input.init_from`` cannot warm-start this run.
    FileNotFoundError, InputStructureError
        No file matches the input, or one cannot be read as configured.
    UnusableInputError, NNMFFitError
        The input read is unusable, or the fit broke down numerically (as the runner raises
        them: in process, these types; a remote runner may wrap them).
    """
    target = config.output.path
    inputs = match_input_files(config.input.path)
    output.check_output(target, config.output.overwrite, inputs)
    if config.input.init_from:
        check_previous_run(config.input.init_from, config)
    folder = output.staging_path(target)
    options = pipeline_options(config, beam_args)
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=_runner(options), options=options)
    blocks = block_store.run_folder(folder)
    # Building checks every input file's structure: an input that cannot be read as configured
    # fails before the staging folder (a killed run's leftovers) is touched.
    build(pipeline, config, folder, blocks, len(inputs))
    output.prepare_staging(target)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        block_store.forget(blocks)
        output.delete_tree(blocks)
    seconds = time.perf_counter() - started
    timings = [(f"seconds_{stage}", None, None, value) for stage, value in sorted(stage_seconds(result).items())]
    metrics = output.append_rows(folder, tables.METRICS, tables.metrics_table(timings + [("seconds_total", None, None, seconds)]))
    summary = {_summary_key(row): row["value"] for row in metrics.to_pylist()}
    output.write_json(output.join(folder, "metrics.json"), summary)
    output.write_json(output.join(folder, output.MANIFEST), _manifest(config, beam_args, folder, seconds))
    write_report(folder)
    output.publish(folder, target, config.output.overwrite)
    _log.info("published %s in %.1f s", target, seconds)
    return summary
