"""The run report: figures, plot, baseline lift, escaping, self-containment and the written file."""

from __future__ import annotations

import base64
import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import ALL_FILES, REPORT, render_report, write_report
from pipeline.tables import METRICS_SCHEMA

EVIL_FILE = "data/<script>alert('file')</script>.csv"
EVIL_PATH = "out/<script>alert('path')</script>"


def _rows() -> list[tuple]:
    """``(name, iteration, source, value)`` rows of a complete run."""
    run_level = {
        "rows_read": 1234.0, "rows_rejected": 12.0, "duplicates_dropped": 3.0,
        "train_ratings": 980.0, "heldout_ratings": 239.0, "users": 50.0, "items": 40.0,
        "heldout_rmse": 0.91234, "heldout_mae": 0.70123, "baseline_rmse": 1.05, "baseline_mae": 0.85,
        "heldout_precision_at_10": 0.25, "baseline_precision_at_10": 0.125,
        "heldout_recall_at_10": 0.3, "baseline_recall_at_10": 0.0,
        "heldout_ndcg_at_10": 0.4, "baseline_ndcg_at_10": 0.5, "heldout_ranked_users": 45.0,
        "seconds_write": 0.75, "seconds_read": 1.5, "seconds_factorize": 12.25,
    }
    rows = [(name, None, None, value) for name, value in run_level.items()]
    rows += [("train_loss", i, None, loss) for i, loss in ((2, 321.5), (1, 4567.25), (3, 100.125))]
    rows += [("halfstep_seconds", i, None, 0.5 * i) for i in (1, 2, 3)]
    counts = {"file_rows_read": 1234.0, "file_rows_rejected": 12.0, "file_rows_duplicate": 3.0, "file_rows_used": 1219.0}
    return rows + [(name, None, EVIL_FILE, value) for name, value in counts.items()]


@pytest.fixture
def metrics() -> pd.DataFrame:
    """A complete metrics table."""
    return pd.DataFrame(_rows(), columns=["name", "iteration", "source", "value"])


@pytest.fixture
def manifest() -> dict:
    """A manifest whose paths carry markup."""
    return {
        "row_counts": {"user_factors": 50, "item_factors": 40, "recommendations": 500, "rejected": 12, "metrics": 31},
        "config": {
            "input": {"path": EVIL_FILE, "format": "csv", "timestamp_column": None},
            "model": {"rank": 8, "reg": 0.05, "bias": True},
            "output": {"path": EVIL_PATH},
        },
        "inputs": [{"path": EVIL_FILE, "bytes": 56789}],
        "seconds": 20.5,
        "versions": {"python": "3.11.9", "apache_beam": "2.77.0"},
    }


@pytest.fixture
def page(metrics, manifest) -> str:
    """The report of the complete run."""
    return render_report(metrics, manifest)


def _cells(page: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", page)


def test_shows_the_data_summary(page):
    cells = _cells(page)
    for figure in ("1,234", "12", "3", "980", "239", "50", "40", "0.4900"):
        assert figure in cells


def test_embeds_the_loss_plot_as_png(page):
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")


def test_lists_the_loss_and_half_step_time_per_iteration(page):
    cells = _cells(page)
    assert cells[cells.index("1"):cells.index("1") + 3] == ["1", "4,567.2500", "0.50"]
    assert cells.index("4,567.2500") < cells.index("321.5000") < cells.index("100.1250")


def test_compares_held_out_metrics_with_the_baseline(page):
    cells = _cells(page)
    assert cells[cells.index("RMSE"):cells.index("RMSE") + 3] == ["RMSE", "0.9123", "1.0500"]
    assert cells[cells.index("Precision@10"):cells.index("Precision@10") + 5] == [
        "Precision@10", "0.2500", "0.1250", "2.000×", "+0.1250",
    ]
    assert cells[cells.index("Recall@10"):cells.index("Recall@10") + 5] == ["Recall@10", "0.3000", "0.0000", "n/a", "+0.3000"]
    assert cells[cells.index("NDCG@10"):cells.index("NDCG@10") + 5] == ["NDCG@10", "0.4000", "0.5000", "0.800×", "-0.1000"]
    assert "45 held-out users" in page


def test_shows_time_per_stage_in_run_order(page):
    cells = _cells(page)
    assert cells.index("read") < cells.index("factorize") < cells.index("write") < cells.index("whole run")
    assert cells[cells.index("factorize") + 1] == "12.25"
    assert cells[cells.index("whole run") + 1] == "20.50"


def test_shows_per_file_accounting_and_output_counts(page):
    cells = _cells(page)
    row = cells.index("56,789") - 1
    assert cells[row + 1:row + 6] == ["56,789", "1,234", "12", "3", "1,219"]
    assert cells[cells.index("recommendations") + 1] == "500"


def test_shows_the_configuration_and_versions(page):
    cells = _cells(page)
    assert cells[cells.index("rank") + 1] == "8"
    assert cells[cells.index("reg") + 1] == "0.05"
    assert cells[cells.index("bias") + 1] == "true"
    assert cells[cells.index("timestamp_column") + 1] == "null"
    assert cells[cells.index("apache_beam") + 1] == "2.77.0"


def test_escapes_ids_and_paths(page):
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;file&#x27;)&lt;/script&gt;" in page
    assert "<title>NNMF run report: out/&lt;script&gt;" in page


def test_is_self_contained(page):
    assert "http://" not in page and "https://" not in page
    assert "<style>" in page and "<link" not in page and "url(" not in page


def test_omits_optional_metrics_and_derives_users_items_density():
    metrics = pd.DataFrame(
        {
            "name": ["rows_read", "train_ratings", "heldout_rmse", "heldout_precision_at_5", "train_loss"],
            "iteration": [None, None, None, None, 1],
            "value": [20.0, 14.0, 1.25, 0.5, 3.0],
        }
    )
    manifest = {"row_counts": {"user_factors": 7, "item_factors": 5}, "inputs": [{"path": "a.csv", "bytes": 10}]}
    page = render_report(metrics, manifest)
    cells = _cells(page)
    assert cells[cells.index("Users") + 1] == "7" and cells[cells.index("Items") + 1] == "5"
    assert cells[cells.index("Density (training ratings / (users × items))") + 1] == "0.4000"
    assert cells[cells.index("Precision@5"):cells.index("Precision@5") + 3] == ["Precision@5", "0.5000", "a.csv"]
    assert "baseline" not in page and "Wall seconds" not in page
    assert "Per-file row counts were not recorded." in page


def test_sums_per_file_counts_without_a_source_column():
    metrics = pd.DataFrame({"name": ["file_rows_read", "file_rows_read"], "iteration": [None, None], "value": [4.0, 6.0]})
    cells = _cells(render_report(metrics, {}))
    assert cells[cells.index(ALL_FILES):cells.index(ALL_FILES) + 3] == [ALL_FILES, "n/a", "10"]


def test_renders_an_empty_run():
    page = render_report(pd.DataFrame(), {})
    assert "No training loss was recorded." in page and "No held-out metrics were recorded." in page
    assert "<img" not in page


def test_write_report_writes_html_beside_the_tables(tmp_path, manifest):
    (tmp_path / "metrics").mkdir()
    pq.write_table(pa.Table.from_arrays(list(map(list, zip(*_rows()))), schema=METRICS_SCHEMA),
                   tmp_path / "metrics" / "part-00000.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    path = write_report(str(tmp_path))
    assert path == str(tmp_path / REPORT)
    text = (tmp_path / REPORT).read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    assert "1,234" in _cells(text) and "2.000×" in _cells(text)
