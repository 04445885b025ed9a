"""Training-option defenses: negative label smoothing, MID, BiDO, TL-DMI, and the CLI wiring."""

from __future__ import annotations

import pytest
import torch

from veil.agents.fr_defenses import DefenseOptions, make_augment, parse_defenses, transfer_backbone
from veil.defenses.baselines import (BiDOConfig, MIDModel, bido_regularizer, hsic, mid_regularizer, smooth_targets)
from veil.defenses.tldmi import freeze_until
from veil.recognition import ModelConfig, Trainer, TrainerConfig, build_model, one_hot


def _model(classes: int = 4) -> torch.nn.Module:
    return build_model(ModelConfig(num_classes=classes, width=8, embedding_dim=16))


def test_negative_label_smoothing_keeps_rows_summing_to_one_and_pushes_past_one() -> None:
    y = one_hot(torch.tensor([0, 2]), 4)
    t = smooth_targets(y, -0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(1.075) and t[0, 1] == pytest.approx(-0.025)


def test_mid_wrapper_adds_a_kl_term_and_is_deterministic_in_eval() -> None:
    mid = MIDModel(_model(), embedding_dim=16, num_classes=4, bottleneck=8)
    x = torch.rand(3, 3, 32, 32)
    out = mid(x)
    assert out["logits"].shape == (3, 4) and out["kl"].ndim == 0 and out["kl"] > 0
    mid.eval()
    assert torch.equal(mid(x)["logits"], mid(x)["logits"])
    assert mid_regularizer(0.5)(out, x, one_hot(torch.arange(3), 4)).item() == pytest.approx(0.5 * out["kl"].item())


def test_hsic_is_large_for_dependent_and_small_for_independent_features() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 5, generator=g)
    b = torch.randn(64, 5, generator=g)
    from veil.defenses.baselines import _gaussian_gram
    assert hsic(_gaussian_gram(a), _gaussian_gram(a)) > 5 * hsic(_gaussian_gram(a), _gaussian_gram(b))


def test_bido_regularizer_trains_through_the_trainer() -> None:
    trainer = Trainer(_model(), TrainerConfig(lr=1e-3), num_classes=4)
    trainer.regularizers = [bido_regularizer(BiDOConfig())]
    x = torch.rand(8, 3, 32, 32)
    stats = trainer.step(x, one_hot(torch.arange(8) % 4, 4))
    assert torch.isfinite(torch.tensor(stats.loss)) and stats.grad_norm > 0


def test_freeze_by_fraction_and_by_name() -> None:
    m = _model()
    frozen = freeze_until(m, 0.5)
    n = len(list(m.parameters()))
    assert len(frozen) == round(0.5 * n)
    assert all(not p.requires_grad for name, p in m.named_parameters() if name in frozen)
    m2 = _model()
    frozen2 = freeze_until(m2, "stages.3")
    assert frozen2 and all(name.startswith(("stages.0", "stages.1", "stages.2")) for name in frozen2)
    assert m2.head.weight.requires_grad
    with pytest.raises(ValueError, match="layer9"):
        freeze_until(_model(), "layer9")


def test_frozen_layers_do_not_move_during_training() -> None:
    m = _model()
    freeze_until(m, "stages.2")
    before = m.stages[0][0].weight.clone()
    trainer = Trainer(m, TrainerConfig(lr=1e-2), num_classes=4)
    trainer.step(torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4))
    assert torch.equal(before, m.stages[0][0].weight)


def test_transfer_backbone_copies_all_but_the_head() -> None:
    src, dst = _model(7), _model(4)
    n = transfer_backbone(src, dst)
    assert torch.equal(src.stages[1][0].weight, dst.stages[1][0].weight)
    assert n == len(dst.state_dict()) - 2  # head weight and bias differ in shape


def test_parse_defenses_expands_hybrid_and_rejects_unknown_names() -> None:
    assert parse_defenses("hybrid,tldmi") == ("re", "mixup", "tldmi")
    assert parse_defenses("none") == ("none",)
    with pytest.raises(ValueError, match="'jpeg'"):
        parse_defenses("re,jpeg")
    with pytest.raises(ValueError, match="none"):
        parse_defenses("none,re")


def test_make_augment_applies_erasing_and_smoothing_and_none_is_none() -> None:
    assert make_augment(DefenseOptions(names=("none",))) is None
    aug = make_augment(DefenseOptions(names=("re", "negls")))
    x = torch.rand(8, 3, 32, 32)
    y = one_hot(torch.arange(8) % 4, 4)
    out, t = aug(x, y)
    assert not torch.equal(out, x) and (t < 0).any() and torch.allclose(t.sum(1), torch.ones(8))


def test_label_smoothing_chains_after_any_image_augmentation_such_as_a_policy() -> None:
    from veil.agents.fr_defenses import with_label_defenses

    def policy_like(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images.flip(0), 0.5 * targets + 0.5 * targets.flip(0)  # a MixUp-like pairing

    x, y = torch.rand(4, 3, 8, 8), one_hot(torch.tensor([0, 1, 2, 3]), 4)
    assert with_label_defenses(policy_like, DefenseOptions(names=("tldmi",))) is policy_like
    out, t = with_label_defenses(policy_like, DefenseOptions(names=("negls",)))(x, y)
    mixed = 0.5 * y + 0.5 * y.flip(0)
    assert torch.equal(out, x.flip(0))
    assert torch.allclose(t, smooth_targets(mixed, -0.05))  # smoothed after the mix, not before
    assert torch.allclose(t.sum(1), torch.ones(4)) and (t < 0).any()


def test_dp_sgd_trains_and_spends_privacy() -> None:
    from veil.defenses.dp import DPConfig, make_private, unwrap

    trainer = Trainer(_model(), TrainerConfig(batch_size=8, lr=1e-3), num_classes=4)
    ledger = make_private(trainer, DPConfig(epsilon=None, noise_multiplier=1.0), n_train=64, epochs=1)
    before = [p.detach().clone() for p in unwrap(trainer.model).parameters()]
    x, y = torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4)
    trainer.step(x, y)
    first = ledger.epsilon()
    trainer.step(x, y)
    assert 0 < first < ledger.epsilon()
    assert any(not torch.equal(a, b) for a, b in zip(before, unwrap(trainer.model).parameters()))


def test_dp_target_epsilon_sets_the_noise() -> None:
    from veil.defenses.dp import DPConfig, make_private

    loose = make_private(Trainer(_model(), TrainerConfig(batch_size=8), 4), DPConfig(epsilon=50.0), 64, 5)
    tight = make_private(Trainer(_model(), TrainerConfig(batch_size=8), 4), DPConfig(epsilon=1.0), 64, 5)
    assert tight.noise_multiplier > loose.noise_multiplier > 0


def test_dp_refuses_batchnorm_models() -> None:
    from veil.defenses.dp import DPConfig, make_private

    model = build_model(ModelConfig(name="resnet18", num_classes=4))
    with pytest.raises(ValueError, match="BatchNorm"):
        make_private(Trainer(model, TrainerConfig(), 4), DPConfig(), 64, 1)


def test_dp_spends_no_more_than_the_target_epsilon_over_the_planned_steps() -> None:
    from veil.defenses.dp import DPConfig, make_private

    trainer = Trainer(_model(), TrainerConfig(batch_size=8), num_classes=4)
    ledger = make_private(trainer, DPConfig(epsilon=4.0), n_train=20, epochs=2)  # 2 x ceil(20/8) = 6 steps
    x, y = torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4)
    for _ in range(6):
        trainer.step(x, y)
    assert 3.5 < ledger.epsilon() <= 4.0 + 0.05
