"""Where `training.text` trains: the device choice, autocast and when gradients need scaling.

`--device auto` takes CUDA when PyTorch sees a GPU and the CPU otherwise; the model, batches and
evaluation live there and the weights are saved from CPU copies. `--amp` autocasts to bf16 on
the CPU and fp16 on CUDA, where a GradScaler keeps small fp16 gradients from flushing to zero.
"""

from __future__ import annotations

from typing import Any

import torch


class DeviceError(RuntimeError):
    """The requested device does not exist here (e.g. `--device cuda` without CUDA)."""


def pick_device(choice: str, cuda_available: bool | None = None) -> torch.device:
    """`auto` → CUDA when available, else the CPU; `cuda` without CUDA is a DeviceError."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if choice == "cuda" and not available:
        raise DeviceError("--device cuda: no CUDA device is available to PyTorch here")
    if choice not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device {choice!r}: expected auto, cpu or cuda")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and available) else "cpu")


def use_grad_scaler(amp: bool, device: str) -> bool:
    """Loss scaling only for fp16 autocast, i.e. --amp on CUDA: fp16's narrow range flushes
    small gradients to zero; bf16 (the CPU's autocast) has fp32's range and needs none."""
    return amp and device == "cuda"


def autocast(enabled: bool, device: str) -> Any:
    """bf16 autocast on CPU, fp16 on CUDA (where the model is); a no-op when disabled."""
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    return torch.autocast(device, dtype=dtype, enabled=enabled)
