"""The embedded dataset: a deterministic generator of shape scenes in COCO format, built so that
fusing features across scales pays.

``synthesize(out_dir)`` writes::

    out_dir/images/train/000000.png ...        lossless PNG, one scene an image
    out_dir/images/val/000000.png ...
    out_dir/annotations/instances_train.json   COCO: file_name is relative to out_dir/images
    out_dir/annotations/instances_val.json     ("train/000000.png"), image ids count from 1
    out_dir/dataset.json                       manifest: generator, version, arguments; written last

It is a test bed, not evidence about anyone's data: each reason necks exist for is given work
to do, one group of classes a reason (a category's ``supercategory`` names its group):

- *context* -- top-down paths pay. Every scene has a theme (``THEMES``: square, bar, disc or
  ellipse), the outline of its one large plate, which lies wholly in the image. Tokens -- 3-6
  small solid discs, all alike -- are labelled with the scene's theme (``token_square``, ...),
  and each lies at least ``CONTEXT_GAP`` px (box to box) from the plate. The themes come in
  pairs that look the same in any part of the plate (straight edges and right-angled corners;
  smooth curves) and differ only in the whole plate's aspect, and tokens are small enough
  (``TOKEN_EXTENT``) to be matched on P3 alone: what names a token is only seen by the coarse
  levels, far from it.
- *detail* -- bottom-up paths pay. The plate (``plate_striped`` or ``plate_checked``) is named by
  its fill alone: fine stripes or a fine checker of ``DETAIL_PERIOD`` px, the same two colours
  either way, so that averaged over a stride-8 cell the two look alike. The fine levels see the
  difference; the coarse levels, where the plate is detected, lose it.
- *shape* -- neither path is everything: 1-4 middle-sized crosses, stars and rings, named by
  their own outline.

Sizes span ``TOKEN_EXTENT`` 8-11 px, ``SHAPE_EXTENT`` 16-36 px and ``PLATE_EXTENT`` 44-72 px at
128 px (all scale with the image side), 3 octaves from one stride of P3 up to P6's anchors.
Clutter (2-6 unannotated lines, polylines, arcs, blobs and specks, none over 0.35 of the image
side), textured backgrounds and occlusion (plate at the back, tokens at the front, distractors
anywhere; an object with less than ``MIN_VISIBLE`` of its area visible is not annotated) make
finding harder, not impossible: every object differs from what lies under it by 0.15-0.55 in
luminance (a token by ``TOKEN_CONTRAST``, a plate's nearer colour by ``PLATE_CONTRAST``, its
other one further still, so its outline shows at every scale), and the stripes of the fills and
backgrounds that are not plates are too coarse (>= 8 px) or absent to pass for one.

The proxy's backbone is pretrained on coarser labels than these (``nas.proxy.pretrain``), as real
backbones are on ImageNet, and two extra fields carry them (COCO readers ignore both): each
image's ``tags``, its scene-level labels (``TAGS``: its theme and which middle shapes it holds;
the vocabulary is a top-level ``tags`` list), and each annotation's ``coarse`` label (``COARSE``:
a token, each middle shape, a plate by its outline). Neither tells which token or which plate
an object is: that is the neck's to find.

Defaults (``DEFAULT_SIZE`` = 128 px, 4096 train and 256 val images) are chosen for a proxy
trial that trains and evaluates in about a minute on 2 CPU cores: 128 px is the smallest image
on which all five pyramid levels P3..P7 (strides 8..128) exist, and 4096 scenes are enough
that a 500-step trial of 16 sees each about twice and cannot memorise them (with 1,024 scenes, a
former version, the proxy scored AP 12.6 on its training scenes and 1.1 on the validation ones).

Every image is a pure function of ``(seed, split, index, size)`` (see ``render``): its random
generator is seeded from exactly those, so any image can be regenerated alone, and equal
arguments give byte-identical files.

Caching: a second call with the same arguments on an intact folder (manifest, annotation files
and image listing as recorded) returns at once and writes nothing. Generation happens in a
hidden sibling folder that is moved into place only when complete (manifest written last), so a
crash never leaves a folder that looks complete. A folder of ours made with other arguments or
another version is replaced; a non-empty folder that is not ours (no manifest of this generator)
is never touched: ``FileExistsError``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

GENERATOR = "nasfpn.data.synth"
VERSION = 8  # bump whenever the defaults or the rendering change: cached copies are then regenerated
MANIFEST = "dataset.json"
SPLITS = ("train", "val")

# A scene's plate outline, which names its tokens. In pairs alike in any local view -- straight
# edges and right-angled corners, or smooth curves -- told apart only by the whole plate's aspect.
THEMES = ("square", "bar", "disc", "ellipse")
SHAPES = ("cross", "star", "ring")  # the middle band, named by their own outline
# (name, group): the group is the COCO supercategory, one reason for necks a group.
CATEGORY_GROUPS: tuple[tuple[str, str], ...] = (
    *((f"token_{theme}", "context") for theme in THEMES),
    *((shape, "shape") for shape in SHAPES),
    ("plate_striped", "detail"),
    ("plate_checked", "detail"),
)
CATEGORIES = tuple(name for name, _ in CATEGORY_GROUPS)
TAGS = (*(f"theme_{theme}" for theme in THEMES), *(f"has_{shape}" for shape in SHAPES))
# An annotation's ``coarse`` label, what the backbone is pretrained to find (nas.proxy.pretrain): a token,
# each middle shape, a plate by its outline -- everything but what names a token or a plate.
COARSE = ("token", *SHAPES, *(f"plate_{theme}" for theme in THEMES))

DEFAULT_TRAIN = 4096
DEFAULT_VAL = 256
DEFAULT_SIZE = 128
MIN_SIZE = 32

# Extents (circumscribed diameter) and distances in px at DEFAULT_SIZE; they scale with the image.
TOKEN_EXTENT = (8.0, 11.0)  # under 0.5 IoU with P4's 16-px anchors: tokens are found on P3 alone
SHAPE_EXTENT = (16.0, 36.0)
PLATE_EXTENT = (44.0, 72.0)
CONTEXT_GAP = 32.0  # least distance between a token's box and its plate's box
DETAIL_PERIOD = (3.0, 4.5)  # px a period of a plate's stripes or checks, not scaled: a fine detail
TOKENS_PER_IMAGE = (3, 6)  # inclusive ranges of objects tried (some may find no room or be hidden)
SHAPES_PER_IMAGE = (1, 4)
DISTRACTORS_PER_IMAGE = (2, 6)
TOKEN_CONTRAST = (0.3, 0.6)  # luminance difference of a token from what lies under it
THIN_SIDE = (0.4, 0.5)  # a bar's or an ellipse's short side over its long one
PLATE_CONTRAST = (0.2, 0.45)  # of the nearer of a plate's two colours
MIN_VISIBLE = 0.6  # objects with less of their area visible are not annotated
MAX_OUTSIDE = 0.25  # at most this fraction of an object's extent may lie outside the image

_SPLIT_CODES = {"train": 0, "val": 1}
_CHUNK = 64  # images a worker task renders
_DISTRACTORS = ("line", "polyline", "arc", "blob", "specks")
_FILLS = ("solid", "solid", "gradient", "speckle")  # no fine stripes: they name plates


def synthesize(
    out_dir: str | Path,
    *,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Writes the dataset into ``out_dir`` (or finds it there already) and returns ``out_dir``.

    Args:
        out_dir: the dataset folder; created with its parents. Must be absent, empty, or a folder
            this function wrote.
        train: number of training images.
        val: number of validation images.
        size: side of the square images in pixels (at least ``MIN_SIZE``).
        seed: the dataset's seed; image ``i`` of a split depends only on (seed, split, i, size).
        workers: processes rendering images (default: one a CPU core); the output is the same
            for any number.

    Raises:
        ValueError: an argument out of range.
        FileExistsError: ``out_dir`` holds files that are not a dataset of this generator.
    """
    args = _arguments(train=train, val=val, size=size, seed=seed)
    out = Path(out_dir)
    if is_intact(out, **args):
        return out
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _generate(tmp, args, _workers(workers))
        _install(tmp, out, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
    return out


def is_intact(out_dir: str | Path, *, train: int, val: int, size: int, seed: int) -> bool:
    """Whether ``out_dir`` holds this generator's complete dataset for exactly these arguments."""
    out = Path(out_dir)
    manifest = _read_manifest(out)
    args = {"train": train, "val": val, "size": size, "seed": seed}
    if manifest is None or manifest.get("version") != VERSION or manifest.get("args") != args:
        return False
    for relative, nbytes in manifest.get("files", {}).items():
        path = out / relative
        if not path.is_file() or path.stat().st_size != nbytes:
            return False
    for split in SPLITS:
        try:
            names = set(os.listdir(out / "images" / split))
        except OSError:
            return False
        if names != {_image_name(i) for i in range(args[split])}:
            return False
    return True


def render(
    seed: int, split: str, index: int, size: int = DEFAULT_SIZE
) -> tuple[Image.Image, list[dict], list[str]]:
    """One scene: the RGB image, its annotations and its tags.

    Each annotation is ``{"category_id": 1..9, "bbox": [x, y, w, h], "area": w * h, "coarse":
    label}`` (the full box of the object, clipped to the image; ``COARSE``), in depth order, back
    to front. The tags are the
    scene's image-level labels (``TAGS``): its theme, then each middle shape it holds.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index, size])
    canvas = _background(rng, size)
    theme = int(rng.integers(len(THEMES)))
    layers = _objects(rng, size, theme) + _distractors(rng, size)
    depth = np.array([layer.depth for layer in layers])
    layers = [layers[i] for i in np.argsort(depth, kind="stable")]  # back to front

    # Front to back: the share of each object's area not covered by what lies in front of it.
    cover = np.zeros((size, size), np.float32)
    visible = [0.0] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        alpha, region = layer.clipped(size)
        if layer.category is not None and layer.total_alpha > 0:
            visible[i] = float((alpha * (1.0 - cover[region])).sum()) / layer.total_alpha
        cover[region] = 1.0 - (1.0 - cover[region]) * (1.0 - alpha)

    annotations: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        alpha, region = layer.clipped(size)
        under = canvas[region]
        weight = alpha.sum()
        base = (under * alpha[..., None]).sum((0, 1)) / weight if weight > 0 else under.mean((0, 1))
        if layer.texture is None:
            fill = _fill(rng, alpha.shape, _luminance(base))
        elif layer.texture == "solid":
            fill = np.broadcast_to(_contrasting(rng, _luminance(base), *TOKEN_CONTRAST), (*alpha.shape, 3))
        else:
            fill = _fine_texture(rng, alpha.shape, _luminance(base), checked=layer.texture == "checked")
        canvas[region] = under * (1.0 - alpha[..., None]) + fill * alpha[..., None]
        if layer.category is not None and visible[i] >= MIN_VISIBLE:
            x0, y0, x1, y1 = (min(max(v, 0.0), float(size)) for v in layer.box)
            if x1 > x0 and y1 > y0:
                bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
                area = round(bbox[2] * bbox[3], 2)
                annotation = {
                    "category_id": layer.category,
                    "bbox": bbox,
                    "area": area,
                    "coarse": layer.coarse,
                }
                annotations.append(annotation)

    sensor_noise = np.float32(rng.uniform(0.02, 0.08))  # peak to peak, uniform
    canvas += (rng.random(canvas.shape, np.float32) - 0.5) * sensor_noise
    pixels = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    held = {CATEGORIES[a["category_id"] - 1] for a in annotations}
    tags = [f"theme_{THEMES[theme]}", *(f"has_{shape}" for shape in SHAPES if shape in held)]
    return Image.fromarray(pixels, "RGB"), annotations, tags


# --- writing ---------------------------------------------------------------------------------


def _arguments(*, train: int, val: int, size: int, seed: int) -> dict[str, int]:
    args = {"train": train, "val": val, "size": size, "seed": seed}
    for name, value in args.items():
        low = MIN_SIZE if name == "size" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"synthesize: {name} must be an integer >= {low}, got {value!r}")
    return args


def _image_name(index: int) -> str:
    return f"{index:06d}.png"


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; not writing a dataset there")
    if any(out.iterdir()) and _read_manifest(out) is None:
        raise FileExistsError(
            f"{out}: folder holds files but no {MANIFEST} of {GENERATOR}; "
            "not overwriting it (choose an empty or new folder)"
        )


def _generate(root: Path, args: dict[str, int], workers: int) -> None:
    categories = [
        {"id": i + 1, "name": name, "supercategory": group} for i, (name, group) in enumerate(CATEGORY_GROUPS)
    ]
    files: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    (root / "annotations").mkdir()
    for split in SPLITS:
        folder = root / "images" / split
        folder.mkdir(parents=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, (objects, tags) in enumerate(_render_split(folder, split, args, workers)):
            image_id = index + 1
            file_name = f"{split}/{_image_name(index)}"
            side = args["size"]
            images.append(
                {"id": image_id, "file_name": file_name, "width": side, "height": side, "tags": tags}
            )
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj, "iscrowd": 0})
        data = {
            "info": {"description": f"{GENERATOR} v{VERSION} {split}", "version": str(VERSION), **args},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
            "tags": list(TAGS),
        }
        relative = f"annotations/instances_{split}.json"
        text = json.dumps(data, separators=(",", ":"))
        (root / relative).write_text(text)
        files[relative] = len(text.encode())
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    manifest = {"generator": GENERATOR, "version": VERSION, "args": args, "counts": counts, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder complete


def _workers(workers: int | None) -> int:
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # a spawned worker would re-import torch through nas/__init__: not worth it
    return max(1, workers)


Labels = tuple[list[dict], list[str]]  # an image's annotations and tags


def _render_chunk(folder: Path, split: str, args: dict[str, int], indices: range) -> list[Labels]:
    """Renders and writes images ``indices`` of ``split``; returns their annotations and tags."""
    out = []
    for index in indices:
        image, objects, tags = render(args["seed"], split, index, args["size"])
        image.save(folder / _image_name(index), format="PNG", compress_level=1)
        out.append((objects, tags))
    return out


def _render_split(folder: Path, split: str, args: dict[str, int], workers: int) -> Iterator[Labels]:
    """Every image's annotations and tags in index order, rendered by ``workers`` forked processes."""
    count = args[split]
    chunks = [range(i, min(i + _CHUNK, count)) for i in range(0, count, _CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _render_chunk(folder, split, args, chunk)
        return
    # Forked workers run only numpy and PIL (no torch, no threads of their own); the output does
    # not depend on how images are spread over them.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
        for result in pool.map(_render_chunk, *zip(*[(folder, split, args, c) for c in chunks])):
            yield from result


def _install(tmp: Path, out: Path, args: dict[str, int]) -> None:
    """Moves the finished ``tmp`` to ``out``, replacing an empty folder or a stale one of ours."""
    old = None
    if out.exists():
        if is_intact(out, **args):  # another process finished the same dataset meanwhile
            return
        _check_replaceable(out)
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
            out.rename(old)
        else:
            out.rmdir()
    try:
        tmp.rename(out)
    except OSError:
        if not is_intact(out, **args):  # unless another process installed the same meanwhile
            if old is not None and not out.exists():
                old.rename(out)  # put the previous dataset back
                old = None
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- scene content ----------------------------------------------------------------------------


Box = tuple[float, float, float, float]  # x0, y0, x1, y1
ToPixels = Callable[[float, float], tuple[float, float]]
DrawFn = Callable[[ImageDraw.ImageDraw, ToPixels, int], None]  # (draw, to_px, supersampling)


@dataclass
class _Layer:
    """A shape rendered as coverage ``alpha`` over the pixels ``[y0, y0+h) x [x0, x0+w)``."""

    alpha: np.ndarray  # float32 (h, w) in [0, 1]; may extend beyond the image
    x0: int
    y0: int
    depth: float
    category: int | None = None  # 1-based category id, None for a distractor
    box: Box = (0.0, 0.0, 0.0, 0.0)  # unclipped
    total_alpha: float = 0.0
    texture: str | None = None  # a plate's fine "striped" or "checked", a token's "solid"; else any fill
    coarse: str = ""  # what a backbone may know of the object (see COARSE)

    def clipped(self, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
        h, w = self.alpha.shape
        ya, xa = max(self.y0, 0), max(self.x0, 0)
        yb, xb = min(self.y0 + h, size), min(self.x0 + w, size)
        yb, xb = max(yb, ya), max(xb, xa)
        alpha = self.alpha[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0]
        return alpha, (slice(ya, yb), slice(xa, xb))


def _supersampling(extent: float) -> int:
    return 4 if extent < 32 else 2


def _raster(extent: float, cx: float, cy: float, draw_fn: DrawFn) -> tuple[np.ndarray, int, int, Box]:
    """Renders ``draw_fn(draw, to_px, ss)`` around (cx, cy) supersampled ``ss`` times.

    Returns the coverage (alpha) at image resolution, its origin and the shape's box.
    ``to_px(x, y)`` maps image coordinates to the supersampled patch. The box is the tight
    bounds of the shape at the supersampled resolution, in image coordinates.
    """
    ss = _supersampling(extent)
    half = extent / 2 + 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    w, h = math.ceil(cx + half) - x0, math.ceil(cy + half) - y0
    mask = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(mask)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - x0) * ss, (y - y0) * ss

    draw_fn(draw, to_px, ss)
    high = np.asarray(mask)
    rows, cols = np.flatnonzero(high.any(1)), np.flatnonzero(high.any(0))
    if rows.size == 0:
        box = (cx, cy, cx, cy)
    else:
        box = (x0 + cols[0] / ss, y0 + rows[0] / ss, x0 + (cols[-1] + 1) / ss, y0 + (rows[-1] + 1) / ss)
    alpha = np.asarray(mask.reduce(ss), np.float32) / 255.0
    return alpha, x0, y0, box


def _regular(n: int, radius: float, theta: float, cx: float, cy: float, inner: float | None = None) -> list:
    points = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        r = radius if inner is None or k % 2 == 0 else inner
        a = theta + 2 * math.pi * k / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _rotated_rect(cx: float, cy: float, half_l: float, half_w: float, theta: float) -> list:
    c, s = math.cos(theta), math.sin(theta)
    corners = ((half_l, half_w), (-half_l, half_w), (-half_l, -half_w), (half_l, -half_w))
    return [(cx + u * c - v * s, cy + u * s + v * c) for u, v in corners]


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, theta: float, n: int = 40) -> list:
    c, s = math.cos(theta), math.sin(theta)
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        u, v = rx * math.cos(a), ry * math.sin(a)
        pts.append((cx + u * c - v * s, cy + u * s + v * c))
    return pts


def _shape(rng: np.random.Generator, name: str, extent: float, cx: float, cy: float) -> DrawFn:
    """A draw function for class ``name`` with circumscribed diameter ``extent`` at (cx, cy)."""
    r = extent / 2
    theta = rng.uniform(0, 2 * math.pi)
    if name == "disc":
        return lambda d, p, ss: d.ellipse([*p(cx - r, cy - r), *p(cx + r, cy + r)], fill=255)
    if name == "ring":
        inner = r - max(0.8, r * rng.uniform(0.25, 0.45))

        def ring(d, p, ss):
            d.ellipse([*p(cx - r, cy - r), *p(cx + r, cy + r)], fill=255)
            d.ellipse([*p(cx - inner, cy - inner), *p(cx + inner, cy + inner)], fill=0)

        return ring
    if name == "square":
        polygons = [_regular(4, r, theta, cx, cy)]
    elif name == "triangle":
        polygons = [_regular(3, r, theta, cx, cy)]
    elif name == "cross":
        half_w = max(0.5, r * rng.uniform(0.3, 0.4))
        polygons = [_rotated_rect(cx, cy, r, half_w, theta + k * math.pi / 2) for k in (0, 1)]
    elif name == "bar":
        polygons = [_rotated_rect(cx, cy, r, r * rng.uniform(*THIN_SIDE), theta)]
    elif name == "ellipse":
        polygons = [_ellipse_points(cx, cy, r, r * rng.uniform(*THIN_SIDE), theta)]
    elif name == "star":
        polygons = [_regular(5, r, theta, cx, cy, inner=r * rng.uniform(0.55, 0.65))]
    else:
        raise AssertionError(name)

    def draw(d, p, ss):
        for polygon in polygons:
            d.polygon([p(x, y) for x, y in polygon], fill=255)

    return draw


def _extent(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform in [low, high]."""
    return 2.0 ** rng.uniform(math.log2(low), math.log2(high))


def _centre(rng: np.random.Generator, size: int, extent: float) -> tuple[float, float]:
    margin = extent * (0.5 - MAX_OUTSIDE)
    return rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)


def box_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two xyxy boxes (0 when they touch or overlap)."""
    dx = max(0.0, a[0] - b[2], b[0] - a[2])
    dy = max(0.0, a[1] - b[3], b[1] - a[3])
    return math.hypot(dx, dy)


def _layer(
    rng: np.random.Generator,
    shape: str,
    extent: float,
    centre: tuple[float, float],
    depth: float,
    **kwargs: Any,
) -> _Layer:
    alpha, x0, y0, box = _raster(extent, *centre, _shape(rng, shape, extent, *centre))
    return _Layer(alpha, x0, y0, depth, box=box, total_alpha=float(alpha.sum()), **kwargs)


def _objects(rng: np.random.Generator, size: int, theme: int) -> list[_Layer]:
    """The plate (at the back, in a corner so that tokens find room), the middle shapes, and the
    tokens (in front), each token at least ``CONTEXT_GAP`` from the plate's box."""
    scale = size / DEFAULT_SIZE
    extent = _extent(rng, *(e * scale for e in PLATE_EXTENT))
    # Wholly inside the image (a bar's corners reach 0.56 of its extent): a clipped square would
    # pass for a bar.
    reach = extent * 0.6 + rng.uniform(0.0, 0.2 * size, 2)
    flip = rng.random(2) < 0.5
    cx, cy = (float(size - r if f else r) for r, f in zip(reach, flip))
    centre = (cx, cy)
    texture = ("striped", "checked")[int(rng.integers(2))]
    category = CATEGORIES.index(f"plate_{texture}") + 1
    coarse = f"plate_{THEMES[theme]}"
    plate = _layer(rng, THEMES[theme], extent, centre, 0.0, category=category, texture=texture, coarse=coarse)
    layers = [plate]

    for _ in range(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1)):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        extent = _extent(rng, *(e * scale for e in SHAPE_EXTENT))
        depth = 1.0 + rng.random()
        layers.append(
            _layer(
                rng,
                shape,
                extent,
                _centre(rng, size, extent),
                depth,
                category=CATEGORIES.index(shape) + 1,
                coarse=shape,
            )
        )

    token = CATEGORIES.index(f"token_{THEMES[theme]}") + 1
    taken: list[Box] = []
    for _ in range(rng.integers(TOKENS_PER_IMAGE[0], TOKENS_PER_IMAGE[1] + 1)):
        extent = _extent(rng, *(e * scale for e in TOKEN_EXTENT))
        r = extent / 2
        for _attempt in range(30):  # rejection sampling; a scene without room gets fewer tokens
            cx, cy = rng.uniform(r, size - r, 2)
            centre = (cx, cy)
            layer = _layer(rng, "disc", extent, centre, 3.0, category=token, coarse="token", texture="solid")
            if box_gap(layer.box, plate.box) >= CONTEXT_GAP * scale and all(
                box_gap(layer.box, t) >= 1.0 for t in taken
            ):
                taken.append(layer.box)
                layers.append(layer)
                break
    return layers


def _distractor(rng: np.random.Generator, kind: str, extent: float, cx: float, cy: float) -> DrawFn:
    r = extent / 2
    theta = rng.uniform(0, 2 * math.pi)
    if kind == "line":
        width = int(rng.integers(1, 3))
        dx, dy = r * math.cos(theta), r * math.sin(theta)
        return lambda d, p, ss: d.line([p(cx - dx, cy - dy), p(cx + dx, cy + dy)], fill=255, width=width * ss)
    if kind == "polyline":
        width = int(rng.integers(1, 3))
        points = list(rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * r + (cx, cy))
        return lambda d, p, ss: d.line([p(*xy) for xy in points], fill=255, width=width * ss, joint="curve")
    if kind == "arc":  # a partial ring
        start = rng.uniform(0, 360)
        span = rng.uniform(60, 180)  # no more than half: a longer arc passes for a ring
        thickness = max(1.0, r * rng.uniform(0.1, 0.4))
        box = (cx - r, cy - r, cx + r, cy + r)
        return lambda d, p, ss: d.arc(
            [*p(*box[:2]), *p(*box[2:])], start, start + span, fill=255, width=max(1, round(thickness * ss))
        )
    if kind == "blob":  # a few overlapping random ellipses
        parts = []
        for _ in range(int(rng.integers(2, 5))):
            ox, oy = rng.uniform(-0.45, 0.45, 2) * r
            rx, ry = rng.uniform(0.2, 0.55, 2) * r
            parts.append(_ellipse_points(cx + ox, cy + oy, rx, ry, rng.uniform(0, math.pi)))

        def blob(d, p, ss):
            for pts in parts:
                d.polygon([p(x, y) for x, y in pts], fill=255)

        return blob
    if kind == "specks":  # a scatter of 1-2 px dots, smaller than the smallest object
        count = int(rng.integers(3, 9))
        dots = [(cx + x * r, cy + y * r, rng.uniform(0.4, 0.9)) for x, y in rng.uniform(-1, 1, (count, 2))]

        def specks(d, p, ss):
            for x, y, rad in dots:
                d.ellipse([*p(x - rad, y - rad), *p(x + rad, y + rad)], fill=255)

        return specks
    raise AssertionError(kind)


def _distractors(rng: np.random.Generator, size: int) -> list[_Layer]:
    layers = []
    for _ in range(rng.integers(DISTRACTORS_PER_IMAGE[0], DISTRACTORS_PER_IMAGE[1] + 1)):
        kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
        low = SHAPE_EXTENT[0] if kind == "blob" else 4.0  # a small blob would pass for a token
        extent = _extent(rng, low * size / DEFAULT_SIZE, 0.35 * size)  # none hides a plate's outline
        cx, cy = _centre(rng, size, extent)
        alpha, x0, y0, _ = _raster(extent, cx, cy, _distractor(rng, kind, extent, cx, cy))
        depth = rng.uniform(0.5, 3.5)  # anywhere between the plate (0) and the tokens (3)
        layers.append(_Layer(alpha, x0, y0, depth))
    return layers


# --- colour and texture -----------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ _LUMA)


def _colour(rng: np.random.Generator, target: float) -> np.ndarray:
    """A random hue and saturation, blended towards black or white to luminance ``target``."""
    hue, sat = rng.uniform(0, 6), rng.uniform(0.0, 0.85)
    k = np.array([5.0, 3.0, 1.0]) + hue
    rgb = (1.0 - sat * np.clip(np.minimum(k % 6, 4 - k % 6), 0, 1)).astype(np.float32)  # HSV, v=1
    lum = _luminance(rgb)
    if lum > target:
        return rgb * (target / lum)
    return rgb + (1.0 - rgb) * ((target - lum) / max(1.0 - lum, 1e-6))


def _contrasting(rng: np.random.Generator, under: float, low: float = 0.15, high: float = 0.55) -> np.ndarray:
    """A colour whose luminance differs from ``under`` by ``low..high``, darker or lighter."""
    delta = rng.uniform(low, high)
    up, down = under + delta, under - delta
    if up > 0.97 or (down >= 0.03 and rng.random() < 0.5):
        target = max(down, 0.03)
    else:
        target = up
    return _colour(rng, target)


def _grid(shape: tuple[int, int]) -> np.ndarray:
    """(2, h, w): each pixel's row, then its column (unpack as ``yy, xx``)."""
    h, w = shape
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _fill(rng: np.random.Generator, shape: tuple[int, int], under: float) -> np.ndarray:
    """An (h, w, 3) fill contrasting with luminance ``under``: solid, gradient or speckle."""
    h, w = shape
    first = _contrasting(rng, under)
    kind = _FILLS[int(rng.integers(len(_FILLS)))]
    fill = np.broadcast_to(first, (h, w, 3)).astype(np.float32)
    if kind == "solid" or h == 0 or w == 0:
        return fill
    if kind == "speckle":
        return fill + rng.standard_normal((h, w, 1), np.float32) * np.float32(rng.uniform(0.04, 0.1))
    second = _colour(rng, float(np.clip(_luminance(first) + rng.uniform(-0.15, 0.15), 0.0, 1.0)))
    yy, xx = _grid(shape)
    angle = rng.uniform(0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = (along - along.min()) / max(float(np.ptp(along)), 1.0)  # gradient
    return fill * (1.0 - t[..., None]) + second * t[..., None]


def _fine_texture(
    rng: np.random.Generator, shape: tuple[int, int], under: float, checked: bool
) -> np.ndarray:
    """A plate's (h, w, 3) fill: two colours in fine stripes or a fine checker of
    ``DETAIL_PERIOD`` px at a random angle. Half the pixels take each colour either way, so
    averaged over a cell much larger than the period the two textures are alike. Both colours
    stand apart from ``under`` on the same side, so the plate's outline -- its scene's theme --
    shows at every scale (with one colour on either side, a plate's mean could match what lies
    under it, and the backbone's C5 knew the theme in 0.75 of its cells)."""
    first = _contrasting(rng, under, *PLATE_CONTRAST)
    lum = _luminance(first)
    away = 1.0 if lum > under else -1.0
    second = _colour(rng, float(np.clip(lum + away * rng.uniform(0.2, 0.35), 0.03, 0.97)))
    period = rng.uniform(*DETAIL_PERIOD)
    yy, xx = _grid(shape)
    angle = rng.uniform(0, math.pi)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi)
    wave = np.sin(u)
    if checked:
        v = (yy * math.cos(angle) - xx * math.sin(angle)) * (2 * math.pi / period) + rng.uniform(
            0, 2 * math.pi
        )
        wave = wave * np.sin(v)
    t = (wave > 0).astype(np.float32)[..., None]
    return first * (1.0 - t) + second * t


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, np.float32) - 0.5


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient plus one to three textures: value noise, stripes, fine noise."""
    a = _colour(rng, rng.uniform(0.2, 0.8))
    b = _colour(rng, float(np.clip(_luminance(a) + rng.uniform(-0.3, 0.3), 0.1, 0.9)))
    yy, xx = _grid((size, size))
    angle = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = ((along - along.min()) / max(float(np.ptp(along)), 1.0))[..., None]
    canvas = a * (1.0 - t) + b * t
    textures = rng.permutation(3)[: rng.integers(1, 4)]
    for texture in textures:
        if texture == 0:
            noise = _value_noise(rng, size, int(rng.integers(3, 17)))
            canvas += (noise * rng.uniform(0.1, 0.4))[..., None] * rng.uniform(0.6, 1.0, 3).astype(np.float32)
        elif texture == 1:
            angle = rng.uniform(0, math.pi)
            along = xx * math.cos(angle) + yy * math.sin(angle)
            stripes = np.sin(along * (2 * math.pi / rng.uniform(8.0, 32.0)) + rng.uniform(0, 2 * math.pi))
            canvas += (stripes * rng.uniform(0.03, 0.12))[..., None]
        else:
            canvas += rng.standard_normal((size, size, 1), np.float32) * np.float32(rng.uniform(0.01, 0.05))
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)
