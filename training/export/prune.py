"""Structured channel pruning (torch-pruning) and unstructured magnitude pruning (torch.nn.utils).

Structured pruning removes whole channels, so the dense kernels really get smaller. torch-pruning
traces the network into a dependency graph first, so channels tied together by residual adds
(ResNet) or concatenations (DenseNet) are removed together and the net stays consistent.
Unstructured pruning zeroes single weights: the tensors keep their shapes, and dense CPU kernels
run exactly as many multiply-adds as before; the study exists to show that with real numbers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from models.classify import head_name


def prune_channels(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer group (the head's outputs stay).

    Channels are ranked by the L2 magnitude of their group's weights; deterministic for given
    weights, so a resumed recovery rebuilds the same shapes before loading its checkpoint.
    """
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"the channel pruning ratio must be in (0, 1), got {ratio}")
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[getattr(model, head_name(model))],
    )
    pruner.step()
    return model


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv and linear layer: what the magnitude study prunes."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def prune_magnitude(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude weights globally until `sparsity` of them are zero.

    Masks stay attached (`weight_orig` * `weight_mask`) so fine-tuning keeps the zeros; call
    `remove_masks` before the next, higher step: weights already zero are the smallest, so
    the next step keeps them and adds the next-smallest.
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    targets = prunable_weights(model)
    if any(prune.is_pruned(m) for m, _ in targets):
        raise ValueError("the model still carries pruning masks; call remove_masks first")
    total = sum(getattr(m, n).numel() for m, n in targets)
    prune.global_unstructured(
        targets, pruning_method=prune.L1Unstructured, amount=round(sparsity * total)
    )


def remove_masks(model: nn.Module) -> None:
    """Make pruning permanent (`prune.remove`): plain `weight` tensors with the zeros baked in."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all conv and linear layers."""
    targets = prunable_weights(model)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    return zeros / sum(getattr(m, n).numel() for m, n in targets)
