"""The embedded dataset generator and the COCO-format loader, on tiny datasets in tmp_path."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from nas.data import synth
from nas.data.coco import CocoDetection, DatasetError, collate, find_split
from nas.proxy.detector import anchor_sizes

TINY = {"train": 6, "val": 3, "size": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return fn(*args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.synthesize(tmp_path_factory.mktemp("tiny") / "shapes", seed=1, **TINY)


# --- the generator ----------------------------------------------------------------------------


def test_layout_and_valid_coco(tiny: Path) -> None:
    assert sorted(p.name for p in (tiny / "images" / "train").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    for split, count in (("train", 6), ("val", 3)):
        data = json.loads((tiny / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in data["categories"]] == list(synth.CATEGORIES)
        assert {c["supercategory"] for c in data["categories"]} == {"context", "shape", "detail"}
        assert data["tags"] == list(synth.TAGS)
        assert len(data["images"]) == count
        for image in data["images"]:
            assert image["file_name"].startswith(f"{split}/")
            with Image.open(tiny / "images" / image["file_name"]) as opened:
                assert opened.size == (image["width"], image["height"]) == (64, 64)
        ids = {image["id"] for image in data["images"]}
        assert data["annotations"], "a scene without objects"
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            assert ann["image_id"] in ids and 1 <= ann["category_id"] <= len(synth.CATEGORIES)
            assert ann["iscrowd"] == 0 and w > 0 and h > 0 and ann["area"] == pytest.approx(w * h, abs=0.01)
            assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01
    manifest = json.loads((tiny / synth.MANIFEST).read_text())
    assert manifest["args"] == {"train": 6, "val": 3, "size": 64, "seed": 1}


def test_deterministic_bytes_and_seed_matters(tiny: Path, tmp_path: Path) -> None:
    again = synth.synthesize(tmp_path / "again", seed=1, **TINY)
    assert _files(again) == _files(tiny)
    other = _files(synth.synthesize(tmp_path / "other", seed=2, **TINY))
    for name, content in _files(tiny).items():
        if name.endswith(".png") or name.startswith("annotations"):
            assert other[name] != content, name


def test_any_image_regenerates_alone(tiny: Path) -> None:
    image, objects, tags = synth.render(1, "val", 2, 64)
    with Image.open(tiny / "images" / "val" / "000002.png") as written:
        assert np.array_equal(np.asarray(image), np.asarray(written))
    data = json.loads((tiny / "annotations" / "instances_val.json").read_text())
    stored = [
        {k: a[k] for k in ("category_id", "bbox", "area", "coarse")}
        for a in data["annotations"]
        if a["image_id"] == 3
    ]
    assert stored == objects
    assert data["images"][2]["tags"] == tags


def test_workers_do_not_change_the_output(tmp_path: Path) -> None:
    args = {"train": synth._CHUNK + 6, "val": 0, "size": 32, "seed": 3}  # two chunks
    one = synth.synthesize(tmp_path / "one", workers=1, **args)
    two = synth.synthesize(tmp_path / "two", workers=2, **args)
    assert _files(one) == _files(two)


def test_ground_truth_as_detections_scores_ap_1(tiny: Path) -> None:
    gt = _quiet(COCO, str(tiny / "annotations" / "instances_train.json"))
    detections = [{**a, "score": 1.0} for a in gt.dataset["annotations"]]
    evaluation = COCOeval(gt, _quiet(gt.loadRes, detections), "bbox")
    _quiet(evaluation.evaluate)
    _quiet(evaluation.accumulate)
    _quiet(evaluation.summarize)
    assert evaluation.stats[0] == pytest.approx(1.0)


SCENES = [synth.render(0, "train", i) for i in range(150)]  # default size
P4_ANCHOR = anchor_sizes(synth.DEFAULT_SIZE)[1][0]  # the smallest anchor of P4, in px


def _named(objects: list[dict]) -> list[tuple[str, list[float]]]:
    return [(synth.CATEGORIES[a["category_id"] - 1], a["bbox"]) for a in objects]


def _xyxy(bbox: list[float]) -> tuple[float, float, float, float]:
    return bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]


def test_sizes_span_three_octaves_from_one_p3_stride() -> None:
    sides = np.array([max(a["bbox"][2:]) for _, objects, _ in SCENES for a in objects])
    assert sides.min() >= 7.5 and sides.max() / sides.min() >= 2**3  # P3's stride is 8 px
    groups = {synth.CATEGORY_GROUPS[a["category_id"] - 1][1] for _, objects, _ in SCENES for a in objects}
    assert groups == {"context", "shape", "detail"}
    categories = {a["category_id"] for _, objects, _ in SCENES[:40] for a in objects}
    assert categories == set(range(1, len(synth.CATEGORIES) + 1))


def test_a_token_is_named_by_its_scene_and_lies_far_from_the_plate() -> None:
    tokens = 0
    for _, objects, tags in SCENES:
        theme = tags[0].removeprefix("theme_")
        plates = [box for name, box in _named(objects) if name.startswith("plate_")]
        for name, box in _named(objects):
            if name.startswith("token_"):
                tokens += 1
                assert name == f"token_{theme}"
                # Found on P3 alone: even centred on P4's smallest anchor it overlaps it under 0.5.
                assert max(box[2:]) <= P4_ANCHOR and box[2] * box[3] / P4_ANCHOR**2 < 0.5
                # The plate's annotated box (clipped, maybe hidden) lies within its drawn box.
                for plate in plates:
                    assert synth.box_gap(_xyxy(box), _xyxy(plate)) >= synth.CONTEXT_GAP
    assert tokens >= 3 * len(SCENES)  # room is found for most of them


def test_what_names_a_plate_vanishes_at_the_stride_of_p3() -> None:
    """Striped and checked plates differ pixel to pixel, and not once averaged over 8x8 cells."""
    stats: dict[str, list[tuple[float, float]]] = {"plate_striped": [], "plate_checked": []}
    for image, objects, _ in SCENES:
        named = _named(objects)
        pixels = np.asarray(image, np.float32).mean(-1) / 255
        for k, (name, box) in enumerate(named):
            if not name.startswith("plate_"):
                continue
            x0, y0, x1, y1 = _xyxy(box)
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 8  # a 16-px window inside every outline
            window = (cx - half, cy - half, cx + half, cy + half)
            covered = any(synth.box_gap(window, _xyxy(b)) < 2 for _, b in named[k + 1 :])
            if covered or min(x1 - x0, y1 - y0) < 40:
                continue  # something lies in front of the window, or the plate is clipped
            patch = pixels[round(cy) - half : round(cy) + half, round(cx) - half : round(cx) + half]
            cells = patch.reshape(2, 8, 2, 8).mean((1, 3))
            stats[name].append((float(patch.std()), float(cells.std())))
    for name, pairs in stats.items():
        fine, coarse = np.median(np.array(pairs), axis=0)
        assert len(pairs) >= 10 and fine > 0.05 and coarse < fine / 3, (name, fine, coarse)


def test_tags_are_the_theme_and_the_shapes_held() -> None:
    for _, objects, tags in SCENES[:40]:
        held = {name for name, _ in _named(objects) if name in synth.SHAPES}
        assert tags[0] in synth.TAGS and tags[0].startswith("theme_")
        assert set(tags[1:]) == {f"has_{shape}" for shape in held}


def test_same_arguments_reuse_the_cached_copy(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert synth.synthesize(tiny, seed=1, **TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before


def test_other_arguments_regenerate_our_folder(tmp_path: Path) -> None:
    out = synth.synthesize(tmp_path / "d", train=2, val=1, size=32)
    assert synth.synthesize(out, train=2, val=2, size=32) == out
    assert len(list((out / "images" / "val").iterdir())) == 2
    assert json.loads((out / synth.MANIFEST).read_text())["args"]["val"] == 2
    assert synth.is_intact(out, train=2, val=2, size=32, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no partial or old copies left


def test_a_damaged_copy_is_regenerated(tmp_path: Path) -> None:
    out = synth.synthesize(tmp_path / "d", train=2, val=1, size=32)
    (out / "images" / "train" / "000001.png").unlink()
    assert not synth.is_intact(out, train=2, val=1, size=32, seed=0)
    synth.synthesize(out, train=2, val=1, size=32)
    assert (out / "images" / "train" / "000001.png").is_file()


def test_refuses_a_folder_that_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{tmp_path}.*no dataset.json"):
        synth.synthesize(tmp_path, train=1, val=1, size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_crash_leaves_no_complete_looking_folder(tmp_path: Path, monkeypatch) -> None:
    real, calls = synth.render, []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(*args)

    monkeypatch.setattr(synth, "render", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        synth.synthesize(tmp_path / "d", train=4, val=1, size=32, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size must be an integer >= 32"):
        synth.synthesize("/nonexistent/never", size=16)


# --- the loader -------------------------------------------------------------------------------


def _image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _dataset(root: Path, **edits) -> Path:
    """A small hand-made COCO file: non-contiguous ids, a subfolder, two image sizes."""
    _image(root / "images" / "a" / "b" / "x.png", (40, 30), (255, 0, 0))
    _image(root / "images" / "y.png", (64, 48), (0, 0, 255))
    data = {
        "images": [
            {"id": 1000, "file_name": "a/b/x.png", "width": 40, "height": 30},
            {"id": 5, "file_name": "y.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}],
        "annotations": [
            {
                "id": 11,
                "image_id": 1000,
                "category_id": 17,
                "bbox": [2, 3, 10, 20],
                "area": 200,
                "iscrowd": 0,
            },
            {"id": 12, "image_id": 5, "category_id": 90, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 0},
            {"id": 13, "image_id": 5, "category_id": 3, "bbox": [60, 40, 10, 10]},  # clipped, no area/iscrowd
        ],
    }
    for key, value in edits.items():
        data[key] = value(data[key]) if callable(value) else value
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def test_non_contiguous_ids_subfolders_and_sizes(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    ds = CocoDetection(path, tmp_path / "images")
    assert len(ds) == 2 and ds.ids == [1000, 5]
    assert ds.categories == ["car", "cat", "zebra"] and ds.num_categories == 3
    assert ds.label_to_category_id == {1: 3, 2: 17, 3: 90}
    assert ds.category_id_to_label == {3: 1, 17: 2, 90: 3}

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert torch.equal(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert target["image_id"] == 1000
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 23.0]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2]

    image, target = ds[1]
    assert image.shape == (3, 48, 64) and torch.equal(image[:, 5, 5], torch.tensor([0.0, 0.0, 1.0]))
    assert target["image_id"] == 5 and target["labels"].tolist() == [3, 1]
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0.0, 64.0, 48.0], [60.0, 40.0, 64.0, 48.0]]))
    assert [ds.label_to_category_id[label] for label in target["labels"].tolist()] == [90, 3]
    assert ds.coco.anns[13]["area"] == 100 and ds.coco.anns[13]["iscrowd"] == 0  # filled in for COCOeval
    assert ds.skipped == {"crowd": 0, "zero_area": 0}


def test_from_dir_reads_the_generator_output(tiny: Path) -> None:
    ds = CocoDetection.from_dir(tiny, "val")
    assert find_split(tiny, "val") == (tiny / "annotations" / "instances_val.json", tiny / "images")
    assert len(ds) == 3 and ds.categories == list(synth.CATEGORIES)
    data = json.loads((tiny / "annotations" / "instances_val.json").read_text())
    image, target = ds[2]
    assert image.shape == (3, 64, 64)
    expected = [a for a in data["annotations"] if a["image_id"] == 3]
    assert target["labels"].tolist() == [a["category_id"] for a in expected]
    xywh = torch.tensor([a["bbox"] for a in expected])
    assert torch.allclose(target["boxes"], torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))


def test_from_dir_reads_cocos_own_layout(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "src")
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "src" / "images").rename(tmp_path / "coco" / "val2017")
    path.rename(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    ds = CocoDetection.from_dir(tmp_path / "coco", "val")
    assert ds.images_dir == tmp_path / "coco" / "val2017" and len(ds) == 2
    assert ds[0][0].shape == (3, 30, 40)
    with pytest.raises(DatasetError, match=r"coco: no annotation file for split 'train'"):
        CocoDetection.from_dir(tmp_path / "coco", "train")


def _bad(key: str, index: int, **fields):
    def edit(items: list) -> list:
        items[index].update(fields)
        return items

    return {key: edit}


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (_bad("images", 1, file_name="gone/z.png"), "image id 5: image file 'gone/z.png' not found"),
        (_bad("annotations", 1, bbox=[1, 1, -3, 4]), "annotation id 12: negative box size: width -3"),
        (
            _bad("annotations", 0, bbox=[1, 1, 3, -0.5]),
            "annotation id 11: negative box size: width 3, height -0.5",
        ),
        (_bad("annotations", 2, image_id=99), "annotation id 13: unknown image id 99"),
        (_bad("annotations", 2, category_id=4), "annotation id 13: unknown category id 4"),
        (_bad("annotations", 0, bbox=[1, 2, 3]), "annotation id 11: bbox must be 4 finite numbers"),
        (_bad("annotations", 2, id=12), "annotation id 12: duplicate annotation id"),
        (_bad("images", 0, id=5), "image id 5: duplicate image id"),
        (_bad("images", 0, width=0), "image id 1000: width must be a positive integer"),
        ({"categories": None}, "not a COCO annotation file (no 'categories' list)"),
    ],
)
def test_bad_annotations_name_the_file_and_the_id(tmp_path: Path, edits: dict, expected: str) -> None:
    path = _dataset(tmp_path, **edits)
    with pytest.raises(DatasetError) as error:
        CocoDetection(path, tmp_path / "images")
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_malformed_json_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace('"', "", 1)  # a key without its opening quote on line 5
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError) as error:
        CocoDetection(path, tmp_path / "images")
    assert str(error.value).startswith(f"{path}: malformed JSON: ") and "at line 5, column" in str(
        error.value
    )


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.json: cannot read annotation file"):
        CocoDetection(tmp_path / "nope.json", tmp_path)


def test_unreadable_image_fails_when_decoded_naming_file_and_id(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    (tmp_path / "images" / "y.png").write_bytes(b"not a png at all")
    ds = CocoDetection(path, tmp_path / "images")  # existence is checked on load, content on read
    ds[0]
    with pytest.raises(DatasetError) as error:
        ds[1]
    message = str(error.value)
    assert (
        message.startswith(f"{tmp_path / 'images' / 'y.png'}: image id 5 ")
        and "cannot decode image" in message
    )
    assert "\n" not in message


def test_image_size_disagreeing_with_the_file_is_an_error(tmp_path: Path) -> None:
    path = _dataset(tmp_path, images=lambda images: [{**images[0], "width": 41}, images[1]])
    ds = CocoDetection(path, tmp_path / "images")
    with pytest.raises(
        DatasetError, match=r"x\.png: image id 1000 .*image is 40x30 but the annotation file says 41x30"
    ):
        ds[0]


def test_zero_area_and_crowd_are_skipped_counted_and_logged_once(tmp_path: Path, caplog) -> None:
    extra = [
        {"id": 20, "image_id": 5, "category_id": 3, "bbox": [5, 5, 0, 7], "area": 0, "iscrowd": 0},
        {"id": 21, "image_id": 5, "category_id": 3, "bbox": [5, 5, 8, 0], "iscrowd": 0},
        {"id": 22, "image_id": 5, "category_id": 3, "bbox": [100, 100, 8, 8], "iscrowd": 0},  # outside
        {"id": 23, "image_id": 1000, "category_id": 17, "bbox": [0, 0, 20, 20], "iscrowd": 1},
    ]
    path = _dataset(tmp_path, annotations=lambda anns: anns + extra)
    with caplog.at_level(logging.INFO, logger="nas.data.coco"):
        ds = CocoDetection(path, tmp_path / "images")
    assert ds.skipped == {"crowd": 1, "zero_area": 3}
    assert len(ds[0][1]["boxes"]) == 1 and len(ds[1][1]["boxes"]) == 2
    records = [r for r in caplog.records if r.name == "nas.data.coco"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].getMessage() == f"{path}: left out 1 crowd and 3 zero-area annotations of 7"
    assert set(ds.coco.anns) == {11, 12, 13, 20, 21, 22, 23}  # COCOeval still sees the crowd region


def test_each_image_is_decoded_once(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    ds = CocoDetection(path, tmp_path / "images")
    first, _ = ds[0]
    (tmp_path / "images" / "a" / "b" / "x.png").unlink()
    for _ in range(3):
        again, _ = ds[0]
        assert torch.equal(again, first)
    again[:] = 0  # items are copies: the cached image is untouched
    assert torch.equal(ds[0][0], first) and ds.decodes == 1


def test_the_cache_is_bounded_and_optional(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    ds = CocoDetection(path, tmp_path / "images", cache_bytes=3 * 40 * 30)  # room for image 0 only
    ds.preload()
    for _ in range(2):
        ds[0], ds[1]
    assert ds.decodes == 3
    uncached = CocoDetection(path, tmp_path / "images", cache_bytes=0)
    uncached[0]
    (tmp_path / "images" / "a" / "b" / "x.png").unlink()
    with pytest.raises(DatasetError, match=r"x\.png: image id 1000 .*image file not found"):
        uncached[0]


def test_collate_and_data_loader(tiny: Path) -> None:
    ds = CocoDetection.from_dir(tiny, "train")
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert isinstance(images, list) and len(images) == len(targets) == 4
    assert all(image.shape == (3, 64, 64) for image in images)
    assert [t["image_id"] for t in targets] == [1, 2, 3, 4]
    assert all(t["boxes"].shape == (len(t["labels"]), 4) for t in targets)
    assert not math.isnan(float(torch.cat([t["boxes"] for t in targets]).sum()))
