"""The harness and its report on known inputs: an 'attack' that returns the private images."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from veil.attacks.gan import GANConfig
from veil.attacks.gmi import GMIConfig
from veil.attacks.harness import ATTACKS, HarnessConfig, pick_identities, register, run_attack
from veil.attacks.kedmi import KEDMIConfig
from veil.attacks.lomma import LOMMAConfig
from veil.attacks.pca import PCAAttackConfig
from veil.attacks.settings import UNSET, AttackSettings
from veil.recognition import DataConfig, SplitConfig, load_faces, split_identities
from test_attacks import Oracle  # the evaluation model that knows the private images


@pytest.fixture(scope="module")
def split():
    return split_identities(load_faces(DataConfig(synthetic_identities=8, synthetic_images=6, image_size=16)),
                            SplitConfig(n_private=4))


def _replay(target, split, classes, settings, generator):
    """Returns the first private training image of each class: a perfect reconstruction."""
    x = torch.stack([split.train_images[split.train_labels == c][0] for c in classes.tolist()]).float() / 255
    return x, classes.clone()


@pytest.fixture
def report(split):
    register("replay", _replay)
    oracle = Oracle(split.train_images.float() / 255, split.train_labels, split.num_private)
    yield run_attack("replay", nn.Identity(), split, oracle, HarnessConfig(identities=3, attack_seeds=2), progress=False)
    ATTACKS.pop("replay")


def test_identities_are_a_fixed_sorted_subset() -> None:
    a = pick_identities(20, 5, seed=3)
    assert torch.equal(a, pick_identities(20, 5, seed=3)) and torch.equal(a, a.sort().values) and len(a) == 5
    assert len(pick_identities(20, 0, seed=3)) == 20


def test_perfect_reconstructions_score_perfectly_in_every_view(report) -> None:
    s = report.summary
    assert s["top1"] == 1.0 and s["nn_feature_acc"] == 1.0 and s["knn_dist"] == pytest.approx(0, abs=1e-4)
    assert s["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert len(report.per_seed) == 2 and report.spread["top1"] == (1.0, 0.0)
    assert [r["top1"] for r in report.per_identity] == [1.0, 1.0, 1.0]
    assert report.resolution == pytest.approx(1 / 3)


def test_ddcs_ranks_the_reconstructed_samples_first_with_score_one(report, split) -> None:
    top = report.extra["ddcs_top"]
    assert [r["ddcs"] for r in top[:3]] == pytest.approx([1.0, 1.0, 1.0])
    for r in top[:3]:  # each is the first training image of its identity
        first = (split.train_labels == r["identity"]).nonzero().flatten()[0].item()
        assert r["sample"] == first
    assert all(r["ddcs"] < 1.0 for r in top[3:])


def test_report_outputs_json_markdown_and_grids(report, split, tmp_path) -> None:
    paths = report.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["attack"] == "replay" and data["summary"]["top1"] == 1.0
    assert "_row" not in data["extra"]["ddcs_top"][0]
    md = paths["markdown"].read_text()
    assert "| replay | 100.0% ± 0.0%" in md and "public mean face PSNR" in md and "Fréchet" in md
    assert f"chance top-1 = {100 / split.num_private:.1f}%" in md  # 1 / private identities, not 1 / attacked
    grid = report.grid()
    assert grid.shape[0] == 3 and paths["grid"].is_file() and paths["exposed"].is_file()


def test_saved_reconstructions_round_trip_as_uint8(report, split, tmp_path) -> None:
    from safetensors.torch import load_file

    t = load_file(str(report.save(tmp_path)["tensors"]))
    assert t["images"].dtype == torch.uint8 and t["images"].shape == report.images.shape
    assert torch.equal(t["labels"], report.labels)
    first = split.train_images[split.train_labels == int(report.labels[0])][0]
    assert torch.equal(t["images"][0], first)  # the replayed private image, exactly


def test_unknown_attack_is_refused(split) -> None:
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        run_attack("nope", nn.Identity(), split, nn.Identity())


# ----------------------------------------------------------------------------------- settings

def test_an_unknown_setting_is_refused_naming_the_key_and_where_it_came_from() -> None:
    with pytest.raises(ValueError, match="'gan_stpes' in the benchmark options"):
        AttackSettings.from_mapping({"seeds": 2, "gan_stpes": 500}, where="the benchmark options")
    with pytest.raises(TypeError, match="AttackSettings.from_mapping"):  # a plain dict is no longer taken
        HarnessConfig(settings={"seeds": 2})


def test_settings_reach_each_attacks_config_and_unset_ones_keep_its_defaults() -> None:
    s = AttackSettings(seeds=3, lomma=True, max_seconds=None, gan_steps=50)
    gan = s.gan_config(n_critic=1)
    assert (gan.steps, gan.max_seconds, gan.n_critic) == (50, None, 1)
    assert gan.latent_dim == GANConfig().latent_dim and gan.batch_size == GANConfig().batch_size
    assert AttackSettings().gan_config() == GANConfig()  # max_seconds UNSET keeps the 180 s cap; None lifts it
    assert s.attack_config(GMIConfig) == GMIConfig(seeds=3, lomma=LOMMAConfig())
    assert s.attack_config(PCAAttackConfig) == PCAAttackConfig(seeds=3)  # no LOMMA outside the GAN attacks
    assert AttackSettings(steps=7, lomma=False).attack_config(KEDMIConfig) == KEDMIConfig(steps=7)
    assert AttackSettings().attack_config(KEDMIConfig) == KEDMIConfig()
    # logged as given: unset settings are left out, None is kept
    assert s.to_dict() == {"seeds": 3, "lomma": True, "max_seconds": None, "gan_steps": 50}
    assert AttackSettings.from_mapping(s.to_dict(), where="a report") == s and s.steps is UNSET


def test_the_harness_hands_attacks_the_settings_and_records_what_was_given(split) -> None:
    seen = []

    def spy(target, split, classes, settings, generator):
        seen.append(settings)
        return _replay(target, split, classes, settings, generator)

    register("spy", spy)
    settings = AttackSettings(seeds=1, max_seconds=None)
    try:
        oracle = Oracle(split.train_images.float() / 255, split.train_labels, split.num_private)
        report = run_attack("spy", nn.Identity(), split, oracle,
                            HarnessConfig(identities=2, attack_seeds=1, settings=settings), progress=False)
    finally:
        ATTACKS.pop("spy")
    assert seen == [settings] and report.settings == {"seeds": 1, "max_seconds": None}
    assert json.loads(report.to_json())["settings"] == {"seeds": 1, "max_seconds": None}
