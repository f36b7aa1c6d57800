"""Proxy trial cost: wall time and peak memory of a default trial, and steps/s against a stock
torchvision RetinaNet training loop on the same data, image size and batches.

    python benchmarks/proxy_speed.py [--data data/shapes] [--steps-stock 60]

The default trial is ``nasfpn train --neck fpn --budget default`` (RetinaNet, ResNet-10 frozen
after its one-off pretraining, features cached, 64-channel neck and 2-conv heads), timed from
prepared data to final COCO AP. The stock loop is torchvision's ``RetinaNet`` as shipped --
its ``forward(images, targets)`` with the GeneralizedRCNNTransform, torchvision's
``FeaturePyramidNetwork`` with ``LastLevelP6P7``, the 4-conv heads -- on the same ResNet-10
(starting from the same pretrained weights, trained end to end), the same anchors, batch size,
optimiser and seeds. Both are timed in this run, one after the other; then the stock loop is
trained for the default budget's steps too and evaluated with the same COCOeval, so the AP
columns compare equal training.

Peak RSS is the process's high-water mark (``ru_maxrss``) after the default trial: it covers
the data, the cached features and the trial, not the stock loop that runs after.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from nas.data.coco import CocoDetection
from nas.data.synth import synthesize
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.data import ProxyData
from nas.proxy.detector import anchor_sizes
from nas.proxy.evaluate import coco_ap
from nas.proxy.losses import retinanet_loss
from nas.proxy.necks import resolve_neck
from nas.proxy.prepare import prepare_proxy_data
from nas.proxy.schedule import shuffled_batches, warmup_cosine
from nas.proxy.train import build_proxy_model, coco_results, train_proxy
from nas.settings import Budget, ProxySettings, budget_of

ROOT = Path(__file__).resolve().parents[1]


class StockFPN(nn.Module):
    """torchvision's FPN on the ResNet body: what ``BackboneWithFPN`` builds."""

    def __init__(self, body: nn.Module, widths: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(widths), width, extra_blocks=LastLevelP6P7(width, width))
        self.out_channels = width

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def stock_retinanet(data: ProxyData, settings: ProxySettings) -> RetinaNet:
    body = resnet_body(settings.backbone)
    body.load_state_dict(data.body_state)
    sizes = anchor_sizes(settings.image_size)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    backbone = StockFPN(body, backbone_widths(settings.backbone), settings.width)
    size = settings.image_size
    return RetinaNet(backbone, data.num_classes + 1, min_size=size, max_size=size, anchor_generator=anchors)


def stock_steps(model: RetinaNet, data: ProxyData, settings: ProxySettings, steps: int, seed: int) -> float:
    """Trains ``steps`` steps the stock way; returns seconds per step."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, settings.warmup_steps))
    batches = shuffled_batches(len(data.train), budget_of(settings.budget).batch_size, seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        index = next(batches).tolist()
        images = [data.train.images[i].float().div(255) for i in index]
        losses = model(images, [data.train.targets[i] for i in index])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def stock_ap(model: RetinaNet, data: ProxyData) -> float:
    model.eval()
    split, results = data.val, []
    for start in range(0, len(split), 32):
        index = list(range(start, min(start + 32, len(split))))
        for i, det in zip(index, model([split.images[i].float().div(255) for i in index])):
            results.extend(coco_results(det, split.scales[i].item(), split.image_ids[i], split.category_ids))
    return coco_ap(split.coco, results, split.image_ids)["AP"]


def proxy_steps(data: ProxyData, settings: ProxySettings, steps: int, seed: int) -> float:
    """Seconds per step of the proxy's own loop (neck + heads on cached features)."""
    from nas.proxy.train import fit

    model = build_proxy_model(resolve_neck("fpn"), data, settings)
    budget = Budget(steps, evaluations=0, batch_size=budget_of(settings.budget).batch_size)
    start = time.perf_counter()
    fit(model, data, settings, budget, seed, progress=False)
    return (time.perf_counter() - start) / steps


def step_breakdown(data: ProxyData, settings: ProxySettings, steps: int) -> dict[str, float]:
    """Milliseconds per step spent in each part of an end-to-end step (backbone trained, as the
    stock loop does): data, backbone, neck, head, loss with anchor matching, backward, update."""
    model = build_proxy_model(resolve_neck("fpn"), data, replace(settings, freeze_backbone=False))
    detector = model.detector
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    batches = shuffled_batches(len(data.train), budget_of(settings.budget).batch_size, 0)
    parts = dict.fromkeys(("data", "backbone", "neck", "head", "loss + matching", "backward", "update"), 0.0)
    model.train()
    for _ in range(steps):
        clock = time.perf_counter()

        def lap(part: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            parts[part] += now - clock
            clock = now

        index = next(batches)
        images = data.train.images[index].float().div_(255)
        targets = [data.train.targets[i] for i in index.tolist()]
        lap("data")
        c = model.backbone_features(images)
        lap("backbone")
        features = list(model.neck(c).values())
        lap("neck")
        head_outputs = detector.head(features)
        lap("head")
        image_list = ImageList(images, [(settings.image_size, settings.image_size)] * len(index))
        anchors = detector.anchor_generator(image_list, features)
        # the proxy's matching and loss, as in training
        matches = model._matches(targets, anchors, model._anchors_per_level(features))
        loss = sum(retinanet_loss(detector.head, targets, head_outputs, anchors, matches).values())
        lap("loss + matching")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        optimizer.step()
        lap("update")
    return {part: seconds * 1000 / steps for part, seconds in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "shapes")
    parser.add_argument("--steps-stock", type=int, default=60, help="steps timed for steps/s")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache")
    parser.add_argument(
        "--skip-stock-ap", action="store_true", help="do not train the stock loop to the full budget"
    )
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    root = synthesize(args.data)
    settings = ProxySettings()
    start = time.perf_counter()
    data = prepare_proxy_data(
        CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val"), settings, args.cache_dir
    )
    prepare = time.perf_counter() - start
    start = time.perf_counter()
    trial = train_proxy(resolve_neck("fpn"), data, settings, seed=0, progress=False)
    trial_seconds = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    budget = budget_of(settings.budget)

    n = args.steps_stock
    ours = proxy_steps(data, settings, n, seed=1)
    stock_model = stock_retinanet(data, settings)
    stock = stock_steps(stock_model, data, settings, n, seed=1)
    stock_full_ap = float("nan")
    if not args.skip_stock_ap:
        stock_model = stock_retinanet(data, settings)
        stock_steps(stock_model, data, settings, budget.steps, seed=0)
        stock_full_ap = stock_ap(stock_model, data)

    breakdown = step_breakdown(data, settings, min(n, 30))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {root}")
    print(
        "data preparation (once per machine: letterbox, backbone from cache or pretraining, "
        f"features): {prepare:.1f} s"
    )
    print()
    print("| what | value | target |")
    print("|---|---|---|")
    print(
        f"| default trial wall time (train {budget.steps} steps + eval) | {trial_seconds:.1f} s "
        "| <= 90 s (aim 60) |"
    )
    print(f"| peak RSS | {peak_rss_gb:.2f} GB | <= 2 GB |")
    print(f"| proxy steps/s (batch {budget.batch_size}) | {1 / ours:.2f} | |")
    print(f"| stock torchvision RetinaNet steps/s | {1 / stock:.2f} | |")
    print(f"| speed-up per step | {stock / ours:.2f}x | >= 3x |")
    print(
        f"| AP after {budget.steps} steps: proxy / stock | {trial['AP'] * 100:.1f} / "
        f"{stock_full_ap * 100:.1f} | proxy >= stock |"
    )
    print()
    total = sum(breakdown.values())
    print("Where an end-to-end step's time goes (ms per step; the proxy keeps only neck, head, loss, their")
    print("backward and the update -- the backbone's forward and backward are gone with the frozen cache):")
    print()
    print("| part | ms | share |")
    print("|---|---|---|")
    for part, ms in breakdown.items():
        print(f"| {part} | {ms:.1f} | {ms / total * 100:.0f}% |")


if __name__ == "__main__":
    main()
