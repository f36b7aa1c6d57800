"""The backbone's image-level pretraining task, and AP per group of categories."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nas.data import synth
from nas.data.coco import CocoDetection
from nas.data.letterbox import letterbox_split
from nas.proxy.evaluate import coco_ap
from nas.proxy.necks import resolve_neck
from nas.proxy.pretrain import coarse_targets, pretrain_body, scene_labels


@pytest.fixture(scope="module")
def train_split(tiny_dataset: Path):
    return letterbox_split(CocoDetection.from_dir(tiny_dataset, "train"), 128)


def test_the_embedded_data_pretrains_on_its_scene_tags(train_split, tiny_dataset: Path) -> None:
    names, targets = scene_labels(train_split)
    assert names == list(synth.TAGS)
    images = json.loads((tiny_dataset / "annotations" / "instances_train.json").read_text())["images"]
    for row, image in zip(targets, images):
        assert {names[k] for k in row.nonzero().flatten().tolist()} == set(image["tags"])
        assert row[: len(synth.THEMES)].sum() == 1  # one theme a scene
    # The fine detail that names a plate is no scene label: the backbone is never taught it.
    assert not any("plate" in name or "striped" in name for name in names)


def test_without_tags_the_task_is_which_categories_an_image_holds(tiny_dataset: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_dataset / "annotations" / "instances_train.json").read_text())
    del data["tags"]
    for image in data["images"]:
        del image["tags"]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(tiny_dataset / "images")
    split = letterbox_split(CocoDetection.from_dir(tmp_path, "train"), 128)
    names, targets = scene_labels(split)
    assert names == list(synth.CATEGORIES)
    for row, image in zip(targets, data["images"]):
        held = {a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]}
        assert set((row.nonzero().flatten() + 1).tolist()) == held


def test_coarse_targets_tell_no_token_or_plate_from_another(train_split) -> None:
    names, targets = coarse_targets(train_split)
    assert set(names) <= set(synth.COARSE) and "token" in names
    for coarse, fine in zip(targets, train_split.targets):
        assert torch.allclose(coarse["boxes"], fine["boxes"])
        coarse_names = [names[label - 1] for label in coarse["labels"].tolist()]
        for name, label in zip(coarse_names, fine["labels"].tolist()):
            category = synth.CATEGORIES[label - 1]
            if category.startswith("token_"):
                assert name == "token"
            elif category.startswith("plate_"):
                assert name.startswith("plate_") and name.removeprefix("plate_") in synth.THEMES
            else:
                assert name == category


def test_without_coarse_labels_supercategories_stand_in(train_split) -> None:
    annotations = train_split.coco.dataset["annotations"]  # the index holds the same dicts
    saved = [a.pop("coarse") for a in annotations]
    try:
        names, _ = coarse_targets(train_split)
    finally:
        for annotation, coarse in zip(annotations, saved):
            annotation["coarse"] = coarse
    assert sorted(names) == ["context", "detail", "shape"]


def test_the_no_fusion_neck_keeps_each_level_to_itself() -> None:
    neck = resolve_neck("nofusion").build((8, 16, 32), 8).eval()
    inputs = [torch.randn(1, c, s, s, requires_grad=True) for c, s in ((8, 16), (16, 8), (32, 4))]
    outputs = neck(inputs)
    assert list(outputs) == ["P3", "P4", "P5", "P6", "P7"]
    for level, reads in (("P3", 0), ("P4", 1), ("P5", 2), ("P6", 2), ("P7", 2)):
        grads = torch.autograd.grad(outputs[level].sum(), inputs, allow_unused=True, retain_graph=True)
        assert [g is not None and bool(g.abs().sum() > 0) for g in grads] == [k == reads for k in range(3)], (
            level
        )


def test_pretraining_changes_the_body_deterministically(train_split) -> None:
    torch.set_num_threads(1)
    first = pretrain_body(train_split, "resnet10", steps=2, progress=False)
    again = pretrain_body(train_split, "resnet10", steps=2, progress=False)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    other = pretrain_body(train_split, "resnet10", steps=2, seed=1, progress=False)
    assert any(not torch.equal(first[k], other[k]) for k in first if k.endswith("weight"))


def test_ap_per_group_from_the_same_evaluation(train_split) -> None:
    coco = train_split.coco
    groups = {c["id"]: c["supercategory"] for c in coco.dataset["categories"]}
    perfect = [{**a, "score": 1.0} for a in coco.dataset["annotations"]]
    metrics = coco_ap(coco, perfect, train_split.image_ids)
    assert metrics["AP"] == pytest.approx(1.0)
    assert {k: metrics[k] for k in ("AP_context", "AP_shape", "AP_detail")} == pytest.approx(
        {"AP_context": 1.0, "AP_shape": 1.0, "AP_detail": 1.0}
    )
    # Context objects labelled with a wrong token class: that group alone falls to 0.
    wrong = [
        {**d, "category_id": d["category_id"] % 3 + 1} if groups[d["category_id"]] == "context" else d
        for d in perfect
    ]
    metrics = coco_ap(coco, wrong, train_split.image_ids)
    assert metrics["AP_context"] == 0.0 and metrics["AP_shape"] == pytest.approx(1.0)
    assert metrics["AP_detail"] == pytest.approx(1.0) and 0.0 < metrics["AP"] < 1.0


def _coco(boxes: list[list[float]]) -> COCO:
    """One 128 x 128 image holding ``boxes`` (x, y, w, h) of one category."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 128, "height": 128}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": k, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, b in enumerate(boxes, 1)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_a_size_class_with_no_boxes_has_no_ap() -> None:
    # At 128 px the small/medium/large limits are 6.4^2 and 19.2^2 px: these boxes are medium.
    coco = _coco([[10, 10, 12, 12], [60, 60, 15, 10]])
    perfect = [{**a, "score": 1.0} for a in coco.dataset["annotations"]]
    metrics = coco_ap(coco, perfect, [1])
    assert "APs" not in metrics and "APl" not in metrics and metrics["APm"] == pytest.approx(1.0)
    assert coco_ap(coco, [], [1]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APm": 0.0}
    # COCOeval's own answer for the classes left out: -1, "no ground truth".
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(perfect), "bbox")
        evaluator.params.areaRng = [[0, 1e10], [0, 6.4**2], [6.4**2, 19.2**2], [19.2**2, 1e10]]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[3] == -1 and evaluator.stats[5] == -1
    # A 5 x 5 box makes small a class, scored like any other.
    coco = _coco([[10, 10, 12, 12], [60, 60, 5, 5], [30, 30, 40, 40]])
    metrics = coco_ap(coco, [{**a, "score": 1.0} for a in coco.dataset["annotations"]], [1])
    assert metrics["APs"] == metrics["APm"] == metrics["APl"] == pytest.approx(1.0)
