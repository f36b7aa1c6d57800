"""The proxy detector's anchors and its two input modes."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from fixed_necks import FIXED_NECKS
from nas.backbone import backbone_widths, resnet_body
from nas.detector import CenteredAnchorGenerator, ProxyDetector, anchor_sizes
from nas.errors import BackboneError
from nas.settings import BACKBONE_WIDTHS


@pytest.mark.parametrize("name", list(BACKBONE_WIDTHS))
def test_each_backbone_gives_the_widths_the_settings_table_says(name: str) -> None:
    # The command line and the cost tables read the widths without building the network.
    with torch.no_grad():
        features = resnet_body(name)(torch.rand(1, 3, 64, 64))
    assert tuple(c.shape[1] for c in features.values()) == BACKBONE_WIDTHS[name] == backbone_widths(name)


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
