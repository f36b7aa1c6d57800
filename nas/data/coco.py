"""Any COCO-format detection dataset as a torch ``Dataset``, validated on load.

Two layouts are found by ``CocoDetection.from_dir(root, split)``:

- ours (and ``nas.data.synth``'s): ``root/annotations/instances_{split}.json`` with ``file_name``
  relative to ``root/images`` (e.g. ``train/000000.png``);
- COCO's own: ``root/annotations/instances_{split}2017.json`` with images in ``root/{split}2017``.

Or name the files: ``CocoDetection(json_path, images_dir)``. ``file_name`` may hold subfolders;
image and category ids need not be contiguous -- categories are mapped to labels 1..K in the
order of their ids (0 is the background of torchvision's detectors, so they take
``num_classes = K + 1``).

The annotation file is checked in one pass before anything else, and every problem is a
``DatasetError`` whose one-line message names the file and the image or annotation id:
malformed JSON (with line and column), a missing image file, a negative box width or height,
an annotation of an unknown image or category, duplicate or malformed ids and fields. Images are
decoded lazily; one that cannot be decoded, or whose size disagrees with the annotation file,
fails when first read, naming the image file and its id. Crowd annotations and zero-area boxes
are not errors: they are left out of the training targets, counted in ``skipped`` and logged
once (they stay in ``coco``, the pycocotools index used for evaluation, where COCOeval treats
crowd regions as it should). Missing ``area`` and ``iscrowd`` fields are filled in
(``w * h``, 0) so that COCOeval can run on any valid file.

Decoded images are kept in memory as uint8 tensors (up to ``cache_bytes``), so training epochs
never decode an image twice in a process. With ``DataLoader(num_workers > 0)`` each worker holds
its own cache; call ``preload()`` before the loader forks to share one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from nas.errors import DatasetError

logger = logging.getLogger(__name__)

Target = dict[str, Any]  # {"boxes": float32 (N, 4) xyxy, "labels": int64 (N,), "image_id": int}
Transforms = Callable[[Tensor, Target], tuple[Tensor, Target]]

DEFAULT_CACHE_BYTES = 1 << 30  # the default proxy dataset takes 63 MB decoded


def find_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation json, images folder)`` of ``split`` in a dataset folder (see module doc).

    The images folder is the first candidate holding the first image's ``file_name``:
    ``root/images``, ``root/images/{split}``, ``root/{split}`` for our layout and
    ``root/{split}2017``, ``root/images/{split}2017`` for COCO's.
    """
    json_path, candidates = _locate(root, split)
    return json_path, _images_dir(candidates, _read_json(json_path))


def _locate(root: str | Path, split: str) -> tuple[Path, list[Path]]:
    root = Path(root)
    ours = root / "annotations" / f"instances_{split}.json"
    coco = root / "annotations" / f"instances_{split}2017.json"
    if ours.is_file():
        return ours, [root / "images", root / "images" / split, root / split]
    if coco.is_file():
        return coco, [root / f"{split}2017", root / "images" / f"{split}2017"]
    raise DatasetError(
        f"{root}: no annotation file for split {split!r} "
        f"(looked for annotations/instances_{split}.json and annotations/instances_{split}2017.json)"
    )


def _images_dir(candidates: list[Path], data: dict[str, Any]) -> Path:
    images = data["images"]
    first = images[0].get("file_name") if images and isinstance(images[0], dict) else None
    if isinstance(first, str) and first:
        for folder in candidates:
            if (folder / first).is_file():
                return folder
    return candidates[0]


class CocoDetection(Dataset[tuple[Tensor, Target]]):
    """A COCO-format detection dataset: ``dataset[i] -> (image, target)``.

    ``image`` is float32 (3, H, W) in [0, 1]; ``target`` has ``boxes`` (float32 (N, 4), x1 y1 x2
    y2 in pixels), ``labels`` (int64 (N,), 1..K) and ``image_id`` (the COCO image id). Images
    come in the order of the annotation file's ``images`` list.

    Args:
        annotation_file: the COCO json.
        images_dir: the folder that ``file_name`` is relative to.
        transforms: optional ``(image, target) -> (image, target)``, applied to every item.
        cache_bytes: memory for decoded images (uint8); 0 disables the cache. Once full, further
            images are decoded on every read (no eviction: under random access that keeps a fixed
            subset cached, the best a bounded cache can do).

    Attributes:
        coco: the pycocotools index of the file (all annotations, for COCOeval).
        ids: image ids in dataset order.
        category_ids: COCO category ids in label order: label ``k`` is ``category_ids[k - 1]``.
        categories: category names in label order.
        skipped: annotations left out of the targets: ``{"crowd": n, "zero_area": m}``; a box that
            lies wholly outside its image counts as zero-area.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images_dir: str | Path,
        *,
        transforms: Transforms | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        path = Path(annotation_file)
        self._setup(path, Path(images_dir), _read_json(path), transforms, cache_bytes)

    def _setup(
        self,
        annotation_file: Path,
        images_dir: Path,
        data: dict[str, Any],
        transforms: Transforms | None,
        cache_bytes: int,
    ) -> None:
        self.annotation_file = annotation_file
        self.images_dir = images_dir
        self.transforms = transforms
        self.cache_bytes = cache_bytes
        parsed = _Parser(annotation_file, images_dir).parse(data)
        self.ids: list[int] = parsed.image_ids
        self.category_ids: list[int] = parsed.category_ids
        self.categories: list[str] = parsed.category_names
        self.skipped: dict[str, int] = parsed.skipped
        self._images: list[dict[str, Any]] = parsed.images
        self._boxes: list[Tensor] = parsed.boxes
        self._labels: list[Tensor] = parsed.labels
        self._cache: dict[int, Tensor] = {}
        self._cached_bytes = 0
        self.decodes = 0  # images decoded so far in this process (cache misses)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        if self.skipped["crowd"] or self.skipped["zero_area"]:
            level = logging.WARNING if self.skipped["zero_area"] else logging.INFO
            logger.log(
                level,
                "%s: left out %d crowd and %d zero-area annotations of %d",
                annotation_file,
                self.skipped["crowd"],
                self.skipped["zero_area"],
                len(data["annotations"]),
            )

    @classmethod
    def from_dir(
        cls,
        root: str | Path,
        split: str = "train",
        *,
        transforms: Transforms | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> CocoDetection:
        """The ``split`` of a dataset folder in our layout or COCO's (see ``find_split``)."""
        json_path, candidates = _locate(root, split)
        data = _read_json(json_path)  # read once: COCO's train json is 450 MB
        dataset = cls.__new__(cls)
        dataset._setup(json_path, _images_dir(candidates, data), data, transforms, cache_bytes)
        return dataset

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {label: cid for label, cid in enumerate(self.category_ids, start=1)}

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return {cid: label for label, cid in enumerate(self.category_ids, start=1)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.read_image(index).float().div_(255.0)
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def target(self, index: int) -> Target:
        """The target of image ``index`` (without decoding the image)."""
        return {
            "boxes": self._boxes[index].clone(),
            "labels": self._labels[index].clone(),
            "image_id": self.ids[index],
        }

    def read_image(self, index: int) -> Tensor:
        """Image ``index`` as uint8 (3, H, W), from the cache or decoded (and cached if room).

        The tensor may be the cached one itself: read it, do not modify it.
        """
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image = self._decode(index)
        nbytes = image.numel()
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[index] = image
            self._cached_bytes += nbytes
        return image

    def preload(self) -> None:
        """Decodes every image into the cache now (as far as ``cache_bytes`` allows)."""
        for index in range(len(self)):
            if self._cached_bytes >= self.cache_bytes:
                break
            self.read_image(index)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._images[index]["file_name"]

    def _decode(self, index: int) -> Tensor:
        info = self._images[index]
        path = self.image_path(index)
        where = f"{path}: image id {info['id']} (of {self.annotation_file})"
        try:
            with Image.open(path) as opened:
                pixels = np.array(opened.convert("RGB"))
        except FileNotFoundError as e:
            raise DatasetError(f"{where}: image file not found") from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{where}: cannot decode image: {_one_line(e)}") from e
        height, width = pixels.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            says = f"{info['width']}x{info['height']}"
            raise DatasetError(f"{where}: image is {width}x{height} but the annotation file says {says}")
        self.decodes += 1
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """A detection batch as torchvision's detectors take it: a list of images, a list of targets."""
    return [image for image, _ in batch], [target for _, target in batch]


# --- validation -------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e.strerror or _one_line(e)}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed JSON: {_one_line(e)}") from e
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise DatasetError(f"{path}: not a COCO annotation file (top level is a JSON {kind}, not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: not a COCO annotation file (no {key!r} list)")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Parsed:
    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.category_ids: list[int] = []
        self.category_names: list[str] = []
        self.boxes: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.skipped = {"crowd": 0, "zero_area": 0}


class _Parser:
    """One pass over a loaded COCO json: checks it, fills defaults, builds the targets."""

    def __init__(self, json_path: Path, images_dir: Path) -> None:
        self.path = json_path
        self.images_dir = images_dir

    def fail(self, where: str, reason: str) -> DatasetError:
        return DatasetError(f"{self.path}: {where}: {reason}")

    def parse(self, data: dict[str, Any]) -> _Parsed:
        out = _Parsed()
        labels = self._categories(data["categories"], out)
        index_of = self._images(data["images"], out)
        boxes: list[list[list[float]]] = [[] for _ in out.images]
        classes: list[list[int]] = [[] for _ in out.images]
        seen: set[int] = set()
        for position, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not _is_int(ann.get("id")):
                raise self.fail(f"annotation #{position}", "no integer 'id'")
            aid = ann["id"]
            where = f"annotation id {aid}"
            if aid in seen:
                raise self.fail(where, "duplicate annotation id")
            seen.add(aid)
            image_id, category_id = ann.get("image_id"), ann.get("category_id")
            if not _is_int(image_id) or image_id not in index_of:
                raise self.fail(where, f"unknown image id {image_id!r}")
            if not _is_int(category_id) or category_id not in labels:
                raise self.fail(where, f"unknown category id {category_id!r}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise self.fail(where, f"bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if w < 0 or h < 0:
                raise self.fail(where, f"negative box size: width {w:g}, height {h:g} (image id {image_id})")
            ann.setdefault("area", w * h)
            ann.setdefault("iscrowd", 0)
            if ann["iscrowd"]:
                out.skipped["crowd"] += 1
                continue
            i = index_of[image_id]
            width, height = out.images[i]["width"], out.images[i]["height"]
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 <= x1 or y2 <= y1:
                out.skipped["zero_area"] += 1
                continue
            boxes[i].append([x1, y1, x2, y2])
            classes[i].append(labels[category_id])
        out.boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        out.labels = [torch.tensor(c, dtype=torch.int64) for c in classes]
        return out

    def _categories(self, categories: list[Any], out: _Parsed) -> dict[int, int]:
        names: dict[int, str] = {}
        for position, cat in enumerate(categories):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise self.fail(f"category #{position}", "no integer 'id'")
            if cat["id"] in names:
                raise self.fail(f"category id {cat['id']}", "duplicate category id")
            names[cat["id"]] = str(cat.get("name", cat["id"]))
        out.category_ids = sorted(names)
        out.category_names = [names[cid] for cid in out.category_ids]
        return {cid: label for label, cid in enumerate(out.category_ids, start=1)}

    def _images(self, images: list[Any], out: _Parsed) -> dict[int, int]:
        index_of: dict[int, int] = {}
        for position, image in enumerate(images):
            if not isinstance(image, dict) or not _is_int(image.get("id")):
                raise self.fail(f"image #{position}", "no integer 'id'")
            where = f"image id {image['id']}"
            if image["id"] in index_of:
                raise self.fail(where, "duplicate image id")
            file_name = image.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise self.fail(where, "no 'file_name'")
            for key in ("width", "height"):
                if not _is_int(image.get(key)) or image[key] <= 0:
                    raise self.fail(where, f"{key} must be a positive integer, got {image.get(key)!r}")
            if not (self.images_dir / file_name).is_file():
                raise self.fail(where, f"image file {file_name!r} not found in {self.images_dir}")
            index_of[image["id"]] = len(out.images)
            out.images.append(image)
            out.image_ids.append(image["id"])
        return index_of
