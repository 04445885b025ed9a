"""``AttackReport``: what one attack did to one target, as JSON, a Markdown table and an image
grid (each reconstruction beside the nearest private image of its identity)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.utils import make_grid, save_image

from .ddcs import ddcs
from .metrics import FRECHET_NOTE, evaluate_reconstructions, per_identity, summarize

# the columns of the Markdown table, in order, with how each is printed
COLUMNS = (("top1", "attack top-1", "pct"), ("top5", "top-5", "pct"), ("nn_feature_acc", "NN feature id", "pct"),
           ("nn_pixel_acc", "NN pixel id", "pct"), ("knn_dist", "KNN dist", "num"), ("psnr", "PSNR dB", "num"),
           ("ssim", "SSIM", "num3"), ("sink_share", "sink share", "pct"), ("frechet", "Fréchet", "num"))


def _fmt(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "num3":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8, as stored on disk."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def _mean_std(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    out = {}
    for k in rows[0]:
        v = torch.tensor([float(r[k]) for r in rows if k in r], dtype=torch.float64)
        v = v[torch.isfinite(v)]
        if len(v):
            out[k] = (v.mean().item(), v.std().item() if len(v) > 1 else 0.0)
    return out


@dataclass
class AttackReport:
    """Every figure of one attack on one target.

    ``summary`` pools all reconstructions of all attack seeds; ``per_seed`` has one row per
    attack seed (``spread`` = mean and std over them); ``per_identity`` one row per attacked
    identity; ``extra`` the metrics that need every reconstruction at once (Fréchet distance,
    DDCS ranking). ``resolution`` is one reconstruction's weight in top-1 within a seed.
    """

    attack: str
    settings: dict[str, Any]
    classes: list[int]
    summary: dict[str, float]
    per_seed: list[dict[str, float]]
    spread: dict[str, tuple[float, float]]
    per_identity: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    resolution: float = 0.0
    context: dict[str, Any] = field(default_factory=dict)  # target/eval-model accuracy, data, run ids
    images: torch.Tensor | None = field(default=None, repr=False)
    labels: torch.Tensor | None = field(default=None, repr=False)
    nearest: torch.Tensor | None = field(default=None, repr=False)
    exposed: torch.Tensor | None = field(default=None, repr=False)  # the DDCS top samples, in ranking order

    @classmethod
    def build(cls, attack: str, recons: torch.Tensor, labels: torch.Tensor, eval_model: nn.Module, split,
              priv_x: torch.Tensor, priv_y: torch.Tensor, per_seed: list[dict[str, float]], settings: dict[str, Any],
              seconds: list[float], classes: torch.Tensor) -> "AttackReport":
        summary = evaluate_reconstructions(recons, labels, eval_model, priv_x, priv_y, split.public_images,
                                           frechet=len(recons) >= 2)
        priv = priv_x.float() / 255.0 if priv_x.dtype == torch.uint8 else priv_x.float()
        same = labels[:, None] == priv_y[None, :]
        d = torch.cdist(recons.flatten(1).float(), priv.flatten(1))
        nearest = priv[torch.where(same, d, torch.full_like(d, float("inf"))).argmin(1)]
        per = per_identity(recons, labels, eval_model, priv_x, priv_y)
        rows = [{k: per[k][i] for k in per} for i in range(len(per["identity"]))]
        extra: dict[str, Any] = {"identity_spread": summarize(per)}
        if "frechet" in summary:
            extra["frechet_note"] = FRECHET_NOTE + (" Reduced by PCA before the distance (fewer samples than "
                                                    "feature dimensions)." if summary["frechet_reduced"] else "")
        exposure = ddcs(recons, labels, eval_model, priv_x, priv_y, top=10)
        extra["ddcs_mean"] = exposure["mean"]
        extra["ddcs_covered_share"] = exposure["covered_share"]
        extra["ddcs_formula"] = exposure["formula"]
        train_pos = torch.isin(split.train_labels, classes).nonzero().flatten()  # priv_x row -> train-set row
        extra["ddcs_top"] = [{"sample": int(train_pos[i]), "dataset_index": int(split.train_index[train_pos[i]]),
                              "identity": int(priv_y[i]), "ddcs": float(exposure["scores"][i]),
                              "nearest_recon": int(r), "_row": int(i)}
                             for i, r in zip(exposure["ranking"].tolist(), exposure["ranking_recon"].tolist())]
        extra["notes"] = [extra.pop("frechet_note")] if "frechet_note" in extra else []
        n_per_seed = len(recons) // max(1, len(per_seed))
        return cls(attack=attack, settings=settings, classes=classes.tolist(), summary=summary, per_seed=per_seed,
                   spread=_mean_std(per_seed), per_identity=rows, extra=extra, seconds=seconds,
                   resolution=1.0 / max(1, n_per_seed), images=recons, labels=labels, nearest=nearest,
                   exposed=priv[[r["_row"] for r in extra["ddcs_top"]]] if extra["ddcs_top"] else None,
                   context={"num_private": int(split.num_private)})

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "attack", "settings", "classes", "summary", "per_seed", "per_identity", "extra", "seconds",
            "resolution", "context")}
        d["extra"] = {**self.extra, "ddcs_top": [{k: v for k, v in r.items() if not k.startswith("_")}
                                                 for r in self.extra.get("ddcs_top", [])]}
        d["spread"] = {k: {"mean": m, "std": s} for k, (m, s) in self.spread.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def markdown_row(self, label: str | None = None) -> str:
        """One table row: mean ± std over attack seeds where there are several."""
        cells = [label or self.attack]
        for key, _, kind in COLUMNS:
            if key in self.spread and len(self.per_seed) > 1:
                m, s = self.spread[key]
                cells.append(f"{_fmt(m, kind)} ± {_fmt(s, kind).rstrip('%')}" + ("%" if kind == "pct" else ""))
            else:
                cells.append(_fmt(self.summary.get(key, self.extra.get(key, float("nan"))), kind))
        cells.append(f"{sum(self.seconds):.1f}")
        return "| " + " | ".join(cells) + " |"

    @staticmethod
    def markdown_header(first: str = "attack") -> str:
        names = [first] + [c[1] for c in COLUMNS] + ["seconds"]
        return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)

    def to_markdown(self) -> str:
        """The report as Markdown: context, the table row, per-identity top-1, notes."""
        lines = [f"# Attack report: {self.attack}", ""]
        for k, v in self.context.items():
            lines.append(f"- {k}: {v}")
        chance = 1.0 / max(1, int(self.context.get("num_private", 0)) or 1)
        lines += [f"- identities attacked: {len(self.classes)}; reconstructions: {int(self.summary['n'])} "
                  f"over {len(self.per_seed)} attack seed(s); one reconstruction = {100 * self.resolution:.1f} "
                  f"points of top-1 within a seed; chance top-1 = {100 * chance:.1f}%",
                  f"- public mean face PSNR to the same private images: "
                  f"{self.summary.get('psnr_mean_face', float('nan')):.2f} dB (what blur alone scores)", "",
                  self.markdown_header(), self.markdown_row(), ""]
        for note in self.extra.get("notes", []):
            lines.append(f"> {note}")
        b = self.extra.get("budget", {})
        if "gan_steps_done" in b:
            lines.append(f"> GAN prior: {b['gan_steps_done']} of {b['gan_steps']} generator steps in "
                         f"{b['gan_seconds']:.0f} s" + (f" (stopped by the {b['gan_max_seconds']:.0f} s time cap: on a "
                                                        "busier or slower machine it trains fewer steps)"
                                                        if b["gan_time_capped"] else "")
                         + (", read from the cache" if b.get("gan_from_cache") else "") + ".")
        if self.per_identity:
            sp = self.extra.get("identity_spread", {})
            lines += ["", f"Per identity (mean ± std over identities: top-1 {_fmt(sp.get('top1_mean'), 'pct')} ± "
                          f"{_fmt(sp.get('top1_std'), 'pct')}):", "",
                      "| identity | top-1 | top-5 | NN feature id | NN pixel id | KNN dist | PSNR | SSIM |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in self.per_identity:
                lines.append(f"| {int(r['identity'])} | {_fmt(r['top1'], 'pct')} | {_fmt(r['top5'], 'pct')} | "
                             f"{_fmt(r['nn_feature_acc'], 'pct')} | {_fmt(r['nn_pixel_acc'], 'pct')} | "
                             f"{r['knn_dist']:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
        if self.extra.get("ddcs_top"):
            lines += ["", f"Most exposed private training samples (DDCS, mean {self.extra['ddcs_mean']:.3f}, "
                          f"{_fmt(self.extra['ddcs_covered_share'], 'pct')} of samples reached; "
                          f"{self.extra.get('ddcs_formula', '')}):", "",
                      "| rank | private train sample | dataset index | identity | DDCS |", "|---|---|---|---|---|"]
            for i, r in enumerate(self.extra["ddcs_top"], 1):
                lines.append(f"| {i} | {r['sample']} | {r['dataset_index']} | {r['identity']} | {r['ddcs']:.3f} |")
            lines += ["", "`exposed.png`: each exposed sample beside its nearest reconstruction."]
        return "\n".join(lines) + "\n"

    def grid(self, per_identity: int = 1, max_identities: int = 20) -> torch.Tensor:
        """Pairs (reconstruction, nearest private image of its identity), one pair per cell."""
        if self.images is None or self.labels is None or self.nearest is None:
            raise ValueError("this report holds no images")
        cells = []
        for c in self.classes[:max_identities]:
            idx = (self.labels == c).nonzero().flatten()[:per_identity]
            for i in idx.tolist():
                cells += [self.images[i], self.nearest[i]]
        return make_grid(torch.stack(cells), nrow=min(10, len(cells)), padding=2, pad_value=1.0)

    def exposure_grid(self) -> torch.Tensor | None:
        """The most exposed private samples (DDCS ranking), each beside its nearest reconstruction."""
        top = self.extra.get("ddcs_top", [])
        if self.exposed is None or self.images is None or not top:
            return None
        cells = []
        for x, r in zip(self.exposed, top):
            cells += [x, self.images[r["nearest_recon"]]]
        return make_grid(torch.stack(cells), nrow=min(10, len(cells)), padding=2, pad_value=1.0)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.json``, ``report.md``, ``reconstructions.png``, ``exposed.png`` and the
        reconstructions themselves (``reconstructions.safetensors``: uint8 ``images``, ``labels``,
        ``nearest``) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "grid": out / "reconstructions.png"}
        paths["json"].write_text(self.to_json())
        paths["markdown"].write_text(self.to_markdown())
        save_image(self.grid(), paths["grid"])  # grid() has already required images, labels and nearest
        paths["tensors"] = out / "reconstructions.safetensors"
        save_file({"images": _to_uint8(self.images), "labels": self.labels.long().contiguous(),
                   "nearest": _to_uint8(self.nearest)}, str(paths["tensors"]))
        exposed = self.exposure_grid()
        if exposed is not None:
            paths["exposed"] = out / "exposed.png"
            save_image(exposed, paths["exposed"])
        return paths
