"""Proxy detectors around any neck: torchvision's RetinaNet, the same with ATSS's sample selection
(``atss``, the default: ``nas.proxy.assign``), or Faster R-CNN.

The detector is fed either normalised images or precomputed C3..C5 -- the latter when the
backbone is frozen and its features are cached, so a trial trains only the neck and the heads.
Images are square, ``image_size`` pixels (datasets letterbox them), so no resizing happens here.

Two kinds of neck get more than C3..C5 -> P3..P7 from the detector:

- a neck with ``takes_images = True`` (RFP) runs the backbone itself: it is given the normalised
  images, and the detector's own body is ``nn.Identity()``;
- a neck with Consistent Supervision (``ConsistentSupervision``: AugFPN) has, in training, its
  lateral maps scored by the same head, its ``auxiliary_weight`` times, as losses ``aux_*``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from nas.nets.backbone import BackboneWithNeck
from nas.proxy.assign import atss_matches
from nas.proxy.losses import retinanet_loss
from nas.proxy.roi import one_level_features, pool_levels, roi_pooling
from nas.settings import DETECTORS, ROI_MODES

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


@runtime_checkable
class ConsistentSupervision(Protocol):
    """A neck whose lateral maps are supervised too during training (AugFPN's Consistent Supervision).

    ``with_laterals(features)`` returns the pyramid (OrderedDict P3..P7) and the lateral maps
    before top-down fusion (OrderedDict ``P3``..``P5``, each the size of its level);
    ``auxiliary_weight`` weighs their loss. ``forward`` alone gives the pyramid (inference).
    """

    auxiliary_weight: float

    def with_laterals(
        self, features: Sequence[Tensor]
    ) -> tuple[OrderedDict[str, Tensor], OrderedDict[str, Tensor]]: ...


def one_stage_detector(
    backbone: BackboneWithNeck, classes: int, image_size: int, head_convs: int, roi: str
) -> RetinaNet:
    """torchvision's RetinaNet with its v2 head (GroupNorm after each conv and a GIoU box loss
    train faster from scratch than v1's plain convs and L1 loss), ``head_convs`` convs a branch,
    anchors scaled to the image (``anchor_sizes``); ``classes`` counts the background. ``roi``
    is unused: a one-stage detector pools no RoIs."""
    sizes = anchor_sizes(image_size)
    anchors = CenteredAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    channels = backbone.out_channels
    head = RetinaNetHead(
        channels,
        anchors.num_anchors_per_location()[0],
        classes,
        norm_layer=partial(nn.GroupNorm, min(32, channels // 4)),
    )
    head.regression_head._loss_type = "giou"
    for branch in (head.classification_head, head.regression_head):
        branch.conv = branch.conv[:head_convs]
    return RetinaNet(
        backbone,
        classes,
        anchor_generator=anchors,
        head=head,
        detections_per_img=100,
        min_size=image_size,
        max_size=image_size,
    )


def two_stage_detector(
    backbone: BackboneWithNeck, classes: int, image_size: int, head_convs: int, roi: str
) -> FasterRCNN:
    """torchvision's Faster R-CNN with one anchor size a level (scaled to the image), RoI
    features pooled by RoI mode ``roi`` (``nas.proxy.roi``) and fewer proposals than at 800 px;
    ``classes`` counts the background. ``head_convs`` is unused (the RoI head is two fc layers)."""
    sizes = tuple((s[0],) for s in anchor_sizes(image_size, 1))
    anchors = CenteredAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    canonical_scale = max(1, round(224 * image_size / REFERENCE_IMAGE_SIZE))
    roi_pool, box_head = roi_pooling(roi, backbone.out_channels, canonical_scale)
    detector = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(256, classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=128,
        min_size=image_size,
        max_size=image_size,
    )
    # Set afterwards: FasterRCNN's constructor admits only a MultiScaleRoIAlign (the
    # parameter-free default it makes in its place is dropped here).
    detector.roi_heads.box_roi_pool = roi_pool
    return detector


# One builder a detector kind (``nas.settings.DETECTORS``); ATSS and RetinaNet differ only in how
# anchors are matched to boxes (``ProxyDetector._matches``).
DETECTOR_BUILDERS = {
    "atss": one_stage_detector,
    "retinanet": one_stage_detector,
    "fasterrcnn": two_stage_detector,
}


class ProxyDetector(nn.Module):
    """A torchvision detector on a neck, trained and evaluated on square images.

    Args:
        kind: ``atss`` or ``retinanet`` (one stage, focal loss; anchors assigned by ATSS's
            adaptive IoU threshold or by RetinaNet's fixed 0.5 / 0.4), or ``fasterrcnn`` (RPN +
            RoI heads).
        body: backbone returning C3..C5; ``nn.Identity()`` when features are fed directly.
        neck: C3..C5 -> OrderedDict P3..P7, with ``out_channels``.
        num_classes: object classes, labelled 1..num_classes (0 is background).
        image_size: side of the square input images.
        head_convs: 3x3 convs per RetinaNet head branch (torchvision: 4); fewer is cheaper.
        roi: Faster R-CNN's RoI feature extraction (``nas.proxy.roi``): ``fpn`` (None: the default),
            ``panet`` or ``soft``; RetinaNet has none.

    ``forward(inputs, targets)``: inputs are images (N, 3, S, S) in [0, 1] or the list
    [C3, C4, C5] (images for a neck that ``takes_images``); targets (training) are dicts with
    ``boxes`` (K, 4) xyxy and ``labels`` (K,). Returns the loss dict when training, else per
    image ``boxes``, ``scores``, ``labels``.
    """

    def __init__(
        self,
        kind: str,
        body: nn.Module,
        neck: nn.Module,
        num_classes: int,
        image_size: int,
        head_convs: int = 2,
        roi: str | None = None,
    ) -> None:
        super().__init__()
        if kind not in DETECTORS:
            raise ValueError(f"unknown detector {kind!r} (known: {', '.join(DETECTORS)})")
        if roi is not None and roi not in ROI_MODES:
            raise ValueError(f"unknown RoI mode {roi!r} (known: {', '.join(ROI_MODES)})")
        if kind != "fasterrcnn" and roi not in (None, "fpn"):
            raise ValueError(f"RoI mode {roi!r} applies to the two-stage detector only")
        self.kind = kind
        self.image_size = image_size
        self._match_cache: dict[int, Tensor] = {}
        self.detector: RetinaNet | FasterRCNN = DETECTOR_BUILDERS[kind](
            BackboneWithNeck(body, neck), num_classes + 1, image_size, head_convs, roi or "fpn"
        )

    def _matches(
        self, targets: list[dict[str, Tensor]], anchors: list[Tensor], anchors_per_level: list[int]
    ) -> list[Tensor]:
        """Per image, the box each anchor is matched to (-1 background, -2 ignored): by ATSS
        (``nas.proxy.assign``) or by RetinaNet's IoU thresholds, as ``kind`` says.

        The anchors are the same for every image of the proxy's fixed size, so an image's
        matches never change: they are computed once per model and kept by ``image_id`` (the
        training targets carry it; a model trains on one split). Targets without one are
        matched afresh.
        """
        per_location = self.detector.head.classification_head.num_anchors
        matches = []
        for target, image_anchors in zip(targets, anchors):
            key = target.get("image_id")
            matched = self._match_cache.get(int(key)) if key is not None else None
            if matched is None:
                boxes = target["boxes"]
                if self.kind == "atss":
                    matched = atss_matches(boxes, image_anchors, anchors_per_level, per_location)
                elif boxes.numel() == 0:
                    matched = torch.full((len(image_anchors),), -1, dtype=torch.int64, device=boxes.device)
                else:
                    matched = self.detector.proposal_matcher(box_iou(boxes, image_anchors))
                if key is not None:
                    self._match_cache[int(key)] = matched.to(torch.int32)  # half the memory of int64
            matches.append(matched.long())
        return matches

    def _anchors_per_level(self, features: list[Tensor]) -> list[int]:
        """How many of the one-stage head's anchors each level holds (they run level by level)."""
        per_location = self.detector.head.classification_head.num_anchors
        return [per_location * x.shape[2] * x.shape[3] for x in features]

    @property
    def body(self) -> nn.Module:
        return self.detector.backbone.body

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.neck

    @property
    def takes_images(self) -> bool:
        """The neck runs the backbone itself and is fed images, never cached C3..C5."""
        return bool(getattr(self.neck, "takes_images", False))

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """C3..C5 of images (N, 3, S, S) in [0, 1]."""
        return list(self.body(normalize(images)).values())

    def forward(
        self, inputs: Tensor | Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.takes_images:
            assert isinstance(inputs, Tensor), "a neck that takes images is fed images"
            neck_inputs: Tensor | list[Tensor] = normalize(inputs)
        else:
            neck_inputs = self.backbone_features(inputs) if isinstance(inputs, Tensor) else list(inputs)
        laterals = None
        if self.training and isinstance(self.neck, ConsistentSupervision):
            assert not isinstance(neck_inputs, Tensor), "a neck with lateral maps is fed C3..C5"
            features, laterals = self.neck.with_laterals(neck_inputs)
        else:
            features = self.neck(neck_inputs)
        first = next(iter(features.values()))
        n, size = first.shape[0], self.image_size
        # Only the sizes of the image list matter past the backbone.
        images = ImageList(first.new_empty((n, 0, size, size)), [(size, size)] * n)
        if self.kind == "fasterrcnn":
            return self._faster_rcnn(images, features, targets, laterals)
        return self._retinanet(images, list(features.values()), targets, laterals)

    def _faster_rcnn(
        self,
        images: ImageList,
        features: OrderedDict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        laterals: OrderedDict[str, Tensor] | None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """RPN and RoI heads. In training, as torchvision's ``RoIHeads`` but with the sampled RoIs
        kept: with ``laterals`` (Consistent Supervision) each RoI is also pooled from each lateral
        map alone and scored by the same box head and predictor (AugFPN's Eq. 1, per level)."""
        proposals, rpn_losses = self.detector.rpn(images, features, targets)
        heads = self.detector.roi_heads
        if not self.training:
            return heads(features, proposals, images.image_sizes)[0]
        proposals, _, labels, regression_targets = heads.select_training_samples(proposals, targets)

        def box_losses(box_features: Tensor) -> tuple[Tensor, Tensor]:
            class_logits, box_regression = heads.box_predictor(box_features)
            return fastrcnn_loss(class_logits, box_regression, labels, regression_targets)

        classifier, box_reg = box_losses(
            heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
        )
        losses = {**rpn_losses, "loss_classifier": classifier, "loss_box_reg": box_reg}
        if laterals is not None:
            pooled = pool_levels(list(laterals.values()), proposals, self.image_size)
            aux = [box_losses(one_level_features(heads.box_head, x, level)) for level, x in enumerate(pooled)]
            assert isinstance(self.neck, ConsistentSupervision)  # only such a neck gives lateral maps
            weight = self.neck.auxiliary_weight
            losses["aux_loss_classifier"] = weight * sum(c for c, _ in aux)
            losses["aux_loss_box_reg"] = weight * sum(r for _, r in aux)
        return losses

    def _retinanet(
        self,
        images: ImageList,
        features: list[Tensor],
        targets: list[dict[str, Tensor]] | None,
        laterals: OrderedDict[str, Tensor] | None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """RetinaNet's head, anchors and loss. With ``laterals`` (Consistent Supervision, training)
        the head also scores the lateral maps against the anchors and matches of their levels."""
        model = self.detector
        head_outputs = model.head(features)
        anchors = model.anchor_generator(images, features)
        per_level = self._anchors_per_level(features)
        if self.training:
            assert targets is not None, "training needs targets"
            matches = self._matches(targets, anchors, per_level)
            losses = retinanet_loss(model.head, targets, head_outputs, anchors, matches)
            if laterals is not None:
                assert isinstance(self.neck, ConsistentSupervision)  # only such a neck gives lateral maps
                maps = list(laterals.values())
                k = sum(per_level[: len(maps)])  # the laterals' levels come first
                aux = retinanet_loss(
                    model.head, targets, model.head(maps), [a[:k] for a in anchors], [m[:k] for m in matches]
                )
                losses.update({f"aux_{name}": self.neck.auxiliary_weight * v for name, v in aux.items()})
            return losses
        # Split the flat per-anchor outputs back into levels, as RetinaNet.forward does.
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return model.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
