"""`mlca compare` argument handling (no training)."""

from __future__ import annotations

import pytest

from mlca.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--img-size", "100"], "multiple of 32"),
        (["--attentions", "se,mlca"], "baseline 'none' is not among"),
        (["--attentions", "none,none"], "duplicates"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, capsys, args, message):
    assert main(["compare", "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_unknown_attention_lists_the_known_ones(tmp_path, capsys):
    assert main(["compare", "--attentions", "none,nope", "--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr().out
    assert "unknown attention 'nope'" in out and "mlca" in out and "eca" in out


def test_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--seeds" in text and "none,mlca" in text and "--cam" in text
