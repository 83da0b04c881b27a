"""Run configuration: one frozen, validated dataclass per section of a YAML file.

A run is described by a small declarative YAML file (see ``configs/``) with the sections
``input``, ``validation``, ``split``, ``model``, ``blocks``, ``compute``, ``recommend``,
``evaluation``, ``output`` and ``beam``. :func:`load_config` reads it as plain YAML (safe loading),
applies ``section.key=value`` overrides, and checks every section before building anything, so
one run reports every problem at once::

    configs/local.yaml: model.rank must be an int >= 1; got 0
    configs/local.yaml: input.delimiter applies only to csv or tsv input; got ',' with format 'parquet'

The ``model`` section is :class:`nnmf_tf.params.SolverParams` itself, so the solver's own
validation (and its wording) applies unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from nnmf_tf.params import SolverParams

FORMATS = ("csv", "tsv", "parquet")
TEXT_FORMATS = ("csv", "tsv")
COMPRESSIONS = ("auto", "none", "gzip", "bz2", "zstd")
ID_TYPES = ("int", "string")
DUPLICATE_POLICIES = ("latest", "first", "last")
STRATEGIES = ("default", "mirrored")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MISSING = object()
"""Stands for a required key the file does not set."""

ERR_NOT_READABLE = "{file}: the config file must be a readable file; got {reason}"
ERR_NOT_YAML = "{file}{where}: the config file must be valid YAML; got {reason}"
ERR_NOT_SECTIONS = "{file}: the config file must be a mapping of sections; got {value!r}"
ERR_NOT_MAPPING = "{file}: {key} must be a mapping of keys; got {value!r}"
ERR_UNKNOWN_SECTION = "{file}: {key} is not a known section; expected one of {choices}"
ERR_UNKNOWN_KEY = "{file}: {key} is not a known key; expected one of {choices}"
ERR_BAD_OVERRIDE = "{file}: override must have the form section.key=value; got {text!r}"
ERR_OVERRIDE_YAML = "{file}: override value of {key} must be valid YAML; got {value!r}"
ERR_INVALID = "{key} must be {expectation}; got {value!r}"
ERR_REQUIRED = "{key} is required and must be {expectation}"


class ConfigError(ValueError):
    """A run configuration has problems; ``problems`` lists every one, one message each.

    Parameters
    ----------
    problems : sequence of str
        Messages naming the file, the dotted key, the expectation and the given value.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


@dataclass(frozen=True)
class Constraint:
    """What one field accepts: a predicate and the phrase that describes it in messages."""

    expectation: str
    """Completes "``key`` must be ...", e.g. ``"an int >= 1"``."""
    accepts: Callable[[Any], bool]
    """True when the value is acceptable."""

    def or_null(self) -> "Constraint":
        """The same constraint, also accepting ``None`` (YAML ``null``)."""
        return Constraint(f"{self.expectation} or null", lambda value: value is None or self.accepts(value))


def int_at_least(low: int) -> Constraint:
    """An int (not a bool) ``>= low``."""
    return Constraint(f"an int >= {low}", lambda value: _is_int(value) and value >= low)


SEED = Constraint(f"an int in [0, {2**63 - 1}]", lambda value: _is_int(value) and 0 <= value < 2**63)
"""Seeds are mixed into 64-bit hashes: a larger one would alias a smaller one or overflow."""


def number_in(low: float, high: float, *, high_open: bool = False) -> Constraint:
    """A finite number in ``[low, high]``, or ``[low, high)`` when ``high_open``."""
    closing = ")" if high_open else "]"
    return Constraint(
        f"a number in [{low}, {high}{closing}",
        lambda value: _is_number(value) and low <= value and (value < high if high_open else value <= high),
    )


def one_of(choices: Sequence[str]) -> Constraint:
    """One of the given strings."""
    return Constraint(f"one of {list(choices)}", lambda value: isinstance(value, str) and value in choices)


BOOL = Constraint("true or false", lambda value: isinstance(value, bool))
TEXT = Constraint("a non-empty string", _is_text)
NUMBER = Constraint("a finite number", _is_number)
COLUMN = Constraint(
    "a column name or an int position >= 0", lambda value: _is_text(value) or (_is_int(value) and value >= 0)
)
DELIMITER = Constraint(
    "a single character other than a quote or a line break",
    lambda value: isinstance(value, str) and len(value) == 1 and value not in "\"\r\n",
)


def _is_option_value(value: Any) -> bool:
    scalar = (str, int, float)
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


OPTIONS = Constraint("a mapping of Beam option names to values", lambda value: isinstance(value, dict))
OPTION_NAME = Constraint(
    "a Beam option name without dashes, like temp_location",
    lambda value: isinstance(value, str) and _OPTION_NAME.match(value) is not None,
)
OPTION_VALUE = Constraint("a string, a number, true/false or a list of strings and numbers", _is_option_value)


class _Section:
    """Validation shared by the section dataclasses.

    Each subclass declares ``SECTION`` (its YAML name) and ``CONSTRAINTS`` (one
    :class:`Constraint` per field, checked declaratively), and may add rules that involve several
    fields in ``_rule_errors``. Construction validates, so an invalid section cannot exist.
    """

    SECTION: ClassVar[str]
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]]

    def __post_init__(self) -> None:
        problems = self.errors()
        if problems:
            raise ConfigError(problems)

    def errors(self) -> list[str]:
        """Every problem with this section, as messages naming the dotted key and the value."""
        problems = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            constraint = self.CONSTRAINTS[item.name]
            key = f"{self.SECTION}.{item.name}"
            if value is _MISSING:
                problems.append(ERR_REQUIRED.format(key=key, expectation=constraint.expectation))
            elif not constraint.accepts(value):
                problems.append(ERR_INVALID.format(key=key, expectation=constraint.expectation, value=value))
        return problems + self._rule_errors()

    def _rule_errors(self) -> list[str]:
        """Problems that involve several fields; each rule skips values that are invalid alone."""
        return []


@dataclass(frozen=True)
class InputConfig(_Section):
    """Where the ratings are and how to read them."""

    SECTION: ClassVar[str] = "input"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {
        "path": TEXT,
        "format": one_of(FORMATS),
        "header": BOOL,
        "delimiter": DELIMITER.or_null(),
        "compression": one_of(COMPRESSIONS),
        "user_column": COLUMN,
        "item_column": COLUMN,
        "rating_column": COLUMN,
        "timestamp_column": COLUMN.or_null(),
        "user_id_type": one_of(ID_TYPES),
        "item_id_type": one_of(ID_TYPES),
        "init_from": TEXT.or_null(),
    }

    path: str
    """Glob of the input shards: a local path or any Beam filesystem (``gs://``, ``s3://``).
    The loader resolves a relative local path against the config file's folder."""
    format: str = "csv"
    """``"csv"``, ``"tsv"`` or ``"parquet"``."""
    header: bool = True
    """csv/tsv: the first line of each file names the columns."""
    delimiter: str | None = None
    """csv/tsv: the field separator; ``None`` means ``","`` for csv and a tab for tsv."""
    compression: str = "auto"
    """csv/tsv: ``"auto"`` (from the file extension: .gz, .bz2, .zst), ``"none"``, ``"gzip"``,
    ``"bz2"`` or ``"zstd"``. Parquet files carry their own compression."""
    user_column: str | int = "user_id"
    """Column of the user id: a name, or a 0-based position when ``header`` is false."""
    item_column: str | int = "item_id"
    """Column of the item id: a name, or a 0-based position when ``header`` is false."""
    rating_column: str | int = "rating"
    """Column of the rating: a name, or a 0-based position when ``header`` is false."""
    timestamp_column: str | int | None = None
    """Optional column of the rating time, used to keep the latest of duplicate ratings."""
    user_id_type: str = "string"
    """``"int"`` or ``"string"``: user ids keep this type in every output."""
    item_id_type: str = "string"
    """``"int"`` or ``"string"``: item ids keep this type in every output."""
    init_from: str | None = None
    """Warm start: an earlier run's published output folder. Users and items found there start
    from their factors (and biases), new ones start fresh, vanished ones are dropped. A relative
    local path is resolved against the current working directory."""

    @property
    def is_text(self) -> bool:
        """True for delimited text input (csv or tsv)."""
        return self.format in TEXT_FORMATS

    @property
    def field_delimiter(self) -> str | None:
        """The separator actually used: ``delimiter``, else the format's default; None for parquet."""
        if not self.is_text:
            return None
        return self.delimiter if self.delimiter is not None else {"csv": ",", "tsv": "\t"}[self.format]

    @property
    def column_settings(self) -> dict[str, str | int]:
        """The column settings in use by field name (``timestamp_column`` only when set)."""
        settings: dict[str, str | int] = {
            "user_column": self.user_column,
            "item_column": self.item_column,
            "rating_column": self.rating_column,
        }
        if self.timestamp_column is not None:
            settings["timestamp_column"] = self.timestamp_column
        return settings

    def _rule_errors(self) -> list[str]:
        return self._format_errors() + self._column_errors()

    def _format_errors(self) -> list[str]:
        """Settings that only delimited text files have, set for parquet."""
        if self.format not in FORMATS or self.is_text:
            return []
        problems = []
        if self.delimiter is not None:
            problems.append(
                f"input.delimiter applies only to csv or tsv input; got {self.delimiter!r} with format {self.format!r}"
            )
        if self.header is False:
            problems.append(f"input.header applies only to csv or tsv input; got false with format {self.format!r}")
        if self.compression not in ("auto", "none"):
            problems.append(
                f"input.compression must be 'auto' or 'none' for {self.format} input (the files carry "
                f"their own compression); got {self.compression!r}"
            )
        return problems

    def _column_errors(self) -> list[str]:
        """Positions need a header-less text file and names need a header; no column serves two roles."""
        positional = self.format in TEXT_FORMATS and self.header is False
        problems = []
        for setting, column in self.column_settings.items():
            if _is_int(column) and not positional:
                problems.append(
                    f"input.{setting} may be an int position only for csv or tsv input with header: false; "
                    f"got {column!r} with format {self.format!r} and header {self.header!r}"
                )
            elif _is_text(column) and positional:
                problems.append(f"input.{setting} must be an int position when input.header is false; got {column!r}")
        named = [column for column in self.column_settings.values() if _is_text(column) or _is_int(column)]
        repeated = sorted({repr(column) for column in named if named.count(column) > 1})
        if repeated:
            problems.append(f"input columns must be distinct; got {', '.join(repeated)} for several roles")
        return problems


@dataclass(frozen=True)
class ValidationConfig(_Section):
    """Which rows are accepted, and how many rejects a run tolerates."""

    SECTION: ClassVar[str] = "validation"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {
        "rating_min": NUMBER,
        "rating_max": NUMBER,
        "max_rejected_fraction": number_in(0, 1),
        "duplicates": one_of(DUPLICATE_POLICIES),
    }

    rating_min: float = 0.5
    """Smallest valid rating (inclusive)."""
    rating_max: float = 5.0
    """Largest valid rating (inclusive)."""
    max_rejected_fraction: float = 0.05
    """Fail the run when more than this fraction of the input rows is rejected."""
    duplicates: str = "latest"
    """Which rating of a repeated (user, item) pair is kept: ``"latest"`` (latest timestamp; ties
    or no timestamp: the last row read), ``"first"`` or ``"last"`` (by source file, then row)."""

    def _rule_errors(self) -> list[str]:
        if _is_number(self.rating_min) and _is_number(self.rating_max) and self.rating_min >= self.rating_max:
            return [
                f"validation.rating_min must be less than validation.rating_max ({self.rating_max!r}); "
                f"got {self.rating_min!r}"
            ]
        return []


@dataclass(frozen=True)
class SplitConfig(_Section):
    """How ratings are divided into a training set and a held-out set."""

    SECTION: ClassVar[str] = "split"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {
        "holdout_fraction": number_in(0, 1, high_open=True),
        "seed": SEED,
    }

    holdout_fraction: float = 0.2
    """Fraction of the ratings held out for evaluation, chosen by a seeded hash of the pair;
    0 disables evaluation."""
    seed: int = 42
    """Seed of the split hash: the same seed and data give the same split on any runner."""

    @property
    def evaluate(self) -> bool:
        """True when some ratings are held out, so the run evaluates the model."""
        return self.holdout_fraction > 0


@dataclass(frozen=True)
class BlocksConfig(_Section):
    """The grid of user and item blocks; one block is the unit of work of a half-step."""

    SECTION: ClassVar[str] = "blocks"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {
        "user_blocks": int_at_least(1),
        "item_blocks": int_at_least(1),
    }

    user_blocks: int = 1
    """Number of user blocks (a user's block is the hash of its id modulo this)."""
    item_blocks: int = 1
    """Number of item blocks (an item's block is the hash of its id modulo this)."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(user_blocks, item_blocks)``."""
        return (self.user_blocks, self.item_blocks)


@dataclass(frozen=True)
class ComputeConfig(_Section):
    """How TensorFlow runs inside each worker."""

    SECTION: ClassVar[str] = "compute"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {
        "strategy": one_of(STRATEGIES),
        "logical_cpu_devices": int_at_least(0),
        "intra_op_threads": int_at_least(0),
        "xla_cache_dir": TEXT.or_null(),
    }

    strategy: str = "default"
    """``"default"`` (one device) or ``"mirrored"`` (``tf.distribute.MirroredStrategy`` over the
    worker's GPUs, or over its logical CPU devices)."""
    logical_cpu_devices: int = 0
    """When > 0, split the CPU into this many logical devices (tests, MirroredStrategy without GPUs)."""
    intra_op_threads: int = 0
    """Threads per TensorFlow op; 0 keeps TensorFlow's default."""
    xla_cache_dir: str | None = None
    """A folder on each worker (``~`` expanded there) where it keeps the XLA-compiled solver for
    later runs (null: off): a nightly job on the same machine then skips ~0.4 s of compilation
    per chunk shape. The code is compiled for the worker's CPU: never share the folder between
    machines of different CPU types. A folder the worker cannot write is skipped with a warning."""


@dataclass(frozen=True)
class RecommendConfig(_Section):
    """The top-N recommendations written for every user."""

    SECTION: ClassVar[str] = "recommend"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {"top_n": int_at_least(1), "exclude_rated": BOOL}

    top_n: int = 10
    """Number of items recommended per user."""
    exclude_rated: bool = True
    """Never recommend an item the user rated in the training set."""


@dataclass(frozen=True)
class EvaluationConfig(_Section):
    """Ranking metrics on the held-out ratings."""

    SECTION: ClassVar[str] = "evaluation"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {"k": int_at_least(1), "relevance_threshold": NUMBER}

    k: int = 10
    """Cut-off of precision@k, recall@k and NDCG@k."""
    relevance_threshold: float = 4.0
    """A held-out rating at or above this counts as relevant."""


@dataclass(frozen=True)
class OutputConfig(_Section):
    """Where the run writes its tables."""

    SECTION: ClassVar[str] = "output"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {"path": TEXT, "overwrite": BOOL}

    path: str
    """Output folder of this run (local or a Beam filesystem). The loader resolves a relative
    local path against the current working directory, not the config file."""
    overwrite: bool = False
    """Replace an existing finished run in ``path`` instead of refusing to start."""


@dataclass(frozen=True)
class BeamConfig(_Section):
    """The Beam runner and its pipeline options."""

    SECTION: ClassVar[str] = "beam"
    CONSTRAINTS: ClassVar[Mapping[str, Constraint]] = {"runner": TEXT, "options": OPTIONS}

    runner: str = "DirectRunner"
    """Beam runner name, e.g. ``DirectRunner``, ``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Beam pipeline options by name (``temp_location``, ``direct_num_workers``...), passed as
    ``--name=value``; true flags become ``--name``, false ones are left out, lists repeat."""

    def _rule_errors(self) -> list[str]:
        if not isinstance(self.options, dict):
            return []
        problems = []
        for name, value in self.options.items():
            if not OPTION_NAME.accepts(name):
                expectation = OPTION_NAME.expectation
                problems.append(ERR_INVALID.format(key="beam.options key", expectation=expectation, value=name))
            elif name == "runner":
                problems.append(f"beam.options.runner must not be set (beam.runner names the runner); got {value!r}")
            elif not OPTION_VALUE.accepts(value):
                key = f"beam.options.{name}"
                problems.append(ERR_INVALID.format(key=key, expectation=OPTION_VALUE.expectation, value=value))
        return problems

    def pipeline_args(self) -> list[str]:
        """The runner and options as Beam command-line arguments, in the file's order."""
        args = [f"--runner={self.runner}"]
        for name, value in self.options.items():
            if value is True:
                args.append(f"--{name}")
            elif isinstance(value, list):
                args.extend(f"--{name}={item}" for item in value)
            elif value is not False:
                args.append(f"--{name}={value}")
        return args


@dataclass(frozen=True)
class RunConfig:
    """Everything one pipeline run needs, section by section, as read from a YAML file."""

    input: InputConfig
    """Where the ratings are and how to read them."""
    validation: ValidationConfig
    """Which rows are accepted."""
    split: SplitConfig
    """Training / held-out split."""
    model: SolverParams
    """Solver parameters of the factorization."""
    blocks: BlocksConfig
    """The user x item block grid."""
    compute: ComputeConfig
    """TensorFlow settings inside each worker."""
    recommend: RecommendConfig
    """Top-N recommendations."""
    evaluation: EvaluationConfig
    """Held-out ranking metrics."""
    output: OutputConfig
    """Where the run writes."""
    beam: BeamConfig
    """Runner and pipeline options."""
    source: str = ""
    """The config file this was loaded from; empty when built in code."""

    def __post_init__(self) -> None:
        problems = self.errors()
        if problems:
            raise ConfigError(problems)

    def errors(self) -> list[str]:
        """Problems that involve several sections (each section validates itself)."""
        low, high = self.validation.rating_min, self.validation.rating_max
        threshold = self.evaluation.relevance_threshold
        valid_range = _is_number(low) and _is_number(high) and low < high
        if valid_range and _is_number(threshold) and not low <= threshold <= high:
            return [
                f"evaluation.relevance_threshold must be within [validation.rating_min, "
                f"validation.rating_max] = [{low!r}, {high!r}]; got {threshold!r}"
            ]
        return []

    def beam_pipeline_args(self) -> list[str]:
        """``beam.runner`` and ``beam.options`` as Beam command-line arguments.

        Returns
        -------
        list of str
            ``--runner=...`` first, then ``--name=value`` per option in the file's order; a true
            option becomes ``--name``, a false one is left out, a list gives one argument per item.
        """
        return self.beam.pipeline_args()


SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(RunConfig).items() if name != "source"}
"""The YAML sections in file order, each with the dataclass it builds."""


def _float_fields(cls: type) -> set[str]:
    """Names of the fields annotated ``float`` (or ``float | None``), where YAML ints are widened."""
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items() if hint is float or float in typing.get_args(hint)}


def _unchecked(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of a frozen dataclass built without running ``__post_init__``.

    The loader needs every problem of every section, but construction raises at the first invalid
    section; an unchecked instance lets the same ``errors()`` logic run and report instead.
    """
    instance = object.__new__(cls)
    for item in dataclasses.fields(cls):
        if item.name in values:
            value = values[item.name]
        elif item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            value = _MISSING
        object.__setattr__(instance, item.name, value)
    return instance


def _model_errors(params: SolverParams) -> list[str]:
    """``SolverParams.errors()`` reworded as ``model.<key> ...`` messages."""
    return ["model." + message.replace(" for NNMF;", ";", 1) for message in params.errors()]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``1E5`` and ``1.0e30`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``reg: 1e-3``
    would load as the text ``'1e-3'`` and fail validation. YAML 1.2, and every other YAML
    reader, take these as numbers.
    """


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes the strings :class:`_Loader` would read as floats
    (``'1e3'``), so that a dumped configuration loads back equal."""


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _resolving in (_Loader, _Dumper):
    _resolving.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789."))


def _load_yaml(stream) -> Any:
    """Plain YAML from ``stream`` (a safe loader: no Python objects), with YAML 1.2 floats."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: str) -> tuple[Any, list[str]]:
    """The parsed file (``None`` when empty) and the problems met reading it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return _load_yaml(handle), []
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        return None, [ERR_NOT_READABLE.format(file=path, reason=reason)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [ERR_NOT_YAML.format(file=path, where=where, reason=reason)]


def _apply_override(data: dict, text: str, source: str) -> list[str]:
    """Set one ``section.key[.subkey]=value`` override in ``data`` (in place); return problems."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        return [ERR_BAD_OVERRIDE.format(file=source, text=text)]
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError:
        return [ERR_OVERRIDE_YAML.format(file=source, key=key.strip(), value=raw)]
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            dotted = ".".join(parts[: depth + 1])
            return [ERR_NOT_MAPPING.format(file=source, key=dotted, value=child)]
        node = child
    node[parts[-1]] = value
    return []


def _section_values(data: dict, name: str, cls: type, source: str) -> tuple[dict, list[str]]:
    """The known keys of one section (ints widened where floats are expected) and its key problems."""
    raw = data.get(name)
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [ERR_NOT_MAPPING.format(file=source, key=name, value=raw)]
    allowed = [item.name for item in dataclasses.fields(cls)]
    problems = [
        ERR_UNKNOWN_KEY.format(file=source, key=f"{name}.{key}", choices=allowed) for key in raw if key not in allowed
    ]
    floats = _float_fields(cls)
    values = {
        key: float(value) if key in floats and _is_int(value) else value for key, value in raw.items() if key in allowed
    }
    return values, problems


def _is_local(path: str) -> bool:
    return not _SCHEME.match(path)


def _resolve_paths(values: dict[str, dict], source: str) -> None:
    """Make local paths absolute (in place): input against the config folder; output, the
    warm-start folder and the XLA cache against the cwd."""
    input_path = values["input"].get("path")
    if _is_text(input_path) and _is_local(input_path):
        folder = os.path.dirname(os.path.abspath(source))
        values["input"]["path"] = os.path.abspath(os.path.join(folder, os.path.expanduser(input_path)))
    for section, key in (("input", "init_from"), ("output", "path"), ("compute", "xla_cache_dir")):
        path = values.get(section, {}).get(key)
        if _is_text(path) and _is_local(path):
            values[section][key] = os.path.abspath(os.path.expanduser(path))


def load_config(path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a YAML run configuration.

    Parameters
    ----------
    path : str
        The YAML file. Only plain YAML is read (a safe loader): tags that would construct
        Python objects are refused.
    overrides : sequence of str, default=()
        ``section.key=value`` strings applied on top of the file, in order; the value is parsed
        as YAML (``model.rank=30``, ``input.timestamp_column=null``,
        ``beam.options.direct_num_workers=2``).

    Returns
    -------
    RunConfig
        With ``input.path`` resolved against the config file's folder and ``output.path``
        against the current working directory (when they are local and relative).

    Raises
    ------
    ConfigError
        Listing every problem found: an unreadable or ill-formed file, a malformed override,
        unknown sections or keys, wrong types, out-of-range values and broken cross-field rules,
        each as ``<file>: <section.key> must be <expectation>; got <value>``.
    """
    source = str(path)
    data, problems = _read_data(source, overrides)
    values: dict[str, dict] = {}
    for name, cls in SECTIONS.items():
        values[name], section_problems = _section_values(data, name, cls, source)
        problems += section_problems
    _resolve_paths(values, source)
    problems += [f"{source}: {message}" for message in _value_errors(values, source)]
    if problems:
        raise ConfigError(problems)
    return RunConfig(**{name: cls(**values[name]) for name, cls in SECTIONS.items()}, source=source)


def _read_data(source: str, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """The file's sections with the overrides applied, and the problems with the file's shape."""
    data, problems = _read_yaml(source)
    if problems:
        raise ConfigError(problems)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ERR_NOT_SECTIONS.format(file=source, value=data)])
    for text in overrides:
        problems += _apply_override(data, text, source)
    unknown = [name for name in data if name not in SECTIONS]
    problems += [ERR_UNKNOWN_SECTION.format(file=source, key=name, choices=list(SECTIONS)) for name in unknown]
    return data, problems


def _value_errors(values: Mapping[str, dict], source: str) -> list[str]:
    """Every problem with the values of every section and across sections (without the file prefix)."""
    sections = {name: _unchecked(cls, values[name]) for name, cls in SECTIONS.items()}
    messages = [message for name, section in sections.items() if name != "model" for message in section.errors()]
    messages += _model_errors(sections["model"])
    return messages + _unchecked(RunConfig, {**sections, "source": source}).errors()


def to_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain, YAML-able data: one mapping per section, ``source`` left out.

    Written as YAML, the result loads back into an equal configuration, so a run's output
    can record exactly what it ran with.
    """
    data = dataclasses.asdict(config)
    data.pop("source")
    return data


def dump_yaml(config: RunConfig) -> str:
    """The configuration as a YAML document (see :func:`to_dict`), headed by its source file."""
    body = yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"# Resolved from {config.source or '<code>'}\n{body}"
