"""Population-based training over the schedule game (``veil.agents.pbt``): one small search on
synthetic faces, checked for the found schedule, the members' records and the compute spent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import pytest
import torch
from torch import nn

pytest.importorskip("ray")

from veil.agents.pbt import PBTConfig, PBTResult, pbt_search
from veil.env import ScheduleGameConfig, schedule_of
from veil.recognition import DataConfig, FaceSplit, load_faces, split_identities

DATA = DataConfig(source="synthetic", synthetic_identities=6, synthetic_images=8, image_size=32)
GAME = ScheduleGameConfig(data=DATA, epochs=2, segments=2, batch_size=16,
                          fixed_params={"label_follow": 0.0, "high_band": 0.0})
POPULATION = 3


def confidence_probe(model: nn.Module, split: FaceSplit, seed: int) -> float:
    """A cheap deterministic stand-in for an attack: the model's mean max-softmax on the held-out images."""
    model.eval()
    with torch.no_grad():
        return float(torch.softmax(model(split.test_images)["logits"], dim=1).max(dim=1).values.mean())


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PBTResult]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        split = split_identities(load_faces(GAME.data), GAME.split)
        yield pbt_search(GAME, split, confidence_probe, PBTConfig(population=POPULATION, seed=3, max_concurrent=2),
                         progress=False)


def test_the_found_schedule_has_one_setting_per_segment_inside_the_game(search: PBTResult) -> None:
    assert len(search.params) == GAME.segments
    assert all(p.label_follow == 0.0 and not p.high_band for p in search.params)
    schedule = schedule_of(GAME, search.params)
    assert [ph.params for ph in schedule.phases] == search.params


def test_every_member_finishes_and_the_best_ones_reward_is_the_score(search: PBTResult) -> None:
    assert [m["member"] for m in search.members] == list(range(POPULATION))
    best = max(search.members, key=lambda m: m["reward"])
    assert search.score == best["reward"]
    assert [asdict(p) for p in search.params] == best["params"]
    for m in search.members:
        assert len(m["params"]) == len(m["played_by"]) == GAME.segments
        assert 0.0 <= m["acc_val"] <= 1.0 and 0.0 < m["probe_top1"] <= 1.0
        assert m["reward"] == pytest.approx(-m["probe_top1"])  # no accuracy reference: the probe alone


def test_exploit_copies_name_members_and_cost_no_extra_runs(search: PBTResult) -> None:
    assert search.fr_runs == POPULATION
    copies = [c for m in search.members for c in m["lineage"]]
    assert copies, "with 3 members and quantile 0.25 the worst one copies the best after segment 1"
    for m in search.members:
        for c in m["lineage"]:
            assert c["member"] in range(POPULATION) and c["member"] != m["member"]
            assert 1 <= c["segment"] < GAME.segments
            assert m["played_by"][c["segment"] - 1] == c["member"]  # the segment before was the donor's
