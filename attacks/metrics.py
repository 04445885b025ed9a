"""Privacy metrics of a set of reconstructions, as the field computes them (Model-Inversion-
Attack-ToolBox, PPA), with the guards veil's trials asked for: attack accuracy is read by an
*evaluation* model (not the target), and beside it stand the nearest-neighbour identity in
feature and pixel space and the share of reconstructions in the evaluation model's most frequent
('sink') class, because blur and sink classes fool single metrics. PSNR rewards blur: the report
carries the public mean face's PSNR as the reference a blurry average would reach."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def _forward(model: nn.Module, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.eval()
    logits, feats = [], []
    try:
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out = model(x)
            logits.append(out["logits"])
            feats.append(out["embedding"])
    finally:
        model.train(was)
    return torch.cat(logits), torch.cat(feats)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair PSNR in dB of [0, 1] images (inf for identical pairs)."""
    mse = (a - b).square().flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def evaluate_reconstructions(recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module,
                             private_images: torch.Tensor, private_labels: torch.Tensor,
                             public_images: torch.Tensor | None = None) -> dict[str, float]:
    """Score reconstructions ``recons`` ([0, 1], (R, C, H, W)) meant to show identities ``labels``
    against the private training images of those identities.

    Returns means over reconstructions: ``top1``, ``top5`` (evaluation model), ``knn_dist``
    (smallest feature distance to a private image of the identity), ``nn_feature_acc`` and
    ``nn_pixel_acc`` (the nearest private image, in feature or pixel space, has the right
    identity), ``psnr`` (to the nearest private image of the identity), ``sink_share`` (share in
    the evaluation model's most frequent predicted class), and ``psnr_mean_face`` (the public
    mean face's PSNR to the same private images: what blur alone scores).
    """
    if len(recons) != len(labels) or len(recons) == 0:
        raise ValueError(f"{len(recons)} reconstructions for {len(labels)} labels")
    priv = private_images.float() / 255.0 if private_images.dtype == torch.uint8 else private_images.float()
    logits, feats = _forward(eval_model, recons)
    _, priv_feats = _forward(eval_model, priv)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    same = labels[:, None] == private_labels[None, :]  # (R, P) private images of the right identity
    if not same.any(1).all():
        raise ValueError("some labels have no private images to compare with")
    fdist = torch.cdist(feats, priv_feats)
    pdist = torch.cdist(recons.flatten(1).float(), priv.flatten(1))
    inf = torch.tensor(float("inf"))
    knn = torch.where(same, fdist, inf).min(1).values
    nearest_same = torch.where(same, pdist, inf).argmin(1)
    p = psnr(recons.float(), priv[nearest_same])
    out = {
        "top1": (pred == labels).float().mean().item(),
        "top5": (topk == labels[:, None]).any(1).float().mean().item(),
        "knn_dist": knn.mean().item(),
        "nn_feature_acc": (private_labels[fdist.argmin(1)] == labels).float().mean().item(),
        "nn_pixel_acc": (private_labels[pdist.argmin(1)] == labels).float().mean().item(),
        "psnr": p[torch.isfinite(p)].mean().item() if torch.isfinite(p).any() else math.inf,
        "sink_share": torch.bincount(pred).max().item() / len(pred),
        "n": float(len(recons)),
    }
    if public_images is not None and len(public_images):
        pub = public_images.float() / 255.0 if public_images.dtype == torch.uint8 else public_images.float()
        mean_face = pub.mean(0, keepdim=True).expand_as(recons)
        out["psnr_mean_face"] = psnr(mean_face, priv[nearest_same]).mean().item()
    return out
