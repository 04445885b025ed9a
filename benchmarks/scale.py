"""Past one machine: (a) benchmark throughput on 1 and 2 Ray workers (one CPU and one torch thread
each) against the serial in-process run, checking that every run gives the same cells; (b) the
write rate of ``veil server`` (metrics/s, runs/s) under 8 concurrent loggers on loopback.

    python benchmarks/scale.py                 # 8 AT&T cells ($VEIL_DATA_ROOT/att_faces), issue 33's figures
    python benchmarks/scale.py --quick         # 8 tiny synthetic cells, 3 s per server phase: a smoke run
    python benchmarks/scale.py --store-uri postgresql://USER@HOST:PORT/DB   # (b) on PostgreSQL (default:
                                               # $VEIL_TEST_PG_URI, else a SQLite file in a temporary folder)

Ray runs on a local cluster this script starts (``ray.init(num_cpus=N)``, its own temporary folder)
and stops. Target (issue 33, on the 2-core machine): 2 workers / 1 worker >= 1.8 in cells per second.
From the serial run's mean cell it also extrapolates a table's wall time on 1, 8 and 64 machines
(``--table-cells``, default 180 = 15 defenses x 3 seeds, 4 attacks each): a cell's cost is its
own data set's, so read that as the time of a table whose cells cost what these did.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from veil.agents import benchmark
from veil.agents.benchmark import RunOptions, load_cell, plan_from_args, run_benchmark
from veil.agents.cluster import ClusterConfig, worker_env
from veil.agents.options import parse_command
from veil.agents.train_fr import Tracking

QUICK = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
         "--batch-size", "16", "--epochs", "2", "--attacks", "pca", "--steps", "10", "--restarts", "1",
         "--attack-seeds", "1", "--eval-epochs", "1", "--defenses", "none,re", "--seeds", "0,1,2,3"]
ATT = ["--data", "att", "--n-private", "20", "--epochs", "10", "--attacks", "pca", "--eval-epochs", "10",
       "--defenses", "none,re", "--seeds", "0,1,2,3"]
VOLATILE = {"fr_run", "seconds", "report", "grid", "attack_run", "retrained_from_run"}


def measured(record: dict[str, Any]) -> dict[str, Any]:
    """A cell less its run ids, paths and times: what two runs of it must agree on."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["attacks"] = {a: {k: v for k, v in r.items() if k not in VOLATILE} for a, r in record["attacks"].items()}
    return out


def cells(out: Path) -> dict[str, dict[str, Any]]:
    return {f.stem: measured(load_cell(f)) for f in sorted((out / "cells").glob("*.json"))}


def timed_run(argv: list[str], out: Path, uri: str, workers: int) -> tuple[float, list[dict[str, Any]]]:
    """Seconds for the plan's cells in ``out`` (0 workers: in-process; else Ray tasks on a local
    cluster of ``workers`` CPUs), and the records."""
    args = parse_command(benchmark.add_parser, ["benchmark", *argv, "--threads", "1", "--out-dir", str(out)])
    plan = plan_from_args(args, benchmark.add_parser)
    opts = RunOptions(Tracking(uri, "scale-bench"), cluster=ClusterConfig(address="local" if workers else None))
    ray_dir = tempfile.mkdtemp(prefix="vray-")  # short: Ray's socket paths are limited to 107 bytes
    if workers:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {**worker_env(), "OMP_NUM_THREADS": "1"}}, _temp_dir=ray_dir)
    try:
        t0 = time.perf_counter()
        records = run_benchmark(plan, opts)
        return time.perf_counter() - t0, records
    finally:
        if workers:
            ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


def throughput(argv: list[str], root: Path, table_cells: int) -> list[str]:
    """Part (a): serial, 1 and 2 Ray workers on the same cells; lines of the report."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    warm = root / "warm"  # trains (and caches) the evaluation model and the data, outside the timings
    timed_run([*argv[:argv.index("--defenses")], "--defenses", "none", "--seeds", "99"], warm, uri, 0)
    runs = {}
    for name, workers in (("serial", 0), ("ray-1", 1), ("ray-2", 2)):
        runs[name] = timed_run(argv, root / name, uri, workers)
    n = len(runs["serial"][1])
    same = {name: cells(root / name) == cells(root / "serial") for name in runs}
    per_cell = sum(r["seconds"] for r in runs["serial"][1]) / n
    lines = [f"(a) {n} cells, one torch thread per cell", f"{'run':<8} {'wall s':>8} {'cells/min':>10}  same cells"]
    for name, (wall, _) in runs.items():
        lines.append(f"{name:<8} {wall:>8.1f} {60 * n / wall:>10.2f}  {same[name]}")
    ratio = runs["ray-1"][0] / runs["ray-2"][0]
    lines.append(f"2 workers / 1 worker: {ratio:.2f}x (target >= 1.8); serial mean cell {per_cell:.1f} s")
    for machines, cores in ((1, 2), (8, 2), (64, 2)):
        slots = machines * cores
        wall = math.ceil(table_cells / slots) * per_cell
        took = f"{wall / 3600:.1f} h" if wall >= 3600 else f"{wall / 60:.1f} min"
        lines.append(f"  a {table_cells}-cell table of such cells on {machines} machine(s) x {cores} cores: "
                     f"~{took} (waves of {slots} cells)")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logger(uri: str, experiment_id: str, seconds: float, batch: int, queue: mp.Queue) -> None:
    """One concurrent logger: runs created and ended, then metric batches, each for ``seconds``."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # one "View run" line per run otherwise
    client = MlflowClient(tracking_uri=uri)
    runs, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        run = client.create_run(experiment_id)
        client.set_terminated(run.info.run_id)
        runs += 1
    run_id, calls, step = client.create_run(experiment_id).info.run_id, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"m{i}", float(step), ts, step) for i in range(batch)])
        calls, step = calls + 1, step + 1
    queue.put((runs, calls * batch))


def server_rate(store: str, root: Path, loggers: int, seconds: float, batch: int) -> list[str]:
    """Part (b): ``veil server`` on ``store``; ``loggers`` processes log at once; lines of the report."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "veil.agents.cli", "server", "--backend-store-uri", store,
                             "--port", str(port), "--artifacts-destination", str(root / "artifacts")],
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        exp = MlflowClient(tracking_uri=uri).create_experiment(f"scale-{os.getpid()}-{time.time_ns()}")
        queue: mp.Queue = mp.get_context("spawn").Queue()
        procs = [mp.get_context("spawn").Process(target=logger, args=(uri, exp, seconds, batch, queue))
                 for _ in range(loggers)]
        for p in procs:
            p.start()
        got = [queue.get(timeout=seconds * 2 + 120) for _ in procs]
        for p in procs:
            p.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    runs, metrics = sum(g[0] for g in got), sum(g[1] for g in got)
    kind = store.split(":", 1)[0]
    return [f"(b) veil server on {kind}, 2 server workers, {loggers} concurrent loggers, {seconds:g} s per phase",
            f"runs created and ended: {runs / seconds:.1f} runs/s",
            f"metrics in batches of {batch}: {metrics / seconds:.0f} metrics/s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 tiny synthetic cells and 3 s per server phase")
    ap.add_argument("--store-uri", default=os.environ.get("VEIL_TEST_PG_URI"),
                    help="the server's backend store for (b) (default: $VEIL_TEST_PG_URI, else SQLite)")
    ap.add_argument("--loggers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=None, help="per server phase (default: 20; --quick 3)")
    ap.add_argument("--table-cells", type=int, default=180)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-scale-bench-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("VEIL_CACHE_DIR", str(root / "cache"))
        os.environ["VEIL_MLRUNS"] = str(root / "mlruns")
        lines = throughput(QUICK if args.quick else ATT, root, args.table_cells)
        print("\n".join(["", *lines]), flush=True)
        store = args.store_uri or f"sqlite:///{root / 'server.db'}"
        seconds = args.seconds or (3.0 if args.quick else 20.0)
        print("\n".join(["", *server_rate(store, root, args.loggers, seconds, 10)]), flush=True)


if __name__ == "__main__":
    main()
