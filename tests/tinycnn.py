"""A tiny conv net for the export-stage unit tests: conv-BN-ReLU, conv-ReLU, pool, linear.

Small enough to export, prune and quantize in milliseconds, yet with the layer kinds the
classify architectures have (a BatchNorm to fold, a bias-free conv, a linear head)."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(width: int) -> nn.Module:
    """`width` channels in the first conv, twice that in the second; 10 outputs; eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    ).eval()
