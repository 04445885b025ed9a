"""Run a server in its own process group and take the whole group down with this process.

``veil ui`` replaces itself (``os.execv``) with ``python -m veil.agents.supervise CMD...`` once the
store is ready, so what stays running beside MLflow's server is this small module (a few MB)
rather than a process that imported torch, MLflow's client and SB3 (about 0.8 GB). It imports
nothing heavy on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

STOP_SECONDS = 15  # how long the group may take to stop after the signal is passed on


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``; from ``/proc`` where there is one."""
    proc = "/proc"
    if not os.path.isdir(proc):  # pragma: no cover - not Linux: the group exists or not
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    out = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(name))
    return out


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def supervise(cmd: list[str], env: dict[str, str] | None = None, stop_seconds: float = STOP_SECONDS) -> int:
    """Run ``cmd`` in a new process group until it exits or SIGTERM/SIGINT/SIGHUP, which are
    passed on to the whole group; return only when no process of the group is left (what is
    still there ``stop_seconds`` after the signal, e.g. a server waiting on open connections, is
    killed). 0 when it was stopped as asked, else the server's exit code."""
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    pgid = server.pid
    stopped: list[float] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(time.monotonic())
        _signal_group(pgid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:  # leaving for another reason: take the server along
            _signal_group(pgid, signal.SIGTERM)
            stopped.append(time.monotonic())
        # the top process may be gone while its children (the server's workers) still stop
        deadline = (stopped[0] if stopped else time.monotonic()) + stop_seconds
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_members(pgid):
            _signal_group(pgid, signal.SIGKILL)
        try:
            server.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be refused
            pass
    return 0 if stopped else code


def main(argv: list[str] | None = None) -> int:
    cmd = sys.argv[1:] if argv is None else argv
    if not cmd:
        print("usage: python -m veil.agents.supervise CMD [ARG...]", file=sys.stderr)
        return 2
    return supervise(cmd)


if __name__ == "__main__":
    sys.exit(main())
