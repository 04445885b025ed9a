"""``veil ui``: serve MLflow's UI on veil's store, on this machine only unless asked otherwise, and
open it on the runs of veil's experiment (not MLflow 3's GenAI home)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from . import tracking

SERVER_MEMORY = "about 0.5 GB"
"""What ``veil ui`` holds while it serves (resident memory on an empty store: MLflow's CLI 241 MiB,
its uvicorn worker 249 MiB, ``veil.agents.supervise`` 16 MiB; 506 MiB), checked by
``tests/test_ui.py``, which fails past 0.75 GiB."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil ui`` sub-command."""
    u = sub.add_parser("ui", help="serve the MLflow UI on veil's store (127.0.0.1)",
                       description="Serve MLflow's UI on veil's store (mlruns/mlflow.db), bound to 127.0.0.1, with one\n"
                                   "worker and MLflow's job runner off (%s in all, instead of 3 GB).\n\n"
                                   "It prints the address of the experiment's runs table: MLflow 3 opens on a GenAI\n"
                                   "trace overview otherwise. That address selects the saved view \"veil: key numbers\"\n"
                                   "(kind, defense, natural top-1, each attack's top-1). Ctrl-C or SIGTERM stops the\n"
                                   "server and everything it started." % SERVER_MEMORY,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    u.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach; MLflow's UI has no authentication, so anyone "
                        "who reaches it can read and change every run")
    u.add_argument("--tracking-uri", default=None, help="store to serve (default: veil's store in ./mlruns)")
    u.add_argument("--experiment", default=tracking.DEFAULT_EXPERIMENT,
                   help=f"experiment whose runs it opens on (default: {tracking.DEFAULT_EXPERIMENT})")
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
    """Tag the experiment for the runs view (``tracking.prepare_ui``), print its address, and run
    ``mlflow ui`` on the store until Ctrl-C or SIGTERM (``serve``)."""
    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(f"--host {args.host} lets other machines reach the UI, which has no authentication "
                         "(anyone reaching it can read and change every run); pass --allow-remote to do it anyway")
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}: MLflow's UI has no authentication; anyone who reaches this port "
              "can read and change every run", file=sys.stderr)
    uri = args.tracking_uri or tracking.default_tracking_uri()
    exp_id = tracking.prepare_ui(uri, args.experiment)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.default_artifact_root()]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {uri} (Ctrl-C to stop); open the runs of experiment {args.experiment!r} at\n"
          f"  {tracking.runs_url(f'http://{host}:{args.port}', exp_id)}", flush=True)
    return serve(cmd, env)


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Become ``python -m veil.agents.supervise CMD`` (same process ID, so signals reach it), which
    runs the server in its own process group and takes the group down when stopped: this
    process's imports (torch, SB3; about 0.8 GB) do not stay resident beside the server."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "veil.agents.supervise", *cmd], env)
    return 1  # pragma: no cover - execve does not return
