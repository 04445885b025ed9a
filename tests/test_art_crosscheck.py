"""Cross-check of veil's white-box inversion against IBM's Adversarial Robustness Toolbox (ART)
``MIFace`` (its implementation of Fredrikson et al. 2015), and a record of ART's stopping rule.

What we found in ART 1.20.1, ``art/attacks/inference/model_inversion/mi_face.py``, ``infer``:

    138  cost = 1 - self.estimator.predict(batch)[np.arange(len(batch)), np.argmax(batch_labels, axis=1)]
    139  active = (cost <= self.threshold) + (cost >= np.max(window, axis=1))

Fredrikson et al.'s Algorithm 1 *stops* a sample when its cost is at most gamma (``threshold``) or
has not improved over the last beta (``window_length``) steps. Line 139 computes exactly those two
stopping conditions and uses them as the condition to *keep going*: the rule is inverted. Checked
below on a hand-built two-class model whose class probability is known (p = sigmoid(sum(x) + b)):
starting at p = 0.5 (cost 0.5 <= 0.99, where the paper stops at once) ART runs every one of
``max_iter`` steps; starting at p = 4.5e-5 (cost ~1 > 0.99, still improving, where the paper goes
on) ART stops after one step. (The window starts at +inf, so the second term is false for the first
``window_length`` steps.) Also, ``cost`` is ``1 - model output``: with a classifier that returns
logits, as veil's models do, it is 1 minus a logit, not 1 minus a probability, so with the default
threshold a class whose logit at the start is below 0.01 is abandoned after one step.

The cross-check therefore gives ART ``threshold=inf``: ``cost <= inf`` holds always, so every sample
runs exactly ``max_iter`` steps, the same fixed budget as ours. It is judged by the *target's*
top-1 (what both attacks optimize), not by an evaluation model: on this tiny synthetic set a
separately trained evaluation model (100% clean accuracy) puts both attacks' reconstructions at
chance, which is the white-box attack's known weakness (target-specific textures, see
``attacks.whitebox``), so an evaluation-model comparison would be vacuous. What is checked is that
our optimizer does its own job at least as well as the reference implementation at equal budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

_NO_ART = "adversarial-robustness-toolbox (ART) is not importable; pip install -e '.[test]' brings it"
# exc_type=ImportError: a broken install (a dependency that fails to import) skips too, with the reason
art_classification = pytest.importorskip("art.estimators.classification", reason=_NO_ART, exc_type=ImportError)
art_mi = pytest.importorskip("art.attacks.inference.model_inversion", reason=_NO_ART, exc_type=ImportError)

from veil.attacks.whitebox import WhiteBoxConfig, whitebox_attack  # noqa: E402
from veil.recognition import (DataConfig, ModelConfig, SplitConfig, Trainer, TrainerConfig, build_model,  # noqa: E402
                         load_faces, split_identities)
from veil.recognition.models import LogitsOnly  # noqa: E402


class KnownProbability(nn.Module):
    """Two classes, softmax output: p(class 0 | x) = sigmoid(sum(x) + bias)."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).sum(1, keepdim=True) + self.bias
        return torch.cat([z, torch.zeros_like(z)], 1).softmax(1)


def _art_iterations(bias: float, max_iter: int = 50) -> int:
    """How many gradient steps ART's MIFace takes on ``KnownProbability(bias)`` for class 0."""
    clf = art_classification.PyTorchClassifier(KnownProbability(bias), loss=nn.CrossEntropyLoss(), input_shape=(4,),
                                               nb_classes=2, clip_values=(-100.0, 100.0))
    calls = []
    gradient = clf.class_gradient
    clf.class_gradient = lambda x, label=None, **kw: (calls.append(len(x)), gradient(x, label, **kw))[1]
    art_mi.MIFace(clf, max_iter=max_iter, window_length=5, threshold=0.99, learning_rate=0.1,
                  verbose=False).infer(None, np.array([0]))
    return len(calls)


def test_art_mifaces_stopping_rule_is_inverted() -> None:
    # p = 0.5 at the start: cost 0.5 <= threshold 0.99, Fredrikson et al. stop now; ART runs on to max_iter
    assert _art_iterations(bias=0.0, max_iter=50) == 50
    # p = 4.5e-5: cost > 0.99 and improving, Fredrikson et al. go on; ART stops after one step
    # (if either assertion fails, ART changed its rule: revisit threshold=inf in the cross-check)
    assert _art_iterations(bias=-10.0, max_iter=50) == 1


@pytest.fixture(scope="module")
def trained():
    data = load_faces(DataConfig(synthetic_identities=12, synthetic_images=12, image_size=32,
                                 synthetic_difficulty=0.3))
    split = split_identities(data, SplitConfig(n_private=6))
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=split.num_private, width=8, embedding_dim=32))
    Trainer(model, TrainerConfig(epochs=6, batch_size=8, lr=3e-3, schedule="constant"), split.num_private).fit(
        split.train_images, split.train_labels, progress=False)
    return split, model.eval()


def test_whitebox_reaches_at_least_art_mifaces_attack_accuracy(trained) -> None:
    split, target = trained
    classes = torch.arange(split.num_private)
    steps = 10
    ours, labels = whitebox_attack(target, split.public_images, classes, WhiteBoxConfig(steps=steps, seeds=1),
                                   torch.Generator().manual_seed(0))
    clf = art_classification.PyTorchClassifier(LogitsOnly(target), loss=nn.CrossEntropyLoss(),
                                               input_shape=tuple(ours.shape[1:]), nb_classes=split.num_private,
                                               clip_values=(0.0, 1.0))
    # ART's defaults (zero start, learning rate 0.1); threshold=inf: a fixed budget of `steps` (docstring)
    theirs = art_mi.MIFace(clf, max_iter=steps, window_length=steps, threshold=float("inf"), learning_rate=0.1,
                           batch_size=len(classes), verbose=False).infer(None, classes.numpy())
    theirs = torch.from_numpy(theirs).float()
    assert theirs.shape == ours.shape and theirs.min() >= 0 and theirs.max() <= 1
    with torch.no_grad():
        top1_ours = (target(ours)["logits"].argmax(1) == labels).float().mean().item()
        top1_art = (target(theirs)["logits"].argmax(1) == classes).float().mean().item()
    assert top1_art > 0.5  # ART's attack works here, so the comparison means something
    assert top1_ours >= top1_art
