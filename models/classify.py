"""Classification architectures from torchvision, rebuilt from a JSON-able dict, and fine-tuning.

`build_model(architecture)` is the only way a classify net is made: the training job, the
export stage and the explain service all rebuild from the dict stored in the bundle manifest
plus safetensors weights, so nothing is ever unpickled. The stems are adapted for small images
(3x3 stride 1, pooling optional); the head is sized for the label set.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from shared.bundle import Bundle, write_manifest
from shared.media import ImageSpec

ARCHITECTURES = ("resnet18", "densenet")
TORCH_VARIANT = "torch"
WEIGHTS_FILE = "weights.safetensors"

_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18": {
        "in_channels": 3,
        "stem_kernel_size": 3,
        "stem_stride": 1,
        "maxpool": True,
        "zero_init_residual": False,
    },
    "densenet": {
        "in_channels": 3,
        "growth_rate": 12,
        "block_config": [6, 6, 6],
        "num_init_features": 24,
        "bn_size": 4,
        "compression": 0.5,
        "drop_rate": 0.0,
        "stem_kernel_size": 3,
        "stem_stride": 1,
        "pool0": False,
    },
}

# Settings added after bundles were first registered, with the value those bundles were built
# with, so an older manifest still rebuilds exactly its network.
_ADDED_LATER: dict[str, dict[str, Any]] = {"densenet": {"compression": 0.5}}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# torchvision's ImageNet DenseNets, as (growth_rate, block_config, num_init_features).
_DENSENET_BUILDERS = {
    "densenet121": (32, [6, 12, 24, 16], 64),
    "densenet161": (48, [6, 12, 36, 24], 96),
    "densenet169": (32, [6, 12, 32, 32], 64),
    "densenet201": (32, [6, 12, 48, 32], 64),
}
# Old torchvision DenseNet checkpoints name layers `norm.1`; the modules are now `norm1`.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def architecture_config(name: str, num_classes: int, **overrides: Any) -> dict[str, Any]:
    """The full dict `build_model` needs: arch name, num_classes and every constructor kwarg."""
    if name not in _DEFAULTS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    unknown = set(overrides) - set(_DEFAULTS[name])
    if unknown:
        raise ValueError(
            f"{name} has no setting(s) {sorted(unknown)}; known: {sorted(_DEFAULTS[name])}"
        )
    config = {"name": name, "num_classes": int(num_classes), **_DEFAULTS[name], **overrides}
    if "block_config" in config:
        config["block_config"] = [int(n) for n in config["block_config"]]
        if not config["block_config"] or min(config["block_config"]) < 1:
            raise ValueError(f"block_config needs at least one block of >= 1 layer, got {config}")
    if "compression" in config and not 0.0 < float(config["compression"]) <= 1.0:
        raise ValueError(f"compression must be in (0, 1], got {config['compression']}")
    return config


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """A freshly initialized net from its architecture dict (as stored in the manifest)."""
    config = {**_ADDED_LATER.get(architecture.get("name"), {}), **architecture}
    name = config.pop("name", None)
    num_classes = config.pop("num_classes", None)
    if name not in _DEFAULTS or num_classes is None:
        raise ValueError(
            f"architecture {architecture!r} needs 'name' in {ARCHITECTURES} and 'num_classes'"
        )
    if set(config) != set(_DEFAULTS[name]):
        raise ValueError(
            f"{name} architecture needs exactly {sorted(_DEFAULTS[name])}, got {sorted(config)}"
        )
    if name == "resnet18":
        return _resnet18(int(num_classes), **config)
    return _densenet(int(num_classes), **config)


def _stem_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet18(
    num_classes: int,
    *,
    in_channels: int,
    stem_kernel_size: int,
    stem_stride: int,
    maxpool: bool,
    zero_init_residual: bool,
) -> nn.Module:
    model = torchvision.models.resnet18(
        num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    model.conv1 = _stem_conv(in_channels, 64, stem_kernel_size, stem_stride)
    if not maxpool:
        model.maxpool = nn.Identity()
    return model


def _densenet(
    num_classes: int,
    *,
    in_channels: int,
    growth_rate: int,
    block_config: list[int],
    num_init_features: int,
    bn_size: int,
    compression: float,
    drop_rate: float,
    stem_kernel_size: int,
    stem_stride: int,
    pool0: bool,
) -> nn.Module:
    """A DenseNet-BC whose transitions keep `compression` of their input channels.

    torchvision's DenseNet fixes the transition compression at 0.5, so the features are rebuilt
    here from its dense blocks and transitions, with the same module names: torchvision
    weights, the pruner and the explain layers see the same network, and compression 0.5 gives
    exactly torchvision's state dict.
    """
    stem = _stem_conv(in_channels, num_init_features, stem_kernel_size, stem_stride)
    features = nn.Sequential(
        OrderedDict(
            conv0=stem,
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool0 else nn.Identity(),
        )
    )
    channels = num_init_features
    for i, layers in enumerate(block_config, start=1):
        block = _DenseBlock(layers, channels, bn_size, growth_rate, drop_rate)
        features.add_module(f"denseblock{i}", block)
        channels += layers * growth_rate
        if i < len(block_config):
            kept = max(1, int(channels * compression))
            features.add_module(f"transition{i}", _Transition(channels, kept))
            channels = kept
    features.add_module("norm5", nn.BatchNorm2d(channels))
    model = torchvision.models.DenseNet(
        growth_rate=growth_rate, block_config=(1,), num_init_features=1, num_classes=num_classes
    )
    model.features, model.classifier = features, nn.Linear(channels, num_classes)
    for module in model.modules():  # torchvision's DenseNet init; the stem keeps its own
        if isinstance(module, nn.Conv2d) and module is not stem:
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.Linear):
            nn.init.constant_(module.bias, 0)
    return model


def head_name(model: nn.Module) -> str:
    """Attribute name of the classification head (replaced for each label set)."""
    if isinstance(model, torchvision.models.ResNet):
        return "fc"
    if isinstance(model, torchvision.models.DenseNet):
        return "classifier"
    raise TypeError(f"not a classify architecture: {type(model).__name__}")


def backbone_and_head_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters), for optimizer groups and freezing."""
    prefix = head_name(model) + "."
    backbone, head = [], []
    for name, param in model.named_parameters():
        (head if name.startswith(prefix) else backbone).append(param)
    return backbone, head


def block_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Backbone block groups, shallowest first; gradual unfreezing thaws them from the end."""
    if isinstance(model, torchvision.models.ResNet):
        return [("stem", [model.conv1, model.bn1])] + [
            (f"layer{i}", [getattr(model, f"layer{i}")]) for i in range(1, 5)
        ]
    features = model.features
    blocks = sorted(n for n, _ in features.named_children() if n.startswith("denseblock"))
    groups: list[tuple[str, list[nn.Module]]] = [("stem", [features.conv0, features.norm0])]
    for i, block in enumerate(blocks, start=1):
        modules = [getattr(features, block)]
        extra = f"transition{i}" if i < len(blocks) else "norm5"
        modules.append(getattr(features, extra))
        groups.append((f"block{i}", modules))
    return groups


def trainable_group_count(
    epoch: int, num_groups: int, *, freeze_backbone: bool, unfreeze_every: int | None
) -> int:
    """How many of the deepest block groups train at `epoch` (0-based).

    No freezing: all. `freeze_backbone` alone: none. `unfreeze_every N`: none at first, then one
    more group (deepest first) every N epochs.
    """
    if unfreeze_every:
        return min(num_groups, epoch // unfreeze_every)
    return 0 if freeze_backbone else num_groups


def set_trainable_groups(model: nn.Module, count: int) -> list[str]:
    """Train the head and the `count` deepest groups; freeze the rest. Returns trainable groups."""
    groups = block_groups(model)
    trainable = {name for name, _ in groups[len(groups) - count :]} if count > 0 else set()
    for name, modules in groups:
        for module in modules:
            module.requires_grad_(name in trainable)
    getattr(model, head_name(model)).requires_grad_(True)
    return [name for name, _ in groups if name in trainable]


def train_mode(model: nn.Module) -> None:
    """`model.train()`, but frozen BatchNorm layers keep their running statistics."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BATCH_NORMS) and params and not any(p.requires_grad for p in params):
            module.eval()


def param_groups(
    model: nn.Module, *, lr: float, backbone_lr_scale: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: the head at `lr`, the backbone at `lr * backbone_lr_scale`."""
    backbone, head = backbone_and_head_params(model)
    return [
        {
            "params": backbone,
            "lr": lr * backbone_lr_scale,
            "weight_decay": weight_decay,
            "name": "backbone",
        },
        {"params": head, "lr": lr, "weight_decay": weight_decay, "name": "head"},
    ]


def copy_backbone(model: nn.Module, source: dict[str, torch.Tensor]) -> list[str]:
    """Copy every non-head tensor of `source` into `model`; shapes must match. Returns the keys."""
    prefix = head_name(model) + "."
    target = model.state_dict()
    keys = [k for k in target if not k.startswith(prefix)]
    missing = [k for k in keys if k not in source]
    mismatched = [k for k in keys if k in source and source[k].shape != target[k].shape]
    if missing or mismatched:
        raise ValueError(
            f"source weights do not fit this backbone: missing {missing[:5]}, "
            f"shape mismatch {mismatched[:5]}; use the same architecture and input channels"
        )
    with torch.no_grad():
        for key in keys:
            target[key].copy_(source[key])
    return keys


def weights_builder(weights_name: str) -> tuple[Any, str]:
    """(weights enum member, its torchvision builder) for a name like `ResNet18_Weights.DEFAULT`."""
    weights = torchvision.models.get_weight(weights_name)
    for builder in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(builder) is type(weights):
            return weights, builder
    raise ValueError(f"no torchvision classification model uses {weights_name}")


def pretrained_architecture(
    weights_name: str, num_classes: int, in_channels: int = 3
) -> dict[str, Any]:
    """Our architecture dict matching the torchvision net those weights were trained for."""
    _, builder = weights_builder(weights_name)
    if builder == "resnet18":
        return architecture_config("resnet18", num_classes, in_channels=in_channels)
    if builder in _DENSENET_BUILDERS:
        growth, blocks, init = _DENSENET_BUILDERS[builder]
        return architecture_config(
            "densenet",
            num_classes,
            in_channels=in_channels,
            growth_rate=growth,
            block_config=blocks,
            num_init_features=init,
        )
    supported = ", ".join(["resnet18", *_DENSENET_BUILDERS])
    raise ValueError(f"{weights_name} is for {builder}; fine-tuning supports {supported}")


def load_pretrained(model: nn.Module, weights_name: str) -> None:
    """Initialize `model`'s backbone from torchvision ImageNet weights (downloaded or cached).

    The weights load into torchvision's own builder (strictly, `weights_only`), then every
    tensor but the stem conv and head is copied; the stem conv starts from the centre of the
    pretrained kernel, averaged over colour channels when the input channels differ.
    """
    weights, builder = weights_builder(weights_name)
    state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    reference = torchvision.models.get_model(builder, num_classes=len(weights.meta["categories"]))
    reference.load_state_dict(state)
    source = reference.state_dict()
    stem_key = "conv1.weight" if builder == "resnet18" else "features.conv0.weight"
    target_stem = model.state_dict()[stem_key]
    source[stem_key] = _center_kernel(source[stem_key], target_stem.shape)
    copy_backbone(model, source)


def _center_kernel(kernel: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out_c, in_c, kh, kw = shape
    top, left = (kernel.shape[2] - kh) // 2, (kernel.shape[3] - kw) // 2
    center = kernel[:out_c, :, top : top + kh, left : left + kw]
    if center.shape[1] != in_c:
        center = center.mean(dim=1, keepdim=True).repeat(1, in_c, 1, 1)
    return center.contiguous()


def write_torch_bundle(
    directory: Path,
    model: nn.Module,
    *,
    name: str,
    architecture: dict[str, Any],
    spec: ImageSpec,
    classes: list[int],
    labels: list[str],
    source: dict[str, str],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Write a `<task>-torch` bundle: weights.safetensors and the manifest that rebuilds the net."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    shape = [-1, spec.channels, spec.height, spec.width]
    return write_manifest(
        directory,
        {
            "task": "classify",
            "name": name,
            "default_variant": TORCH_VARIANT,
            "variants": {TORCH_VARIANT: {"file": WEIGHTS_FILE, "format": "safetensors"}},
            "architecture": architecture,
            "torch_weights": WEIGHTS_FILE,
            "preprocessing": {**spec.to_manifest(), "classes": list(classes)},
            "labels": list(labels),
            "inputs": [{"name": "input", "dtype": "float32", "shape": shape}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(labels)]}],
            "source": source,
            "metrics": metrics,
        },
    )


def bundle_weights(bundle: Bundle) -> dict[str, torch.Tensor]:
    """The safetensors state dict a classify bundle carries (`torch_weights`).

    Both the registered `classify-torch` bundle and the served `classify` bundle carry it, so
    torch-backed services (explain) rebuild exactly the network the ONNX variants came from.
    """
    manifest = bundle.manifest
    if manifest.get("task") != "classify" or not {"architecture", "torch_weights"} <= set(manifest):
        raise ValueError(
            f"{bundle.name} carries no classify torch weights (architecture, torch_weights)"
        )
    return load_file(str(bundle.file(manifest["torch_weights"])))


def load_torch_bundle(bundle: Bundle) -> nn.Module:
    """Rebuild the net from the manifest's architecture and its safetensors; in eval mode."""
    model = build_model(bundle.manifest["architecture"])
    model.load_state_dict(bundle_weights(bundle))
    return model.eval()
