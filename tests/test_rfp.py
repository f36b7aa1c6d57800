"""DetectoRS' recursive feature pyramid: the feedback enters the ResNet's blocks where the paper
puts it, the body's stages run T times, an untrained RFP is its FPN, gradients reach the feedback
(also through a frozen body), and it trains inside the proxy detectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fixed_necks import FIXED_NECKS
from fixed_necks.rfp import RFP, STAGES, block_with_feedback
from nas.nets.backbone import backbone_widths, resnet_body
from nas.proxy.detector import ProxyDetector

WIDTH = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rfp(backbone: str = "resnet10", steps: int = 2, freeze_body: bool = False) -> RFP:
    torch.manual_seed(0)
    body = resnet_body(backbone)
    return RFP(backbone_widths(backbone), WIDTH, body=body, steps=steps, freeze_body=freeze_body)


def randomize_connections(model: RFP) -> None:
    """Feedback convs and gate away from their zero start, so that step 2 differs from step 1."""
    with torch.no_grad():
        for conv in (*model.feedback, model.gate):
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)


@pytest.mark.parametrize("backbone", ["resnet10", "resnet50"])  # BasicBlock, Bottleneck
def test_feedback_is_added_before_the_blocks_last_relu(backbone: str) -> None:
    body = resnet_body(backbone).eval()
    x = torch.randn(2, body["layer2"][0].conv1.in_channels, 8, 8)
    for name in STAGES:
        block = body[name][0]
        with torch.no_grad():
            out = block(x)
            assert torch.equal(block_with_feedback(block, x, torch.zeros_like(out)), out)
            feedback = torch.randn_like(out)
            with_feedback = block_with_feedback(block, x, feedback)
            # relu(s + f) with s the block's residual sum: where the sum is positive, the shift is exact.
            positive = out > 0
            torch.testing.assert_close(with_feedback[positive], (out + feedback)[positive].clamp(min=0))
            assert not torch.equal(with_feedback.clamp(min=0), (out + feedback).clamp(min=0))
        x = out


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_the_bodys_stages_run_steps_times_and_the_stem_once(steps: int) -> None:
    model = rfp(steps=steps).eval()
    calls = {name: 0 for name in ("conv1", "layer1", *STAGES)}

    def count(name: str):
        def hook(*_) -> None:
            calls[name] += 1

        return hook

    model.body["conv1"].register_forward_hook(count("conv1"))
    model.body["layer1"].register_forward_hook(count("layer1"))
    for name in STAGES:
        model.body[name][-1].conv2.register_forward_hook(count(name))  # in each stage's last block
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert calls == {"conv1": 1, "layer1": 1, **{name: steps for name in STAGES}}
    assert list(out) == ["P3", "P4", "P5", "P6", "P7"]
    assert [tuple(p.shape) for p in out.values()] == [(1, WIDTH, s, s) for s in (8, 4, 2, 1, 1)]


@pytest.mark.parametrize("backbone", ["resnet10", "resnet50"])
def test_an_untrained_rfp_is_its_fpn_and_the_feedback_changes_it(backbone: str) -> None:
    model = rfp(backbone).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fpn = model.fpn(list(model.body(images).values()))
        out = model(images)
        for name in fpn:
            torch.testing.assert_close(out[name], fpn[name], rtol=0, atol=1e-6)
        randomize_connections(model)
        changed = model(images)
    assert all(not torch.allclose(changed[name], fpn[name], atol=1e-3) for name in ("P3", "P4", "P5"))


def test_gradients_reach_the_feedback_through_a_frozen_body() -> None:
    model = rfp(freeze_body=True).train()
    randomize_connections(model)
    assert not model.body.training and model.fpn.training  # frozen BatchNorms stay in eval mode
    stats = {k: v.clone() for k, v in model.body.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 64))
    sum(p.square().mean() for p in out.values()).backward()
    assert all(p.grad is None for p in model.body.parameters())
    for part in (model.fpn, model.aspp, model.feedback, model.gate):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    assert all(torch.equal(v, model.body.state_dict()[k]) for k, v in stats.items())


def test_a_body_that_is_no_resnet_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^RFP feeds back into a torchvision ResNet body .*got Sequential$"):
        RFP((8, 8, 8), WIDTH, body=nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        RFP(backbone_widths("resnet10"), WIDTH, body=resnet_body("resnet10"), steps=0)


def targets(size: int) -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6]]) * size, "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[0.3, 0.2, 0.9, 0.5], [0.0, 0.0, 0.2, 0.2]]) * size,
            "labels": torch.tensor([2, 1]),
        },
    ]


@pytest.mark.parametrize(
    ("kind", "size", "freeze_body"),
    [
        ("atss", 64, True),
        ("retinanet", 128, False),
        ("fasterrcnn", 64, False),
        ("fasterrcnn", 128, True),
    ],
)
def test_rfp_trains_in_the_proxy_detectors(kind: str, size: int, freeze_body: bool) -> None:
    """Through ``FIXED_NECKS["rfp"]``, as ``nasfpn train --neck rfp`` builds it: images in, the
    body's stages twice a forward, gradients to the feedback (and to the body unless frozen)."""
    torch.manual_seed(0)
    neck = FIXED_NECKS["rfp"].build(
        backbone_widths("resnet10"), WIDTH, body=resnet_body("resnet10"), freeze_body=freeze_body
    )
    model = ProxyDetector(kind, nn.Identity(), neck, num_classes=2, image_size=size).train()
    assert model.takes_images and neck.body.training != freeze_body
    runs = []
    neck.body["layer4"][-1].conv2.register_forward_hook(lambda *_: runs.append(1))
    losses = model(torch.rand(2, 3, size, size), targets(size))
    assert len(runs) == 2 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in neck.feedback)
    body_grads = [p.grad for p in neck.body.parameters()]
    assert all(g is None for g in body_grads) if freeze_body else any(g is not None for g in body_grads)
    model.eval()
    with torch.no_grad():
        detections = model(torch.rand(1, 3, size, size))
    assert len(runs) == 4 and set(detections[0]) == {"boxes", "scores", "labels"}
