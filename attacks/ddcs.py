"""DDCS, a per-training-sample exposure score, in *veil's reading*.

Li et al. 2025 ("A Sample-Level Evaluation and Generative Framework for Model Inversion Attacks",
arXiv 2502.19070) define the Diversity and Distance Composite Score (DDCS): for each private
training sample, how close the nearest reconstruction comes to it and whether the reconstructions
are diverse enough to reach it, so that a report can rank the most exposed samples. The paper's
exact formula was not reachable offline (searched: public code, docs, pages and issue threads
held only its abstract), so this module implements veil's reading, named ``ddcs_veil``, and
``ddcs`` takes the scoring function as an argument so that the paper's formula can be swapped in.

veil's reading, for a private training image x_i of identity c, the reconstructions R_c of c
(from all attacks and seeds) and evaluation-model features phi:

- distance ``d_i = min_{r in R_c} ||phi(r) - phi(x_i)|| / median_{j<k in c} ||phi(x_j) - phi(x_k)||``
  (the identity's own spread is the unit, so identities compare);
- coverage ``h_i = 1`` when x_i is the nearest private image of c (in feature space) to at least
  one r in R_c (the reconstructions are diverse enough to reach it), else 0;
- ``DDCS_i = h_i * exp(-d_i)`` in [0, 1]; high = exposed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .metrics import _forward

FORMULA = ("veil's reading of DDCS (Li et al. 2025, arXiv 2502.19070; the paper's formula was not "
           "reachable offline): DDCS_i = h_i * exp(-d_i), d_i = nearest reconstruction's feature distance "
           "/ the identity's median private pairwise distance, h_i = 1 if x_i is some reconstruction's "
           "nearest private image of its identity")


def _class_median_pairwise(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per private sample, the median feature distance between distinct private images of its
    identity (mean of the two middle values for an even count); identities with one image get the
    median over all identities' pairs. Batched: one sort of all within-identity pairs."""
    dist = torch.cdist(feats, feats)
    i, j = torch.triu_indices(len(feats), len(feats), offset=1, device=feats.device)
    keep = labels[i] == labels[j]
    if not keep.any():
        raise ValueError("DDCS needs at least one identity with 2 or more private images to set its distance unit")
    values, cls = dist[i[keep], j[keep]], labels[i[keep]]
    classes, inverse = torch.unique(cls, return_inverse=True)
    # sort by value, then stably by class: each class's pairs are contiguous and in ascending order
    order = values.argsort()
    order = order[inverse[order].argsort(stable=True)]
    values = values[order]
    counts = torch.bincount(inverse, minlength=len(classes))
    starts = counts.cumsum(0) - counts
    med = (values[starts + (counts - 1) // 2] + values[starts + counts // 2]) / 2
    fallback = dist[i[keep], j[keep]].median()
    per_label = torch.full((int(labels.max()) + 1,), fallback.item(), dtype=feats.dtype, device=feats.device)
    per_label[classes] = med
    return per_label[labels]


def ddcs_veil(recon_feats: torch.Tensor, recon_labels: torch.Tensor, private_feats: torch.Tensor,
              private_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """veil's reading of DDCS from features (module docstring). Returns per private sample
    ``scores``, ``distance`` (d_i; inf when its identity has no reconstruction), ``covered`` (h_i)
    and ``nearest_recon`` (index into the reconstructions; -1 when none)."""
    if len(recon_feats) != len(recon_labels) or len(private_feats) != len(private_labels):
        raise ValueError(f"{len(recon_feats)} reconstruction features for {len(recon_labels)} labels, "
                         f"{len(private_feats)} private features for {len(private_labels)} labels")
    recon_feats, private_feats = recon_feats.double(), private_feats.double()
    dist = torch.cdist(private_feats, recon_feats)  # (P, R)
    same = private_labels[:, None] == recon_labels[None, :]
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    masked = torch.where(same, dist, inf)
    raw, nearest_recon = masked.min(1)
    has_recon = same.any(1)
    unit = _class_median_pairwise(private_feats, private_labels).clamp_min(1e-12)
    distance = torch.where(has_recon, raw / unit, inf)
    # each reconstruction's nearest private image of its own identity (reconstructions whose
    # identity has no private image cover nothing)
    reaches = same.any(0)
    nearest_private = masked.argmin(0)[reaches]
    covered = torch.zeros(len(private_feats), dtype=torch.bool, device=dist.device)
    covered[nearest_private] = True
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    scores = torch.where(covered & has_recon, torch.exp(-distance), zero)
    return {"scores": scores, "distance": distance, "covered": covered,
            "nearest_recon": torch.where(has_recon, nearest_recon, torch.full_like(nearest_recon, -1))}


ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def ddcs(recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module, private_images: torch.Tensor,
         private_labels: torch.Tensor, top: int = 10, score_fn: ScoreFn = ddcs_veil) -> dict:
    """Per-sample exposure of the private training set to reconstructions ``recons`` of identities
    ``labels`` (from all attacks and seeds), in the evaluation model's embedding space.

    Returns ``score_fn``'s per-sample tensors (``scores``, ...), ``ranking`` (indices into the
    private set, most exposed first, at most ``top``), ``ranking_recon`` (their nearest
    reconstruction), ``ranking_scores``, ``mean`` (over private samples of the attacked
    identities), ``covered_share`` and ``formula`` (what was computed).
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    _, rf = _forward(eval_model, recons)
    _, pf = _forward(eval_model, private_images)
    labels, private_labels = labels.to(rf.device), private_labels.to(rf.device)  # where the features are
    out = dict(score_fn(rf, labels, pf, private_labels))
    scores = out["scores"]
    order = scores.argsort(descending=True, stable=True)[:top]
    attacked = torch.isin(private_labels, labels)
    out.update(ranking=order, ranking_recon=out["nearest_recon"][order], ranking_scores=scores[order],
               mean=scores[attacked].mean().item() if attacked.any() else 0.0,
               covered_share=out["covered"][attacked].float().mean().item() if attacked.any() else 0.0,
               formula=FORMULA if score_fn is ddcs_veil else getattr(score_fn, "__doc__", "") or "")
    return out
