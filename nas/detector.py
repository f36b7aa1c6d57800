"""Proxy detectors: torchvision's RetinaNet or Faster R-CNN around any neck.

The detector is fed either normalised images or precomputed C3..C5 -- the latter when the
backbone is frozen and its features are cached, so a trial trains only the neck and the heads.
Images are square, ``image_size`` pixels (datasets letterbox them), so no resizing happens here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from nas.backbone import BackboneWithNeck

DETECTORS = ("retinanet", "fasterrcnn")
STRIDES = (8, 16, 32, 64, 128)  # P3..P7
# torchvision's detectors are tuned for 800-px images: RetinaNet's anchors are 4 x stride
# (32..512 px) and Faster R-CNN's RoI level mapping puts a 224-px box on P4. Both scale with
# the proxy's image size, so a proxy sees objects at the same relative scale -- but anchors
# never shrink below the stride (see ``anchor_sizes``).
REFERENCE_IMAGE_SIZE = 800
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] -> standardised with ImageNet's channel statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class CenteredAnchorGenerator(AnchorGenerator):
    """torchvision's anchors, centred on their feature-map cells instead of the cells' top-left
    corners. At a proxy's image size the coarse levels have one or two cells (P7 is 1x1 at
    128 px), and corner-centred anchors there sit at the image's top-left, out of reach of
    every large object elsewhere."""

    def grid_anchors(self, grid_sizes: list[list[int]], strides: list[list[Tensor]]) -> list[Tensor]:
        anchors = super().grid_anchors(grid_sizes, strides)
        return [a + torch.stack([sw, sh, sw, sh]).to(a.dtype) / 2 for a, (sh, sw) in zip(anchors, strides)]


def anchor_sizes(image_size: int, scales_per_octave: int = 3) -> tuple[tuple[float, ...], ...]:
    """Per level P3..P7, anchor sides ``m x stride x 2^(k / scales_per_octave)`` with
    ``m = max(1, 4 x image_size / 800)``: torchvision's 4 x stride at 800 px, scaled with the
    image, but never below one stride.

    Scaled alone, anchors at a 128-px proxy would be 0.64 x stride (5 px on P3, stride 8):
    they no longer tile the image, most objects overlap no anchor with IoU >= 0.5, and
    RetinaNet trains on a single low-quality match per object -- the proxy learned ~10x slower
    than with one-stride anchors (AP 0.5 against 0.9 on the same frozen backbone, and the
    backbone pretrained with them was weaker still). At one stride, P3..P7 hold anchors of
    8..203 px, the objects' range at 128 px.
    """
    multiple = max(1.0, 4 * image_size / REFERENCE_IMAGE_SIZE)
    return tuple(
        tuple(multiple * stride * 2 ** (k / scales_per_octave) for k in range(scales_per_octave))
        for stride in STRIDES
    )


class ProxyDetector(nn.Module):
    """A torchvision detector on a neck, trained and evaluated on square images.

    Args:
        kind: ``retinanet`` (one stage, focal loss) or ``fasterrcnn`` (RPN + RoI heads).
        body: backbone returning C3..C5; ``nn.Identity()`` when features are fed directly.
        neck: C3..C5 -> OrderedDict P3..P7, with ``out_channels``.
        num_classes: object classes, labelled 1..num_classes (0 is background).
        image_size: side of the square input images.
        head_convs: 3x3 convs per RetinaNet head branch (torchvision: 4); fewer is cheaper.

    ``forward(inputs, targets)``: inputs are images (N, 3, S, S) in [0, 1] or the list
    [C3, C4, C5]; targets (training) are dicts with ``boxes`` (K, 4) xyxy and ``labels`` (K,).
    Returns the loss dict when training, else per image ``boxes``, ``scores``, ``labels``.
    """

    def __init__(
        self,
        kind: str,
        body: nn.Module,
        neck: nn.Module,
        num_classes: int,
        image_size: int,
        head_convs: int = 2,
    ) -> None:
        super().__init__()
        if kind not in DETECTORS:
            raise ValueError(f"unknown detector {kind!r} (known: {', '.join(DETECTORS)})")
        self.kind = kind
        self.image_size = image_size
        self._match_cache: dict[int, Tensor] = {}
        backbone = BackboneWithNeck(body, neck)
        common = dict(min_size=image_size, max_size=image_size)
        if kind == "retinanet":
            sizes = anchor_sizes(image_size)
            anchors = CenteredAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
            # torchvision's v2 head: GroupNorm after each conv and a GIoU box loss train faster
            # from scratch than v1's plain convs and L1 loss.
            head = RetinaNetHead(
                neck.out_channels,
                anchors.num_anchors_per_location()[0],
                num_classes + 1,
                norm_layer=partial(nn.GroupNorm, min(32, neck.out_channels // 4)),
            )
            head.regression_head._loss_type = "giou"
            for branch in (head.classification_head, head.regression_head):
                branch.conv = branch.conv[:head_convs]
            self.detector: nn.Module = RetinaNet(
                backbone,
                num_classes + 1,
                anchor_generator=anchors,
                head=head,
                detections_per_img=100,
                **common,
            )
        else:
            sizes = tuple((s[0],) for s in anchor_sizes(image_size, 1))
            anchors = CenteredAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
            roi_pool = MultiScaleRoIAlign(
                ["P3", "P4", "P5", "P6"],
                output_size=7,
                sampling_ratio=2,
                canonical_scale=max(1, round(224 * image_size / REFERENCE_IMAGE_SIZE)),
            )
            width = neck.out_channels
            self.detector = FasterRCNN(
                backbone,
                rpn_anchor_generator=anchors,
                box_roi_pool=roi_pool,
                box_head=TwoMLPHead(width * 7 * 7, 256),
                box_predictor=FastRCNNPredictor(256, num_classes + 1),
                rpn_pre_nms_top_n_train=600,
                rpn_post_nms_top_n_train=300,
                rpn_pre_nms_top_n_test=300,
                rpn_post_nms_top_n_test=150,
                box_batch_size_per_image=128,
                **common,
            )

    def _matches(self, targets: list[dict[str, Tensor]], anchors: list[Tensor]) -> list[Tensor]:
        """Per image, the box each anchor is matched to (-1 background, -2 ignored).

        The anchors are the same for every image of the proxy's fixed size, so an image's
        matches never change: they are computed once per model and kept by ``image_id`` (the
        training targets carry it; a model trains on one split). Targets without one are
        matched afresh.
        """
        matches = []
        for target, image_anchors in zip(targets, anchors):
            key = target.get("image_id")
            matched = self._match_cache.get(int(key)) if key is not None else None
            if matched is None:
                if target["boxes"].numel() == 0:
                    matched = torch.full(
                        (image_anchors.shape[0],), -1, dtype=torch.int64, device=image_anchors.device
                    )
                else:
                    matched = self.detector.proposal_matcher(box_iou(target["boxes"], image_anchors))
                if key is not None:
                    self._match_cache[int(key)] = matched.to(torch.int32)  # half the memory of int64
            matches.append(matched.long())
        return matches

    @property
    def body(self) -> nn.Module:
        return self.detector.backbone.body

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.neck

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """C3..C5 of images (N, 3, S, S) in [0, 1]."""
        return list(self.body(normalize(images)).values())

    def forward(
        self, inputs: Tensor | Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        c = self.backbone_features(inputs) if isinstance(inputs, Tensor) else list(inputs)
        features = self.neck(c)
        n, size = c[0].shape[0], self.image_size
        # Only the sizes of the image list matter past the backbone.
        images = ImageList(c[0].new_empty((n, 0, size, size)), [(size, size)] * n)
        if self.kind == "fasterrcnn":
            proposals, rpn_losses = self.detector.rpn(images, features, targets)
            detections, box_losses = self.detector.roi_heads(features, proposals, images.image_sizes, targets)
            return {**rpn_losses, **box_losses} if self.training else detections
        return self._retinanet(images, list(features.values()), targets)

    def _retinanet(
        self, images: ImageList, features: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        model = self.detector
        head_outputs = model.head(features)
        anchors = model.anchor_generator(images, features)
        if self.training:
            return model.head.compute_loss(targets, head_outputs, anchors, self._matches(targets, anchors))
        # Split the flat per-anchor outputs back into levels, as RetinaNet.forward does.
        per_level = [x.shape[2] * x.shape[3] for x in features]
        per_anchor = head_outputs["cls_logits"].shape[1] // sum(per_level)
        per_level = [hw * per_anchor for hw in per_level]
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return model.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
