"""ATSS's sample selection (``nas.proxy.assign``) against the paper's rules, written out box by box."""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from nas.proxy.assign import atss_matches
from nas.proxy.detector import CenteredAnchorGenerator, ProxyDetector, anchor_sizes

IMAGE = 128


def _anchors() -> tuple[torch.Tensor, list[int], int]:
    """The proxy's anchors at 128 px: P3..P7, 9 a location."""
    sizes = anchor_sizes(IMAGE)
    generator = CenteredAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    grids = [IMAGE // s for s in (8, 16, 32, 64, 128)]
    maps = [torch.empty(1, 1, g, g) for g in grids]
    anchors = generator(ImageList(torch.empty(1, 0, IMAGE, IMAGE), [(IMAGE, IMAGE)]), maps)[0]
    per_location = generator.num_anchors_per_location()[0]
    return anchors, [g * g * per_location for g in grids], per_location


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 100 + 14
    side = torch.rand(n, 2, generator=g) * 60 + 6
    return torch.cat([centre - side / 2, centre + side / 2], 1).clamp(0, IMAGE)


def _reference(boxes: torch.Tensor, anchors: torch.Tensor, per_level: list[int], per_location: int, k: int):
    """The rule of Zhang et al. (CVPR 2020, Alg. 1) one box and one level at a time."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = [(0.0, -1)] * len(anchors)
    for index, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        candidates: list[int] = []
        start = 0
        for count in per_level:
            level = range(start, start + count)
            candidates += sorted(level, key=lambda a: float((centres[a] - centre).norm()))[: k * per_location]
            start += count
        ious = box_iou(box[None], anchors[candidates])[0]
        threshold = ious.mean() + ious.std()
        for a, iou in zip(candidates, ious.tolist()):
            inside = bool((centres[a] > box[:2]).all() and (centres[a] < box[2:]).all())
            if iou >= threshold and inside and iou > best[a][0]:
                best[a] = (iou, index)
    return torch.tensor([b for _, b in best])


def test_matches_the_rule_written_out() -> None:
    anchors, per_level, per_location = _anchors()
    for seed in range(3):
        boxes = _random_boxes(6, seed)
        for k in (3, 9):
            got = atss_matches(boxes, anchors, per_level, per_location, top_k=k)
            assert torch.equal(got, _reference(boxes, anchors, per_level, per_location, k))


def test_every_positive_anchor_has_its_centre_inside_its_box() -> None:
    anchors, per_level, per_location = _anchors()
    boxes = _random_boxes(8, 5)
    matched = atss_matches(boxes, anchors, per_level, per_location)
    positive = matched >= 0
    centres = (anchors[positive, :2] + anchors[positive, 2:]) / 2
    owner = boxes[matched[positive]]
    assert positive.any()
    assert ((centres > owner[:, :2]) & (centres < owner[:, 2:])).all()


def test_a_thin_box_that_no_anchor_matches_at_half_iou_still_learns() -> None:
    """RetinaNet's 0.5 threshold leaves a 5 x 40 px box a single low-quality match; ATSS gives
    it positives from its own statistics."""
    anchors, per_level, per_location = _anchors()
    thin = torch.tensor([[58.3, 40.2, 63.3, 80.2]])  # around P3 centres (x = 60)
    assert box_iou(thin, anchors).max() < 0.5
    assert (atss_matches(thin, anchors, per_level, per_location) == 0).sum() >= 2


def test_no_boxes_leaves_every_anchor_background() -> None:
    anchors, per_level, per_location = _anchors()
    matched = atss_matches(torch.zeros(0, 4), anchors, per_level, per_location)
    assert matched.shape == (len(anchors),) and (matched == -1).all()


def test_the_atss_detector_learns_from_its_matches_and_keeps_them() -> None:
    from fixed_necks import FIXED_NECKS
    from nas.nets.backbone import backbone_widths

    torch.manual_seed(0)
    neck = FIXED_NECKS["fpn"].build(backbone_widths("resnet10"), 16)
    model = ProxyDetector("atss", torch.nn.Identity(), neck, 3, IMAGE).train()
    widths = backbone_widths("resnet10")
    features = [torch.randn(2, c, IMAGE // s, IMAGE // s) for c, s in zip(widths, (8, 16, 32))]
    boxes = _random_boxes(3, 7)
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "image_id": torch.tensor(i)} for i in range(2)
    ]
    losses = model(features, targets)
    assert losses["bbox_regression"] > 0 and torch.isfinite(losses["classification"])
    anchors, per_level, per_location = _anchors()
    expected = atss_matches(boxes, anchors, per_level, per_location)
    assert torch.equal(model._match_cache[0].long(), expected)
