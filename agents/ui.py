"""``veil ui``: serve MLflow's UI on veil's store, on this machine only unless asked otherwise."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys

from . import tracking

STOP_SECONDS = 15  # how long the server may take to stop after the signal is passed on


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil ui`` sub-command."""
    u = sub.add_parser("ui", help="serve the MLflow UI on veil's store (127.0.0.1)",
                       description="Serve MLflow's UI on veil's store (mlruns/mlflow.db), bound to 127.0.0.1, "
                                   "with one worker and MLflow's job runner off (about 0.5 GB instead of 3 GB).")
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    u.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach; MLflow's UI has no authentication, so anyone "
                        "who reaches it can read and change every run")
    u.add_argument("--tracking-uri", default=None, help="store to serve (default: veil's store in ./mlruns)")
    u.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run(args: argparse.Namespace) -> int:
    """Run ``mlflow ui`` on the store until Ctrl-C or SIGTERM, which are passed on to the server
    (its own process group, so its workers stop too) before this returns."""
    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(f"--host {args.host} lets other machines reach the UI, which has no authentication "
                         "(anyone reaching it can read and change every run); pass --allow-remote to do it anyway")
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}: MLflow's UI has no authentication; anyone who reaches this port "
              "can read and change every run", file=sys.stderr)
    uri = args.tracking_uri or tracking.default_tracking_uri()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.default_artifact_root()]
    print(f"serving {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    return serve(cmd, env)


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server ``cmd`` in its own process group until it exits or a signal, passed on to the
    whole group, stops it; 0 when it was stopped as asked."""
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        os.killpg(server.pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = server.wait()
        return 0 if stopped else code  # stopped as asked: a clean exit
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:  # this process is leaving for another reason: take the server along
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
