"""Backbones: torchvision ResNets cut after layer4, returning C3..C5; with a neck on top they
are what torchvision's detectors call a backbone."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, ResNet

from nas.errors import BackboneError
from nas.settings import BACKBONE_WIDTHS


def resnet10(weights: None = None) -> ResNet:
    """ResNet-10: BasicBlock x [1, 1, 1, 1], NAS-FPN's proxy backbone (no published weights)."""
    return ResNet(BasicBlock, [1, 1, 1, 1])


BACKBONES: dict[str, Callable[..., ResNet]] = {  # the names and widths are nas.settings'
    "resnet10": resnet10,
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


class BackboneWithNeck(nn.Module):
    """Image batch (N, 3, H, W) -> the neck's OrderedDict P3..P7; ``out_channels`` for the heads."""

    def __init__(self, body: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        # A plain attribute every neck sets; torch types any module attribute as Tensor | Module.
        self.out_channels: int = neck.out_channels  # type: ignore[assignment]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.neck(self.body(images))


def backbone_widths(name: str) -> tuple[int, int, int]:
    """Widths of C3, C4, C5 for backbone ``name``."""
    _check(name)
    return BACKBONE_WIDTHS[name]


CONTEXT = "context"  # the body's module after layer4 that makes C5 (rfp.py runs it by this name)


class GlobalContext(nn.Module):
    """GCNet's global context block with average pooling (Cao et al. 2019, "GCNet", Fig. 4(d)):
    (N, C, H, W) -> the same plus, at every cell, a transform of the whole map's mean.

    A ResNet's C5 cell sees the whole of a small image in theory, not in effect: pretrained on
    what a scene holds (``nas.proxy.pretrain``, on a variant of the embedded data whose theme was the
    plate's hue), the proxy's ResNet-10 knew the theme from C5's mean (linear probe 0.95) and
    from a single C5 cell little better than from C3 (0.61 against 0.54); with this block, 1.0
    from every cell. The last conv starts at zero, so an untrained block (a checkpoint's body)
    leaves C5 as it was.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            last := nn.Conv2d(hidden, channels, 1),
        )
        assert last.bias is not None  # a Conv2d has one unless told otherwise
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.transform(x.mean((2, 3), keepdim=True))


def resnet_body(name: str = "resnet10", checkpoint: str | Path | None = None) -> nn.Module:
    """A torchvision ResNet returning C3..C5 (layer2, layer3, layer4 with a ``GlobalContext``):
    random weights, or a checkpoint's (its global context block then starts as the identity).

    The checkpoint is a ResNet state_dict (or a dict holding one under ``state_dict``/``model``);
    nothing can be downloaded here, so there are no pretrained weights by name.
    """
    _check(name)
    resnet = BACKBONES[name](weights=None)
    if checkpoint is not None:
        _load_checkpoint(resnet, Path(checkpoint))
    stages = OrderedDict((n, m) for n, m in resnet.named_children() if n not in ("avgpool", "fc"))
    stages[CONTEXT] = GlobalContext(BACKBONE_WIDTHS[name][2])
    return IntermediateLayerGetter(nn.Sequential(stages), {"layer2": "C3", "layer3": "C4", CONTEXT: "C5"})


def _check(name: str) -> None:
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")


def _load_checkpoint(resnet: ResNet, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackboneError(f"{path}: backbone checkpoint not found") from None
    except Exception as e:  # a corrupt or foreign file: say which, not a traceback
        raise BackboneError(f"{path}: not a torch checkpoint ({type(e).__name__})") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    missing = sorted(expected - state.keys())
    if missing:
        raise BackboneError(f"{path}: not a checkpoint of this backbone (missing {missing[0]}, ...)")
    shapes = resnet.state_dict()
    for key in expected:
        if state[key].shape != shapes[key].shape:
            raise BackboneError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shapes[key].shape)}"
            )
    resnet.load_state_dict(state, strict=False)
