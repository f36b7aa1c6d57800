"""One proxy trial: train a detector with a given neck for a small budget, score it by COCO AP.

``train_proxy`` is the unit of work of every search trial and of ``nasfpn train``; it calls
``report(step, metrics)`` after each evaluation (for early stopping) and returns the final
metrics. A training with an output folder saves its state there every few minutes
(``nas.proxy.resume``) and, started again into that folder, goes on from the saved step.

With ``freeze_backbone`` (the default) the backbone's C3..C5 are computed once per dataset
(``nas.proxy.data``) and a step trains only the neck and the heads. A neck that runs the backbone
itself (``NeckSpec.needs_images``: RFP) is built around a body with the proxy's backbone weights
-- frozen by the neck when ``freeze_backbone`` -- and fed images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from nas.errors import TrainingError
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.data import ProxyData
from nas.proxy.detector import ProxyDetector
from nas.proxy.device import default_device
from nas.proxy.evaluate import coco_ap
from nas.proxy.necks import NeckSpec
from nas.proxy.resume import RESUME_FILE, SAVE_EVERY, ResumeFile
from nas.proxy.schedule import shuffled_batches, warmup_cosine
from nas.settings import Budget, ProxySettings, budget_of

Report = Callable[[int, dict[str, float]], None]


def train_proxy(
    neck: NeckSpec,
    data: ProxyData,
    settings: ProxySettings,
    seed: int = 0,
    out_dir: str | Path | None = None,
    report: Report | None = None,
    progress: bool = True,
    costs: dict[str, float] | None = None,
    save_every: float = SAVE_EVERY,
    files_changed: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Trains ``neck`` in the proxy detector; returns AP, AP50, AP75, APs, APm, APl and timings.

    With ``out_dir``: writes ``metrics.json`` (with ``costs``, when given), ``checkpoint.pt`` (a
    state_dict) and TensorBoard scalars under ``tb/``; while training, its state every
    ``save_every`` seconds to ``resume.pt``, from which a later call for the same training goes on
    (and which it removes when done). ``report`` hears the last evaluation only after the files
    are written: a scheduler may stop the trial at any report. ``files_changed`` is called
    whenever the files in ``out_dir`` changed -- an evaluation, a saved state, the final files --
    before ``report`` hears of it (a training on another node sends them on, ``nas.search.artifacts``).
    """
    budget = budget_of(settings.budget)
    torch.manual_seed(seed)
    model = build_proxy_model(neck, data, settings)
    changed = files_changed or (lambda: None)
    resume = None
    if out_dir is not None:
        key = training_key(neck, data, settings, seed)
        resume = ResumeFile(Path(out_dir) / RESUME_FILE, key, save_every, on_save=changed)
    writer = _writer(out_dir, resume.step if resume is not None else 0)
    start = time.monotonic()

    def interim(step: int, metrics: dict[str, float]) -> None:
        if step >= budget.steps:
            return  # the last evaluation is reported once the final files are written
        if writer is not None:
            writer.flush()
            changed()
        if report is not None:
            report(step, metrics)

    metrics = fit(model, data, settings, budget, seed, interim, writer, progress, neck.name, resume)
    result = {
        **metrics,
        "steps": budget.steps,
        "seconds": round(resume.elapsed() if resume is not None else time.monotonic() - start, 2),
        "seed": seed,
        "resumed_at": resume.step if resume is not None else 0,  # 0: trained in one go
    }
    if out_dir is not None:
        assert resume is not None  # made above whenever there is an out_dir
        _save(Path(out_dir), model, neck, settings, result, costs)
        writer.close()
        resume.remove()
        changed()
    if report is not None:
        report(budget.steps, metrics)
    return result


def fit(
    model: ProxyDetector,
    data: ProxyData,
    settings: ProxySettings,
    budget: Budget,
    seed: int = 0,
    report: Report | None = None,
    writer: Any = None,
    progress: bool = True,
    desc: str = "",
    resume: ResumeFile | None = None,
) -> dict[str, float]:
    """The training loop: AdamW with warm-up and cosine decay; returns the last evaluation.

    AdamW, not the SGD of long detection schedules: in a few hundred steps from scratch SGD
    left RetinaNet's focal loss on its plateau (AP 0.015 after 300 steps on 32 images, where
    AdamW reached 0.42 on 64). With ``resume``: starts from its saved state, if any, and saves
    the state whenever it is due.
    """
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(budget.steps, settings.warmup_steps)
    )
    eval_steps = {round(budget.steps * (k + 1) / budget.evaluations) for k in range(budget.evaluations)}
    batches = shuffled_batches(len(data.train), budget.batch_size, seed)
    metrics: dict[str, float] = {}
    device = default_device()
    model.to(device).train()
    done = 0
    if resume is not None and resume.state is not None:
        metrics = resume.restore(model, optimizer, scheduler)
        done = resume.step
        for _ in range(done):  # the batches the saved steps drew
            next(batches)
    bar = tqdm(total=budget.steps, initial=done, desc=desc or "train", disable=not progress, leave=False)
    for step in range(done + 1, budget.steps + 1):
        index = next(batches)
        inputs = data.inputs("train", index, device, images=model.takes_images)
        losses = model(inputs, data.targets(index, device))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step} of {budget.steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if writer is not None:
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        if step in eval_steps:
            metrics = evaluate(model, data)
            bar.set_postfix(loss=f"{loss.item():.3f}", AP=f"{metrics['AP']:.3f}")
            if writer is not None:
                for name, value in metrics.items():
                    writer.add_scalar(f"val/{name}", value, step)
        if resume is not None and step < budget.steps and resume.due():
            resume.save(step, model, optimizer, scheduler, metrics)
        if step in eval_steps and report is not None:
            report(step, metrics)
    bar.close()
    return metrics


def roi_mode(neck: NeckSpec, settings: ProxySettings) -> str | None:
    """Faster R-CNN's RoI feature extraction for ``neck``: the neck's own (AugFPN's ``soft``, a
    compare entry's ``@mode``) or else the proxy's; None for a one-stage detector, which has none."""
    if settings.detector != "fasterrcnn":
        return None
    return neck.roi or settings.roi


def training_key(neck: NeckSpec, data: ProxyData, settings: ProxySettings, seed: int) -> dict[str, Any]:
    """What makes a training the same one, for resuming it: the neck, the proxy, the seed, the data."""
    return {
        "neck": neck.name,
        "genotype": neck.genotype.to_dict() if neck.genotype is not None else None,
        "repeats": neck.repeats,
        "norm": neck.norm,
        "roi": roi_mode(neck, settings),
        "settings": asdict(settings),
        "seed": seed,
        "images": [data.train.image_ids, data.val.image_ids],
    }


def build_proxy_model(neck: NeckSpec, data: ProxyData, settings: ProxySettings) -> ProxyDetector:
    """The proxy detector for ``neck``: a frozen-and-cached backbone is left out (identity); a neck
    that needs images gets the body instead, frozen by the neck when the backbone is."""
    widths = backbone_widths(settings.backbone)
    body: nn.Module = nn.Identity()
    if neck.needs_images or not settings.freeze_backbone:
        body = resnet_body(settings.backbone)
        body.load_state_dict(data.body_state)
    if neck.needs_images:
        neck_module = neck.build(widths, settings.width, body=body, freeze_body=settings.freeze_backbone)
        body = nn.Identity()
    else:
        neck_module = neck.build(widths, settings.width)
    return ProxyDetector(
        settings.detector,
        body,
        neck_module,
        data.num_classes,
        settings.image_size,
        settings.head_convs,
        roi_mode(neck, settings),
    )


@torch.no_grad()
def evaluate(model: ProxyDetector, data: ProxyData, batch_size: int = 32) -> dict[str, float]:
    """COCO AP of ``model`` on the validation split, boxes mapped back to original pixels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    split, results = data.val, []
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        inputs = data.inputs("val", index, device, images=model.takes_images)
        for i, detections in zip(index.tolist(), model(inputs)):
            results.extend(
                coco_results(detections, split.scales[i].item(), split.image_ids[i], split.category_ids)
            )
    model.train(was_training)
    return coco_ap(split.coco, results, split.image_ids)


def load_checkpoint(
    path: str | Path, neck: NeckSpec, data: ProxyData, settings: ProxySettings
) -> ProxyDetector:
    """A proxy model with the weights ``train_proxy`` saved."""
    model = build_proxy_model(neck, data, settings)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def coco_results(
    detections: dict[str, Tensor], scale: float, image_id: int, category_ids: list[int]
) -> list[dict]:
    boxes = detections["boxes"] / scale
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [
        {"image_id": image_id, "category_id": category_ids[label - 1], "bbox": box, "score": score}
        for box, score, label in zip(xywh, detections["scores"].tolist(), detections["labels"].tolist())
    ]


def _writer(out_dir: str | Path | None, resumed_at: int = 0):
    if out_dir is None:
        return None
    from tensorboardX import SummaryWriter

    # A resumed training drops the scalars its interrupted run wrote after the saved step.
    return SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resumed_at + 1 if resumed_at else None)


def _save(
    out: Path,
    model: nn.Module,
    neck: NeckSpec,
    settings: ProxySettings,
    result: dict,
    costs: dict[str, float] | None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "checkpoint.pt")
    if neck.genotype is not None:  # a hand-written neck without a twin has none to save
        neck.genotype.save(out / "genotype.json")
    record = {
        "metrics": result,
        "settings": asdict(settings),
        "neck": neck.name,
        "roi": roi_mode(neck, settings),
        "repeats": neck.repeats,
        "norm": neck.norm,
        **({"costs": costs} if costs is not None else {}),
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
