"""RetinaNet's training loss, batched over the images of a step.

torchvision's ``RetinaNetHead.compute_loss`` loops over the images, a dozen small ops each for
the focal loss and as many for the GIoU loss, forward and backward. A proxy step runs that loss
on a batch of 16 small images, where the loop cost as much as the head's convolutions; here the
same sums are taken over the whole batch at once (equal to torchvision's within float rounding,
tested in ``tests/test_detector.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def retinanet_loss(
    head: RetinaNetHead,
    targets: list[dict[str, Tensor]],
    head_outputs: dict[str, Tensor],
    anchors: list[Tensor],
    matches: list[Tensor],
) -> dict[str, Tensor]:
    """torchvision's ``head.compute_loss`` for a head with the GIoU box loss, batched.

    Args:
        head: the RetinaNet head whose outputs these are (its box coder decodes the boxes).
        targets: per image, ``boxes`` (K_i, 4) xyxy and ``labels`` (K_i,).
        head_outputs: ``cls_logits`` (N, A, C) and ``bbox_regression`` (N, A, 4).
        anchors: per image, (A, 4) xyxy.
        matches: per image, (A,) the index of the box each anchor is matched to, -1 for
            background, -2 (between the IoU thresholds) for ignored.

    Returns:
        ``classification``: the focal loss over the anchors not ignored; ``bbox_regression``:
        the GIoU loss over the foreground anchors; each summed per image, divided by the image's
        foreground count (at least 1) and averaged over the images.
    """
    loss_type = head.regression_head._loss_type
    if loss_type != "giou":
        raise ValueError(f"retinanet_loss computes the GIoU box loss; this head's is {loss_type!r}")
    matched = torch.stack(matches)  # (N, A)
    n = matched.shape[0]
    foreground = matched >= 0
    per_image = foreground.sum(1).clamp(min=1)
    image, anchor = foreground.nonzero(as_tuple=True)
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=matched.device)
    first_box = torch.cumsum(counts, 0) - counts  # each image's offset into the concatenated boxes
    box = matched[image, anchor] + first_box[image]

    logits = head_outputs["cls_logits"]
    wanted = torch.zeros_like(logits)
    wanted[image, anchor, torch.cat([t["labels"] for t in targets])[box]] = 1.0
    not_ignored = matched != head.classification_head.BETWEEN_THRESHOLDS
    focal = sigmoid_focal_loss(logits, wanted).sum(2) * not_ignored

    predicted = head.regression_head.box_coder.decode_single(
        head_outputs["bbox_regression"][image, anchor], torch.stack(anchors)[image, anchor]
    )
    giou = generalized_box_iou_loss(predicted, torch.cat([t["boxes"] for t in targets])[box], eps=1e-7)
    giou_per_image = giou.new_zeros(n).index_add_(0, image, giou)
    return {
        "classification": (focal.sum(1) / per_image).sum() / n,
        "bbox_regression": (giou_per_image / per_image).sum() / n,
    }
