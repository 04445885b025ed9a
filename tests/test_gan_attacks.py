"""GAN attacks (GMI, KEDMI, PLG-MI) and the LOMMA option, end to end on tiny synthetic data."""

from __future__ import annotations

import pytest
import torch

import veil.attacks.gan as gan_module
from veil.attacks.gan import Discriminator, GANConfig, Generator, train_gan
from veil.attacks.gmi import GMIConfig, gmi_attack
from veil.attacks.kedmi import KEDMIConfig, kedmi_attack, kedmi_prior_loss, soft_labels, train_kedmi_gan
from veil.attacks.lomma import LOMMAConfig, LOMMAKit, identity_loss, max_margin_loss, prepare_lomma
from veil.attacks.plgmi import PLGMIConfig, augment, plgmi_attack, pseudo_label, train_plgmi_gan
from veil.recognition import (
    DataConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    split_identities,
)

TINY_GAN = GANConfig(latent_dim=16, width=8, steps=20, batch_size=16, n_critic=2, max_seconds=None)
TINY_LOMMA = LOMMAConfig(surrogates=1, surrogate_width=4, distill_steps=20, batch_size=16, max_seconds=None)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # these networks are tiny: one thread beats two (and two thrash on a shared 2-core machine)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    torch.set_num_threads(1)  # module fixtures are built before the per-test fixtures run
    data = load_faces(DataConfig(synthetic_identities=12, synthetic_images=6, image_size=32, use_cache=False))
    return split_identities(data, SplitConfig(n_private=6))


@pytest.fixture(scope="module")
def target(split):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=split.num_private, width=8, embedding_dim=16, image_size=32))
    Trainer(model, TrainerConfig(epochs=8, batch_size=8, lr=3e-3), split.num_private).fit(
        split.train_images, split.train_labels, progress=False)
    return model


@pytest.fixture(scope="module")
def gmi_gan(split):
    return train_gan(split.public_images, TINY_GAN, cache=False, progress=False)


@pytest.fixture(scope="module")
def kedmi_gan(split, target):
    return train_kedmi_gan(target, split.public_images, TINY_GAN, cache=False, progress=False)


@pytest.fixture(scope="module")
def plgmi_gan(split, target):
    return train_plgmi_gan(target, split.public_images, TINY_GAN, cache=False, top_n=5, progress=False)


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_contract(recons: torch.Tensor, labels: torch.Tensor, seeds: int, shape=(3, 32, 32)) -> None:
    assert recons.shape == (6 * seeds, *shape)
    assert recons.min() >= 0 and recons.max() <= 1
    assert labels.tolist() == [c for c in range(6) for _ in range(seeds)]


# ----------------------------------------------------------------------------------- networks and configs

@pytest.mark.parametrize("size,channels", [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_generator_maps_latents_to_unit_images_and_discriminator_scores_them(size: int, channels: int) -> None:
    gen = Generator(latent_dim=10, channels=channels, image_size=size, width=4)
    x = gen(torch.randn(3, 10))
    assert x.shape == (3, channels, size, size) and x.min() >= 0 and x.max() <= 1
    scores, feats = Discriminator(channels, size, width=4, outputs=5)(x)
    assert scores.shape == (3, 5) and feats.shape == (3, 4 * 2 ** (size.bit_length() - 4) * 16)


def test_conditional_networks_need_labels_and_depend_on_them() -> None:
    torch.manual_seed(0)
    gen = Generator(latent_dim=8, channels=3, image_size=32, width=4, num_classes=3).eval()
    with torch.no_grad():
        gen.bn0.gain.weight.normal_()  # untrained class gains are all ones: make the classes differ
    z = torch.randn(1, 8).expand(2, -1)
    x = gen(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])
    with pytest.raises(ValueError, match="labels"):
        gen(z)
    with pytest.raises(ValueError, match="labels"):
        Discriminator(3, 32, width=4, num_classes=3, spectral=True)(x)


def test_configs_and_networks_reject_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="width"):
        GANConfig(width=2)
    with pytest.raises(ValueError, match="max_seconds"):
        GANConfig(max_seconds=0)
    with pytest.raises(ValueError, match="gp_every=0"):
        GANConfig(gp_every=0)
    with pytest.raises(ValueError, match="power of two"):
        Generator(image_size=48)
    with pytest.raises(ValueError, match="steps"):
        GMIConfig(steps=0)
    with pytest.raises(ValueError, match="samples_per_step"):
        KEDMIConfig(samples_per_step=0)
    with pytest.raises(ValueError, match="'hinge'"):
        PLGMIConfig(identity_loss="hinge")
    with pytest.raises(ValueError, match="reg"):
        LOMMAConfig(reg=-1.0)


# ----------------------------------------------------------------------------------- training: cache and time cap

def test_second_train_gan_call_reads_the_cache_without_training(split, monkeypatch: pytest.MonkeyPatch) -> None:
    first = train_gan(split.public_images, TINY_GAN, source="synthetic", progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached GAN was trained again")

    monkeypatch.setattr(gan_module.WGANGPRecipe, "critic_loss", no_training)
    second = train_gan(split.public_images, TINY_GAN, source="synthetic", progress=False)
    assert not first.from_cache and second.from_cache and second.steps_done == first.steps_done == 20
    for a, b in zip(first.generator.state_dict().values(), second.generator.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="trained again"):  # another config is another cache entry
        train_gan(split.public_images, GANConfig(**{**TINY_GAN.__dict__, "seed": 1}), source="synthetic",
                  progress=False)
    with pytest.raises(AssertionError, match="trained again"):  # so are other images
        train_gan(split.public_images[1:], TINY_GAN, source="synthetic", progress=False)


def test_training_stops_at_the_time_cap(split) -> None:
    config = GANConfig(latent_dim=16, width=8, steps=10**6, batch_size=16, n_critic=1, max_seconds=0.5)
    bundle = train_gan(split.public_images, config, cache=False, progress=False)
    assert 1 <= bundle.steps_done < 10**6
    assert bundle.seconds < 0.5 + 2.0  # the cap is checked before each step: at most one step over


@pytest.mark.parametrize("max_seconds,capped", [(None, False), (0.2, True)])
def test_a_gan_attack_report_says_how_many_gan_steps_it_trained(split, target, max_seconds, capped: bool) -> None:
    from veil.attacks.harness import HarnessConfig, run_attack
    from veil.attacks.settings import AttackSettings

    settings = {"seeds": 1, "steps": 3, "gan_latent_dim": 16, "gan_width": 8, "gan_batch_size": 16,
                "gan_steps": 10**6 if capped else 4, "max_seconds": max_seconds}
    report = run_attack("kedmi", target, split, target, HarnessConfig(identities=2, attack_seeds=2,
                                                                settings=AttackSettings.from_mapping(settings, "test")),
                        progress=False)
    b = report.extra["budget"]
    assert b["gan_time_capped"] is capped and b["gan_steps"] == settings["gan_steps"]
    assert (1 <= b["gan_steps_done"] < 10**6) if capped else b["gan_steps_done"] == 4
    assert not b["gan_from_cache"]  # the first attack seed trained it (the second reused it)
    assert f"{b['gan_steps_done']} of {b['gan_steps']} generator steps" in report.to_markdown()
    assert ("time cap" in report.to_markdown()) is capped


def test_gan_seconds_zero_lifts_the_time_cap() -> None:
    from types import SimpleNamespace

    from veil.agents.attack_cli import attack_settings

    args = SimpleNamespace(restarts=2, steps=None, lomma=False, gan_seconds=0, gan_steps=500)
    assert attack_settings(args).to_dict() == {"seeds": 2, "max_seconds": None, "gan_steps": 500}
    assert attack_settings(SimpleNamespace(**{**vars(args), "gan_seconds": 60.0})).max_seconds == 60.0


# ----------------------------------------------------------------------------------- GMI

def test_gmi_returns_class_major_unit_images_and_leaves_the_target_as_it_was(split, target, gmi_gan) -> None:
    before = _snapshot(target)
    target.train()
    target.head.weight.requires_grad_(False)
    try:
        recons, labels = gmi_attack(target, gmi_gan, torch.arange(6), GMIConfig(steps=10, seeds=2),
                                    torch.Generator().manual_seed(0))
        _assert_contract(recons, labels, 2)
        assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
        assert target.training and not target.head.weight.requires_grad and target.head.bias.requires_grad
    finally:
        target.head.weight.requires_grad_(True)
        target.eval()


def test_gmi_raises_the_targets_confidence_over_each_starting_latent(target, gmi_gan) -> None:
    recons, labels = gmi_attack(target, gmi_gan, torch.arange(6), GMIConfig(steps=40, seeds=2),
                                torch.Generator().manual_seed(0))
    start = torch.randn(12, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)  # the attack's first draw
    with torch.no_grad():
        target.eval()
        p_attack = target(recons)["logits"].softmax(1)[torch.arange(12), labels]
        p_start = target(gmi_gan.generator(start))["logits"].softmax(1)[torch.arange(12), labels]
    assert (p_attack > p_start).all() and p_attack.mean() > 1.2 * p_start.mean()


def test_gmi_is_reproducible_with_a_seeded_generator(target, gmi_gan) -> None:
    run = lambda: gmi_attack(target, gmi_gan, torch.tensor([1, 4]), GMIConfig(steps=5, seeds=2),  # noqa: E731
                             torch.Generator().manual_seed(3))[0]
    assert torch.equal(run(), run())


# ----------------------------------------------------------------------------------- KEDMI

def test_kedmi_discriminator_has_one_output_per_target_class(split, kedmi_gan) -> None:
    scores, _ = kedmi_gan.discriminator(split.public_images[:4].float() / 255)
    assert kedmi_gan.kind == "kedmi" and scores.shape == (4, 6)


def test_kedmi_prior_loss_is_minus_log_probability_of_real() -> None:
    scores = torch.tensor([[0.0, float("-inf")], [2.0, 2.0]])
    p_real = torch.sigmoid(scores.logsumexp(1))
    assert torch.allclose(kedmi_prior_loss(scores), -p_real.log())


def test_kedmi_samples_distinct_reconstructions_per_learned_distribution(target, kedmi_gan) -> None:
    before = _snapshot(target)
    recons, labels = kedmi_attack(target, kedmi_gan, torch.arange(6), KEDMIConfig(steps=15, seeds=3),
                                  torch.Generator().manual_seed(0))
    _assert_contract(recons, labels, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    assert not torch.allclose(recons[0], recons[1])  # three samples of class 0's distribution


def test_kedmi_soft_labels_are_the_targets_softmax(split, target) -> None:
    probs, flipped = soft_labels(target, split.public_images[:5])
    with torch.no_grad():
        expected = target(split.public_images[:5].float() / 255)["logits"].softmax(1)
    assert torch.allclose(probs, expected, atol=1e-6) and flipped.shape == probs.shape


def test_gan_attacks_refuse_a_gan_of_another_kind(target, gmi_gan) -> None:
    with pytest.raises(ValueError, match="train_kedmi_gan"):
        kedmi_attack(target, gmi_gan, torch.arange(2))
    with pytest.raises(ValueError, match="train_plgmi_gan"):
        plgmi_attack(target, gmi_gan, torch.arange(2))


# ----------------------------------------------------------------------------------- PLG-MI

def test_pseudo_labels_are_the_top_n_most_confident_public_images_of_each_class(split, target) -> None:
    idx, labels = pseudo_label(target, split.public_images, top_n=4)
    assert labels.tolist() == [c for c in range(6) for _ in range(4)]
    with torch.no_grad():
        probs = target(split.public_images.float() / 255)["logits"].softmax(1)
    for c in range(6):
        chosen = probs[idx[labels == c], c]
        others = probs[~torch.isin(torch.arange(len(probs)), idx[labels == c]), c]
        assert chosen.min() >= others.max()


def test_max_margin_loss_is_the_best_other_logit_minus_the_class_logit() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    assert max_margin_loss(logits, torch.tensor([0, 1])).tolist() == [-1.0, 2.0]


def test_augment_without_crop_rotation_or_jitter_only_flips() -> None:
    x = torch.rand(8, 3, 16, 16)
    out = augment(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), jitter=0.0, degrees=0.0)
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    flipped = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | flipped).all() and same.any() and flipped.any()
    jittered = augment(x, torch.Generator().manual_seed(0))
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 1


def test_plgmi_reconstructs_each_class_with_the_conditional_gan(target, plgmi_gan) -> None:
    before = _snapshot(target)
    recons, labels = plgmi_attack(target, plgmi_gan, torch.arange(6), PLGMIConfig(steps=10, seeds=2),
                                  torch.Generator().manual_seed(0))
    _assert_contract(recons, labels, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    assert plgmi_gan.extra["pseudo_labels"].bincount().tolist() == [5] * 6


# ----------------------------------------------------------------------------------- LOMMA

def test_lomma_logit_loss_is_minus_the_logit_plus_the_feature_distance_to_public_mean(split, target) -> None:
    x = split.public_images[:3].float() / 255
    y = torch.tensor([0, 2, 5])
    mean = torch.randn(16)
    with torch.no_grad():
        out = target(x)
        expected = -out["logits"][torch.arange(3), y] + 0.5 * (out["embedding"] - mean).square().mean(1)
        got = identity_loss(target, x, y, kit=LOMMAKit([], mean, LOMMAConfig(reg=0.5)))
    assert torch.allclose(got, expected, atol=1e-5)


def test_lomma_distills_frozen_surrogates_once_and_caches_them(split, target) -> None:
    kit = prepare_lomma(target, split.public_images, TINY_LOMMA, progress=False)
    again = prepare_lomma(target, split.public_images, TINY_LOMMA, progress=False)
    assert len(kit.surrogates) == 1 and not kit.from_cache and again.from_cache
    assert kit.feature_mean.shape == (16,)
    s = kit.surrogates[0]
    assert not s.training and not any(p.requires_grad for p in s.parameters())
    assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), again.surrogates[0].state_dict().values()))


@pytest.mark.parametrize("attack", ["gmi", "kedmi", "plgmi"])
def test_lomma_option_runs_on_every_gan_attack(split, target, gmi_gan, kedmi_gan, plgmi_gan, attack: str) -> None:
    before = _snapshot(target)
    run, bundle, config = {
        "gmi": (gmi_attack, gmi_gan, GMIConfig(steps=5, seeds=1, lomma=TINY_LOMMA)),
        "kedmi": (kedmi_attack, kedmi_gan, KEDMIConfig(steps=5, seeds=1, lomma=TINY_LOMMA)),
        "plgmi": (plgmi_attack, plgmi_gan, PLGMIConfig(steps=5, seeds=1, lomma=TINY_LOMMA)),
    }[attack]
    recons, labels = run(target, bundle, torch.arange(6), config, torch.Generator().manual_seed(0),
                         public_images=split.public_images, progress=False)
    _assert_contract(recons, labels, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    with pytest.raises(ValueError, match="public images"):
        run(target, bundle, torch.arange(6), config)


# ----------------------------------------------------------------------------------- peer check (docs/attacks-peer-check.md)

def test_max_margin_loss_matches_the_authors_argsort_form() -> None:
    """PLG-MI's losses.py takes the best other logit through argsort (the top two, then the one
    that is not the label); veil masks the label out. Same value on every row (peer check P-4)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=g)
    labels = torch.randint(7, (64,), generator=g)
    top2 = logits.argsort(1)[:, -2:]
    other = torch.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
    expected = logits.gather(1, other[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(max_margin_loss(logits, labels), expected)


def test_gan_attack_docstrings_list_the_departures_reference_md_names() -> None:
    """docs/reference.md says the departures from the papers (Adam everywhere, DCGAN-sized
    networks for PLG-MI, no minibatch discrimination in KEDMI) are listed in each module's
    docstring; each GAN attack's docstring names them and the peer check that cites the sources."""
    import veil.attacks.gmi as gmi
    import veil.attacks.kedmi as kedmi
    import veil.attacks.plgmi as plgmi

    for module, departures in ((gmi, ["Adam instead of SGD", "first latents are clipped", "best-of-5"]),
                               (kedmi, ["no minibatch discrimination", "one discriminator update per generator update",
                                        "start at 1"]),
                               (plgmi, ["DCGAN-sized networks", "SNGAN ResNets", "top_n = 30"])):
        doc = " ".join(module.__doc__.split())
        assert "docs/attacks-peer-check.md" in doc, module.__name__
        for words in departures:
            assert words in doc, (module.__name__, words)
    assert "the authors' code starts at 1" in " ".join(KEDMIConfig.__doc__.split())


def test_the_peer_check_doc_links_resolve_and_its_commands_parse() -> None:
    """docs/attacks-peer-check.md: relative links point at files that exist and anchors at
    headings; each `veil` command in its bash blocks is one the CLI accepts."""
    import re
    import shlex
    from pathlib import Path

    from veil.agents.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    path = root / "docs" / "attacks-peer-check.md"

    def anchors(doc: Path) -> set[str]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}

    text = path.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert links
    for target in links:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), target
        assert not anchor or anchor in anchors(dest), target
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.replace("\\\n", " ").splitlines() if line.strip().startswith("veil ")]
    assert commands
    for line in commands:
        build_parser().parse_args(shlex.split(line)[1:])
