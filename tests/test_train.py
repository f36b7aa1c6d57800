"""The proxy trial end to end on a tiny dataset: real COCOeval, real torchvision detectors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import nas.proxy.pretrain
import nas.settings
from fixed_necks import FIXED_NECKS, FixedNeck
from fixed_necks.fpn import FPN
from nas.data.coco import CocoDetection
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.evaluate import METRICS
from nas.proxy.necks import resolve_neck
from nas.proxy.prepare import prepare_proxy_data
from nas.proxy.train import build_proxy_model, evaluate, fit, load_checkpoint, train_proxy
from nas.settings import Budget, ProxySettings


def _splits(root: Path) -> tuple[CocoDetection, CocoDetection]:
    return CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val")


def _settings(checkpoint: Path, **overrides) -> ProxySettings:
    return ProxySettings(budget="quick", backbone_checkpoint=str(checkpoint), width=32, **overrides)


@pytest.mark.parametrize("detector", ["atss", "retinanet", "fasterrcnn"])
def test_quick_trial_end_to_end(
    detector: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    settings = _settings(backbone_checkpoint, detector=detector)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path / "cache", progress=False)
    reports = []
    metrics = train_proxy(
        resolve_neck("fpn"),
        data,
        settings,
        seed=1,
        out_dir=tmp_path / "run",
        progress=False,
        # A scheduler may stop the trial at its last report: by then its files must be written.
        report=lambda step, m: reports.append((step, (tmp_path / "run" / "checkpoint.pt").is_file())),
    )
    assert reports == [(30, True)]
    assert {"AP", "AP50", "AP75"} <= set(metrics)  # sizes only where the data has such boxes
    for name in set(METRICS) & set(metrics):
        assert 0.0 <= metrics[name] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["AP"] == metrics["AP"] and saved["settings"]["detector"] == detector
    assert any((tmp_path / "run" / "tb").iterdir())
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resolve_neck("fpn"), data, settings)
    evaluated = evaluate(model, data)
    assert {"AP", "AP50", "AP75"} < set(evaluated)
    assert evaluated == {name: metrics[name] for name in evaluated}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_trial_trains_on_the_gpu_and_its_checkpoint_loads_anywhere(
    tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    settings = _settings(backbone_checkpoint)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path / "cache", progress=False)
    torch.cuda.reset_peak_memory_stats()
    metrics = train_proxy(
        resolve_neck("fpn"), data, settings, seed=1, out_dir=tmp_path / "run", progress=False
    )
    assert torch.cuda.max_memory_allocated() > 0  # the training ran on the GPU
    assert 0.0 <= metrics["AP"] <= 1.0
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resolve_neck("fpn"), data, settings)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_same_seed_same_ap(tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path) -> None:
    settings = _settings(backbone_checkpoint)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path, progress=False)
    runs = [train_proxy(resolve_neck("bifpn"), data, settings, seed=5, progress=False) for _ in range(2)]
    assert {m: runs[0].get(m) for m in METRICS} == {m: runs[1].get(m) for m in METRICS}


def test_backbone_is_pretrained_once_and_cached(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(nas.proxy.pretrain, "PRETRAIN_STEPS", 3)
    settings = ProxySettings(budget="quick", width=32)
    first = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path, progress=False)
    cached = list(tmp_path.glob("backbone-*.pt"))
    assert len(cached) == 1
    fresh = resnet_body("resnet10").state_dict()
    assert any(not torch.equal(first.body_state[k], fresh[k]) for k in fresh if k.endswith("weight"))
    mtime = cached[0].stat().st_mtime_ns
    second = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path, progress=False)
    assert cached[0].stat().st_mtime_ns == mtime
    for c1, c2 in zip(first.features["train"], second.features["train"]):
        assert torch.equal(c1, c2)


def test_trained_backbone_mode_feeds_images(tiny_dataset: Path, backbone_checkpoint: Path) -> None:
    settings = replace(_settings(backbone_checkpoint), freeze_backbone=False)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, progress=False)
    assert data.features is None
    metrics = train_proxy(resolve_neck("fpn"), data, settings, seed=0, progress=False)
    assert 0.0 <= metrics["AP"] <= 1.0


class ImageFedFPN(nn.Module):
    """A stand-in for a neck that runs the backbone itself (RFP): the body, then an FPN."""

    takes_images = True

    def __init__(
        self, in_channels: list[int], out_channels: int, body: nn.Module, freeze_body: bool, norm: None
    ) -> None:
        super().__init__()
        self.body, self.fpn, self.out_channels = body, FPN(in_channels, out_channels), out_channels
        self.freeze_body = freeze_body
        self.body.requires_grad_(not freeze_body)
        self.seen: list[tuple[int, ...]] = []

    def train(self, mode: bool = True) -> ImageFedFPN:
        super().train(mode)
        if self.freeze_body:
            self.body.eval()
        return self

    def forward(self, images: torch.Tensor):
        self.seen.append(tuple(images.shape))
        return self.fpn(list(self.body(images).values()))


def test_a_neck_that_takes_images_gets_the_frozen_body_and_images(
    tiny_dataset: Path, backbone_checkpoint: Path, monkeypatch
) -> None:
    from nas.search.trial import neck_costs

    monkeypatch.setitem(FIXED_NECKS, "imagefed", FixedNeck("imagefed", "test", ImageFedFPN, None, norm=None))
    settings = _settings(backbone_checkpoint)  # frozen: C3..C5 are cached for the other necks
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, progress=False)
    assert data.features is not None
    neck = resolve_neck("imagefed")
    model = build_proxy_model(neck, data, settings)
    assert neck.needs_images and model.takes_images and isinstance(model.body, nn.Identity)
    body = model.neck.body
    assert not any(p.requires_grad for p in body.parameters())
    assert all(torch.equal(v, data.body_state[k]) for k, v in body.state_dict().items())
    fit(model, data, settings, Budget(steps=2, evaluations=1, batch_size=4), progress=False)
    assert model.neck.seen[0] == (4, 3, 128, 128)  # images, not C3..C5; then the validation's
    assert all(torch.equal(v, data.body_state[k]) for k, v in body.state_dict().items())  # BN stats too
    # Its costs are the neck's alone: the body's parameters are not counted.
    fpn_params = sum(p.numel() for p in FPN(backbone_widths(settings.backbone), settings.width).parameters())
    assert neck_costs(neck, settings, 64)["params"] == fpn_params


def test_letterbox_keeps_aspect_and_maps_boxes_back(tmp_path: Path) -> None:
    from PIL import Image

    from nas.data.letterbox import letterbox_split
    from nas.proxy.train import coco_results

    (tmp_path / "img" / "sub").mkdir(parents=True)
    Image.new("RGB", (200, 100), (255, 0, 0)).save(tmp_path / "img" / "sub" / "wide.png")
    Image.new("RGB", (64, 64), (0, 255, 0)).save(tmp_path / "img" / "small.png")
    coco = {
        "images": [
            {"id": 7, "file_name": "sub/wide.png", "width": 200, "height": 100},
            {"id": 9, "file_name": "small.png", "width": 64, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [20, 10, 100, 50], "area": 5000, "iscrowd": 0},
            {"id": 2, "image_id": 9, "category_id": 5, "bbox": [0, 0, 0.5, 0.5], "area": 0.25, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    split = letterbox_split(CocoDetection(tmp_path / "a.json", tmp_path / "img"), 128)
    assert split.images.shape == (2, 3, 128, 128)
    assert split.scales.tolist() == pytest.approx([0.64, 2.0])
    # The wide image fills the top 64 rows; the padding below is black.
    assert split.images[0, 0, :64].float().mean() > 250 and split.images[0, :, 64:].max() == 0
    torch.testing.assert_close(split.targets[0]["boxes"], torch.tensor([[12.8, 6.4, 76.8, 38.4]]))
    assert split.targets[1]["boxes"].shape == (1, 4)  # 0.5 px grows to 1 px at scale 2: kept
    detections = {
        "boxes": split.targets[0]["boxes"],
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    (result,) = coco_results(detections, split.scales[0].item(), 7, split.category_ids)
    assert result["category_id"] == 5 and result["image_id"] == 7
    assert result["bbox"] == pytest.approx([20, 10, 100, 50], abs=1e-4)


class Interrupted(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_weights_and_ap(
    tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    # Faster R-CNN samples its RoIs at random: a resume that lost the RNG state would differ.
    monkeypatch.setitem(nas.settings.BUDGETS, "quick", Budget(steps=6, evaluations=2, batch_size=4))
    settings = _settings(backbone_checkpoint, detector="fasterrcnn")
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path / "cache", progress=False)
    neck = resolve_neck("fpn")
    whole = train_proxy(neck, data, settings, seed=1, out_dir=tmp_path / "whole", progress=False)

    def stop_at_first_evaluation(step: int, metrics: dict[str, float]) -> None:
        raise Interrupted

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train_proxy(
            neck,
            data,
            settings,
            seed=1,
            out_dir=run,
            progress=False,
            report=stop_at_first_evaluation,
            save_every=0,
        )
    assert (run / "resume.pt").is_file() and not (run / "metrics.json").exists()
    seconds_before = torch.load(run / "resume.pt", weights_only=True)["seconds"]
    reports: list[int] = []
    resumed = train_proxy(
        neck, data, settings, seed=1, out_dir=run, progress=False, report=lambda step, m: reports.append(step)
    )
    assert reports == [6] and resumed["resumed_at"] == 3  # steps 1..3 and their evaluation not redone
    assert resumed["seconds"] > seconds_before > 0  # the time spent before the stop is counted
    assert {m: resumed.get(m) for m in METRICS} == {m: whole.get(m) for m in METRICS}
    weights = torch.load(run / "checkpoint.pt", weights_only=True)
    for name, value in torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True).items():
        assert torch.equal(weights[name], value), name
    assert not (run / "resume.pt").exists()


def test_a_saved_state_of_another_training_is_not_resumed(
    tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(nas.settings.BUDGETS, "quick", Budget(steps=4, evaluations=2, batch_size=4))
    settings = _settings(backbone_checkpoint)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path / "cache", progress=False)

    def stop(step: int, metrics: dict[str, float]) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        train_proxy(
            resolve_neck("fpn"),
            data,
            settings,
            seed=0,
            out_dir=tmp_path,
            progress=False,
            report=stop,
            save_every=0,
        )
    reports: list[int] = []
    train_proxy(
        resolve_neck("fpn"),
        data,
        settings,
        seed=2,
        out_dir=tmp_path,
        progress=False,
        report=lambda s, m: reports.append(s),
    )
    assert reports == [2, 4]  # another seed: trained from the start
