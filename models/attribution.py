"""Attribution methods on one classify network: Captum's, and the original CAM.

`Explainer.attribute` returns raw attributions at the model's input resolution: (N, C, H, W)
for pixel methods and (N, 1, H, W) for Grad-CAM and CAM (upsampled bilinearly from their
layer). `to_map` reduces one of them to an (H, W) map normalized to max |value| = 1.

CAM (Zhou et al. 2016) needs no gradient: in a network that global-average-pools its last
feature map A (K, h, w) into a linear head, the target's logit is bias + mean over the map of
sum_k w_k A_k, so that weighted sum is the class's own evidence map at the last block's
resolution. Grad-CAM generalizes it to any layer.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from models.methods import GRADIENT_METHODS, MethodParams
from shared.media import ImageSpec

# Captum warns on every guided-backprop call that it hooks ReLUs; expected, not news. The
# warning filters are process-global, so guided calls that silence it take a lock.
_GUIDED_WARNING = "Setting backward hooks on ReLU activations"
_GUIDED = ("guided_backprop", "guided_grad_cam")
_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _quiet_guided(method: str, params: MethodParams) -> Iterator[None]:
    guided = method in _GUIDED or (method == "smoothgrad" and params.base in _GUIDED)
    if not guided:
        yield
        return
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GUIDED_WARNING, category=UserWarning)
        yield


def black_input(spec: ImageSpec) -> torch.Tensor:
    """The normalized input of an all-black image, (1, C, H, W): what deletion fills in."""
    values = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    column = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    return column.expand(1, spec.channels, spec.height, spec.width).contiguous()


def feature_maps(model: nn.Module, spec: ImageSpec) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every named module that outputs a feature map, from one forward pass.

    Modules called more than once per forward (a ResNet block's shared ReLU) are left out:
    a layer hook on them would see several outputs.
    """
    shapes: dict[str, tuple[int, int, int]] = {}
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_: nn.Module, __: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                shapes[name] = (int(out.shape[1]), int(out.shape[2]), int(out.shape[3]))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(black_input(spec))
    finally:
        for handle in handles:
            handle.remove()
    return {name: shape for name, shape in shapes.items() if calls[name] == 1}


def block_layers(model: nn.Module, maps: dict[str, tuple[int, int, int]]) -> list[str]:
    """The network's block groups by name, shallowest first (ResNet `layerN`, DenseNet blocks)."""
    from models.classify import block_groups

    names = {id(module): name for name, module in model.named_modules()}
    try:
        groups = block_groups(model)
    except (TypeError, AttributeError):  # not a classify architecture: every feature map
        return list(maps)
    ordered = [names[id(m)] for _, modules in groups for m in modules if id(m) in names]
    return [name for name in ordered if name in maps]


def cam_candidates(
    model: nn.Module, maps: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[int, int]]:
    """The conv blocks Grad-CAM's default layer is chosen from, name -> map (h, w), shallowest
    first (`models.fidelity.best_layer` measures them)."""
    blocks = [n for n in block_layers(model, maps) if "block" in n or "layer" in n] or list(maps)
    return {name: (maps[name][1], maps[name][2]) for name in blocks}


def cam_source(model: nn.Module) -> tuple[str, bool] | None:
    """(module whose map the global-average-pooled head reads, whether a ReLU follows it), or
    None for a network that is not one of the classify architectures (no CAM)."""
    from torchvision.models import DenseNet, ResNet

    if isinstance(model, ResNet):
        return "layer4", False
    if isinstance(model, DenseNet):  # forward: relu(features) -> GAP -> classifier
        return "features", True
    return None


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first Conv2d of the network (the one whose filters look at pixels)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError("the network has no Conv2d layer")


def occlusion_windows(height: int, width: int, window: int, stride: int) -> int:
    """How many occlusion windows (one forward pass each) Captum slides over the input."""
    rows = math.ceil(max(0, height - window) / stride) + 1
    cols = math.ceil(max(0, width - window) / stride) + 1
    return rows * cols


def evaluations(method: str, params: MethodParams, spec: ImageSpec) -> int:
    """Model passes (forward, or forward + backward) one explanation of one image costs."""
    if method == "smoothgrad":
        return params.samples * evaluations(params.base, params, spec)
    if method == "integrated_gradients":
        return params.steps
    if method == "occlusion":
        return occlusion_windows(spec.height, spec.width, params.window, params.stride)
    if method == "guided_grad_cam":
        return 2
    if method == "random":
        return 0
    return 1  # saliency, guided backprop, Grad-CAM, CAM: one pass


class Explainer:
    """One network (eval mode, frozen weights) and every Captum method over it."""

    def __init__(self, model: nn.Module, spec: ImageSpec, layers: dict[str, nn.Module]) -> None:
        self.model = model
        self.spec = spec
        self.layers = layers
        self.black = black_input(spec)
        self.cam = cam_source(model)

    @classmethod
    def build(cls, model: nn.Module, spec: ImageSpec) -> Explainer:
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)  # gradients w.r.t. the input only
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # Captum's ReLU hooks cannot see in-place ops
        return cls(model, spec, dict(model.named_modules()))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the logits, (N, classes)."""
        return torch.softmax(self.model(x), dim=1)

    def baseline(self, x: torch.Tensor, params: MethodParams) -> torch.Tensor:
        """Integrated Gradients' starting point: black, a blurred copy of x, or uniform noise."""
        if params.baseline == "black":
            return self.black.expand_as(x).clone()
        if params.baseline == "blurred":
            from torchvision.transforms.v2.functional import gaussian_blur

            # odd kernel of ~3 sigma; reflect padding must stay inside the image
            size = min(2 * math.ceil(3 * params.blur_sigma) + 1, 2 * min(x.shape[-2:]) - 1)
            return gaussian_blur(x.detach(), [size, size], [params.blur_sigma] * 2)
        generator = torch.Generator().manual_seed(params.seed)
        pixels = torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator)
        mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
        return ((pixels - mean) / std).expand_as(x).contiguous()

    def attribute(
        self, x: torch.Tensor, target: int | torch.Tensor, method: str, params: MethodParams
    ) -> torch.Tensor:
        """Raw attributions of `x` (N, C, H, W) for `target`, at the input resolution."""
        if method == "cam":
            return self._upsample(self.class_activation(x, target))
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), _quiet_guided(method, params):
            if method == "smoothgrad":
                return self._smoothgrad(x, target, params)
            attribution, kwargs = self._method(method, x, params)
            out = attribution.attribute(x, target=target, **kwargs)
        return self._upsample(out.detach())

    @torch.no_grad()
    def class_activation(self, x: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """CAM at its layer's resolution, (N, 1, h, w): sum_k w[target, k] * A_k."""
        if self.cam is None:
            raise ValueError(f"CAM needs a GAP + linear head; {type(self.model).__name__} has none")
        from models.classify import head_name

        name, relu = self.cam
        captured: list[torch.Tensor] = []
        handle = self.layers[name].register_forward_hook(lambda _, __, out: captured.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        features = torch.relu(captured[0]) if relu else captured[0]
        weight = getattr(self.model, head_name(self.model)).weight  # (classes, K)
        rows = weight[torch.as_tensor(target).expand(len(x))]  # (N, K)
        return torch.einsum("nk,nkhw->nhw", rows, features)[:, None]

    def _method(self, method: str, x: torch.Tensor, params: MethodParams) -> tuple[Any, dict]:
        model = self.model
        if method == "saliency":
            return Saliency(model), {}
        if method == "integrated_gradients":
            kwargs = {
                "baselines": self.baseline(x, params),
                "n_steps": params.steps,
                "internal_batch_size": min(params.steps, 32) * x.shape[0],
            }
            return IntegratedGradients(model), kwargs
        if method == "grad_cam":
            layer = self.layers[params.layer or ""]
            return LayerGradCam(model, layer), {"relu_attributions": True}
        if method == "guided_backprop":
            return GuidedBackprop(model), {}
        if method == "guided_grad_cam":
            layer = self.layers[params.layer or ""]
            return GuidedGradCam(model, layer), {"interpolate_mode": "bilinear"}
        if method == "occlusion":
            channels = x.shape[1]
            kwargs = {
                "sliding_window_shapes": (channels, params.window, params.window),
                "strides": (channels, params.stride, params.stride),
                "baselines": self.black.expand_as(x).contiguous(),
                "perturbations_per_eval": 32,
            }
            return Occlusion(model), kwargs
        raise ValueError(f"unknown attribution method {method!r}")

    def _smoothgrad(
        self, x: torch.Tensor, target: int | torch.Tensor, params: MethodParams
    ) -> torch.Tensor:
        if params.base not in GRADIENT_METHODS:
            raise ValueError(f"SmoothGrad needs a gradient method, not {params.base!r}")
        attribution, kwargs = self._method(params.base, x, params)
        # noise_std is a fraction of the pixel range; one pixel unit is 1/std normalized units
        stdev = params.noise_std / float(np.mean(self.spec.std))
        batch = 1 if params.base == "integrated_gradients" else min(params.samples, 16)
        out = NoiseTunnel(attribution).attribute(
            x,
            nt_type=params.nt_type,
            nt_samples=params.samples,
            nt_samples_batch_size=batch,
            stdevs=stdev,
            target=target,
            **kwargs,
        )
        return self._upsample(out.detach())

    def _upsample(self, attribution: torch.Tensor) -> torch.Tensor:
        """Layer attributions (Grad-CAM) to the input resolution, bilinearly."""
        size = (self.spec.height, self.spec.width)
        if tuple(attribution.shape[-2:]) == size:
            return attribution
        return LayerAttribution.interpolate(attribution, size, interpolate_mode="bilinear")


def to_map(attribution: torch.Tensor) -> np.ndarray:
    """One (1, C, H, W) attribution summed over channels, scaled to max |value| = 1."""
    plane = attribution.detach()[0].sum(dim=0).numpy().astype(np.float64)
    peak = float(np.max(np.abs(plane))) if plane.size else 0.0
    if not math.isfinite(peak) or peak == 0.0:
        return np.zeros_like(plane, dtype=np.float32)
    return (plane / peak).astype(np.float32)


def random_map(spec: ImageSpec, seed: int) -> np.ndarray:
    """A uniformly random attribution map: the baseline every method should beat."""
    return np.random.default_rng(seed).random((spec.height, spec.width)).astype(np.float32)
