"""``mlca compare --preset paper``: the paper's six modules with the official repository's
settings, checked on the built MAY models (module attributes and parameter counts written
from the module definitions) and along the path CompareConfig -> TrainConfig -> build_may."""

from __future__ import annotations

import json

import pytest
from torch import nn

import mlca.attention  # noqa: F401  (registers the zoo)
from _may_counts import eca_kernel, official_may_params
from mlca.attention.registry import create_attention, get_attention_class
from mlca.cli import main
from mlca.compare.config import CompareConfig, non_default_kwargs
from mlca.compare.presets import PRESETS
from mlca.compare.report import build_rows
from mlca.compare.runner import RunSpec, _train_config
from mlca.models.may import build_may

# expanded channels of MAY's 9 attention slots (the marked blocks of mobilenetv3-*.yaml)
SLOTS = [16, 96, 240, 240, 120, 144, 288, 576, 576]
PAPER = ["none", "se", "eca", "cbam", "ca", "mlca"]


# parameters of one attention module on C channels with the paper's settings, from the
# definitions of the zoo modules (docstrings of se.py, eca.py, cbam.py, coord.py, mlca.py)
SLOT_PARAMS = {
    "none": lambda c: 0,
    # two 1x1 convs with bias, C -> C // 4 -> C
    "se": lambda c: 2 * c * (c // 4) + c // 4 + c,
    "eca": lambda c: eca_kernel(c),
    # shared MLP C -> C // 16 -> C with biases, 7x7 conv 2 -> 1 with bias
    "cbam": lambda c: 2 * c * max(1, c // 16) + max(1, c // 16) + c + 2 * 49 + 1,
    # mip = max(8, C // 16): conv C -> mip (bias), BN(mip), two convs mip -> C (bias)
    "ca": lambda c: c * max(8, c // 16) + max(8, c // 16) + 2 * max(8, c // 16) + 2 * (max(8, c // 16) * c + c),
    "mlca": lambda c: 2 * eca_kernel(c),
}


def _paper_model(att: str, tmp_path):
    """MAY built the way a compare run builds it: CompareConfig -> TrainConfig -> build_may."""
    cfg = CompareConfig.from_preset("paper", out=tmp_path / "cmp")
    tc = _train_config(cfg, RunSpec(att, 0), resume=False, device="cpu")
    assert tc.attention == att and tc.attention_kwargs == PRESETS["paper"].attention_kwargs[att]
    # what the trainer does with its config
    return build_may(attention=tc.attention, num_classes=20, width=tc.width, **tc.attention_kwargs)


def _slots(model, att: str) -> list[nn.Module]:
    cls = get_attention_class(att)
    return [m for m in model.backbone.modules() if isinstance(m, cls)]


def test_paper_preset_is_the_six_modules():
    assert list(PRESETS["paper"].attentions) == PAPER
    cfg = CompareConfig.from_preset("paper")
    assert cfg.attentions == PAPER and cfg.baseline == "none" and cfg.preset == "paper"


@pytest.mark.parametrize("att", PAPER)
def test_paper_models_have_the_official_settings_and_param_counts(att, tmp_path):
    model = _paper_model(att, tmp_path)
    slots = _slots(model, att)
    assert len(slots) == 9
    for m, c in zip(slots, SLOTS):
        if att == "se":  # SELayer(C, reduction=4): no rounding to a multiple of 8
            assert m.rd_channels == c // 4 and isinstance(m.act, nn.ReLU) and isinstance(m.gate, nn.Hardsigmoid)
        elif att == "eca":
            assert m.kernel_size == eca_kernel(c)
        elif att == "cbam":
            assert m.fc1.out_features == max(1, c // 16) and m.spatial.kernel_size == (7, 7)
        elif att == "ca":  # CA(C, C, 16): mip = max(8, C // 16), h-swish
            assert m.mip == max(8, c // 16) and isinstance(m.act, nn.Hardswish)
        elif att == "mlca":
            assert m.local_size == 5 and m.local_weight == 0.5 and m.conv.kernel_size[0] == eca_kernel(c)
            assert m.conv_local.kernel_size[0] == eca_kernel(c)
    expected = official_may_params() + sum(SLOT_PARAMS[att](c) for c in SLOTS)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_the_baseline_is_the_backbone_with_every_slot_off(tmp_path):
    model = _paper_model("none", tmp_path)
    slots = _slots(model, "none")
    assert len(slots) == 9 and all(sum(p.numel() for p in m.parameters()) == 0 for m in slots)
    assert sum(p.numel() for p in model.parameters()) == official_may_params()


@pytest.mark.parametrize("att, c", [("eca", 576), ("cbam", 240), ("mlca", 288), ("none", 96)])
def test_where_the_zoo_default_is_the_papers_it_equals_the_preset(att, c):
    default = create_attention(att, c)
    paper = create_attention(att, c, **PRESETS["paper"].attention_kwargs[att])
    assert [p.shape for p in default.parameters()] == [p.shape for p in paper.parameters()]
    assert non_default_kwargs(att, PRESETS["paper"].attention_kwargs[att]) == {}
    if att == "mlca":
        assert (default.local_size, default.local_weight, default.gamma, default.b) == (5, 0.5, 2, 1)
    if att == "cbam":
        assert default.fc1.out_features == 240 // 16 and default.spatial.kernel_size == (7, 7)


def test_where_the_zoo_default_differs_the_preset_sets_it():
    # Coordinate Attention: Hou et al. use reduction 32, the official MAY 16
    assert create_attention("ca", 576).mip == 576 // 32
    assert create_attention("ca", 576, **PRESETS["paper"].attention_kwargs["ca"]).mip == 576 // 16
    # SE: torchvision/MobileNetV3 rounds C/4 to a multiple of 8 (240 -> 64); the official code does not
    assert create_attention("se", 240).rd_channels == 64
    assert create_attention("se", 240, **PRESETS["paper"].attention_kwargs["se"]).rd_channels == 60
    assert non_default_kwargs("ca", PRESETS["paper"].attention_kwargs["ca"]) == {"reduction": 16}
    assert non_default_kwargs("se", PRESETS["paper"].attention_kwargs["se"]) == {"rd_divisor": 1}


def test_settings_are_recorded_in_results_csv_and_in_the_run_identity():
    cfg = CompareConfig.from_preset("paper")
    assert cfg.run_settings("ca")["attention_kwargs"] == {"reduction": 16}
    assert "attention_kwargs" not in cfg.run_settings("eca")  # spelled-out defaults: the same run
    assert "attention_kwargs" not in CompareConfig().run_settings("mlca")
    rows = build_rows([], cfg.attentions, "none", dict.fromkeys(PAPER, 1), dict.fromkeys(PAPER, 1.0),
                      dict.fromkeys(PAPER, 1.0), attention_kwargs=cfg.attention_kwargs)
    got = {r.attention: json.loads(r.attention_kwargs) for r in rows}
    assert got == {a: dict(PRESETS["paper"].attention_kwargs[a]) for a in PAPER}


def test_preset_subset_and_errors():
    cfg = CompareConfig.from_preset("paper", ["none", "ca"])
    assert cfg.attentions == ["none", "ca"] and cfg.attention_kwargs["ca"] == {"reduction": 16, "min_mid": 8}
    with pytest.raises(ValueError, match="has no \\['ema'\\]"):
        CompareConfig.from_preset("paper", ["none", "ema"])
    with pytest.raises(ValueError, match="unknown --preset 'nope'"):
        CompareConfig.from_preset("nope")
    with pytest.raises(ValueError, match="not among --attentions"):
        CompareConfig(attentions=["none", "mlca"], attention_kwargs={"ca": {"reduction": 16}})


def test_cli_preset_reaches_the_experiment(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("mlca.compare.experiment.run_compare", lambda cfg: seen.append(cfg))
    assert main(["compare", "--preset", "paper", "--out", str(tmp_path / "o"),
                 "--attention-arg", "mlca:local_weight=0.25"]) == 0
    (cfg,) = seen
    assert cfg.attentions == PAPER and cfg.preset == "paper"
    assert cfg.attention_kwargs["ca"] == {"reduction": 16, "min_mid": 8}
    assert cfg.attention_kwargs["mlca"]["local_weight"] == 0.25  # the flag wins over the preset
    assert main(["compare", "--attentions", "none,ca", "--attention-arg", "ca:reduction=8",
                 "--out", str(tmp_path / "o")]) == 0
    assert seen[-1].attention_kwargs == {"ca": {"reduction": 8}} and seen[-1].preset is None


def test_cli_bad_setting_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compare", "--attentions", "none,ca", "--attention-arg", "ca:ratio=8", "--out", str(out)]) == 2
    msg = capsys.readouterr().out
    assert "unexpected keyword argument(s) ['ratio']" in msg and "reduction" in msg and not out.exists()
    with pytest.raises(SystemExit):
        main(["compare", "--attention-arg", "ca-reduction-8"])
    assert "NAME:KEY=VALUE" in capsys.readouterr().err
