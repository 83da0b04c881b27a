"""Output tables: explicit Arrow schemas and the functions that fill them from blocks.

| table             | columns                                                         |
| ----------------- | --------------------------------------------------------------- |
| `user_factors`    | user_id, factors (fixed-size list of float32), bias?, n_ratings |
| `item_factors`    | item_id, factors, bias?, n_ratings                              |
| `recommendations` | user_id, rank, item_id, score                                   |
| `rejected`        | source, row, field, value, reason                               |
| `metrics`         | name, iteration, source, value                                  |

Ids keep their input type (int64 or string); ``bias`` exists only for biased models.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.schemas import REJECTED_SCHEMA, id_arrow_type

USER_FACTORS = "user_factors"
ITEM_FACTORS = "item_factors"
RECOMMENDATIONS = "recommendations"
REJECTED = "rejected"
METRICS = "metrics"
TABLES = (USER_FACTORS, ITEM_FACTORS, RECOMMENDATIONS, REJECTED, METRICS)

METRICS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("iteration", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("value", pa.float64()),
    ]
)
"""One metric per row: ``iteration`` is set for per-iteration figures (training loss),
``source`` for per-input-file counts (``file_rows_*``); both null for run-level figures
(held-out RMSE, counts)."""


def factor_schema(id_column: str, id_type: str, rank: int, biased: bool) -> pa.Schema:
    """Schema of a factor table."""
    fields = [
        pa.field(id_column, id_arrow_type(id_type), nullable=False),
        pa.field("factors", pa.list_(pa.float32(), rank), nullable=False),
    ]
    if biased:
        fields.append(pa.field("bias", pa.float32(), nullable=False))
    fields.append(pa.field("n_ratings", pa.int64(), nullable=False))
    return pa.schema(fields)


def recommendation_schema(user_id_type: str, item_id_type: str) -> pa.Schema:
    """Schema of the recommendations table (rank 1 is the best item)."""
    return pa.schema(
        [
            pa.field("user_id", id_arrow_type(user_id_type), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),
            pa.field("item_id", id_arrow_type(item_id_type), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
        ]
    )


def schema_of(table: str, config) -> pa.Schema:
    """The schema of output ``table`` for a run configuration."""
    rank, biased = config.model.rank, config.model.bias
    return {
        USER_FACTORS: lambda: factor_schema("user_id", config.input.user_id_type, rank, biased),
        ITEM_FACTORS: lambda: factor_schema("item_id", config.input.item_id_type, rank, biased),
        RECOMMENDATIONS: lambda: recommendation_schema(config.input.user_id_type, config.input.item_id_type),
        REJECTED: lambda: REJECTED_SCHEMA,
        METRICS: lambda: METRICS_SCHEMA,
    }[table]()


def factor_table(
    schema: pa.Schema, ids: np.ndarray, factors: np.ndarray, bias: np.ndarray | None, n_ratings: np.ndarray
) -> pa.Table:
    """A factor table's rows for one block."""
    rank = factors.shape[1]
    columns = [
        pa.array(ids, type=schema.field(0).type),
        pa.FixedSizeListArray.from_arrays(pa.array(factors.astype(np.float32).ravel()), rank),
    ]
    if "bias" in schema.names:
        columns.append(pa.array(bias.astype(np.float32)))
    columns.append(pa.array(n_ratings.astype(np.int64)))
    return pa.Table.from_arrays(columns, schema=schema)


def recommendation_table(
    schema: pa.Schema, user_ids: np.ndarray, item_ids: np.ndarray, items: np.ndarray, scores: np.ndarray
) -> pa.Table:
    """Recommendation rows from ``top_n`` output (padding, index -1, dropped)."""
    users, ranks = np.nonzero(items >= 0)
    return pa.Table.from_arrays(
        [
            pa.array(user_ids[users], type=schema.field("user_id").type),
            pa.array((ranks + 1).astype(np.int32)),
            pa.array(item_ids[items[users, ranks]], type=schema.field("item_id").type),
            pa.array(scores[users, ranks].astype(np.float32)),
        ],
        schema=schema,
    )


def metrics_table(rows: list[tuple[str, int | None, str | None, float]]) -> pa.Table:
    """The metrics table from ``(name, iteration, source, value)`` rows."""
    columns = list(zip(*rows)) if rows else [(), (), (), ()]
    return pa.Table.from_arrays(
        [pa.array(column, field.type) for column, field in zip(columns, METRICS_SCHEMA)], schema=METRICS_SCHEMA
    )
