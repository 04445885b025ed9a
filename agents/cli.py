"""The ``veil`` command line: each command lives in its own module with its own ``add_parser``;
this module only builds the parser from them and dispatches."""

from __future__ import annotations

import argparse
import sys

from . import attack_cli, benchmark, calibrate, demo, train_agent, train_fr, ui

COMMANDS = (train_fr, train_agent, demo, attack_cli, benchmark, calibrate, ui)


def build_parser() -> argparse.ArgumentParser:
    """``veil`` and its sub-commands; each sub-command's ``handler`` runs it."""
    parser = argparse.ArgumentParser(
        prog="veil", description="veil: train face-recognition models that resist model-inversion attacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``veil`` command; bad input or a diverged run ends in a one-line error and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # what the user typed: a plan file keeps the options it does not set
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        # bad input or a diverged run: a one-line error, the MLflow run (if any) already marked failed
        print(f"veil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
