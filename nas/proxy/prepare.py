"""Preparing a proxy trial's data, once per machine: both splits decoded and letterboxed
(``nas.data.letterbox``); the backbone pretrained once per dataset on labels coarser than the
detector's (``nas.proxy.pretrain``) and cached on disk, keyed by the dataset and the settings
that shape it -- or a user's checkpoint instead; with ``freeze_backbone``, its C3..C5 for every
image computed once and kept in float16, so that a trial's step runs only the neck and heads.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nas.data.coco import CocoDetection, DatasetError
from nas.data.letterbox import MIN_BOX_SIDE, ProxySplit, letterbox_split
from nas.nets.backbone import resnet_body
from nas.proxy import pretrain
from nas.proxy.data import ProxyData
from nas.proxy.detector import normalize
from nas.proxy.device import default_device

if TYPE_CHECKING:
    from nas.settings import ProxySettings

logger = logging.getLogger(__name__)

PRETRAIN_VERSION = 7  # bump when pretraining changes, so stale cached backbones are not reused


def prepare_proxy_data(
    train: CocoDetection,
    val: CocoDetection,
    settings: ProxySettings,
    cache_dir: str | Path = "runs/cache",
    progress: bool = True,
) -> ProxyData:
    """Letterboxes both splits, gets the backbone (checkpoint, cache or pretraining), and with
    ``settings.freeze_backbone`` computes its features."""
    if val.category_ids != train.category_ids:
        raise DatasetError(f"{val.annotation_file}: categories differ from {train.annotation_file}'s")
    data = ProxyData(
        letterbox_split(train, settings.image_size),
        letterbox_split(val, settings.image_size),
        train.num_categories,
        body_state={},
    )
    if data.train.dropped:
        logger.warning(
            "%s: %d boxes under %.0f px once letterboxed to %d px are left out of training",
            train.annotation_file,
            data.train.dropped,
            MIN_BOX_SIDE,
            settings.image_size,
        )
    if settings.backbone_checkpoint is not None:
        body = resnet_body(settings.backbone, settings.backbone_checkpoint)
    else:
        body = resnet_body(settings.backbone)
        body.load_state_dict(_pretrained_body(data, train, settings, Path(cache_dir), progress))
    data.body_state = {k: v.cpu() for k, v in body.state_dict().items()}
    if settings.freeze_backbone:
        data.features = {"train": _features(body, data.train), "val": _features(body, data.val)}
    return data


@torch.no_grad()
def _features(body: torch.nn.Module, split: ProxySplit, batch_size: int = 64) -> list[Tensor]:
    device = default_device()
    body.eval().to(device)
    levels: list[Tensor] = []
    for start in range(0, len(split), batch_size):
        images = split.images[start : start + batch_size].to(device).float().div_(255)
        for level, c in enumerate(body(normalize(images)).values()):
            if start == 0:  # filled in place: no second copy of the cache while it is assembled
                levels.append(torch.empty((len(split), *c.shape[1:]), dtype=torch.float16))
            levels[level][start : start + len(c)] = c.half().cpu()  # kept in host memory, moved per batch
    return levels


def _pretrained_body(
    data: ProxyData, train: CocoDetection, settings: ProxySettings, cache_dir: Path, progress: bool
) -> dict[str, Tensor]:
    path = cache_dir / f"backbone-{_pretrain_key(train, settings)}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    state = pretrain.pretrain_body(data.train, settings.backbone, pretrain.PRETRAIN_STEPS, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # atomic: a crash never leaves a half-written backbone under the real name
    return state


def _pretrain_key(train: CocoDetection, settings: ProxySettings) -> str:
    digest = hashlib.sha256(Path(train.annotation_file).read_bytes())
    fields = (settings.backbone, settings.image_size, pretrain.PRETRAIN_STEPS, PRETRAIN_VERSION)
    digest.update(repr(fields).encode())
    return digest.hexdigest()[:16]
