"""Privacy metrics of a set of reconstructions, as the field computes them (Model-Inversion-
Attack-ToolBox, PPA), with the guards veil's trials asked for: attack accuracy is read by an
*evaluation* model (not the target), and beside it stand the nearest-neighbour identity in
feature and pixel space and the share of reconstructions in the evaluation model's most frequent
('sink') class, because blur and sink classes fool single metrics. PSNR and SSIM reward blur: the
report carries the public mean face's PSNR and SSIM as the reference a blurry average would reach.

Also here: per-identity metrics with their mean ± std over identities (``per_identity``,
``summarize``) and a Fréchet distance in the evaluation model's feature space
(``frechet_distance``, ``feature_frechet``). DDCS lives in ``veil.attacks.ddcs``.

Everything is computed on the evaluation model's device (inputs on any device are moved there
once), and read back to the host once per figure."""

from __future__ import annotations

import math

import torch
from torch import nn

from veil.recognition.device import module_device, to_device

FRECHET_NOTE = ("Fréchet distance in the evaluation model's embedding space, not FID: Inception-v3 "
                "weights cannot be downloaded here (offline), and an ImageNet model's features are not "
                "identity features anyway. Values compare only within one evaluation model and one "
                "feature dimension (frechet_dims).")


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float images -> float in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def _forward(model: nn.Module, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and embeddings of ``images`` (any device) in eval mode, on ``model``'s device."""
    was = model.training
    model.eval()
    device = module_device(model)
    logits, feats = [], []
    try:
        for i in range(0, len(images), batch):
            out = model(_unit(to_device(images[i:i + batch], device)))
            logits.append(out["logits"])
            feats.append(out["embedding"])
    finally:
        model.train(was)
    return torch.cat(logits), torch.cat(feats)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair PSNR in dB of [0, 1] images (inf for identical pairs)."""
    mse = (a - b).square().flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair SSIM of [0, 1] images (B, C, H, W) (Wang et al. 2004: Gaussian window, sigma 1.5,
    11 px or the largest odd size that fits), by torchmetrics; 1 for identical pairs."""
    # imported here: torchmetrics' package import costs seconds, and most callers never need SSIM
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    side = min(a.shape[-2:])
    k = min(11, side if side % 2 else side - 1)
    if k < 3:
        raise ValueError(f"ssim needs images of at least 3 px, got {tuple(a.shape[-2:])}")
    return structural_similarity_index_measure(a.float(), b.float(), kernel_size=k, sigma=1.5,
                                               data_range=1.0, reduction="none")


def _per_reconstruction(recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module,
                        private_images: torch.Tensor, private_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One value per reconstruction for every metric (the shared core of the report functions)."""
    if len(recons) != len(labels) or len(recons) == 0:
        raise ValueError(f"{len(recons)} reconstructions for {len(labels)} labels")
    device = module_device(eval_model)
    priv = _unit(to_device(private_images, device))
    recons = to_device(recons, device).float()
    labels, private_labels = to_device(labels, device), to_device(private_labels, device)
    logits, feats = _forward(eval_model, recons)
    _, priv_feats = _forward(eval_model, priv)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    same = labels[:, None] == private_labels[None, :]  # (R, P) private images of the right identity
    if not same.any(1).all():
        raise ValueError("some labels have no private images to compare with")
    fdist = torch.cdist(feats, priv_feats)
    pdist = torch.cdist(recons.flatten(1), priv.flatten(1))
    inf = torch.tensor(float("inf"), device=device)
    nearest_same = torch.where(same, pdist, inf).argmin(1)
    out = {
        "pred": topk[:, 0],
        "top1": (topk[:, 0] == labels).float(),
        "top5": (topk == labels[:, None]).any(1).float(),
        "knn_dist": torch.where(same, fdist, inf).min(1).values,
        "nn_feature_acc": (private_labels[fdist.argmin(1)] == labels).float(),
        "nn_pixel_acc": (private_labels[pdist.argmin(1)] == labels).float(),
        "psnr": psnr(recons, priv[nearest_same]),
        "ssim": ssim(recons, priv[nearest_same]),
        "nearest_same": nearest_same,
    }
    return out


def _finite_mean(x: torch.Tensor) -> float:
    """Mean of the finite entries (PSNR of an exact copy is inf), inf when none is finite."""
    ok = torch.isfinite(x)
    return x[ok].mean().item() if ok.any() else math.inf


def evaluate_reconstructions(recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module,
                             private_images: torch.Tensor, private_labels: torch.Tensor,
                             public_images: torch.Tensor | None = None, frechet: bool = False) -> dict[str, float]:
    """Score reconstructions ``recons`` ([0, 1], (R, C, H, W)) meant to show identities ``labels``
    against the private training images of those identities.

    Returns means over reconstructions: ``top1``, ``top5`` (evaluation model), ``knn_dist``
    (smallest feature distance to a private image of the identity), ``nn_feature_acc`` and
    ``nn_pixel_acc`` (the nearest private image, in feature or pixel space, has the right
    identity), ``psnr`` and ``ssim`` (to the nearest private image of the identity in pixel space,
    the same image for both), ``sink_share`` (share in the evaluation model's most frequent
    predicted class), ``n``; with ``public_images``, ``psnr_mean_face`` and ``ssim_mean_face``
    (the public mean face against the same private images: what blur alone scores); with
    ``frechet=True``, ``frechet`` and ``frechet_dims`` from ``feature_frechet`` against the
    private images of the attacked identities (its note: ``FRECHET_NOTE``). All values are floats.
    """
    per = _per_reconstruction(recons, labels, eval_model, private_images, private_labels)
    device = module_device(eval_model)
    recons, labels, private_labels = (to_device(t, device) for t in (recons, labels, private_labels))
    out = {
        "top1": per["top1"].mean().item(),
        "top5": per["top5"].mean().item(),
        "knn_dist": per["knn_dist"].mean().item(),
        "nn_feature_acc": per["nn_feature_acc"].mean().item(),
        "nn_pixel_acc": per["nn_pixel_acc"].mean().item(),
        "psnr": _finite_mean(per["psnr"]),
        "ssim": per["ssim"].mean().item(),
        "sink_share": torch.bincount(per["pred"]).max().item() / len(recons),
        "n": float(len(recons)),
    }
    priv = _unit(to_device(private_images, device))
    if public_images is not None and len(public_images):
        mean_face = _unit(public_images).mean(0, keepdim=True).to(device).expand_as(recons)
        nearest = priv[per["nearest_same"]]
        out["psnr_mean_face"] = psnr(mean_face, nearest).mean().item()
        out["ssim_mean_face"] = ssim(mean_face, nearest).mean().item()
    if frechet:
        mine = torch.isin(private_labels, labels)
        fd = feature_frechet(recons, priv[mine], eval_model)
        out["frechet"], out["frechet_dims"] = fd["frechet"], float(fd["frechet_dims"])
        out["frechet_reduced"] = float(fd["frechet_reduced"])
    return out


PER_IDENTITY_KEYS = ("top1", "top5", "knn_dist", "nn_feature_acc", "nn_pixel_acc", "psnr", "ssim")


def per_identity(recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module,
                 private_images: torch.Tensor, private_labels: torch.Tensor) -> dict[str, list[float]]:
    """The metrics of ``evaluate_reconstructions`` per attacked identity (the protocol reports
    mean ± std over identities): ``identity`` (sorted), ``n`` (reconstructions) and one list per key
    in ``PER_IDENTITY_KEYS``, averaged over that identity's reconstructions (PSNR over finite ones)."""
    per = _per_reconstruction(recons, labels, eval_model, private_images, private_labels)
    device = module_device(eval_model)
    ids, inverse = torch.unique(to_device(labels, device), sorted=True, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(ids)).float()

    def group_mean(x: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(x)
        s = torch.zeros(len(ids), dtype=torch.float64, device=device).index_add_(0, inverse[ok], x[ok].double())
        c = torch.bincount(inverse[ok], minlength=len(ids)).double()
        return torch.where(c > 0, s / c.clamp_min(1), torch.tensor(math.inf, dtype=torch.float64, device=device))

    out: dict[str, list[float]] = {"identity": ids.tolist(), "n": counts.tolist()}
    for key in PER_IDENTITY_KEYS:
        out[key] = group_mean(per[key].float()).tolist()
    return out


def summarize(per: dict[str, list[float]]) -> dict[str, float]:
    """Mean and std over identities of each metric list from ``per_identity``: ``{key}_mean``,
    ``{key}_std`` (sample std; 0 for one identity; non-finite entries left out) and ``identities``."""
    out: dict[str, float] = {"identities": float(len(per["identity"]))}
    for key, values in per.items():
        if key in ("identity", "n"):
            continue
        x = torch.tensor(values, dtype=torch.float64)
        x = x[torch.isfinite(x)]
        out[f"{key}_mean"] = x.mean().item() if len(x) else math.inf
        out[f"{key}_std"] = x.std().item() if len(x) > 1 else 0.0
    return out


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigh (eigenvalues clamped at 0)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> dict[str, float | int | str]:
    """Fréchet distance between Gaussians fitted to feature sets ``x`` (N, D) and ``y`` (M, D).

    When min(N, M) <= D the sample covariances are singular, so both sets are first projected on
    the top ``min(N, M) - 1`` principal components of the pooled features. Returns ``frechet``,
    ``frechet_dims`` (the dimension used), ``frechet_reduced`` (bool) and ``frechet_note``. The
    trace of sqrt(S1 S2) is taken as that of sqrt(S1^1/2 S2 S1^1/2), symmetric PSD, by eigh in
    float64 (no complex parts to discard, unlike scipy's sqrtm on a non-symmetric product).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"frechet_distance needs two (N, D) feature sets of one D, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    n = min(len(x), len(y))
    if n < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(x)} and {len(y)}")
    x, y = x.double(), y.double()
    d = x.shape[1]
    note = FRECHET_NOTE
    reduced = n <= d
    if reduced:
        k = n - 1
        pooled = torch.cat([x, y])
        mu = pooled.mean(0)
        _, _, vh = torch.linalg.svd(pooled - mu, full_matrices=False)
        basis = vh[:k].T
        x, y = (x - mu) @ basis, (y - mu) @ basis
        note += (f" Reduced by PCA (fitted on the pooled features) from {d} to {k} dims: {n} samples in "
                 f"the smaller set give a singular covariance in {d} dims.")
        d = k
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T).reshape(d, d), torch.cov(y.T).reshape(d, d)
    root = _sqrt_psd(sx)
    cross = torch.linalg.eigvalsh(root @ sy @ root).clamp_min(0).sqrt().sum()
    fd = (mx - my).square().sum() + sx.trace() + sy.trace() - 2 * cross
    return {"frechet": max(fd.item(), 0.0), "frechet_dims": d, "frechet_reduced": reduced, "frechet_note": note}


def feature_frechet(recons: torch.Tensor, private_images: torch.Tensor,
                    eval_model: nn.Module) -> dict[str, float | int | str]:
    """``frechet_distance`` between the evaluation model's embeddings of reconstructions and of
    private images (veil's stand-in for FID; see ``FRECHET_NOTE``)."""
    _, fr = _forward(eval_model, recons)
    _, fp = _forward(eval_model, private_images)
    return frechet_distance(fr, fp)
