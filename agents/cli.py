"""The ``veil`` command line: each command lives in its own module with its own ``add_parser``;
this module only builds the parser from them and dispatches."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import attack_cli, benchmark, calibrate, demo, learn, race, server, tracking, train_agent, train_fr, ui

COMMANDS = (train_fr, train_agent, learn, demo, attack_cli, benchmark, calibrate, race, ui, server)


class Parser(argparse.ArgumentParser):
    """argparse's parser (the sub-commands' too) whose errors are one line, as veil's other errors
    are: ``veil train-fr: error: argument --epochs: must be >= 1, got -1 (see veil train-fr --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """``veil`` and its sub-commands; each sub-command's ``handler`` runs it."""
    parser = Parser(
        prog="veil", description="veil: train face-recognition models that resist model-inversion attacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM, SIGINT): unwinds like Ctrl-C, so every ``with``
    block closes (atomic writes drop their temporary file; the last checkpoint stays). A
    ``BaseException``, as ``KeyboardInterrupt`` is, so a library's ``except Exception`` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def stop_behind(err: BaseException) -> Stopped | None:
    """The ``Stopped`` that ``err`` is or was raised while handling: a stop landing inside a
    library's cleanup (torch.save's zip writer) comes back as that library's own error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, Stopped):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``veil`` command; bad input or a diverged run ends in a one-line error and exit code 2;
    SIGTERM or SIGINT in one line, the runs it had open marked KILLED, and exit code 128 + signal."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad option (2, its one-line error already written)
        return done.code if isinstance(done.code, int) else 2
    args.argv = argv  # what the user typed: a plan file keeps the options it does not set
    main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        return args.handler(args)
    except BaseException as err:
        stop = stop_behind(err)
        if stop is None:
            if isinstance(err, (ValueError, FileNotFoundError, FloatingPointError)):
                # bad input or a diverged run: a one-line error, the MLflow run (if any) already marked failed
                print(f"veil {args.command}: error: {err}", file=sys.stderr)
                return 2
            raise
        marked = tracking.mark_stopped(f"stopped by {stop}")
        print(f"veil {args.command}: stopped by {stop}"
              + (f"; MLflow run(s) {', '.join(marked)} marked KILLED" if marked else "")
              + "; what was written before (checkpoints, cells) is kept", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
