"""AugFPN: residual feature augmentation, Consistent Supervision's auxiliary losses (training only,
on the lateral maps), soft RoI selection by default in two-stage mode, and its place in the registry
and on the command line as a neck without a genotype twin."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from fixed_necks.augfpn import AUXILIARY_WEIGHT, AugFPN
from nas.cli import main
from nas.nets.backbone import backbone_widths
from nas.proxy.detector import ProxyDetector
from nas.proxy.necks import resolve_neck
from nas.proxy.profile import neck_inputs
from nas.proxy.train import roi_mode
from nas.settings import ProxySettings

WIDTHS = backbone_widths("resnet10")
WIDTH = 16
AUX = {
    "atss": {"aux_classification", "aux_bbox_regression"},
    "retinanet": {"aux_classification", "aux_bbox_regression"},
    "fasterrcnn": {"aux_loss_classifier", "aux_loss_box_reg"},
}


def _model(kind: str, size: int) -> ProxyDetector:
    torch.manual_seed(0)
    roi = roi_mode(resolve_neck("augfpn"), ProxySettings(detector=kind))
    return ProxyDetector(kind, nn.Identity(), resolve_neck("augfpn").build(WIDTHS, WIDTH), 3, size, roi=roi)


def _batch(size: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    boxes = torch.tensor([[4.0, 6.0, 20.0, 18.0], [size / 4, size / 5, size - 2.0, size - 8.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3])} for _ in range(2)]
    return neck_inputs(WIDTHS, size, batch=2), targets


def test_residual_feature_augmentation_pools_c5_to_its_ratios() -> None:
    neck = AugFPN(WIDTHS, WIDTH)
    pooled: list[tuple[int, ...]] = []
    for conv in neck.rfa.reduce:
        conv.register_forward_hook(lambda _m, inputs, _o: pooled.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        neck(neck_inputs(WIDTHS, 640))  # C5 20x20 -> 2, 4, 6
        neck(neck_inputs(WIDTHS, 128))  # C5 4x4 -> 0.4, 0.8, 1.2: at least 1x1
    assert pooled == [(2, 2), (4, 4), (6, 6), (1, 1), (1, 1), (1, 1)]


def test_rfa_changes_only_the_top_down_path() -> None:
    """AugFPN with its RFA silenced is its FPN: same laterals, same top-down path, same P6/P7."""
    from fixed_necks.fpn import FPN

    neck = AugFPN(WIDTHS, WIDTH).eval()
    fpn = FPN(WIDTHS, WIDTH).eval()
    fpn.load_state_dict({k: v for k, v in neck.state_dict().items() if not k.startswith("rfa.")})
    feats = neck_inputs(WIDTHS, 96)
    with torch.no_grad():
        augmented = neck(feats)
        for conv in neck.rfa.reduce:
            nn.init.zeros_(conv[0].weight)
            nn.init.zeros_(conv[0].bias)
        silenced, plain = neck(feats), fpn(feats)
    for name in plain:
        torch.testing.assert_close(silenced[name], plain[name])
    assert not torch.allclose(augmented["P5"], plain["P5"])


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("kind", ["atss", "retinanet", "fasterrcnn"])
def test_trains_with_auxiliary_losses_and_infers_without(kind: str, size: int, monkeypatch) -> None:
    model = _model(kind, size).train()
    c, targets = _batch(size)
    losses = model(c, targets)
    assert AUX[kind] <= losses.keys() and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    neck = model.neck
    for module in (neck.lateral, neck.rfa, neck.output):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # Eval: the plain forward only; no lateral maps, no auxiliary anything.
    monkeypatch.setattr(neck, "with_laterals", lambda *_: pytest.fail("laterals asked for at inference"))
    model.eval()
    with torch.no_grad():
        detections = model(c)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("kind", ["retinanet", "fasterrcnn"])
def test_auxiliary_losses_supervise_the_laterals_before_fusion(kind: str) -> None:
    """The auxiliary losses reach the lateral 1x1 convs and nothing after them in the neck."""
    model = _model(kind, 64).train()
    losses = model(*_batch(64))
    sum(v for name, v in losses.items() if name.startswith("aux_")).backward()
    neck = model.neck
    assert all(p.grad.abs().sum() > 0 for p in neck.lateral.parameters())
    assert all(p.grad is None for m in (neck.rfa, neck.output, neck.p6, neck.p7) for p in m.parameters())


def test_auxiliary_weight_scales_the_auxiliary_losses() -> None:
    model = _model("retinanet", 64).train()  # RetinaNet: no sampling, the same losses every call
    batch = _batch(64)
    first = model(*batch)
    model.neck.auxiliary_weight = 2 * AUXILIARY_WEIGHT
    second = model(*batch)
    for name in AUX["retinanet"]:
        torch.testing.assert_close(second[name], 2 * first[name])
    for name in ("classification", "bbox_regression"):
        torch.testing.assert_close(second[name], first[name])


def test_registry_entry_and_roi_default() -> None:
    spec = resolve_neck("augfpn")
    assert spec.genotype is None and spec.name == "augfpn" and not spec.needs_images
    assert isinstance(spec.build(WIDTHS, WIDTH), AugFPN)
    assert roi_mode(spec, ProxySettings(detector="fasterrcnn")) == "soft"  # its own default
    assert roi_mode(replace(spec, roi="fpn"), ProxySettings(detector="fasterrcnn")) == "fpn"  # --roi fpn
    assert roi_mode(spec, ProxySettings()) is None  # RetinaNet pools no RoIs
    assert roi_mode(resolve_neck("fpn"), ProxySettings(detector="fasterrcnn", roi="panet")) == "panet"


def test_necks_list_show_and_export(tmp_path: Path, capsys) -> None:
    size = ["--image-size", "128", "--in-channels", ",".join(map(str, WIDTHS)), "--channels", "32"]
    assert main(["necks", "list", *size]) == 0
    assert any(line.split()[:1] == ["augfpn"] for line in capsys.readouterr().out.splitlines())

    assert main(["necks", "show", "augfpn", *size]) == 0
    out = capsys.readouterr().out
    assert out.startswith("augfpn: hand-written, no genotype twin") and "GFLOPs" in out and "Guo" in out
    assert main(["necks", "show", "augfpn", "--png", str(tmp_path / "a.png"), *size]) == 2
    assert "no genotype to draw" in capsys.readouterr().err

    assert main(["export", "augfpn", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only genotype necks can be exported" in err
    assert not (tmp_path / "x").exists()
