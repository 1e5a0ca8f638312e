"""Classify nets: rebuilt from JSON, fine-tuned from torchvision weights, frozen by plan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision

from models.classify import (
    ARCHITECTURES,
    WEIGHTS_FILE,
    architecture_config,
    backbone_and_head_params,
    block_groups,
    build_model,
    copy_backbone,
    head_name,
    load_pretrained,
    load_torch_bundle,
    param_groups,
    pretrained_architecture,
    set_trainable_groups,
    train_mode,
    trainable_group_count,
    write_torch_bundle,
)
from shared.bundle import open_bundle
from shared.media import ImageSpec
from training.tracking import classification_metrics, flops_per_image, git_commit, parameter_count


def small(name: str, num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(architecture_config(name, num_classes))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_rebuilds_from_its_json_config(name: str) -> None:
    config = architecture_config(name, 5, in_channels=1)
    restored = json.loads(json.dumps(config))
    assert restored == config
    original, rebuilt = build_model(config).eval(), build_model(restored).eval()
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert original(x).shape == (2, 5)
        torch.testing.assert_close(rebuilt(x), original(x))


@pytest.mark.parametrize(("name", "size"), [("resnet18", 32), ("densenet", 32), ("densenet", 8)])
def test_forward_gives_one_logit_per_class(name: str, size: int) -> None:
    model = small(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, size, size)).shape == (3, 7)


def test_build_model_rejects_incomplete_or_unknown_settings() -> None:
    config = architecture_config("resnet18", 3)
    del config["maxpool"]
    with pytest.raises(ValueError, match="maxpool"):
        build_model(config)
    with pytest.raises(ValueError, match="growth_rate"):
        architecture_config("resnet18", 3, growth_rate=12)
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture_config("vgg11", 3)


def cache_torchvision_checkpoint(torch_home: Path, weights_name: str) -> dict[str, torch.Tensor]:
    """Put a standard torchvision net's state dict where torch hub caches `weights_name`'s file."""
    (weights,) = [torchvision.models.get_weight(weights_name)]
    builder = {"ResNet18_Weights": "resnet18", "DenseNet121_Weights": "densenet121"}[
        type(weights).__name__
    ]
    torch.manual_seed(1)
    state = torchvision.models.get_model(builder).state_dict()
    path = torch_home / "hub" / "checkpoints" / Path(urlparse(weights.url).path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize(
    ("weights_name", "stem"),
    [
        ("ResNet18_Weights.IMAGENET1K_V1", "conv1"),
        ("DenseNet121_Weights.IMAGENET1K_V1", "features.conv0"),
    ],
)
def test_torchvision_weights_load_from_the_hub_cache_and_adapt(
    weights_name: str, stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = cache_torchvision_checkpoint(tmp_path, weights_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = pretrained_architecture(weights_name, num_classes=4)
    assert config == json.loads(json.dumps(config))
    model = build_model(config)
    load_pretrained(model, weights_name)
    state, head = model.state_dict(), head_name(model) + "."
    for key, value in state.items():
        if key.startswith(head):
            assert value.shape[0] == 4
        elif key == f"{stem}.weight":
            torch.testing.assert_close(value, reference[key][:, :, 2:5, 2:5])  # 7x7 centre
        else:
            torch.testing.assert_close(value, reference[key], msg=key)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_pretrained_single_channel_stem_averages_the_colour_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = cache_torchvision_checkpoint(tmp_path, "ResNet18_Weights.IMAGENET1K_V1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(pretrained_architecture("ResNet18_Weights.IMAGENET1K_V1", 3, 1))
    load_pretrained(model, "ResNet18_Weights.IMAGENET1K_V1")
    expected = reference["conv1.weight"][:, :, 2:5, 2:5].mean(dim=1, keepdim=True)
    torch.testing.assert_close(model.state_dict()["conv1.weight"], expected)


def test_weights_for_an_unsupported_model_are_refused() -> None:
    with pytest.raises(ValueError, match="fine-tuning supports"):
        pretrained_architecture("ResNet50_Weights.IMAGENET1K_V2", 10)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_block_groups_and_head_partition_the_parameters(name: str) -> None:
    model = small(name)
    backbone, head = backbone_and_head_params(model)
    grouped = [p for _, modules in block_groups(model) for m in modules for p in m.parameters()]
    assert {id(p) for p in grouped} == {id(p) for p in backbone}
    assert len(grouped) == len(backbone)
    assert {id(p) for p in head} == {id(p) for p in getattr(model, head_name(model)).parameters()}
    assert not {id(p) for p in head} & {id(p) for p in backbone}


def test_unfreeze_schedule_thaws_one_group_every_n_epochs() -> None:
    counts = [
        trainable_group_count(epoch, 5, freeze_backbone=True, unfreeze_every=2)
        for epoch in range(12)
    ]
    assert counts == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert trainable_group_count(7, 5, freeze_backbone=True, unfreeze_every=None) == 0
    assert trainable_group_count(0, 5, freeze_backbone=False, unfreeze_every=None) == 5


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_freezing_sets_requires_grad_deepest_groups_first(name: str) -> None:
    model = small(name)
    groups = block_groups(model)

    def trainable() -> list[bool]:
        return [
            all(p.requires_grad for m in modules for p in m.parameters()) for _, modules in groups
        ]

    set_trainable_groups(model, 0)
    assert trainable() == [False] * len(groups)
    assert not any(any(p.requires_grad for m in mods for p in m.parameters()) for _, mods in groups)
    assert all(p.requires_grad for p in backbone_and_head_params(model)[1])
    thawed = set_trainable_groups(model, 2)
    assert thawed == [n for n, _ in groups[-2:]]
    assert trainable() == [False] * (len(groups) - 2) + [True, True]
    set_trainable_groups(model, len(groups))
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_backbone_is_unchanged_by_a_training_step() -> None:
    model = small("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_trainable_groups(model, 0)
    train_mode(model)
    optimizer = torch.optim.AdamW(
        param_groups(model, lr=0.1, backbone_lr_scale=1.0, weight_decay=0.1)
    )
    loss = model(torch.randn(8, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("fc."):
            assert not torch.equal(after[key], value), key
        else:  # weights and BatchNorm running statistics alike
            assert torch.equal(after[key], value), key


def test_unfrozen_batchnorm_still_tracks_statistics() -> None:
    model = small("resnet18")
    before = model.state_dict()["layer4.1.bn2.running_mean"].clone()
    set_trainable_groups(model, 1)
    train_mode(model)
    model(torch.randn(8, 3, 16, 16))
    assert not torch.equal(model.state_dict()["layer4.1.bn2.running_mean"], before)
    assert not model.bn1.training and model.layer4[1].bn2.training


def test_param_groups_give_the_backbone_a_scaled_learning_rate() -> None:
    model = small("densenet")
    optimizer = torch.optim.AdamW(
        param_groups(model, lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.01)
    )
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "head": pytest.approx(1e-3)}
    head = {id(p) for p in model.classifier.parameters()}
    by_name = {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert by_name["head"] == head
    assert len(by_name["backbone"]) + len(head) == len(list(model.parameters()))


def test_copy_backbone_copies_all_but_the_head_and_refuses_a_mismatch() -> None:
    source = small("resnet18", num_classes=5)
    torch.manual_seed(9)
    target = build_model(architecture_config("resnet18", 3))
    head_before = target.fc.weight.clone()
    copied = copy_backbone(target, source.state_dict())
    assert "conv1.weight" in copied and "layer4.1.bn2.running_var" in copied
    assert not any(key.startswith("fc.") for key in copied)
    for key in copied:
        assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    assert torch.equal(target.fc.weight, head_before)
    with pytest.raises(ValueError, match="do not fit"):
        copy_backbone(small("densenet"), source.state_dict())


def test_torch_bundle_verifies_and_rebuilds_the_same_net(tmp_path: Path) -> None:
    model = small("densenet", num_classes=3).eval()
    spec = ImageSpec(16, 16, 3, (0.5,) * 3, (0.5,) * 3)
    write_torch_bundle(
        tmp_path,
        model,
        name="digits",
        architecture=architecture_config("densenet", 3),
        spec=spec,
        classes=[1, 4, 7],
        labels=["1", "4", "7"],
        source={"run_id": "r", "git_commit": "c", "split_hash": "h"},
        metrics={},
    )
    bundle = open_bundle(tmp_path)
    assert bundle.variant_file("torch").name == WEIGHTS_FILE
    assert bundle.inputs[0].shape == [-1, 3, 16, 16] and bundle.outputs[0].shape == [-1, 3]
    assert ImageSpec.from_manifest(bundle.preprocessing) == spec
    assert bundle.preprocessing["classes"] == [1, 4, 7]
    rebuilt = load_torch_bundle(bundle)
    assert not rebuilt.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_flops_scale_with_input_area_and_parameters_are_counted() -> None:
    model = small("resnet18")
    assert parameter_count(model) == sum(p.numel() for p in model.parameters()) > 11_000_000
    at16, at32 = flops_per_image(model, (3, 16, 16)), flops_per_image(model, (3, 32, 32))
    assert at16 > 0
    assert at32 / at16 == pytest.approx(4, rel=0.1)
    assert model.training  # measuring does not leave the model in eval mode


def test_classification_metrics_per_class_and_macro() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    guess = np.array([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(truth, guess, ["a", "b", "c"], prefix="test")
    assert metrics["test_accuracy"] == pytest.approx(4 / 6)
    assert metrics["test_precision_b"] == pytest.approx(2 / 3)
    assert metrics["test_recall_c"] == pytest.approx(1 / 2)
    assert metrics["test_f1_a"] == pytest.approx(0.5)
    f1s = [metrics[f"test_f1_{n}"] for n in "abc"]
    assert metrics["test_macro_f1"] == pytest.approx(sum(f1s) / 3)


def test_git_commit_is_unknown_outside_a_repository(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) == "unknown"  # a repository without commits


@pytest.mark.parametrize("compression", [0.25, 0.5, 1.0])
def test_densenet_transitions_keep_the_compression_share_of_channels(compression: float) -> None:
    config = architecture_config(
        "densenet",
        10,
        growth_rate=4,
        block_config=[2, 3, 2],
        num_init_features=8,
        compression=compression,
    )
    model = build_model(json.loads(json.dumps(config))).eval()
    channels = 8
    for index, layers in enumerate([2, 3], start=1):
        channels += layers * 4
        conv = getattr(model.features, f"transition{index}").conv
        assert (conv.in_channels, conv.out_channels) == (channels, int(channels * compression))
        channels = int(channels * compression)
    assert model.classifier.in_features == channels + 2 * 4
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_densenet_at_half_compression_is_torchvisions_densenet() -> None:
    """With torchvision's layout, its weights load strictly and give its logits exactly."""
    config = architecture_config(
        "densenet",
        10,
        growth_rate=8,
        block_config=[2, 2, 2],
        num_init_features=16,
        stem_kernel_size=7,
        stem_stride=2,
        pool0=True,
    )
    ours = build_model(config).eval()
    torch.manual_seed(3)
    reference = torchvision.models.DenseNet(8, (2, 2, 2), 16, num_classes=10).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_a_densenet_manifest_from_before_compression_rebuilds_half_compression() -> None:
    config = architecture_config("densenet", 3, block_config=[2, 2])
    old = {k: v for k, v in config.items() if k != "compression"}
    assert build_model(old).state_dict().keys() == build_model(config).state_dict().keys()
    with pytest.raises(ValueError, match="compression"):
        architecture_config("densenet", 3, compression=0.0)
    with pytest.raises(ValueError, match="compression"):
        architecture_config("densenet", 3, compression=1.5)
