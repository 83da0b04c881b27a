"""BlockRatings: deduplicate, split and group the ratings by user block and by item block, once.

::

    valid ratings ─► KeyByUserBlock ─► GroupByUserBlock ─► DeduplicateAndSplit ─┬─► counts
                                                                                 ├─► item vocabulary
                                                                                 ├─► users per block
                                                                                 └─► ResolveUserBlock ─┬─► user blocks
                                                                                                       └─► item entries
    item entries ─► GroupByItemBlock ─► BuildItemBlock ─► item blocks

All of a user's ratings land in one user block, so deduplication and the split need no
other shuffle. After this transform, iterations move factors only.
"""

from __future__ import annotations

import typing
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline import blocks, schemas
from pipeline.dedup import POLICIES, deduplicate
from pipeline.split import split_holdout
from pipeline.timing import timed

COUNTS = "counts"
ITEM_ENTRIES = "item_entries"


class BlockedRatings(NamedTuple):
    """The outputs of :class:`BlockRatings`."""

    user_blocks: beam.PCollection
    """:class:`~pipeline.blocks.RatingsBlock` per user block (with its held-out ratings)."""
    item_blocks: beam.PCollection
    """:class:`~pipeline.blocks.RatingsBlock` per item block."""
    item_vocab: beam.PCollection
    """``(item block, sorted item ids)``."""
    global_mean: beam.PCollection
    """Singleton: the mean training rating."""
    counts: beam.PCollection
    """``(name, source file or None, count)``: duplicates dropped (in all and per file),
    training and held-out ratings."""


def rows_per_source(table: pa.Table) -> list[tuple[str, int]]:
    """``(source file, row count)`` for each file present in ``table``."""
    if table.num_rows == 0:
        return []
    counts = table.column(schemas.SOURCE).value_counts()
    return [(str(s), int(n)) for s, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())]


#: Columns a user block needs once it is deduplicated and split.
_BLOCK_COLUMNS = [schemas.USER_ID, schemas.ITEM_ID, schemas.RATING]


def _split_by_user_block(table: pa.Table, n_blocks: int):
    """Yield ``(user block, rows of that block)`` for one batch. The source file column
    travels dictionary-encoded through the shuffle (one path per batch instead of one per row:
    2.4× fewer bytes to encode, copy and decode)."""
    block_ids = blocks.user_block_of(table.column(schemas.USER_ID), n_blocks)
    at = table.schema.get_field_index(schemas.SOURCE)
    table = table.set_column(at, schemas.SOURCE, pc.dictionary_encode(table.column(at)))
    for block in np.unique(block_ids):
        yield int(block), table.filter(pa.array(block_ids == block))


def _read_order(table: pa.Table) -> np.ndarray | None:
    """Row positions of ``table`` sorted by ``(source, row)`` (unique per row), or None when
    the columns are not what this fast path expects (nulls, negative rows)."""
    source, row = table.column(schemas.SOURCE), table.column(schemas.ROW)
    if source.null_count or row.null_count or not pa.types.is_string(source.type):
        return None
    rows = row.to_numpy()
    if len(rows) and int(rows.min()) < 0:
        return None
    encoded = pc.dictionary_encode(source).combine_chunks()
    names = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    # Arrow orders strings by their UTF-8 bytes, which is Python's code point order.
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    stride = np.int64(int(rows.max()) + 1 if len(rows) else 1)
    if int(stride) * max(len(names), 1) >= 2**62:  # the combined key would overflow int64
        return None
    return np.argsort(rank[encoded.indices.to_numpy()] * stride + rows, kind="stable")


def deduplicate_block(table: pa.Table, policy: str) -> tuple[pa.Table, pa.Table]:
    """:func:`pipeline.dedup.deduplicate`, with a fast path for the common case of no
    repeated (user, item) pair: one hash pass to check, then only the ``(source, row)`` order
    that ``deduplicate`` returns (its 5-key sort is most of the block stage's time).
    The tables returned are the same as ``deduplicate``'s in both cases."""
    if policy in POLICIES and table.num_rows:
        import pandas as pd

        pairs = pd.DataFrame({
            "user": table.column(schemas.USER_ID).to_numpy(zero_copy_only=False),
            "item": table.column(schemas.ITEM_ID).to_numpy(zero_copy_only=False),
        })
        if not pairs.duplicated().any():
            order = _read_order(table)
            if order is not None:
                return table.take(order), table.slice(0, 0)
    return deduplicate(table, policy)


class _DeduplicateAndSplitFn(beam.DoFn):
    """Concatenate a user block's batches, drop duplicate pairs, split train / held-out."""

    def __init__(self, policy: str, holdout_fraction: float, seed: int):
        self._policy, self._fraction, self._seed = policy, holdout_fraction, seed
        self._duplicates = Metrics.counter("block", "duplicates_dropped")

    def process(self, element, gate=None):
        return timed("block", self._process(element))

    def _process(self, element):
        block, tables = element
        table = pa.concat_tables(list(tables))
        at = table.schema.get_field_index(schemas.SOURCE)
        table = table.set_column(at, schemas.SOURCE, table.column(at).cast(pa.string()))
        kept, dropped = deduplicate_block(table, self._policy)
        self._duplicates.inc(dropped.num_rows)
        train, heldout = split_holdout(kept, self._fraction, self._seed)
        yield pvalue.TaggedOutput(COUNTS, ("duplicates_dropped", None, dropped.num_rows))
        yield pvalue.TaggedOutput(COUNTS, ("train_ratings", None, train.num_rows))
        yield pvalue.TaggedOutput(COUNTS, ("heldout_ratings", None, heldout.num_rows))
        for source, count in rows_per_source(dropped):
            yield pvalue.TaggedOutput(COUNTS, ("file_rows_duplicate", source, count))
        yield block, (train.select(_BLOCK_COLUMNS), heldout.select(_BLOCK_COLUMNS))


def _item_ids_by_block(element, n_item_blocks: int):
    _, (train, _) = element
    ids = np.unique(blocks.id_array(train.column(schemas.ITEM_ID)))
    block_ids = blocks.item_block_of(ids, n_item_blocks)
    for block in np.unique(block_ids):
        yield int(block), ids[block_ids == block]


def _union_ids(element):
    block, parts = element
    return block, np.unique(np.concatenate(list(parts)))


def _rating_sum(element):
    _, (train, _) = element
    ratings = train.column(schemas.RATING).to_numpy().astype(np.float64)
    return float(ratings.sum()), int(len(ratings))


class _MeanRatingFn(beam.CombineFn):
    """Mean of all ratings from per-block ``(sum, count)`` pairs (0 when there are none)."""

    def create_accumulator(self):
        return 0.0, 0

    def add_input(self, accumulator, element):
        return accumulator[0] + element[0], accumulator[1] + element[1]

    def merge_accumulators(self, accumulators):
        sums, counts = zip(*accumulators)
        return sum(sums), sum(counts)

    def extract_output(self, accumulator):
        return accumulator[0] / accumulator[1] if accumulator[1] else 0.0


class _ResolveUserBlockFn(beam.DoFn):
    """Turn a user block's tables into a RatingsBlock, and send its entries to item blocks."""

    def __init__(self, item_blocks: int):
        self._item_blocks = item_blocks

    def process(self, element, item_vocab):
        return timed("block", self._process(element, item_vocab))

    def _process(self, element, item_vocab):
        block, (train, heldout) = element
        user_block, entries = blocks.build_user_block(block, train, heldout, item_vocab, self._item_blocks)
        for item_block, part in entries.items():
            yield pvalue.TaggedOutput(ITEM_ENTRIES, (item_block, (block, part)))
        yield user_block


def _build_item_block(element, item_vocab, user_sizes):
    block, parts = element
    return blocks.build_item_block(block, item_vocab[block], list(parts), user_sizes)


class BlockRatings(beam.PTransform):
    """Group validated ratings into user and item blocks (see the module docstring)."""

    def __init__(self, user_blocks: int, item_blocks: int, dedup_policy: str, holdout_fraction: float, seed: int, gate=None):
        super().__init__()
        self._user_blocks, self._item_blocks = user_blocks, item_blocks
        self._policy, self._fraction, self._seed = dedup_policy, holdout_fraction, seed
        self._gate = gate

    def expand(self, valid: beam.PCollection) -> BlockedRatings:
        gate = [] if self._gate is None else [pvalue.AsSingleton(self._gate)]
        split = (
            valid
            | "KeyByUserBlock" >> beam.FlatMap(_split_by_user_block, self._user_blocks).with_output_types(typing.Any)
            | "GroupByUserBlock" >> beam.GroupByKey()
            | "DeduplicateAndSplit"
            >> beam.ParDo(_DeduplicateAndSplitFn(self._policy, self._fraction, self._seed), *gate)
            .with_output_types(typing.Any)
            .with_outputs(COUNTS, main="split")
        )
        block_train_heldout = split.split
        item_vocab = (
            block_train_heldout
            | "ItemIdsByBlock" >> beam.FlatMap(_item_ids_by_block, self._item_blocks).with_output_types(typing.Any)
            | "GroupItemIds" >> beam.GroupByKey()
            | "BuildItemVocab" >> beam.Map(_union_ids).with_output_types(typing.Any)
        )
        global_mean = (
            block_train_heldout
            | "SumRatings" >> beam.Map(_rating_sum).with_output_types(typing.Any)
            | "MeanRating" >> beam.CombineGlobally(_MeanRatingFn()).with_output_types(typing.Any)
        )
        resolved = (
            block_train_heldout
            | "ResolveUserBlock"
            >> beam.ParDo(_ResolveUserBlockFn(self._item_blocks), pvalue.AsDict(item_vocab))
            .with_output_types(typing.Any)
            .with_outputs(ITEM_ENTRIES, main="user_blocks")
        )
        user_sizes = resolved.user_blocks | "CountBlockUsers" >> beam.Map(
            lambda block: (block.block, len(block.ids))
        ).with_output_types(typing.Any)
        item_blocks = (
            resolved[ITEM_ENTRIES]
            | "GroupByItemBlock" >> beam.GroupByKey()
            | "BuildItemBlock"
            >> beam.Map(_build_item_block, pvalue.AsDict(item_vocab), pvalue.AsDict(user_sizes)).with_output_types(
                typing.Any
            )
        )
        return BlockedRatings(resolved.user_blocks, item_blocks, item_vocab, global_mean, split[COUNTS])
