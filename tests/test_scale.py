"""Past one machine: benchmark cells as Ray tasks, and one MLflow server on PostgreSQL (``veil server``).

The cluster tests run on real services on loopback, started by ``tests/scale_env.sh`` (``.ci/run``
does): a Ray head plus one worker node and a PostgreSQL server. Without them they skip, saying how.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from veil.agents import benchmark, calibrate, learn, race, tracking
from veil.agents.benchmark import RunOptions, _save_cell, cell_task, for_workers, load_cell, plan_from_args
from veil.agents.cli import main
from veil.agents.cluster import KILL_HOOK, ClusterConfig
from veil.agents.options import cluster_config, parse_command
from veil.agents.supervise import group_members
from veil.agents.train_fr import Tracking
from veil.attacks.evaluation import EvalModelConfig, train_eval_model
from veil.recognition import load_faces, split_identities

RAY = os.environ.get("VEIL_TEST_RAY_ADDRESS")
PG = os.environ.get("VEIL_TEST_PG_URI")
START = "source tests/scale_env.sh && scale_env_start (as .ci/run does)"
needs_ray = pytest.mark.skipif(not RAY, reason=f"no Ray cluster ($VEIL_TEST_RAY_ADDRESS): {START}")
needs_pg = pytest.mark.skipif(not PG, reason=f"no PostgreSQL ($VEIL_TEST_PG_URI): {START}")

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--batch-size", "16", "--threads", "1", "--epochs", "2", "--attacks", "pca", "--steps", "10", "--restarts", "1",
        "--attack-seeds", "1", "--eval-epochs", "1"]
LEARN_PLAN = """
out_dir = "."
[data]
source = "synthetic"
synthetic_identities = 6
synthetic_images = 8
image_size = 32
[budget]
epochs = 2
batch_size = 16
threads = 1
[attacks]
names = ["pca"]
steps = 5
restarts = 1
attack_seeds = 1
eval_epochs = 1
[race]
validation_seeds = [0]
test_seeds = [5]
[learn.t1-pbt]
learner = "pbt"
episodes = 2
segments = 2
acc_reference = 0.9
out = "learned/t1-pbt.toml"
"""
FOUR = [*TINY, "--defenses", "none,re", "--seeds", "0,1"]  # 4 cells
CELLS = {("none", 0), ("none", 1), ("re", 0), ("re", 1)}
VOLATILE = {"fr_run", "seconds", "report", "grid", "attack_run", "retrained_from_run"}  # run ids, paths, times


def measured(record: dict[str, Any]) -> dict[str, Any]:
    """A cell's record less what differs between two runs of it (run ids, paths, wall times)."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["attacks"] = {a: {k: v for k, v in r.items() if k not in VOLATILE} for a, r in record["attacks"].items()}
    return out


def cells(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    records = [load_cell(f) for f in sorted((out / "cells").glob("*.json"))]
    assert len(records) == len({(r["defense"], r["seed"]) for r in records})  # one file per cell
    return {(r["defense"], r["seed"]): measured(r) for r in records}


def table(out: Path) -> list[dict[str, str]]:
    """``results.csv`` less its wall-time column."""
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def wait_http(url: str, seconds: float = 90) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``veil server`` on PostgreSQL and a free loopback port, answering; returns it and its URI."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "veil.agents.cli", "server", "--backend-store-uri", PG,
                             "--port", str(port), "--artifacts-destination", str(tmp / "artifacts"), "--workers", "1"],
                            stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health")
    return proc, uri


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data cache (so one evaluation model) for the serial and the Ray runs; no store in ./mlruns."""
    root = tmp_path_factory.mktemp("scale")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_CACHE_DIR", str(root / "cache"))
        mp.setenv("VEIL_MLRUNS", str(root / "mlruns"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield root


@pytest.fixture(scope="module")
def serial(shared_env: Path) -> Path:
    out = shared_env / "serial"
    assert main(["benchmark", *FOUR, "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def server(shared_env: Path) -> Iterator[str]:
    if not PG:
        pytest.skip(f"no PostgreSQL ($VEIL_TEST_PG_URI): {START}")
    proc, uri = start_server(shared_env)
    yield uri
    stop(proc)


@pytest.fixture(scope="module")
def on_ray(shared_env: Path, server: str) -> tuple[Path, str]:
    """The same 4 cells as Ray tasks on the cluster, logged through ``veil server``; (out dir, experiment)."""
    if not RAY:
        pytest.skip(f"no Ray cluster ($VEIL_TEST_RAY_ADDRESS): {START}")
    out, experiment = shared_env / "ray", f"scale-{uuid.uuid4().hex[:8]}"
    assert main(["benchmark", *FOUR, "--out-dir", str(out), "--ray", RAY, "--tracking-uri", server,
                 "--experiment", experiment]) == 0
    return out, experiment


def test_ray_without_ray_installed_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["benchmark", *TINY, "--defenses", "none", "--seeds", "0", "--ray", "auto",
                 "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "veil benchmark: error: --ray needs Ray, which is not installed: pip install 'veil[ray]'"
    assert not (tmp_path / "out").exists()  # refused before any cell


def test_ray_options_map_to_a_cluster_config_and_a_cuda_cell_asks_for_a_gpu() -> None:
    args = parse_command(benchmark.add_parser, ["benchmark", "--ray", "auto", "--ray-retries", "5"])
    config = cluster_config(args)
    assert config == ClusterConfig(address="auto", gpus=None, max_retries=5)
    assert (config.task_gpus("cpu"), config.task_gpus("cuda:0"), ClusterConfig(gpus=0.5).task_gpus("cuda")) == \
        (0.0, 1.0, 0.5)
    assert cluster_config(parse_command(benchmark.add_parser, ["benchmark"])).address is None  # in-process


@pytest.mark.parametrize("command", ["calibrate", "race"])
def test_calibrate_and_race_take_the_ray_options(command: str) -> None:
    module = {"calibrate": calibrate, "race": race}[command]
    assert cluster_config(parse_command(module.add_parser, [command, "--ray", "10.0.0.1:6379"])).address == \
        "10.0.0.1:6379"


def test_learn_schedule_takes_the_ray_options_with_a_checkpoint_store() -> None:
    args = parse_command(learn.add_parser, ["learn-schedule", "--config", "p.toml", "--name", "t1-pbt", "--ray",
                                            "10.0.0.1:6379", "--ray-storage", "/nfs/veil-pbt"])
    assert cluster_config(args) == ClusterConfig(address="10.0.0.1:6379", storage="/nfs/veil-pbt")


def test_learn_schedule_refuses_ray_for_ppo_which_plays_in_one_process(tmp_path: Path, capsys) -> None:
    (tmp_path / "plan.toml").write_text(LEARN_PLAN.replace("pbt", "ppo"))
    assert main(["learn-schedule", "--config", str(tmp_path / "plan.toml"), "--name", "t1-ppo", "--ray", "auto"]) == 2
    assert "--ray runs a population's members; [learn.t1-ppo] is ppo" in capsys.readouterr().err
    assert not (tmp_path / "learned").exists()


@needs_ray
def test_pbt_members_run_on_the_cluster_with_checkpoints_in_the_named_store(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``veil learn-schedule --ray ADDRESS --ray-storage DIR``: the population plays as Tune trials on
    the running cluster (this machine's Ray is never started), every member finishes every segment,
    and their checkpoints go to the named store, where a member on another node could read them."""
    import ray

    calls: list[dict[str, Any]] = []
    init = ray.init
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or init(**kw))
    (tmp_path / "plan.toml").write_text(LEARN_PLAN)
    assert main(["learn-schedule", "--config", str(tmp_path / "plan.toml"), "--name", "t1-pbt", "--ray", RAY,
                 "--ray-storage", str(tmp_path / "store"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    record = json.loads((tmp_path / "learned" / "t1-pbt.json").read_text())
    assert sorted(m["member"] for m in record["episodes"]) == [0, 1] and record["fr_runs"] == 2
    assert all(len(m["params"]) == 2 and len(m["played_by"]) == 2 for m in record["episodes"])
    assert len(list((tmp_path / "store").rglob("game.pt"))) >= 2  # one per member and segment, at least
    assert [c.get("address") for c in calls] == [RAY] and "num_cpus" not in calls[0]  # joined, started nothing


def test_a_cell_finished_twice_is_counted_once(tmp_path: Path) -> None:
    """A Ray retry of a cell whose worker died after its last write returns the saved cell: no second
    target, no second MLflow run, one cell file with the same record."""
    out = tmp_path / "out"
    assert main(["benchmark", *TINY, "--defenses", "re", "--seeds", "0", "--out-dir", str(out)]) == 0
    cell, ckpt = out / "cells" / "re-s0.json", out / "checkpoints" / "re-s0.pt"
    before, mtime = load_cell(cell), ckpt.stat().st_mtime_ns
    plan = plan_from_args(parse_command(benchmark.add_parser, ["benchmark", *TINY, "--defenses", "re", "--seeds", "0",
                                                               "--out-dir", str(out)]), benchmark.add_parser)
    ev = train_eval_model(split_identities(load_faces(plan.data), plan.split), EvalModelConfig(
        model=plan.attacks.eval_arch, epochs=plan.attacks.eval_epochs), progress=False)  # the cached one
    wplan, wopts = for_workers(plan, RunOptions(Tracking()))
    exp = tracking.setup(wopts.tracking.uri, wopts.tracking.experiment)
    runs_before = len(MlflowClient().search_runs([exp]))
    parent = MlflowClient().create_run(exp)  # the driver's run, held by another process in a Ray run
    again = cell_task(ev, wplan, wopts, "re", 0, parent.info.run_id)
    assert again == before
    _save_cell(dict(again, attacks=dict(again["attacks"])), cell)  # the driver's write of the returned record
    assert load_cell(cell) == before and ckpt.stat().st_mtime_ns == mtime
    assert len(MlflowClient().search_runs([exp])) == runs_before + 1  # only the test's own parent run
    assert len(list((out / "cells").glob("*.json"))) == 1


@needs_ray
@needs_pg
def test_cells_on_ray_are_the_serial_cells(serial: Path, on_ray: tuple[Path, str]) -> None:
    ours, theirs = cells(serial), cells(on_ray[0])
    assert set(ours) == set(theirs) == CELLS
    assert ours == theirs


@needs_ray
@needs_pg
def test_table_on_ray_is_the_serial_table(serial: Path, on_ray: tuple[Path, str]) -> None:
    assert table(on_ray[0]) == table(serial)
    assert len(table(serial)) == 2  # one row per defense and attack


@needs_ray
@needs_pg
def test_runs_land_in_postgresql_through_the_server_with_their_artifacts(server: str,
                                                                         on_ray: tuple[Path, str]) -> None:
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(on_ray[1])
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # uploaded through the server
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kinds = sorted(r.data.tags.get("veil.kind") for r in runs)
    assert kinds == ["attack"] * 4 + ["benchmark"] + ["fr"] * 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent = next(r for r in runs if r.data.tags["veil.kind"] == "benchmark")
    fr = {r.info.run_id for r in runs if r.data.tags["veil.kind"] == "fr"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags["veil.kind"] == "fr"} == {parent.info.run_id}
    for attack in [r for r in runs if r.data.tags["veil.kind"] == "attack"]:
        assert attack.data.tags["mlflow.parentRunId"] in fr
        assert [a.path for a in client.list_artifacts(attack.info.run_id)] == ["report"]
        assert client.list_artifacts(attack.info.run_id, "report")  # the report's files, served back
    import psycopg  # the runs are rows of the PostgreSQL database the server was given

    with psycopg.connect(PG) as db:
        n = db.execute("select count(*) from runs where experiment_id = %s", (int(exp.experiment_id),)).fetchone()[0]
    assert n == 9


@needs_ray
def test_a_worker_killed_mid_cell_is_retried_without_a_lost_or_duplicated_cell(
        serial: Path, shared_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, marker = shared_env / "killed", shared_env / "killed.marker"
    # the worker running re seed 1 exits (as a crashed node would) once its target is trained and saved
    monkeypatch.setenv(KILL_HOOK, f"{out / 'cells' / 're-s1.json'}:{marker}")
    assert main(["benchmark", *FOUR, "--out-dir", str(out), "--ray", RAY]) == 0
    assert marker.exists()  # the worker did die mid-cell
    assert cells(out) == cells(serial)  # retried: every cell there once, with the serial run's numbers


def test_server_stops_with_its_process_group(tmp_path: Path) -> None:
    if not PG:
        pytest.skip(f"no PostgreSQL ($VEIL_TEST_PG_URI): {START}")
    proc, uri = start_server(tmp_path)
    assert "--tracking-uri " + uri in (tmp_path / "server.log").read_text()
    stop(proc)
    assert proc.returncode == 0 and group_members(proc.pid) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{uri}/health", timeout=2)

