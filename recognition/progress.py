"""Progress that shows in a terminal and in a log file.

``progress_bar`` is tqdm's bar when its stream is a terminal. When it is not (output redirected
to a log file or a pipe, where tqdm's own bar is off), it prints one plain line at most every
``$VEIL_PROGRESS_SECONDS`` seconds (default 30), and a last one when the stage ends, e.g.::

    train-fr: 1200/9000 batch (13%), 1m23s elapsed, ETA 8m10s, epoch=12/90, loss=1.234

It lives here, in the lowest layer, so the trainer, the attacks and the agent's callbacks share it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

INTERVAL_ENV = "VEIL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def line_interval() -> float:
    """Seconds between two progress lines in a log: ``$VEIL_PROGRESS_SECONDS`` (a number >= 0),
    else ``DEFAULT_INTERVAL``."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 and math.isfinite(value) else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``45s``, ``1m23s``, ``2h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Sink:
    """Where tqdm's own writes go (carriage returns, clears): nowhere; the lines go to the stream."""

    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogProgress(std_tqdm):
    """A tqdm that, instead of redrawing a bar, writes a line to ``out`` at most every ``interval``
    seconds (and one at the end): done/total, elapsed, ETA at the mean rate so far, and the postfix."""

    def __init__(self, iterable: Iterable | None = None, *, out: TextIO, interval: float, **kwargs: Any) -> None:
        self._out, self._printed_n, self._printed_t = out, kwargs.get("initial", 0), time.time()
        kwargs.update(file=_Sink(), mininterval=interval, miniters=1, disable=False, dynamic_ncols=False)
        super().__init__(iterable, **kwargs)
        self._printed_t = self.start_t

    def line(self) -> str:
        """The progress line for the state now."""
        elapsed = self._time() - self.start_t
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        if self.total and self.n > self.initial:  # the mean rate of this stage (a resume starts at initial)
            eta = duration(elapsed * (self.total - self.n) / (self.n - self.initial))
        else:
            eta = "?"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc or 'progress'}: {done}, {duration(elapsed)} elapsed, ETA {eta}{post}"

    def _print_line(self) -> None:
        if getattr(self._out, "closed", False):  # a bar collected after its stream (a finished log file) closed
            return
        self._out.write(self.line() + "\n")
        self._out.flush()
        self._printed_n, self._printed_t = self.n, self._time()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None and self.n > self._printed_n and self._time() - self._printed_t >= self.mininterval:
            self._print_line()
        return True

    def close(self) -> None:
        if not self.disable and self.n > self._printed_n:
            self._print_line()
        super().close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, file: TextIO | None = None, interval: float | None = None,
                 **kwargs: Any) -> std_tqdm:
    """A tqdm bar on a terminal, progress lines (``LogProgress``) elsewhere, nothing when not
    ``enabled``. ``file`` is the stream (default ``sys.stderr``, tqdm's); ``interval`` the seconds
    between lines (default ``line_interval()``); other keywords go to tqdm on a terminal."""
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, disable=False, **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, out=stream, initial=kwargs.get("initial", 0),
                       interval=line_interval() if interval is None else interval)

