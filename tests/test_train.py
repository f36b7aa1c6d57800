"""The proxy trial end to end on a tiny dataset: real COCOeval, real torchvision detectors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nas.proxy_data
from nas.backbone import resnet_body
from nas.data.coco import CocoDetection
from nas.data.synth import synthesize
from nas.evaluate import METRICS
from nas.necks import resolve_neck
from nas.proxy_data import prepare_proxy_data
from nas.train import ProxySettings, evaluate, load_checkpoint, train_proxy


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "shapes", train=16, val=8, size=128, seed=3)


@pytest.fixture(scope="session")
def backbone_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "resnet10.pt"
    torch.manual_seed(0)
    torch.save(resnet_body("resnet10").state_dict(), path)
    return path


def _splits(root: Path) -> tuple[CocoDetection, CocoDetection]:
    return CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val")


def _settings(checkpoint: Path, **overrides) -> ProxySettings:
    return ProxySettings(budget="quick", backbone_checkpoint=str(checkpoint), width=32, **overrides)


@pytest.mark.parametrize("detector", ["retinanet", "fasterrcnn"])
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
        report=lambda step, m: reports.append((step, m)),
    )
    assert [step for step, _ in reports] == [30]
    for name in METRICS:
        assert 0.0 <= metrics[name] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["AP"] == metrics["AP"] and saved["settings"]["detector"] == detector
    assert any((tmp_path / "run" / "tb").iterdir())
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resolve_neck("fpn"), data, settings)
    assert evaluate(model, data) == {name: metrics[name] for name in METRICS}


def test_same_seed_same_ap(tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path) -> None:
    settings = _settings(backbone_checkpoint)
    data = prepare_proxy_data(*_splits(tiny_dataset), settings, tmp_path, progress=False)
    runs = [train_proxy(resolve_neck("bifpn"), data, settings, seed=5, progress=False) for _ in range(2)]
    assert {m: runs[0][m] for m in METRICS} == {m: runs[1][m] for m in METRICS}


def test_backbone_is_pretrained_once_and_cached(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(nas.proxy_data, "PRETRAIN_STEPS", 3)
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
