"""COCO AP with pycocotools' COCOeval.

Groups: where the categories have more than one ``supercategory`` (the embedded data's
context, shape and detail groups; COCO's animal, vehicle, ...), ``AP_<group>`` is the AP over
that group's categories alone, from the same evaluation.

Size classes: COCO splits small/medium/large at 32^2 and 96^2 pixels of a ~640-px image. A
proxy dataset of small images would put every object in "small"; the thresholds are scaled
by (mean image side / 640)^2 so APs/APm/APl keep their meaning at any resolution.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_IMAGE_SIDE = 640


def coco_ap(coco: COCO, detections: Sequence[dict], image_ids: Sequence[int]) -> dict[str, float]:
    """AP, AP50, AP75 and, where the data has boxes of that size, APs, APm, APl, in [0, 1], of
    ``detections`` (COCO result dicts: image_id, category_id, bbox [x, y, w, h] in original
    pixels, score) on ``image_ids``.

    A size class with no ground truth (e.g. no object under 6 px at 128 px) has no AP: its key
    is left out, and tables print "-" (COCOeval's -1, not a score of 0). Plus ``AP_<group>`` per
    supercategory when there are several.
    """
    groups = category_groups(coco)
    side = np.mean([np.sqrt(coco.imgs[i]["width"] * coco.imgs[i]["height"]) for i in image_ids])
    scale = (side / COCO_IMAGE_SIDE) ** 2
    small, medium = 32**2 * scale, 96**2 * scale
    area_ranges = [[0, 1e10], [0, small], [small, medium], [medium, 1e10]]
    # COCOeval ignores a box outside a range's closed interval; a size with no box has no AP
    areas = [a["area"] for a in coco.loadAnns(coco.getAnnIds(imgIds=list(image_ids))) if not a.get("iscrowd")]
    sized = {
        name: any(low <= area <= high for area in areas)
        for name, (low, high) in zip(METRICS[3:], area_ranges[1:])
    }
    names = [name for name in METRICS if sized.get(name, True)]
    if not detections:
        return dict.fromkeys([*names, *(f"AP_{g}" for g in groups)], 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        results = coco.loadRes(list(detections))
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.areaRng = area_ranges
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = dict(zip(METRICS, evaluator.stats[:6]))
    metrics = {name: max(0.0, float(stats[name])) for name in names}
    # precision is (IoU thresholds, recall points, categories, areas, max detections): all areas, 100
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for group, category_ids in groups.items():
        columns = [k for k, c in enumerate(evaluator.params.catIds) if c in category_ids]
        values = precision[:, :, columns]
        metrics[f"AP_{group}"] = float(values[values > -1].mean()) if (values > -1).any() else 0.0
    return metrics


def category_groups(coco: COCO) -> dict[str, set[int]]:
    """Category ids by ``supercategory``, in order of first appearance; empty with fewer than two."""
    groups: dict[str, set[int]] = {}
    for category in coco.dataset.get("categories", []):
        groups.setdefault(str(category.get("supercategory", "")), set()).add(category["id"])
    return groups if len(groups) > 1 else {}
