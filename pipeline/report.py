"""The run report: one self-contained HTML page beside a run's tables.

``report.html`` summarizes a run folder: the data (rows read, rejected, duplicates, users,
items, density), the training loss per iteration as a plot, the held-out metrics against the
popularity baseline with the lift of each ranking metric, the time per stage, the inputs with
their per-file row accounting, the output row counts, the configuration and the versions.

The page is self-contained: the plot is a base64 PNG data URI and the CSS is inline, so it has
no external references. Every value inserted into the page is HTML-escaped, since ids, paths
and configuration values come from user input.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from typing import Any, Iterable, Sequence

import pandas as pd
from apache_beam.io.filesystems import FileSystems

from pipeline import output, tables

REPORT = "report.html"
MANIFEST = "manifest.json"

STAGES = ("read", "validate", "block", "factorize", "recommend", "write")
"""Stages in run order; other ``seconds_<stage>`` metrics follow them alphabetically."""

FILE_COUNTS = ("file_rows_read", "file_rows_rejected", "file_rows_duplicate", "file_rows_used")
"""Per-file accounting metrics: rows read = rows used + rows rejected + duplicates dropped."""

ALL_FILES = "(all files: source not recorded)"
"""Row label of per-file counts written without a ``source`` column."""

_RANKING_METRIC = re.compile(r"^heldout_(precision|recall|ndcg)_at_(\d+)$")
_RANKING_ORDER = ("precision", "recall", "ndcg")
_RANKING_LABEL = {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG"}
_ERROR_METRICS = ("rmse", "mae")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
table.numbers td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


def _missing(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def _count(value: float | None) -> str:
    """A row count with thousands separators, or ``n/a``."""
    return "n/a" if _missing(value) else f"{value:,.0f}"


def _decimal(value: float | None, digits: int = 4) -> str:
    """A figure with ``digits`` decimals (scientific when smaller than that), or ``n/a``."""
    if _missing(value):
        return "n/a"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.{digits - 1}e}"
    return f"{value:,.{digits}f}"


def _seconds(value: float | None) -> str:
    """Seconds with two decimals, or ``n/a``."""
    return "n/a" if _missing(value) else f"{value:,.2f}"


def _text(value: Any) -> str:
    """A configuration or manifest value as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numbers: bool = False) -> str:
    """An HTML table of escaped cells; with ``numbers``, all but the first column align right."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    css = ' class="numbers"' if numbers else ""
    return f"<table{css}>\n<tr>{head}</tr>\n{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(title: str, *parts: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def metrics_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with ``name``, ``iteration``, ``source`` and float ``value`` columns.

    Parameters
    ----------
    metrics : pandas.DataFrame
        The run's ``metrics`` table; ``iteration`` and ``source`` may be missing (all null).

    Returns
    -------
    pandas.DataFrame
        A copy where missing columns are null and ``value`` is float (null values are NaN).
    """
    frame = metrics.copy()
    for column in ("name", "iteration", "source", "value"):
        if column not in frame.columns:
            frame[column] = None
    frame["value"] = frame["value"].astype(float)
    return frame


def run_level(frame: pd.DataFrame) -> dict[str, float]:
    """Run-level metrics (no iteration, no source, not a per-file count) by name."""
    rows = frame[frame["iteration"].isna() & frame["source"].isna() & ~frame["name"].isin(FILE_COUNTS)]
    return {str(name): float(value) for name, value in zip(rows["name"], rows["value"])}


def per_iteration(frame: pd.DataFrame, name: str) -> pd.Series:
    """The values of per-iteration metric ``name``, indexed by iteration in order."""
    rows = frame[(frame["name"] == name) & frame["iteration"].notna()]
    return pd.Series(rows["value"].to_numpy(), index=rows["iteration"].astype(int).to_numpy(), name=name).sort_index()


def per_file(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-file accounting: source file -> ``file_rows_*`` name -> row count.

    Counts written without a source are summed under :data:`ALL_FILES`.
    """
    rows = frame[frame["name"].isin(FILE_COUNTS) & frame["iteration"].isna()]
    counts: dict[str, dict[str, float]] = {}
    for name, source, value in zip(rows["name"], rows["source"], rows["value"]):
        file = counts.setdefault(ALL_FILES if pd.isna(source) else str(source), {})
        file[name] = file.get(name, 0.0) + value
    return counts


def data_summary(values: dict[str, float], manifest: dict) -> list[tuple[str, str]]:
    """Rows of the data table: counts, users, items and the training matrix's density.

    Users and items come from the ``users``/``items`` metrics, else from the row counts of the
    factor tables in the manifest; density is training ratings / (users × items).
    """
    row_counts = manifest.get("row_counts", {})
    users = values.get("users", row_counts.get(tables.USER_FACTORS))
    items = values.get("items", row_counts.get(tables.ITEM_FACTORS))
    train = values.get("train_ratings")
    density = train / (users * items) if train is not None and users and items else None
    return [
        ("Rows read", _count(values.get("rows_read"))),
        ("Rows rejected", _count(values.get("rows_rejected"))),
        ("Duplicates dropped", _count(values.get("duplicates_dropped"))),
        ("Training ratings", _count(train)),
        ("Held-out ratings", _count(values.get("heldout_ratings"))),
        ("Users", _count(users)),
        ("Items", _count(items)),
        ("Density (training ratings / (users × items))", _decimal(density)),
    ]


def loss_plot(loss: pd.Series) -> str:
    """The training loss per iteration drawn with matplotlib's Agg backend, as base64 PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 3.5), dpi=96)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(loss.index, loss.to_numpy(), marker="o", markersize=3)
    axes.set_xlabel("iteration")
    axes.set_ylabel("training loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _training(frame: pd.DataFrame) -> str:
    loss, seconds = per_iteration(frame, "train_loss"), per_iteration(frame, "halfstep_seconds")
    if loss.empty:
        return _note("No training loss was recorded.")
    image = f'<img alt="Training loss per iteration" src="data:image/png;base64,{html.escape(loss_plot(loss))}">'
    rows = [(str(i), _decimal(loss.get(i)), _seconds(seconds.get(i))) for i in loss.index.union(seconds.index)]
    iterations = _table(["Iteration", "Training loss", "Half-step seconds (sum over blocks)"], rows, numbers=True)
    return f"{image}\n<details><summary>Per iteration</summary>\n{iterations}\n</details>"


def _ranking_names(values: dict[str, float]) -> list[str]:
    """The model's ranking metrics, by cutoff K, then precision, recall, NDCG."""
    found = [(int(m[2]), _RANKING_ORDER.index(m[1]), m[0]) for m in map(_RANKING_METRIC.match, values) if m]
    return [name for _, _, name in sorted(found)]


def _lift(model: float, baseline: float | None) -> tuple[str, str]:
    """Lift of the model over the baseline as (ratio, difference)."""
    if _missing(baseline) or _missing(model):
        return "n/a", "n/a"
    ratio = f"{model / baseline:,.3f}×" if baseline else "n/a"
    return ratio, f"{model - baseline:+.4f}"


def evaluation_rows(values: dict[str, float], with_baseline: bool) -> list[list[str]]:
    """Rows of the held-out table: error metrics, then ranking metrics (with lift)."""
    rows = []
    for metric in _ERROR_METRICS:
        if f"heldout_{metric}" in values:
            row = [metric.upper(), _decimal(values[f"heldout_{metric}"])]
            rows.append(row + ([_decimal(values.get(f"baseline_{metric}")), "", ""] if with_baseline else []))
    for name in _ranking_names(values):
        metric, k = _RANKING_METRIC.match(name).groups()
        model, baseline = values[name], values.get("baseline" + name[len("heldout"):])
        row = [f"{_RANKING_LABEL[metric]}@{k}", _decimal(model)]
        rows.append(row + ([_decimal(baseline), *_lift(model, baseline)] if with_baseline else []))
    return rows


def _evaluation(values: dict[str, float]) -> str:
    with_baseline = any(name.startswith("baseline_") for name in values)
    rows = evaluation_rows(values, with_baseline)
    if not rows:
        return _note("No held-out metrics were recorded.")
    header = ["Metric", "Model"]
    if with_baseline:
        header += ["Popularity baseline", "Lift (model / baseline)", "Lift (model − baseline)"]
    notes = []
    if "heldout_ranked_users" in values:
        notes.append(_note(f"Ranking metrics over {_count(values['heldout_ranked_users'])} held-out users."))
    if with_baseline:
        notes.append(_note("Lift is shown for ranking metrics, where higher is better."))
    return "\n".join([_table(header, rows, numbers=True), *notes])


def stage_rows(values: dict[str, float], manifest: dict) -> list[tuple[str, str]]:
    """Busy seconds per stage (``seconds_<stage>``) in run order, then the whole run's."""
    stages = {
        name[len("seconds_"):]: value
        for name, value in values.items()
        if name.startswith("seconds_") and name != "seconds_total"
    }
    order = sorted(stages, key=lambda stage: (STAGES.index(stage) if stage in STAGES else len(STAGES), stage))
    rows = [(stage, _seconds(stages[stage])) for stage in order]
    if "seconds" in manifest:
        rows.append(("whole run", _seconds(manifest["seconds"])))
    return rows


def _stages(values: dict[str, float], manifest: dict) -> str:
    rows = stage_rows(values, manifest)
    return _table(["Stage", "Busy seconds"], rows, numbers=True) if rows else _note("No timings were recorded.")


def input_rows(manifest: dict, files: dict[str, dict[str, float]]) -> list[list[str]]:
    """One row per input file: path, bytes and, when recorded, its row accounting."""
    sizes = {str(entry.get("path")): entry.get("bytes") for entry in manifest.get("inputs", [])}
    paths = list(sizes) + sorted(set(files) - set(sizes))
    names = FILE_COUNTS if files else ()
    return [[path, _count(sizes.get(path)), *(_count(files.get(path, {}).get(name)) for name in names)] for path in paths]


def _inputs(manifest: dict, files: dict[str, dict[str, float]]) -> str:
    rows = input_rows(manifest, files)
    if not rows:
        return _note("No inputs were recorded.")
    header = ["File", "Bytes"] + (["Rows read", "Rejected", "Duplicates", "Used"] if files else [])
    table = _table(header, rows, numbers=True)
    return table if files else table + "\n" + _note("Per-file row counts were not recorded.")


def config_rows(config: dict) -> list[tuple[str, str, str]]:
    """The configuration as (section, key, value) rows; non-string values as JSON."""
    rows = []
    for section, keys in config.items():
        items = keys.items() if isinstance(keys, dict) else [("", keys)]
        rows += [(str(section), str(key), _text(value)) for key, value in items]
    return rows


def _key_values(mapping: dict, header: Sequence[str], empty: str, numbers: bool = False) -> str:
    rows = [(str(key), _text(value)) for key, value in mapping.items()]
    return _table(header, rows, numbers) if rows else _note(empty)


def _title(config: dict) -> str:
    """The page title, naming the run's output path when the configuration has one."""
    target = config.get("output")
    path = target.get("path") if isinstance(target, dict) else None
    return f"NNMF run report: {path}" if path else "NNMF run report"


def render_report(metrics: pd.DataFrame, manifest: dict) -> str:
    """The HTML report of one run.

    Parameters
    ----------
    metrics : pandas.DataFrame
        The run's ``metrics`` table (columns ``name``, ``iteration``, optional ``source``, ``value``).
    manifest : dict
        The run's ``manifest.json``: ``row_counts``, ``config``, ``inputs``, ``seconds``, ``versions``.

    Returns
    -------
    str
        A self-contained HTML page: inline CSS, the plot as a data URI, no external references.
    """
    frame = metrics_frame(metrics)
    values = run_level(frame)
    config = manifest.get("config", {})
    row_counts = {name: _count(count) for name, count in manifest.get("row_counts", {}).items()}
    sections = [
        _section("Data", _table(["Figure", "Value"], data_summary(values, manifest), numbers=True)),
        _section("Training loss", _training(frame)),
        _section("Held-out metrics", _evaluation(values)),
        _section("Time per stage", _stages(values, manifest)),
        _section("Inputs", _inputs(manifest, per_file(frame))),
        _section("Output tables", _key_values(row_counts, ["Table", "Rows"], "No row counts were recorded.", True)),
        _section("Configuration", _table(["Section", "Key", "Value"], config_rows(config))),
        _section("Versions", _key_values(manifest.get("versions", {}), ["Package", "Version"], "No versions were recorded.")),
    ]
    return _PAGE.format(title=html.escape(_title(config)), css=_CSS, body="\n".join(sections))


def write_report(folder: str) -> str:
    """Write ``<folder>/report.html`` from the folder's ``metrics`` table and ``manifest.json``.

    Parameters
    ----------
    folder : str
        A run folder, local or on any Beam filesystem (``gs://``, ``s3://``).

    Returns
    -------
    str
        The path of the report written.
    """
    metrics = output.read_table(folder, tables.METRICS).to_pandas()
    with FileSystems.open(output.join(folder, MANIFEST)) as handle:
        manifest = json.loads(handle.read().decode("utf-8"))
    path = output.join(folder, REPORT)
    with FileSystems.create(path, mime_type="text/html") as handle:
        handle.write(render_report(metrics, manifest).encode("utf-8"))
    return path
