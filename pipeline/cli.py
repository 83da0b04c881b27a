"""Command-line interface: ``nnmf-pipeline run | generate | demo | validate-config``.

The configuration is loaded and checked before anything heavy is imported: a bad config file
fails in a fraction of a second, with every problem listed, instead of after Beam and
TensorFlow have loaded. Arguments ``run`` does not know are Beam pipeline options and are passed
through untouched, after the config file's own ``beam`` options, so the command line wins::

    nnmf-pipeline run --config configs/dataflow.yaml --set model.rank=64 --job_name=nnmf-nightly
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError, RunConfig, dump_yaml, load_config

PROG = "nnmf-pipeline"
EXIT_CONFIG_ERROR = 2
"""Exit status for an invalid configuration, the same as argparse's usage errors."""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the repeatable ``--set``, shared by the commands that load a config."""
    parser.add_argument("--config", required=True, metavar="PATH", help="YAML run configuration (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; the value is YAML (repeatable, e.g. --set model.rank=30)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subcommand per action.

    ``generate`` is registered without its arguments: they belong to ``pipeline.generate``,
    which is imported only when that command runs (see :func:`_generate`).
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Factorize sparse ratings with non-negative matrix factorization on Apache Beam."
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        allow_abbrev=False,
        help="run the pipeline described by a config file",
        description="Run the pipeline. Unrecognised arguments are Beam pipeline options "
        "(e.g. --runner=DataflowRunner --project=p) and override the config's beam section.",
    )
    _add_config_arguments(run)
    run.add_argument("--output", metavar="PATH", help="output folder; shorthand for --set output.path=PATH")
    run.add_argument("--overwrite", action="store_true", help="shorthand for --set output.overwrite=true")

    commands.add_parser("generate", add_help=False, help="write a synthetic ratings data set")
    commands.add_parser("demo", allow_abbrev=False, help="run the small in-process factorization demo")

    validate = commands.add_parser(
        "validate-config", allow_abbrev=False, help="check a config file and print it fully resolved"
    )
    _add_config_arguments(validate)
    return parser


def _load(path: str, overrides: Sequence[str]) -> RunConfig | None:
    """The configuration, or None after printing every problem to stderr."""
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Load the config (shorthands applied last), then hand it and the Beam arguments to the pipeline.

    An unusable ``input.init_from`` is a configuration problem (status 2). An output path the
    run may not replace, no input file, an input file that cannot be read as configured, input
    that is unusable once validated, or a fit that broke down numerically give status 1. Each
    prints one ``error: ...`` line instead of a traceback (when the runner raises the error
    as it is, as the DirectRunner does in process).
    """
    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.path={json.dumps(args.output)}")
    if args.overwrite:
        overrides.append("output.overwrite=true")
    config = _load(args.config, overrides)
    if config is None:
        return EXIT_CONFIG_ERROR
    from nnmf_tf.errors import NNMFFitError
    from pipeline.main import UnusableInputError, run
    from pipeline.output import OutputExistsError
    from pipeline.read import InputStructureError
    from pipeline.warm_start import WarmStartError

    try:
        metrics = run(config, beam_args)
    except WarmStartError as error:
        print(f"error: {config.source}: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (OutputExistsError, FileNotFoundError, InputStructureError, UnusableInputError, NNMFFitError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = ("rows_read", "rows_rejected", "train_ratings", "heldout_rmse", "heldout_mae", "heldout_ndcg_at_10")
    print(f"published {config.output.path}")
    for name in shown:
        if name in metrics:
            print(f"  {name}: {metrics[name]:.4g}")
    return 0


def _generate(argv: list[str]) -> int:
    """Parse ``argv`` with the arguments ``pipeline.generate`` declares, then run it."""
    from pipeline.generate import add_arguments
    from pipeline.generate import main as generate_main

    parser = argparse.ArgumentParser(
        prog=f"{PROG} generate", allow_abbrev=False, description="Write a synthetic ratings data set."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return generate_main(args)
    except ValueError as error:  # argument values the generator refuses: a usage error
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except FileExistsError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1


def _demo() -> int:
    """Run the library's in-process demo."""
    from nnmf_tf.demo import main as demo_main

    return int(demo_main() or 0)


def _validate_config(args: argparse.Namespace) -> int:
    """Print the fully resolved configuration as YAML, or every problem with it."""
    config = _load(args.config, args.overrides)
    if config is None:
        return EXIT_CONFIG_ERROR
    print(dump_yaml(config), end="")
    return 0


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Run the chosen command; only ``run`` (Beam options) and ``generate`` take unlisted arguments."""
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=args.log_level)
    if args.command == "run":
        return _run(args, extra)
    if args.command == "generate":
        return _generate(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        return _demo()
    return _validate_config(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, and return its exit status.

    Returns
    -------
    int
        0 on success, 2 for usage or configuration errors (every problem printed to stderr
        as ``error: ...``), or the status of ``generate`` / ``demo``.
    """
    parser = build_parser()
    try:
        return _dispatch(parser, argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
