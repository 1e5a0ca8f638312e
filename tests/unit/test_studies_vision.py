"""The vision studies' settings, tables and feature-map capture, and the classify flags they use."""

from __future__ import annotations

import pytest
import torch

from models.classify import architecture_config, build_model
from training import classify as job
from training.studies import STUDIES, backbones, common, curriculum


def test_densenet_flags_become_the_architecture() -> None:
    flags = ["--arch", "densenet", "--growth-rate", "6", "--bn-size", "2"]
    flags += ["--block-config", "2,3", "--num-init-features", "10", "--compression", "0.4"]
    args = job.parse_args(flags)
    architecture = job.resolve_setup(args, None).architecture
    expected = {
        "growth_rate": 6,
        "bn_size": 2,
        "block_config": [2, 3],
        "num_init_features": 10,
        "compression": 0.4,
    }
    assert {key: architecture[key] for key in expected} == expected
    assert job.resolve_setup(job.parse_args(["--arch", "densenet"]), None).architecture == (
        architecture_config("densenet", 10)
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--growth-rate", "8"],  # resnet18 is the default arch
        ["--arch", "resnet18", "--compression", "0.5"],
        ["--weights", "DenseNet121_Weights.IMAGENET1K_V1", "--compression", "0.7"],
        ["--curriculum", "--curriculum-start", "0"],
        ["--augment", "mixup"],
        ["--arch", "densenet", "--block-config", "2,x"],
    ],
)
def test_classify_refuses_flags_that_do_not_fit(flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(flags)


def test_both_studies_are_registered_with_a_main() -> None:
    assert STUDIES["backbones"] == "training.studies.backbones"
    assert STUDIES["curriculum"] == "training.studies.curriculum"
    assert callable(backbones.main) and callable(curriculum.main)


@pytest.mark.parametrize("quick", [False, True])
def test_backbone_settings_share_one_budget_and_cover_the_grid(quick: bool) -> None:
    chosen = backbones.settings(quick)
    parsed = {name: job.parse_args(flags) for name, flags in chosen.items()}
    assert parsed["resnet18"].arch == "resnet18"
    dense = [a for a in parsed.values() if a.arch == "densenet"]
    assert len(dense) >= 3 and len(parsed) == len(dense) + 1
    grid = {(a.growth_rate, a.compression) for a in dense}
    assert len(grid) == len(dense)
    assert len({g for g, _ in grid}) >= 2 and len({c for _, c in grid}) >= 2
    budgets = {
        (a.image_size, a.epochs, a.batch_size, a.lr, a.train_limit, a.augment, a.seed)
        for a in parsed.values()
    }
    assert len(budgets) == 1


def test_curriculum_arms_differ_only_in_schedule_and_augmentation() -> None:
    arms = curriculum.arm_flags(curriculum.parse_args([]))
    parsed = {name: job.parse_args(flags) for name, flags in arms.items()}
    assert (parsed["plain"].augment, parsed["plain"].curriculum) == ("none", False)
    assert (parsed["curriculum"].augment, parsed["curriculum"].curriculum) == ("none", True)
    assert {parsed[n].augment for n in ("affine", "randaugment", "trivialaugment")} == {
        "affine",
        "randaugment",
        "trivialaugment",
    }
    budgets = {
        (a.image_size, a.epochs, a.batch_size, a.train_limit, a.arch) for a in parsed.values()
    }
    assert len(budgets) == 1
    with pytest.raises(SystemExit):
        curriculum.parse_args(["--seeds", "1"])


def test_curriculum_summary_gives_mean_spread_and_paired_gain() -> None:
    results = {
        "plain": [
            {"test_accuracy": 0.80, "test_macro_f1": 0.7},
            {"test_accuracy": 0.90, "test_macro_f1": 0.8},
        ],
        "curriculum": [
            {"test_accuracy": 0.85, "test_macro_f1": 0.8},
            {"test_accuracy": 0.97, "test_macro_f1": 0.9},
        ],
    }
    table, metrics = curriculum.summarize(results)
    assert metrics["plain.test_accuracy_mean"] == pytest.approx(0.85)
    assert metrics["plain.test_accuracy_sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert metrics["curriculum.test_accuracy_mean"] == pytest.approx(0.91)
    lines = table.splitlines()
    assert lines[0].startswith("| arm | seeds |") and len(lines) == 4
    assert "| curriculum | 2 | 91.00% ± 8.49% |" in table
    assert "+6.00% ± 1.41%" in table  # gains 0.05 and 0.07, paired by seed


def test_markdown_table_has_a_header_rule_and_one_line_per_row() -> None:
    text = common.markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert text == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |\n"


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
        ("densenet", ["denseblock1", "denseblock2"]),
    ],
)
def test_stage_outputs_capture_every_stage_of_both_families(name: str, stages: list[str]) -> None:
    torch.manual_seed(0)
    overrides = {"block_config": [2, 2], "growth_rate": 4} if name == "densenet" else {}
    model = build_model(architecture_config(name, 10, **overrides))
    outputs = backbones.stage_outputs(model, torch.randn(2, 3, 16, 16))
    assert list(outputs) == stages
    assert all(out.shape[0] == 2 and out.dim() == 4 for out in outputs.values())
    assert backbones.stage_outputs(model, torch.randn(1, 3, 16, 16)).keys() == outputs.keys()
