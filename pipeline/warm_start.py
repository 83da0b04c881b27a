"""Warm start: begin from an earlier run's factors instead of random ones.

The nightly retrain sees mostly the same users and items as yesterday's. Rows found in the
earlier run's ``user_factors`` / ``item_factors`` tables start from their factors (and
biases); new rows get the usual seeded initial values; rows that vanished are dropped.
The earlier tables are read by Beam, keyed by this run's blocks, and reach the
initialisation step as side inputs, so nothing is collected in the launcher.
"""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import output, tables
from pipeline.blocks import FactorBlock, id_array, item_block_of, user_block_of

ID_COLUMN = {"user": "user_id", "item": "item_id"}
TABLE = {"user": tables.USER_FACTORS, "item": tables.ITEM_FACTORS}


class WarmStartError(ValueError):
    """``input.init_from`` cannot warm-start this run: a configuration problem, found before
    any work."""


def check_previous_run(folder: str, config) -> None:
    """Fail before any work when ``folder`` cannot warm-start a run of ``config``.

    Raises
    ------
    WarmStartError
        The folder is not a published run, lacks a factor table, or its factor tables have
        another rank, id type or bias setting.
    """
    if not output.is_published_run(folder):
        raise WarmStartError(
            f"input.init_from: {folder} is not a published run (no {output.SUCCESS} and {output.MANIFEST})"
        )
    for side in ("user", "item"):
        expected = tables.schema_of(TABLE[side], config)
        paths = output.table_paths(folder, TABLE[side])
        if not paths:
            raise WarmStartError(f"input.init_from: {folder} has no {TABLE[side]} table")
        with FileSystems.open(paths[0]) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        rank = schema.field("factors").type.list_size if "factors" in schema.names else None
        if rank != config.model.rank:
            raise WarmStartError(
                f"input.init_from: {paths[0]} has factors of rank {rank}; this run has rank {config.model.rank}"
            )
        biased = "bias" in schema.names
        if biased != config.model.bias:
            # Factors fitted around biases (or without them) start a model of the other kind
            # worse than fresh ones (train loss after one iteration 13-63% above a cold start).
            raise WarmStartError(
                f"input.init_from: {paths[0]} was fitted with model.bias={str(biased).lower()}; this run has "
                f"model.bias={str(config.model.bias).lower()}: drop input.init_from to start cold"
            )
        id_column = ID_COLUMN[side]
        found = schema.field(id_column).type if id_column in schema.names else None
        wanted = expected.field(id_column).type
        if found != wanted:
            raise WarmStartError(
                f"input.init_from: {paths[0]} has {id_column} of type {found}; this run expects {wanted} "
                f"(input.{side}_id_type: {getattr(config.input, f'{side}_id_type')})"
            )


def _split_by_block(table: pa.Table, side: str, n_blocks: int):
    block_of = user_block_of if side == "user" else item_block_of
    block_ids = block_of(table.column(ID_COLUMN[side]), n_blocks)
    for block in np.unique(block_ids):
        yield int(block), table.filter(pa.array(block_ids == block))


def _concat(element):
    block, parts = element
    return block, pa.concat_tables(list(parts))


class ReadPreviousFactors(beam.PTransform):
    """``(block, pa.Table)`` of an earlier run's factor rows, keyed by this run's blocks."""

    def __init__(self, folder: str, side: str, n_blocks: int):
        super().__init__()
        self._folder, self._side, self._blocks = folder, side, n_blocks

    def expand(self, pbegin):
        pattern = output.join(self._folder, TABLE[self._side], "*.parquet")
        return (
            pbegin
            | "ReadFactorTable" >> beam.io.ReadFromParquetBatched(pattern)
            | "KeyByBlock" >> beam.FlatMap(_split_by_block, self._side, self._blocks).with_output_types(typing.Any)
            | "GroupByBlock" >> beam.GroupByKey()
            | "ConcatBlock" >> beam.Map(_concat).with_output_types(typing.Any)
        )


def warm_factors(side: str, fresh: FactorBlock, ids: np.ndarray, previous: pa.Table | None) -> FactorBlock:
    """``fresh`` with the rows whose id appears in ``previous`` replaced by their earlier values."""
    if previous is None or previous.num_rows == 0 or len(ids) == 0:
        return fresh
    old_ids = id_array(previous.column(ID_COLUMN[side]))
    order = np.argsort(old_ids, kind="stable")
    old_ids = old_ids[order]
    position = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
    found = old_ids[position] == ids
    rank = fresh.factors.shape[1]
    old_factors = previous.column("factors").combine_chunks().flatten().to_numpy().reshape(-1, rank)[order]
    factors = fresh.factors.copy()
    factors[found] = old_factors[position[found]]
    bias = fresh.bias
    if bias is not None and "bias" in previous.column_names:
        bias = bias.copy()
        bias[found] = previous.column("bias").to_numpy()[order][position[found]]
    return FactorBlock(factors, bias)
