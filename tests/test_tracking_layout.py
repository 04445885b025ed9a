"""What the MLflow store shows is true: tags name what a run used, a run's start and end bracket
its work, the headline numbers sit on the top-level run, the evaluation model belongs to no one
target, and an agent logs no terms its game does not play."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main
from veil.agents.rl import MLflowOutputFormat, unplayed_terms
from veil.agents.train_fr import FRJob, PolicyUse, defense_tag

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--threads", "2"]
ATTACK = ["--attack", "pca", "--steps", "10", "--restarts", "1", "--attack-seeds", "2", "--eval-arch", "cnn",
          "--eval-epochs", "2", "--threads", "2"]


@dataclass
class Store:
    uri: str
    runs: dict[str, Run]  # by run name


def _store(uri: str) -> Store:
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("veil")
    return Store(uri, {r.info.run_name: r for r in MlflowClient().search_runs([exp.experiment_id])})


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict[str, int]]]:
    """A tiny target trained, then attacked by its run ID (the evaluation model trained then too);
    with the training run's times as they were before the attack."""
    root = tmp_path_factory.mktemp("attacked")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VEIL_CACHE_DIR", str(root / "cache"))
        mp.setenv("VEIL_MLRUNS", str(root / "mlruns"))
        mp.delenv("VEIL_TRACKING_URI", raising=False)
        assert main(["train-fr", *TINY, "--batch-size", "16", "--epochs", "2"]) == 0
        uri = tracking.default_tracking_uri()
        (fr,) = _store(uri).runs.values()
        before = {"start": fr.info.start_time, "end": fr.info.end_time}
        time.sleep(1.1)  # an end time moved by the attack would show
        assert main(["attack", "--model", fr.info.run_id, *ATTACK]) == 0
        yield _store(uri), before


def test_attacking_a_run_leaves_its_status_and_times_those_of_its_training(
        attacked: tuple[Store, dict[str, int]]) -> None:
    store, before = attacked
    fr = store.runs["fr-cnn-synthetic"]
    assert fr.info.status == "FINISHED"
    assert (fr.info.start_time, fr.info.end_time) == (before["start"], before["end"])


def test_an_attack_run_starts_before_the_attack_and_ends_after_it(attacked: tuple[Store, dict[str, int]]) -> None:
    store, _ = attacked
    child = store.runs["attack-pca-fr-cnn-synthetic"]
    took = (child.info.end_time - child.info.start_time) / 1000
    assert took >= child.data.metrics["attack.seconds"] > 0


def test_an_attack_run_is_named_for_its_attack_and_target_and_hangs_under_the_target(
        attacked: tuple[Store, dict[str, int]]) -> None:
    store, _ = attacked
    fr, child = store.runs["fr-cnn-synthetic"], store.runs["attack-pca-fr-cnn-synthetic"]
    assert child.data.tags["mlflow.parentRunId"] == child.data.tags["veil.target_run"] == fr.info.run_id
    assert child.data.tags["veil.defense"] == fr.data.tags["veil.defense"] == "none"


def test_the_targets_own_run_carries_each_attacks_top1_beside_its_natural_top1(
        attacked: tuple[Store, dict[str, int]]) -> None:
    store, _ = attacked
    fr, child = store.runs["fr-cnn-synthetic"], store.runs["attack-pca-fr-cnn-synthetic"]
    assert fr.data.metrics["attack.pca.top1"] == pytest.approx(child.data.metrics["attack.top1"])
    assert 0.0 <= fr.data.metrics["final_test_top1"] <= 1.0


def test_the_evaluation_model_is_a_top_level_run_spanning_its_training_that_attack_runs_name(
        attacked: tuple[Store, dict[str, int]]) -> None:
    store, _ = attacked
    ev, child = store.runs["eval-model-cnn"], store.runs["attack-pca-fr-cnn-synthetic"]
    assert "mlflow.parentRunId" not in ev.data.tags and ev.data.tags["veil.kind"] == "eval-model"
    assert child.data.tags["veil.eval_run"] == ev.info.run_id
    took = (ev.info.end_time - ev.info.start_time) / 1000
    assert took >= ev.data.metrics["test_train_seconds"] > 0
    assert ev.data.tags["mlflow.user"] and ev.info.status == "FINISHED"


def _finished_run(tmp_path: Path) -> tuple[Run, int]:
    """A run that trained and finished, with its end time, some time ago."""
    tracking.setup(f"sqlite:///{tmp_path}/t.db")
    with tracking.start_run(run_name="trained") as run:
        pass
    end = MlflowClient().get_run(run.info.run_id).info.end_time
    time.sleep(0.05)
    return run, end


def test_reopening_a_finished_run_to_add_to_it_keeps_it_finished_with_its_end_time(tmp_path: Path) -> None:
    run, end = _finished_run(tmp_path)
    with pytest.raises(RuntimeError):
        with tracking.start_run(run_id=run.info.run_id):
            mlflow.log_metric("attack.pca.top1", 0.5)
            raise RuntimeError("an attack failed")
    info = MlflowClient().get_run(run.info.run_id).info
    assert (info.status, info.end_time) == ("FINISHED", end)


def test_resuming_a_runs_training_moves_its_end(tmp_path: Path) -> None:
    run, end = _finished_run(tmp_path)
    with tracking.start_run(run_id=run.info.run_id, continue_work=True):
        pass
    assert MlflowClient().get_run(run.info.run_id).info.end_time > end


def test_a_run_for_work_done_before_it_opened_starts_when_the_work_did(tmp_path: Path) -> None:
    tracking.setup(f"sqlite:///{tmp_path}/t.db")
    started = time.time() - 120
    with tracking.start_run(run_name="eval-model-cnn", started=started) as run:
        pass
    info = MlflowClient().get_run(run.info.run_id).info
    assert info.start_time == int(started * 1000) and info.run_name == "eval-model-cnn"
    assert (info.end_time - info.start_time) / 1000 >= 120


@pytest.mark.parametrize("names, policy, schedule, tag", [
    (("none",), None, None, "none"),
    (("re", "mixup"), None, None, "re,mixup"),
    (("none",), "p.safetensors", None, "policy"),
    (("negls",), "p.safetensors", None, "negls,policy"),
    (("none",), None, "s.toml", "schedule"),
])
def test_the_defense_tag_names_the_policy_or_schedule_a_run_trained_with(names: tuple[str, ...], policy: str | None,
                                                                         schedule: str | None, tag: str) -> None:
    job = FRJob(policy=PolicyUse(policy) if policy else None, augment_schedule=schedule)
    assert defense_tag(names, job) == tag


@pytest.mark.parametrize("probe_every, priced, skipped", [
    (0, False, {"probe_top1", "reward_privacy", "reward_deploy"}),
    (8, False, {"reward_deploy"}),
    (8, True, set()),
])
def test_an_agent_logs_no_terms_of_a_game_it_does_not_play(probe_every: int, priced: bool, skipped: set[str]) -> None:
    assert unplayed_terms(probe_every, object() if priced else None) == skipped


def test_sb3s_integer_fps_is_replaced_by_the_measured_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[dict[str, float]] = []
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step: logged.append(metrics))
    MLflowOutputFormat(rate=lambda: 0.37).write({"time/fps": 0, "train/loss": 1.5}, {}, step=64)
    MLflowOutputFormat().write({"time/fps": 0, "train/loss": 1.5}, {}, step=64)
    assert logged == [{"time.fps": 0.37, "train.loss": 1.5}, {"train.loss": 1.5}]


def test_an_agent_run_without_the_probe_logs_no_probe_terms_and_a_true_fps(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *TINY[:-2], "--synthetic-images", "12", "--batch-size", "16", "--threads", "2",
                 "--episode-steps", "16", "--val-every", "8", "--timesteps", "32", "--n-steps", "16",
                 "--n-epochs", "1", "--eval-every", "32", "--log-every", "16"]) == 0
    (run,) = _store(tracking.default_tracking_uri()).runs.values()
    m = run.data.metrics
    assert "env.reward_adv" in m and not {"env.probe_top1", "env.reward_privacy", "env.reward_deploy"} & set(m)
    assert m["time.fps"] > 0


def test_a_benchmark_cells_attack_run_spans_the_attack_and_its_top1_reaches_the_cells_run(tmp_path: Path) -> None:
    assert main(["benchmark", *TINY, "--defenses", "none", "--seeds", "0", "--attacks", "pca", "--epochs", "1",
                 "--batch-size", "16", "--steps", "10", "--restarts", "1", "--attack-seeds", "1",
                 "--eval-epochs", "1", "--out-dir", str(tmp_path / "bench")]) == 0
    store = _store(tracking.default_tracking_uri())
    child = store.runs["attack-pca-none-s0"]
    took = (child.info.end_time - child.info.start_time) / 1000
    assert took >= child.data.metrics["attack.seconds"] > 0
    cell_run = store.runs[next(n for n, r in store.runs.items()
                               if r.info.run_id == child.data.tags["mlflow.parentRunId"])]
    assert cell_run.data.metrics["attack.pca.top1"] == pytest.approx(child.data.metrics["attack.top1"])
    assert cell_run.data.metrics["attack.pca.nn_pixel"] == pytest.approx(child.data.metrics["attack.nn_pixel_acc"])
    assert cell_run.data.metrics["attack.pca.sink_share"] == pytest.approx(child.data.metrics["attack.sink_share"])


def test_a_one_row_benchmark_run_shows_its_rows_mean_numbers_and_defense(tmp_path: Path) -> None:
    """veil demo runs each row as a one-row benchmark: the UI's collapsed table shows its numbers."""
    assert main(["benchmark", *TINY, "--defenses", "re", "--seeds", "0,1", "--attacks", "pca", "--epochs", "1",
                 "--batch-size", "16", "--steps", "10", "--restarts", "1", "--attack-seeds", "1",
                 "--eval-epochs", "1", "--out-dir", str(tmp_path / "bench"), "--run-name", "row"]) == 0
    runs = _store(tracking.default_tracking_uri()).runs
    top, cells = runs["row"], [runs["re-s0"], runs["re-s1"]]
    assert top.data.tags["veil.defense"] == "re"
    for key in ("final_test_top1", "attack.pca.top1", "attack.pca.nn_pixel"):
        assert top.data.metrics[key] == pytest.approx(sum(c.data.metrics[key] for c in cells) / 2), key
