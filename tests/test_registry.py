"""Exported policies in MLflow's Model Registry: a version per export, ``models:/NAME@best`` where a
policy file goes, the benchmark's ``best`` alias by the selection rule, and nothing pickled."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main
from veil.agents.plan import load_plan
from veil.agents.registry import (
    BEST,
    file_sha256,
    log_policy_model,
    mark_best,
    policy_file,
    registered_name,
    version_of,
)

POLICIES = Path(__file__).resolve().parents[1] / "docs" / "results" / "syn-price-30ep" / "policies"
TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--batch-size", "16", "--threads", "2", "--epochs", "2", "--attacks", "pca", "--steps", "10", "--restarts", "1",
        "--attack-seeds", "1", "--eval-epochs", "1"]
A, B = POLICIES / "agent-price-s0.safetensors", POLICIES / "agent-edge-s0.safetensors"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store with policies A and B registered as versions 1 and 2 of one game."""
    monkeypatch.chdir(tmp_path)
    tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = registered_name("synthetic")
    for path in (A, B):
        with mlflow.start_run():
            log_policy_model(path, registered=name)
    return name


def test_a_game_is_one_registered_model_named_for_its_data() -> None:
    assert registered_name("synthetic") == "veil-policy-synthetic"
    assert registered_name("/data/My Faces/") == "veil-policy-My-Faces"


def test_each_export_is_a_new_version_that_resolves_to_its_own_file(store: str) -> None:
    for version, path in ((1, A), (2, B)):
        local = policy_file(f"models:/{store}/{version}")
        assert local.read_bytes() == path.read_bytes()
        assert version_of(path) == (store, str(version))


def test_the_logged_policy_model_holds_no_pickle(store: str) -> None:
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{store}/1"))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert (local / "artifacts" / A.name).is_file()


def test_mark_best_sets_the_alias_on_the_lowest_top1_within_the_budget(store: str) -> None:
    """B attacks worse (10%) but costs 5 points, over the 2-point budget; A costs 1 point: A is best."""
    cells = [{"defense": "none", "seed": 0, "natural_top1": 0.90, "attacks": {"pca": {"top1": 0.6}}},
             {"defense": "pa", "seed": 0, "natural_top1": 0.89, "attacks": {"pca": {"top1": 0.3}}},
             {"defense": "pb", "seed": 0, "natural_top1": 0.85, "attacks": {"pca": {"top1": 0.1}}}]
    policies = {("pa", 0): str(A), ("pb", 0): str(B)}
    assert mark_best(cells, policies, "pca") == {store: "1"}
    assert policy_file(f"models:/{store}@{BEST}").read_bytes() == A.read_bytes()
    cells[2]["natural_top1"] = 0.89  # B within budget now, and lower: the alias moves
    assert mark_best(cells, policies, "pca") == {store: "2"}
    assert str(MlflowClient().get_model_version_by_alias(store, BEST).version) == "2"


def test_mark_best_sets_nothing_without_an_undefended_cell_to_price_against(store: str) -> None:
    cells = [{"defense": "pa", "seed": 0, "natural_top1": 0.89, "attacks": {"pca": {"top1": 0.3}}}]
    assert mark_best(cells, {("pa", 0): str(A)}, "pca") == {}


def test_a_version_is_tagged_with_its_files_sha256(store: str) -> None:
    tags = MlflowClient().get_model_version(store, "2").tags
    assert tags["veil.policy_sha256"] == file_sha256(B)


def test_an_unknown_registered_policy_is_a_one_line_error(store: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"policy models:/nobody@best: .*veil ui") as err:
        policy_file("models:/nobody@best")
    assert "\n" not in str(err.value)


def test_a_plan_keeps_a_registered_policy_as_it_is_written(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text('policy = "models:/veil-policy-att@best"\n'
                                        '[defenses.p]\nuse = "policy"\npolicy = { 3 = "models:/veil-policy-att/2" }\n')
    plan = load_plan(tmp_path / "plan.toml")
    assert plan.policy == {-1: "models:/veil-policy-att@best"}
    assert plan.policy_for_seed(3, "p") == "models:/veil-policy-att/2"


def test_a_benchmark_trains_a_registered_policy_and_moves_best_by_the_rule(tmp_path: Path) -> None:
    """``policy = "models:/NAME/1"`` in a plan trains with that version; afterwards ``@best`` is set
    exactly when its accuracy stayed within 2 points of ``none``'s on the same seed."""
    tracking.setup(tracking.default_tracking_uri())
    name = registered_name("synthetic")
    with mlflow.start_run():
        log_policy_model(A, registered=name)
    (tmp_path / "plan.toml").write_text(f'[defenses.registered]\nuse = "policy"\npolicy = "models:/{name}/1"\n')
    out = tmp_path / "bench"
    assert main(["benchmark", "--config", str(tmp_path / "plan.toml"), *TINY, "--defenses", "none,registered",
                 "--seeds", "0", "--out-dir", str(out)]) == 0
    none, pol = (json.loads((out / "cells" / f"{d}-s0.json").read_text()) for d in ("none", "registered"))
    within = 100 * (none["natural_top1"] - pol["natural_top1"]) <= 2.0
    aliases = MlflowClient().get_registered_model(name).aliases
    assert {k: str(v) for k, v in aliases.items()} == ({BEST: "1"} if within else {})
