"""The export command line: quick/full knobs, variant names, study fractions."""

from __future__ import annotations

import pytest

from training.export.__main__ import parse_args


def test_quick_shrinks_every_knob_and_explicit_flags_win() -> None:
    args = parse_args(["classify", "--quick", "--recovery-epochs", "3"])
    assert (args.recovery_epochs, args.qat_epochs, args.calibration_size) == (3, 1, 64)
    assert args.study_sparsities == (0.5,) and args.train_limit == 300
    full = parse_args(["classify"])
    assert (full.recovery_epochs, full.calibration_size, full.train_limit) == (5, 256, None)
    assert full.study_sparsities == (0.5, 0.7, 0.9) and full.max_accuracy_drop == 1.0
    assert full.float_stem and full.require == ("fp32",)


def test_variants_always_include_fp32_in_a_fixed_order() -> None:
    args = parse_args(["classify", "--variants", "pruned-int8,int8-static", "--skip-study"])
    assert args.variants == ("fp32", "int8-static", "pruned-int8")
    assert args.study_sparsities == ()


def test_unknown_variant_is_refused_with_the_known_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["classify", "--variants", "int4"])
    assert "unknown variant(s) ['int4']; known: fp32, int8-dynamic" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0.9,0.5", "0.5,1.0", "half"])
def test_study_sparsities_must_be_increasing_fractions(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["classify", "--study-sparsities", text])
    assert "--study-sparsities" in capsys.readouterr().err


def test_other_tasks_dispatch_to_their_own_exporter(capsys: pytest.CaptureFixture[str]) -> None:
    from training.export.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m training.export generate" in capsys.readouterr().out
