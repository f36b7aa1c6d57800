"""Pretraining the proxy's backbone on labels coarser than the detector's, with no fusing neck.

A detector's backbone is normally trained first on another task (ImageNet), so its coarse
levels carry a scene's semantics, and no level is trained for the detector's own classes. The
proxy does the same on the dataset it is given, in minutes, end to end:

- *coarse detection*: a RetinaNet on the no-fusion neck (``nas.proxy.necks.no_fusion_neck``: each
  level alone, no path between them -- so no fusing topology is favoured; if anything the
  no-fusion neck is) learns to find the objects by a coarse label (``coarse_targets``: an
  annotation's ``coarse`` field where the COCO file has one, else its supercategory). The
  embedded data's are a token, each middle shape, and a plate by its outline: all a backbone
  may know, but which token or which plate it is;
- *scene labels*: from every C5 cell, a 1x1 conv learns what the whole scene holds
  (``scene_labels``), a binary cross-entropy a label and cell. Every cell, not their average:
  a real backbone's C5 sees the whole image from each cell (ResNet-50's receptive field is
  several times a COCO image), and a neck's top-down path can only bring down what the cell
  above an object knows. Trained on the average, C5 kept the theme near the plate, and FPN named
  tokens little better than a neck with no fusion (AP 33.6 against 30.6). Trained cell by cell
  a plain ResNet-10 did no better (on a data variant whose theme was a hue, known from pooled
  C5 at 0.95, a linear probe found it in 0.61 of the cells): the body's ``GlobalContext`` block
  now hands every cell the whole map's mean (probe 1.0).

So the fine detail that names a plate, and the scene context that names a token, are no
target of the backbone: the neck must bring them. Image-level labels alone were tried first and
taught too little in the time (a loss of 0.54, near chance, after 400 steps of 32; FPN then
scored AP 14.9 and a neck with no fusion 15.3); adding per-C5-cell supercategory labels
brought FPN to 21.7 and no fusion to 20.7; coarse detection by supercategory to 23.9 and
23.5. In each, a linear probe found the theme in little more than half of C5's cells (0.54,
chance 0.33): a plate's outline, which only the scene labels asked for, was barely learnt, so
the coarse labels now name it.

The scene labels are the images' ``tags`` where the COCO file has them (the embedded data: a
scene's theme and which middle shapes it holds), else which categories each image holds.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from nas.data.letterbox import MIN_BOX_SIDE, ProxySplit
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.detector import ProxyDetector
from nas.proxy.device import default_device
from nas.proxy.necks import no_fusion_neck
from nas.proxy.schedule import shuffled_batches, warmup_cosine

logger = logging.getLogger(__name__)

# Of 16: 19,200 images, about five passes over the default data, 7.4 minutes on 2 CPU cores.
# FPN's AP follows the images seen (the default proxy, 3 seeds, README "What the proxy
# measures"): 1000 steps (6 minutes) FPN 39.6, FPN - no fusion +9.5; 1200 steps 40.7 and +9.8;
# batches of 12 for 1000 steps, seed 0: FPN 36.4. At 500 steps, on an earlier data version, the
# backbone barely knew a plate's outline (FPN - no fusion 0.4 AP).
PRETRAIN_STEPS = 1200
PRETRAIN_BATCH = 16
PRETRAIN_LR = 1e-3
PRETRAIN_WIDTH = 64  # the no-fusion neck's, as the proxy's


def scene_labels(split: ProxySplit) -> tuple[list[str], Tensor]:
    """The image-level task: label names and a multi-hot float32 (N, L) over the split's images.

    From the COCO file's top-level ``tags`` (vocabulary) and each image's ``tags``, when the file
    has them; else one label a category, set where the image holds an object of it.
    """
    dataset = split.coco.dataset
    vocabulary = dataset.get("tags")
    if isinstance(vocabulary, list) and vocabulary:
        names = [str(tag) for tag in vocabulary]
        position = {name: k for k, name in enumerate(names)}
        targets = torch.zeros((len(split), len(names)))
        for i, image_id in enumerate(split.image_ids):
            for tag in split.coco.imgs[image_id].get("tags", []):
                if tag in position:
                    targets[i, position[tag]] = 1.0
        return names, targets
    names = [split.coco.cats[c]["name"] for c in split.category_ids]
    targets = torch.zeros((len(split), len(names)))
    for i, target in enumerate(split.targets):
        targets[i, target["labels"] - 1] = 1.0
    return names, targets


def coarse_targets(split: ProxySplit) -> tuple[list[str], list[dict[str, Tensor]]]:
    """The split's boxes, in letterboxed pixels, labelled 1..G by coarse label; and the G names.

    An annotation's coarse label is its ``coarse`` field where the COCO file has one (the
    embedded data's ``COARSE``), else its category's supercategory. Crowds and boxes under
    ``MIN_BOX_SIDE`` once letterboxed are left out, as in the detector's targets.
    """
    names: list[str] = []
    targets = []
    for image_id, scale in zip(split.image_ids, split.scales.tolist()):
        boxes, labels = [], []
        for annotation in split.coco.imgToAnns[image_id]:
            x, y, w, h = (v * scale for v in annotation["bbox"])
            if annotation.get("iscrowd", 0) or min(w, h) < MIN_BOX_SIDE:
                continue
            category = split.coco.cats[annotation["category_id"]]
            name = str(annotation.get("coarse") or category.get("supercategory", ""))
            if name not in names:
                names.append(name)
            boxes.append([x, y, x + w, y + h])
            labels.append(names.index(name) + 1)
        targets.append(
            {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
        )
    return names, targets


def pretrain_body(
    split: ProxySplit,
    backbone: str,
    steps: int = PRETRAIN_STEPS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Trains ``backbone`` from scratch on ``split``'s coarse boxes and scene labels; returns the
    body's state_dict.

    AdamW with warm-up and cosine decay, batches of ``PRETRAIN_BATCH`` images flipped
    left-right at random (boxes with them).
    """
    names, scene = scene_labels(split)
    groups, targets = coarse_targets(split)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = default_device()
    body = resnet_body(backbone)
    neck = no_fusion_neck().build(backbone_widths(backbone), PRETRAIN_WIDTH)
    # Channels-last: the same arithmetic, a step 14% faster on a 2-core CPU (0.35 s against 0.41).
    model = ProxyDetector("retinanet", body, neck, len(groups), split.image_size)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    scene_head = nn.Conv2d(backbone_widths(backbone)[2], len(names), 1).to(device)
    c5: list[Tensor] = []
    body.register_forward_hook(lambda module, args, out: c5.append(out["C5"]))
    params = [*model.parameters(), *scene_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=PRETRAIN_LR, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, 50))
    logger.info(
        "pretraining %s: %d images, %d coarse labels, %d scene labels, %d steps",
        backbone,
        len(split),
        len(groups),
        len(names),
        steps,
    )
    batches = shuffled_batches(len(split), PRETRAIN_BATCH, seed)
    bar = tqdm(total=steps, desc="backbone", disable=not progress, leave=False)
    recent: list[float] = []
    for _ in range(steps):
        index = next(batches)
        images = split.images[index].to(device, memory_format=torch.channels_last).float().div_(255)
        batch = [{k: v.to(device) for k, v in targets[i].items() if k != "image_id"} for i in index.tolist()]
        for k, flip in enumerate((torch.rand(len(index), generator=generator) < 0.5).tolist()):
            if flip:
                images[k] = images[k].flip(-1)
                boxes = batch[k]["boxes"]
                batch[k]["boxes"] = torch.stack(
                    [
                        split.image_size - boxes[:, 2],
                        boxes[:, 1],
                        split.image_size - boxes[:, 0],
                        boxes[:, 3],
                    ],
                    1,
                )
        c5.clear()
        losses = model(images, batch)
        scene_logits = scene_head(c5[0])  # (N, L, h, w): each cell, the whole scene's labels
        scene_targets = scene[index].to(device)[:, :, None, None].expand_as(scene_logits)
        loss = sum(losses.values()) + F.binary_cross_entropy_with_logits(scene_logits, scene_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        recent = [*recent[-49:], loss.item()]
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    mean_loss = sum(recent) / len(recent)
    logger.info("pretrained %s: loss %.3f over the last %d steps", backbone, mean_loss, len(recent))
    return {k: v.cpu().contiguous() for k, v in body.state_dict().items()}
