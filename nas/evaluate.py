"""COCO AP with pycocotools' COCOeval.

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
    """AP, AP50, AP75, APs, APm, APl in [0, 1] of ``detections`` (COCO result dicts:
    image_id, category_id, bbox [x, y, w, h] in original pixels, score) on ``image_ids``.

    A metric with no ground truth in its class (e.g. no large objects) is reported as 0.
    """
    if not detections:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        results = coco.loadRes(list(detections))
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.params.imgIds = list(image_ids)
        side = np.mean([np.sqrt(coco.imgs[i]["width"] * coco.imgs[i]["height"]) for i in image_ids])
        scale = (side / COCO_IMAGE_SIDE) ** 2
        small, medium = 32**2 * scale, 96**2 * scale
        evaluator.params.areaRng = [[0, 1e10], [0, small], [small, medium], [medium, 1e10]]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: max(0.0, float(value)) for name, value in zip(METRICS, evaluator.stats[:6])}
