"""RoI feature extraction in the two-stage proxy: which pyramid levels a RoI reads in each --roi mode,
the training path against torchvision's RoIHeads, and the options' errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from nas.cli import build_parser, main, proxy_settings
from nas.nets.backbone import backbone_widths
from nas.proxy.detector import ProxyDetector
from nas.proxy.necks import resolve_neck
from nas.proxy.roi import ROI_LEVELS, ROI_MODES

SIZE = 128
WIDTH = 16
SMALL, LARGE = [20.0, 20.0, 30.0, 30.0], [10.0, 10.0, 110.0, 110.0]  # 10 px and 100 px boxes


def _detector(roi: str) -> ProxyDetector:
    torch.manual_seed(0)
    neck = resolve_neck("fpn").build(backbone_widths("resnet10"), WIDTH)
    return ProxyDetector("fasterrcnn", nn.Identity(), neck, 3, SIZE, roi=roi)


def _levels_read(model: ProxyDetector) -> list[set[str]]:
    """Per RoI (SMALL, LARGE), the levels P3..P6 whose features its box-head vector depends on."""
    torch.manual_seed(1)
    features = OrderedDict(
        (name, torch.randn(1, WIDTH, SIZE // 2**level, SIZE // 2**level, requires_grad=True))
        for level, name in enumerate(ROI_LEVELS, start=3)
    )
    heads = model.detector.roi_heads
    vectors = heads.box_head(heads.box_roi_pool(features, [torch.tensor([SMALL, LARGE])], [(SIZE, SIZE)]))
    read = []
    for roi in range(2):
        grads = torch.autograd.grad(vectors[roi].sum(), list(features.values()), retain_graph=True)
        read.append({name for name, g in zip(features, grads) if g.abs().sum() > 0})
    return read


def test_fpn_reads_one_level_per_roi_by_its_size() -> None:
    # Canonical side 224 * 128 / 800 = 36 px on P4: 10 px -> P2, clamped to P3; 100 px -> P5.
    assert _levels_read(_detector("fpn")) == [{"P3"}, {"P5"}]


@pytest.mark.parametrize("roi", ["panet", "soft"])
def test_panet_and_soft_read_every_level_for_every_roi(roi: str) -> None:
    assert _levels_read(_detector(roi)) == [set(ROI_LEVELS)] * 2


def test_soft_selection_weighs_each_roi_and_channel() -> None:
    """With every level but P5 zero, the fused RoI feature is P5's, scaled per RoI and channel by
    one sigmoid weight in (0, 1) -- the same over the 7x7 grid, different across channels."""
    pool = _detector("soft").detector.roi_heads.box_roi_pool
    torch.manual_seed(2)
    features = {
        name: torch.zeros(1, WIDTH, SIZE // 2**level, SIZE // 2**level)
        for level, name in enumerate(ROI_LEVELS, 3)
    }
    features["P5"] = torch.rand(1, WIDTH, 4, 4) + 0.5
    boxes, shapes = [torch.tensor([SMALL, LARGE])], [(SIZE, SIZE)]
    with torch.no_grad():
        pooled = pool.pool(features, boxes, shapes)  # (R, L, C, 7, 7)
        fused = pool(features, boxes, shapes)  # (R, C, 7, 7)
    assert pooled.shape == (2, len(ROI_LEVELS), WIDTH, 7, 7) and fused.shape == (2, WIDTH, 7, 7)
    weights = fused / pooled[:, ROI_LEVELS.index("P5")]
    torch.testing.assert_close(weights, weights[..., :1, :1].expand_as(weights))
    assert 0 < weights.min() and weights.max() < 1
    assert weights[0, :, 0, 0].std() > 1e-3 and not torch.allclose(weights[0], weights[1])


@pytest.mark.parametrize("roi", ROI_MODES)
def test_training_losses_are_torchvisions_roi_heads_losses(roi: str) -> None:
    """The training path keeps the sampled RoIs (for Consistent Supervision) yet computes what
    torchvision's RoIHeads computes."""
    model = _detector(roi).train()
    c = [torch.randn(2, ch, SIZE // s, SIZE // s) for ch, s in zip(backbone_widths("resnet10"), (8, 16, 32))]
    targets = [{"boxes": torch.tensor([SMALL, LARGE]), "labels": torch.tensor([1, 2])} for _ in range(2)]
    torch.manual_seed(3)
    ours = model(c, targets)
    torch.manual_seed(3)
    features = model.neck(c)
    image_list = ImageList(torch.empty(2, 0, SIZE, SIZE), [(SIZE, SIZE)] * 2)
    proposals, rpn_losses = model.detector.rpn(image_list, features, targets)
    _, box_losses = model.detector.roi_heads(features, proposals, image_list.image_sizes, targets)
    expected = {**rpn_losses, **box_losses}
    assert ours.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name])


def test_roi_with_retinanet_is_a_one_line_error(capsys) -> None:
    assert main(["train", "--neck", "fpn", "--roi", "panet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--roi applies to the two-stage detector only" in err
    # The default, said explicitly, is no error; with Faster R-CNN every mode is.
    parser = build_parser()
    assert proxy_settings(parser.parse_args(["train", "--neck", "fpn", "--roi", "fpn"])).roi == "fpn"
    args = parser.parse_args(["train", "--neck", "fpn", "--roi", "soft", "--detector", "fasterrcnn"])
    assert proxy_settings(args).roi == "soft"


@pytest.mark.parametrize(
    ("baselines", "fragment"),
    [("fpn,fpn@panet", "two-stage detector only"), ("fpn@pan", "unknown RoI mode 'pan'")],
)
def test_a_bad_baseline_roi_suffix_is_a_one_line_error(baselines: str, fragment: str, capsys) -> None:
    detector = [] if "panet" in baselines else ["--detector", "fasterrcnn"]
    assert main(["compare", "--baselines", baselines, *detector]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
