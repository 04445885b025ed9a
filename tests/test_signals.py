"""A stopped or killed veil leaves its MLflow runs KILLED, not RUNNING, and its last checkpoint
resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import tracking, train_fr
from veil.agents.cli import Stopped, main

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "1"]


def _start_training(tmp_path: Path, ckpt: Path) -> subprocess.Popen:
    env = dict(os.environ, VEIL_MLRUNS=str(tmp_path / "mlruns"), VEIL_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "-m", "veil.agents.cli", "train-fr", *TINY, "--epochs", "500",
                             "--checkpoint", str(ckpt)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(ckpt: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not ckpt.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training did not write a checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)  # somewhere in a later epoch


def _the_run(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    return run


def test_sigterm_marks_the_run_killed_and_keeps_a_resumable_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.pt"
    proc = _start_training(tmp_path, ckpt)
    _wait_for(ckpt, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("veil train-fr: stopped by SIGTERM") and "marked KILLED" in last and "Traceback" not in err
    run = _the_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["veil.stopped"] == "stopped by SIGTERM"
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert done >= 1 and not list(tmp_path.glob(".ck.pt.*"))  # whole epochs only, no half-written file
    assert main(["train-fr", *TINY, "--epochs", str(done + 1), "--resume", str(ckpt)]) == 0


def test_a_run_left_running_by_a_killed_process_is_marked_killed_by_the_next_command(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.pt"
    proc = _start_training(tmp_path, ckpt)
    _wait_for(ckpt, proc)
    proc.kill()  # kill -9: no handler runs
    proc.wait(timeout=60)
    assert _the_run(tmp_path).info.status == "RUNNING"
    tracking.setup(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")  # what every command does first
    run = _the_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["veil.stopped"] == f"orphaned: its process {proc.pid} is gone"


def test_a_stop_that_a_library_turns_into_its_own_error_still_exits_as_stopped(monkeypatch, capsys) -> None:
    def stopped_inside_torch_save(args) -> int:  # what torch.save's zip writer does when SIGTERM lands in it
        try:
            raise Stopped(signal.SIGTERM)
        except Stopped:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(train_fr, "run", stopped_inside_torch_save)
    assert main(["train-fr", *TINY]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("veil train-fr: stopped by SIGTERM")


def test_an_error_with_no_stop_behind_it_is_not_reported_as_a_stop(monkeypatch) -> None:
    def fails(args) -> int:
        raise RuntimeError("a real bug")

    monkeypatch.setattr(train_fr, "run", fails)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["train-fr", *TINY])
