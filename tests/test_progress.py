"""Progress in a log file: off a terminal (tqdm's bar is off there) the long stages print one line
now and then with what is done, the time elapsed and an ETA; on a terminal tqdm draws its bar."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from veil.agents.cli import main
from veil.recognition import Trainer, TrainerConfig, build_model
from veil.recognition.models import ModelConfig
from veil.recognition.progress import LogProgress, duration, line_interval, progress_bar

LINE = re.compile(r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) \w+ \(\d+%\), (?P<elapsed>\S+) elapsed, ETA (?P<eta>\S+)")
TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]


class Clock:
    """A clock the test moves (tqdm reads ``tqdm.std.time``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("tqdm.std.time", c)
    monkeypatch.setattr("veil.recognition.progress.time.time", c)
    return c


def test_a_line_says_what_is_done_the_time_elapsed_and_the_eta_at_the_mean_rate(clock: Clock) -> None:
    out = io.StringIO()
    bar = progress_bar(total=10, desc="train-fr", unit="batch", file=out, interval=30)
    for _ in range(3):
        clock.t += 15
        bar.set_postfix(epoch="1/5", refresh=False)
        bar.update(1)
    assert out.getvalue() == "train-fr: 2/10 batch (20%), 30s elapsed, ETA 2m00s, epoch=1/5\n"


def test_lines_come_at_most_once_per_interval_and_once_at_the_end(clock: Clock) -> None:
    out = io.StringIO()
    with progress_bar(total=9, desc="attack pca", unit="step", file=out, interval=30) as bar:
        for _ in range(9):
            clock.t += 10
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [LINE.match(line)["n"] for line in lines] == ["3", "6", "9"]
    assert LINE.match(lines[-1])["eta"] == "0s" and LINE.match(lines[-1])["elapsed"] == "1m30s"


def test_a_stage_shorter_than_the_interval_still_logs_its_last_line(clock: Clock) -> None:
    out = io.StringIO()
    for _ in progress_bar(range(4), desc="attack pca", unit="seed", file=out, interval=30):
        clock.t += 1
    assert out.getvalue() == "attack pca: 4/4 seed (100%), 4s elapsed, ETA 0s\n"


def test_a_bar_closed_after_its_log_file_closed_writes_nothing_and_raises_nothing(clock: Clock) -> None:
    out = io.StringIO()
    bar = progress_bar(total=4, desc="attack pca", unit="seed", file=out, interval=30)
    bar.update(1)
    out.close()  # the log file a finished run wrote to, closed before the bar is collected
    bar.close()
    assert out.closed


def test_a_resumed_stage_estimates_from_its_own_steps_not_the_earlier_ones(clock: Clock) -> None:
    out = io.StringIO()
    bar = progress_bar(total=100, initial=50, desc="train-agent", unit="step", file=out, interval=0)
    clock.t += 10
    bar.update(10)  # 10 steps in 10 s: 40 left take 40 s
    assert out.getvalue() == "train-agent: 60/100 step (60%), 10s elapsed, ETA 40s\n"


def test_on_a_terminal_it_is_tqdms_bar_and_disabled_it_writes_nothing() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(total=3, desc="x", file=Terminal())
    assert not isinstance(bar, LogProgress) and not bar.disable
    bar.close()
    out = io.StringIO()
    quiet = progress_bar(total=3, desc="x", file=out, enabled=False)
    quiet.update(3)
    quiet.close()
    assert quiet.disable and out.getvalue() == ""


@pytest.mark.parametrize("value, seconds", [("5", 5.0), ("0", 0.0), ("-1", 30.0), ("soon", 30.0), ("nan", 30.0)])
def test_the_interval_comes_from_veil_progress_seconds(value: str, seconds: float,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_PROGRESS_SECONDS", value)
    assert line_interval() == seconds


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (83, "1m23s"), (7500, "2h05m")])
def test_durations_read_like_a_clock(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_trainer_logs_progress_lines_when_its_output_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("VEIL_PROGRESS_SECONDS", "0")
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn", num_classes=3, in_channels=3, image_size=32))
    trainer = Trainer(model, TrainerConfig(epochs=2, batch_size=4, seed=0), num_classes=3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    trainer.fit(images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), desc="evaluation model")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluation model: ")]
    assert [LINE.match(line)["n"] for line in lines] == ["1", "2", "3", "4"]
    assert ", epoch=2/2, loss=" in lines[-1] and "1/4 batch (25%)" in lines[0]


def test_veil_train_fr_logs_progress_lines_into_a_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VEIL_PROGRESS_SECONDS", "0")
    assert main(["train-fr", *TINY, "--epochs", "2"]) == 0
    lines = [m for line in capsys.readouterr().err.splitlines() if (m := LINE.match(line))]
    assert lines and {m["desc"] for m in lines} == {"train-fr"}
    assert lines[-1]["n"] == lines[-1]["total"] == "2" and lines[0]["eta"] != "?"


def test_veil_train_agent_logs_progress_lines_into_a_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VEIL_PROGRESS_SECONDS", "0")
    assert main(["train-agent", *TINY, "--synthetic-images", "12", "--episode-steps", "16", "--val-every", "8",
                 "--timesteps", "32", "--n-steps", "16", "--n-epochs", "1", "--eval-every", "32"]) == 0
    lines = [m for line in capsys.readouterr().err.splitlines() if (m := LINE.match(line))]
    agent = [m for m in lines if m["desc"] == "train-agent"]
    assert agent and agent[-1]["n"] == agent[-1]["total"] == "32"
