"""The proxy detector's anchors, its two input modes and its batched RetinaNet loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from fixed_necks import FIXED_NECKS
from nas.errors import BackboneError
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.detector import CenteredAnchorGenerator, ProxyDetector, anchor_sizes
from nas.proxy.losses import retinanet_loss
from nas.settings import BACKBONE_WIDTHS


@pytest.mark.parametrize("name", list(BACKBONE_WIDTHS))
def test_each_backbone_gives_the_widths_the_settings_table_says(name: str) -> None:
    # The command line and the cost tables read the widths without building the network.
    with torch.no_grad():
        features = resnet_body(name)(torch.rand(1, 3, 64, 64))
    assert tuple(c.shape[1] for c in features.values()) == BACKBONE_WIDTHS[name] == backbone_widths(name)


def test_c5_cells_hear_the_whole_image_through_the_global_context_block() -> None:
    torch.manual_seed(0)
    body = resnet_body("resnet10").eval()
    images = torch.rand(2, 3, 128, 128)
    changed = images.clone()
    changed[:, :, :32, :32] = 1.0  # the top-left corner only
    plain = nn.Sequential(*(m for name, m in body.items() if name != "context"))
    with torch.no_grad():
        # Untrained (a checkpoint's body), the block adds nothing: C5 is layer4's output.
        assert torch.equal(body(images)["C5"], plain(images))
        nn.init.normal_(body.context.transform[-1].weight)
        far = [body(x)["C5"][..., 3, 3] - plain(x)[..., 3, 3] for x in (images, changed)]
    # The bottom-right cell's context term moves with the far corner's pixels.
    assert not torch.allclose(far[0], far[1])


def test_an_unknown_backbone_is_named() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9'"):
        backbone_widths("resnet9")


def test_anchors_sit_at_cell_centres() -> None:
    generator = CenteredAnchorGenerator(((40.0,), (80.0,)), ((1.0,), (1.0,)))
    images = ImageList(torch.empty(1, 0, 128, 128), [(128, 128)])
    p6, p7 = torch.empty(1, 8, 2, 2), torch.empty(1, 8, 1, 1)
    anchors = generator(images, [p6, p7])[0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.tensor([[32.0, 32.0], [96.0, 32.0], [32.0, 96.0], [96.0, 96.0], [64.0, 64.0]])
    torch.testing.assert_close(centres, expected)


def test_anchor_sizes_follow_image_size() -> None:
    assert anchor_sizes(800)[0][0] == 32.0  # torchvision's RetinaNet at its native size
    assert anchor_sizes(400)[0][0] == 16.0  # half the image, half the anchor
    assert [level[0] for level in anchor_sizes(128)] == [8.0, 16.0, 32.0, 64.0, 128.0]  # never < stride


def test_images_and_cached_features_give_the_same_detections() -> None:
    torch.manual_seed(0)
    neck = FIXED_NECKS["fpn"].build_twin(backbone_widths("resnet10"), 32)
    model = ProxyDetector("retinanet", resnet_body("resnet10"), neck, 3, 128).eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        from_images = model(images)
        from_features = model(model.backbone_features(images))
    for a, b in zip(from_images, from_features):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


@pytest.mark.parametrize("kind", ["retinanet", "atss"])
def test_batched_loss_equals_torchvisions_per_image_loss(kind: str) -> None:
    """Same values and gradients as ``RetinaNetHead.compute_loss``, with an image that has no
    boxes, one whose boxes are all small, and (RetinaNet's matcher) anchors ignored between the
    IoU thresholds; and a head with another box loss is refused, not given GIoU's."""
    torch.manual_seed(0)
    neck = FIXED_NECKS["fpn"].build_twin(backbone_widths("resnet10"), 32)
    model = ProxyDetector(kind, torch.nn.Identity(), neck, 5, 128)
    retinanet = model.detector
    features = list(
        neck([torch.randn(3, 128, 16, 16), torch.randn(3, 256, 8, 8), torch.randn(3, 512, 4, 4)]).values()
    )
    corners = torch.rand(7, 2) * 90
    boxes = [
        torch.cat([corners, corners + torch.rand(7, 2) * 40 + 4], 1),
        torch.zeros(0, 4),
        torch.tensor([[3.0, 3, 9, 8]]),
    ]
    targets = [{"boxes": b, "labels": torch.randint(1, 6, (len(b),))} for b in boxes]
    # Random outputs, not the fresh head's: its prior makes every negative anchor's loss ~1e-6.
    outputs = {k: torch.randn_like(v).requires_grad_() for k, v in retinanet.head(features).items()}
    anchors = retinanet.anchor_generator(ImageList(torch.zeros(3, 3, 128, 128), [(128, 128)] * 3), features)
    per_level = [9 * x.shape[2] * x.shape[3] for x in features]
    matches = model._matches(targets, anchors, per_level)
    assert (torch.stack(matches) == -2).any() == (kind == "retinanet") and (torch.stack(matches) >= 0).any()

    expected = retinanet.head.compute_loss(targets, outputs, anchors, matches)
    batched = retinanet_loss(retinanet.head, targets, outputs, anchors, matches)
    assert batched.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(batched[name], expected[name])
    expected_grads = torch.autograd.grad(sum(expected.values()), list(outputs.values()))
    batched_grads = torch.autograd.grad(sum(batched.values()), list(outputs.values()))
    for a, b in zip(batched_grads, expected_grads):
        torch.testing.assert_close(a, b)

    retinanet.head.regression_head._loss_type = "l1"
    with pytest.raises(ValueError, match="GIoU"):
        retinanet_loss(retinanet.head, targets, outputs, anchors, matches)
