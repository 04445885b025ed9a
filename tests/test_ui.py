"""``veil ui``: this machine only unless asked, it opens on veil's runs, holds about 0.5 GB, and a
signal stops the server and everything it started."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main
from veil.agents.supervise import group_members
from veil.agents.ui import is_loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("myhost.example", False)])
def test_only_loopback_hosts_count_as_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_remote_host_is_refused_without_allow_remote(capsys: pytest.CaptureFixture) -> None:
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "no authentication" in err and err.count("\n") == 1


def test_ui_prints_the_runs_table_of_veils_experiment_with_its_saved_view(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("veil.agents.ui.serve", lambda cmd, env: 0)
    assert main(["ui", "--port", "5077"]) == 0
    exp = mlflow.get_experiment_by_name("veil")
    assert (f"http://127.0.0.1:5077/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
            "&viewStateShareKey=veil-key-numbers") in capsys.readouterr().out
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # runs, not GenAI traces
    view = json.loads(exp.tags["mlflow.sharedViewState.veil-key-numbers"])
    columns = json.loads(view["state"])["selectedColumns"]
    assert view["name"] == "veil: key numbers"
    assert {"metrics.`final_test_top1`", "metrics.`attack.pca.top1`", "tags.`veil.defense`"} <= set(columns)


def test_an_experiment_veil_creates_is_tagged_for_the_runs_view(tmp_path: Path) -> None:
    exp_id = tracking.setup(f"sqlite:///{tmp_path}/t.db", "fresh")
    tags = MlflowClient().get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.veil-key-numbers" in tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _server_group(pid: int) -> int:
    """The process group of ``pid``'s child (the server it supervises)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                return os.getpgid(int(name))
    raise AssertionError(f"process {pid} has no child")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """``veil ui`` on a free port of a fresh store, up and answering, with a kept-alive connection
    open as a browser's would be."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "veil.agents.cli", "ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path}/ui.db"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        browser = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        browser.request("GET", "/")
        assert browser.getresponse().status == 200
        yield proc, port
        browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process memory from /proc")
def test_the_server_and_what_watches_it_hold_about_half_a_gigabyte(served: tuple[subprocess.Popen, int]) -> None:
    proc, _ = served
    group = group_members(_server_group(proc.pid))
    total = _rss(proc.pid) + sum(_rss(p) for p in group)
    assert _rss(proc.pid) < 100 * 2**20  # veil's own process became the small supervisor
    assert len(group) >= 1 and total < 0.75 * 2**30, f"{total / 2**30:.2f} GB"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_and_leaves_nothing_listening(signum: int,
                                                                served: tuple[subprocess.Popen, int]) -> None:
    proc, port = served
    pgid = _server_group(proc.pid)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0
    assert not _listening(port) and group_members(pgid) == []
