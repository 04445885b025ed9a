"""``veil server``: one MLflow tracking server for many machines, its runs in a PostgreSQL database
and its artifacts uploaded through it (``--serve-artifacts``), so workers need no shared disk.

veil does not run the database: give one (``--backend-store-uri postgresql://USER@HOST:PORT/DB``,
or ``$VEIL_SERVER_STORE_URI``); ``tests/scale_env.sh`` starts a throwaway local one. Workers log
with ``--tracking-uri http://HOST:PORT``. The server binds 127.0.0.1 unless ``--allow-remote``;
Ctrl-C or SIGTERM stops its whole process group (``supervise``, as ``veil ui``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from .ui import is_loopback, serve

DEFAULT_PORT = 5050  # not MLflow's 5000, which veil ui takes
DEFAULT_ARTIFACTS = "mlruns-server/artifacts"
SERVED_ROOT = "mlflow-artifacts:/"  # what a --serve-artifacts server gives new experiments
STORE_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "sqlite")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil server`` sub-command."""
    s = sub.add_parser("server", help="one MLflow tracking server for many machines (PostgreSQL, served artifacts)",
                       description="Serve MLflow's tracking server on a PostgreSQL database, with artifacts uploaded "
                                   "through it (--serve-artifacts) into --artifacts-destination, so workers on other "
                                   "machines need no shared disk. Prints the --tracking-uri workers give. Ctrl-C or "
                                   "SIGTERM stops the server and everything it started. docs/scale.md.")
    s.add_argument("--backend-store-uri", default=os.environ.get("VEIL_SERVER_STORE_URI"), metavar="URI",
                   help="the database: postgresql://USER[:PASSWORD]@HOST:PORT/DB (default: $VEIL_SERVER_STORE_URI); "
                        "sqlite:///FILE works for one machine")
    s.add_argument("--artifacts-destination", default=DEFAULT_ARTIFACTS, metavar="DIR|URI",
                   help=f"where uploaded artifacts are stored: a folder or an s3://, gs://... URI "
                        f"(default: {DEFAULT_ARTIFACTS})")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    s.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach; MLflow's server has no authentication, so anyone "
                        "who reaches it can read and change every run: keep it on a private network")
    s.add_argument("--allowed-hosts", default=None, metavar="HOST[:PORT],...",
                   help="Host headers the server accepts (MLflow's --allowed-hosts; default: MLflow's, local names)")
    s.add_argument("--workers", type=int, default=2, help="server processes (default: 2)")
    s.set_defaults(handler=run)


def redacted(uri: str) -> str:
    """``uri`` with its password, if any, shown as ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def check_store(uri: str | None) -> str:
    """The backend store URI, or a one-line error: none given, a scheme MLflow's server cannot
    share, or PostgreSQL's driver missing."""
    if not uri:
        raise ValueError("veil server needs a database: --backend-store-uri postgresql://USER@HOST:PORT/DB (or "
                         "$VEIL_SERVER_STORE_URI); docs/scale.md shows how to start one")
    scheme = uri.split(":", 1)[0]
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"--backend-store-uri {redacted(uri)}: scheme {scheme!r} is not one of "
                         f"{', '.join(STORE_SCHEMES)}")
    driver = "psycopg2" if scheme.endswith("psycopg2") else "psycopg"  # SQLAlchemy 2.1's default for postgresql://
    if scheme.startswith("postgresql") and importlib.util.find_spec(driver) is None:
        raise ValueError("--backend-store-uri postgresql://... needs PostgreSQL's driver: pip install 'veil[server]'")
    return uri


def artifacts_uri(dest: str) -> str:
    """A folder as a ``file://`` URI (created); a URI with a scheme as given."""
    if "://" in dest:
        return dest
    path = Path(dest).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def run(args: argparse.Namespace) -> int:
    """Check the options, create or upgrade MLflow's tables once (the server's workers would race to on
    a fresh database), print the tracking URI, and run ``mlflow server`` until stopped."""
    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(f"--host {args.host} lets other machines reach the server, which has no authentication "
                         "(anyone reaching it can read and change every run); pass --allow-remote to do it anyway")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    uri = check_store(args.backend_store_uri)
    dest = artifacts_uri(args.artifacts_destination)
    SqlAlchemyStore(uri, SERVED_ROOT)  # creates or migrates the schema, and the default experiment
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--serve-artifacts",
           "--artifacts-destination", dest, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    if args.allowed_hosts:
        cmd += ["--allowed-hosts", args.allowed_hosts]
    host = f"[{args.host}]" if ":" in args.host else args.host
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}: MLflow's server has no authentication; anyone who reaches this "
              "port can read and change every run", file=sys.stderr)
    print(f"MLflow server: runs in {redacted(uri)}, artifacts in {dest} (Ctrl-C to stop); workers log with\n"
          f"  --tracking-uri http://{host}:{args.port}", flush=True)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return serve(cmd, env)
