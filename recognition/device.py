"""Where tensors run and how fast: ``--device`` resolved to a ``torch.device`` in one place
(``resolve_device``), and the speed options a GPU user expects (mixed precision, channels-last,
``torch.compile``) in ``DeviceConfig``. Every option defaults to what the CPU path always did.

Random draws stay on the CPU: veil's seeded ``torch.Generator`` objects are CPU generators (a
generator draws only on its own device), so masks, permutations and crops are drawn there and the
small results moved to the images' device. A seeded run is then the same on CPU as before, and
reproducible on each device; the bulk of the work (pixels, models) runs on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def device_problem(name: str) -> tuple[torch.device | None, str | None]:
    """``name`` as a device, or why it cannot be used here (unknown, or absent on this machine)."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), None
        return (torch.device("mps"), None) if _mps_available() else (torch.device("cpu"), None)
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        return None, f"unknown device; give one of {DEVICE_CHOICES}"
    if dev.type == "cpu":
        return torch.device("cpu"), None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None, "CUDA is not available on this machine"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return None, f"this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
        return dev, None
    if dev.type == "mps":
        return (torch.device("mps"), None) if _mps_available() else (None, "MPS is not available on this machine")
    return None, f"unknown device; give one of {DEVICE_CHOICES}"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a
    ``torch.device``; an unknown or absent device raises a one-line ``ValueError`` naming it."""
    if isinstance(name, torch.device):
        name = str(name)
    dev, problem = device_problem(name)
    if dev is None:
        raise ValueError(f"device {name!r}: {problem}")
    return dev


@dataclass(frozen=True)
class DeviceConfig:
    """Where and how fast a model trains or attacks (``--device``, ``--amp``, ``--channels-last``,
    ``--compile``); every default keeps the CPU path as it was.

    Args:
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: mixed precision of the FR forward passes: ``none``, ``bf16`` or ``fp16`` (autocast; a
            gradient scaler for ``fp16`` on CUDA).
        channels_last: the convolutional backbones and their inputs in channels-last memory format.
        compile: ``torch.compile`` the FR model (its first steps are slow while it compiles).
    """

    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")

    def resolve(self) -> torch.device:
        """The ``torch.device`` this config names (``resolve_device``)."""
        return resolve_device(self.device)

    def params(self) -> dict[str, Any]:
        """What a run logs: the resolved device and the speed options."""
        return {"device": str(self.resolve()), "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile}


def as_device_config(device: str | torch.device | DeviceConfig) -> DeviceConfig:
    """``device`` as a ``DeviceConfig``: a device name gets the default speed options."""
    return device if isinstance(device, DeviceConfig) else DeviceConfig(device=str(device))


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU for one without any): where an
    attack on it runs."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory, copied without
    blocking the host (a no-op where ``x`` is already there)."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to ``amp``'s dtype on ``device``'s type (a no-op for ``none``)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A gradient scaler where fp16 needs one (CUDA); ``None`` otherwise (bf16 keeps float32's range)."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None


__all__ = ["AMP_DTYPES", "DEVICE_CHOICES", "DeviceConfig", "autocast", "device_problem", "grad_scaler",
           "module_device", "resolve_device", "synchronize", "to_device"]
