"""LoFt, low-rank feature filtering (Yu et al., "Rank Matters: Understanding and Defending Model
Inversion Attacks via Low-Rank Feature Filtering", arXiv 2410.05814, KDD 2026; code
github.com/Chrisqcwx/LoFt).

The paper shows inversion gets easier as the rank of the features the classifier reads grows, and
filters them to a low rank: the classification head ``Linear(D, K)`` becomes two layers through a
rank-``r`` neck with a saturating activation. What the reference code does, and this module too
(``NeckWrapper`` / ``_neck_builder`` of the authors' Model-Inversion-Attack-ToolBox, applied by
``scripts/ffhq256_facescrub224/classifier/loft.py``):

- where: on the backbone's penultimate feature (the input of the final fully connected layer);
- what: ``BatchNorm1d(D) -> Linear(D, r) -> tanh -> Linear(r, K)`` replaces that layer;
- the subspace: learned end to end with the rest of the model (no SVD or PCA; the low-rank
  factorization of the trained weights, ``LRCWrapper``, is the authors' other, earlier defense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "relu6": nn.ReLU6,
                                           "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "none": nn.Identity}
"""The neck activations the reference offers (``_activation`` in its ``wrappers.py``)."""


@dataclass(frozen=True)
class LoFtConfig:
    """LoFt's neck.

    Args:
        rank: width r of the neck, the rank the classifier's features are filtered to. Default 50:
            ``scripts/ffhq256_facescrub224/classifier/loft.py`` trains ``necks = [50]`` (its sweep
            comments list 20 .. 500); the wrapper's own default (10) is not what the paper ran.
        activation: after the rank-r projection; ``tanh`` as in that script (the paper: a
            saturating activation whose vanishing gradients further hinder inversion).
    """

    rank: int = 50
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoFt rank must be a whole number >= 1, got {self.rank!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"LoFt activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")


class LoFtModel(nn.Module):
    """Wraps a backbone: its embedding -> BatchNorm -> rank-r projection -> activation -> logits.

    The backbone's own head is not used. ``embedding`` stays the backbone's feature (what the
    reference reports as the model's feature, ``feature_compressed=False``); ``filtered`` is the
    r-dim code the classifier reads, also appended to ``hidden`` (BiDO regularizes it, as MID's)."""

    def __init__(self, base: nn.Module, embedding_dim: int, num_classes: int, config: LoFtConfig = LoFtConfig()) -> None:
        super().__init__()
        self.base = base
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.down = nn.Linear(embedding_dim, config.rank)
        self.act = ACTIVATIONS[config.activation]()
        self.up = nn.Linear(config.rank, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        out = self.base(x)
        code = self.act(self.down(self.norm(out["embedding"])))
        return {"embedding": out["embedding"], "logits": self.up(code), "hidden": out["hidden"] + [code],
                "filtered": code}
