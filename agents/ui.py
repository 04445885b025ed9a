"""``veil ui``: serve MLflow's UI on veil's store."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import tracking


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil ui`` sub-command."""
    u = sub.add_parser("ui", help="serve the MLflow UI on veil's store (127.0.0.1)",
                       description="Serve MLflow's UI on veil's store (mlruns/mlflow.db), bound to 127.0.0.1, "
                                   "with one worker and MLflow's job runner off (about 0.5 GB instead of 3 GB).")
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    u.add_argument("--tracking-uri", default=None, help="store to serve (default: veil's store in ./mlruns)")
    u.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mlflow ui`` on the store until Ctrl-C."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.default_artifact_root()]
    print(f"serving {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
