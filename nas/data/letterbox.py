"""A dataset split made ready for a proxy trial: every image decoded once, letterboxed to a
square of ``image_size`` pixels and held in one uint8 tensor, with targets in those pixels.

Letterboxing (scale the longer side to ``image_size``, pad right and bottom) keeps the aspect
ratio; ``scales`` maps boxes back to the original image for COCOeval. Boxes that shrink below
``MIN_BOX_SIDE`` pixels are left out of the training targets (their regression target would be
degenerate) but stay in the ground truth that evaluation uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor

from nas.data.coco import CocoDetection

MIN_BOX_SIDE = 1.0


@dataclass
class ProxySplit:
    """One split, letterboxed.

    Attributes:
        images: uint8 (N, 3, S, S).
        targets: per image ``boxes`` float32 (K, 4) xyxy in letterboxed pixels, ``labels`` (K,),
            ``image_id``.
        scales: float32 (N,), letterboxed pixels per original pixel.
        image_ids: COCO image ids, in order.
        coco: the pycocotools index of the split (ground truth for COCOeval).
        category_ids: COCO category id of label k at index k - 1.
        dropped: boxes left out of the targets for being under ``MIN_BOX_SIDE`` once resized.
    """

    images: Tensor
    targets: list[dict[str, Tensor]]
    scales: Tensor
    image_ids: list[int]
    coco: COCO
    category_ids: list[int]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def letterbox_split(dataset: CocoDetection, image_size: int) -> ProxySplit:
    """Decodes every image of ``dataset`` once and letterboxes it to ``image_size``."""
    images = torch.zeros((len(dataset), 3, image_size, image_size), dtype=torch.uint8)
    scales = torch.empty(len(dataset))
    targets, dropped = [], 0
    for i in range(len(dataset)):
        image = dataset.read_image(i)
        h, w = image.shape[-2:]
        scale = image_size / max(h, w)
        nh, nw = min(image_size, round(h * scale)), min(image_size, round(w * scale))
        if (nh, nw) == (h, w):
            images[i, :, :h, :w] = image
        else:
            resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True)
            images[i, :, :nh, :nw] = resized[0].round().clamp_(0, 255).to(torch.uint8)
        scales[i] = scale
        target = dataset.target(i)
        boxes = target["boxes"] * scale
        keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        dropped += int((~keep).sum())
        targets.append(
            {"boxes": boxes[keep], "labels": target["labels"][keep], "image_id": target["image_id"]}
        )
    return ProxySplit(
        images, targets, scales, list(dataset.ids), dataset.coco, list(dataset.category_ids), dropped
    )
