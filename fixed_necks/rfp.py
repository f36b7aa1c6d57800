"""Recursive Feature Pyramid -- Qiao, Chen & Yuille, "DetectoRS: Detecting Objects with Recursive
Feature Pyramid and Switchable Atrous Convolution", CVPR 2021, Sec. 3.1.

An FPN whose outputs are fed back into the backbone's bottom-up stages, so that the backbone
looks at the image twice. Unrolled over T steps (the paper's T = 2):

- step 1 is body + FPN as usual;
- at step t > 1, pyramid level P_l of step t-1 goes through the connecting module -- DetectoRS'
  ASPP (``nas.nets.ops.ASPP``: 1x1, 3x3 dilation 3, 3x3 dilation 6 and global-pooling branches, a
  quarter of the width each, concatenated; the width is kept) -- and a 1x1 conv to the stage's
  width, and is added to the first block of the stage whose output is C_l, to the block's
  residual sum before its last ReLU (the paper's Fig. 5); the body and the FPN then run again;
- the paper's fusion module merges the steps: a 1x1 conv over both pyramids' levels and a
  sigmoid give a spatial gate g (N, 1, H, W), and P_l = g * P_l(t) + (1 - g) * P_l(t-1).

On torchvision's ResNets (``nas.nets.backbone.resnet_body``: layer2..layer4 give C3..C5) P3, P4, P5
feed back into layer2, layer3, layer4; layer1 receives nothing, as the proxy's pyramid has no
P2, so the stem and layer1 compute the same at every step and run once.

Choices the paper leaves open, made here: the steps share the body's weights (the recursion of
its Eq. 2; the proxy's body is trained once per dataset and frozen by default), the FPN and
the connecting modules; one ASPP serves every level (the levels share a width); the feedback
convs and the gate start at zero, so that an untrained RFP computes exactly its FPN (a gate of
1/2 averages two equal pyramids) and a pretrained body first sees the inputs it was trained on.

Because the backbone runs inside it, ``RFP`` is body and neck in one (``takes_images``):
normalised images (N, 3, H, W) in, OrderedDict P3..P7 of ``out_channels`` out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fixed_necks.fpn import FPN
from nas.nets.backbone import CONTEXT
from nas.nets.ops import ASPP

STAGES = ("layer2", "layer3", "layer4")  # the ResNet stages whose outputs are C3, C4, C5


class RFP(nn.Module):
    """DetectoRS' recursive feature pyramid around a torchvision ResNet body; see the module docstring.

    Args:
        in_channels: widths of the body's C3, C4, C5.
        out_channels: width of the pyramid.
        body: ``nas.nets.backbone.resnet_body(...)``, a ResNet cut after layer4 (BasicBlock or
            Bottleneck stages ``layer1``..``layer4`` after the stem).
        steps: T, how many times body and FPN run (1 is a plain FPN).
        norm: norm after the FPN's and ASPP's convs (``bn``, ``gn``, ``none``/None).
        freeze_body: the body's weights take no gradient and its BatchNorms stay in eval mode,
            as in the proxy's frozen-backbone mode; gradients still flow through it to the
            feedback connections. Its stages still run ``steps`` times.

    Shapes: images (N, 3, H, W) -> OrderedDict ``P3``..``P7``, each (N, out_channels,
    ceil(H / 2**l), ceil(W / 2**l)).
    """

    takes_images = True  # the detector feeds it images, not the body's C3..C5

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        *,
        body: nn.Module,
        steps: int = 2,
        norm: str | None = None,
        freeze_body: bool = False,
    ) -> None:
        super().__init__()
        check_resnet_body(body)
        assert isinstance(body, nn.ModuleDict)  # as check_resnet_body made sure
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.body: nn.ModuleDict = body
        self.fpn = FPN(in_channels, out_channels, "p6p7", norm)
        self.aspp = ASPP(out_channels, out_channels, norm)
        self.feedback = nn.ModuleList(nn.Conv2d(out_channels, c, 1) for c in in_channels)
        self.gate = nn.Conv2d(2 * out_channels, 1, 1)
        for conv in (*self.feedback, self.gate):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.out_channels = out_channels
        self.steps = steps
        self.freeze_body = freeze_body
        if freeze_body:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> RFP:
        """As ``nn.Module.train``, but a frozen body stays in eval mode (its BatchNorm statistics)."""
        super().train(mode)
        if self.freeze_body:
            self.body.eval()
        return self

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(images)
        pyramid = self.fpn(self.stages(x))
        for _ in range(1, self.steps):
            levels = list(pyramid.values())
            feedback = [conv(self.aspp(p)) for conv, p in zip(self.feedback, levels[: len(STAGES)])]
            new = self.fpn(self.stages(x, feedback))
            pyramid = OrderedDict((name, self.fuse(new[name], pyramid[name])) for name in pyramid)
        return pyramid

    def stem(self, images: Tensor) -> Tensor:
        """The body up to layer1 (no feedback reaches it): (N, 3, H, W) -> layer1's output."""
        x = images
        for name, module in self.body.items():
            if name == STAGES[0]:
                break
            x = module(x)
        return x

    def stages(self, x: Tensor, feedback: list[Tensor] | None = None) -> list[Tensor]:
        """layer2..layer4 on layer1's output -> C3, C4, C5; ``feedback[k]`` (the width and size
        of C_{k+3}) is added inside the stage's first block."""
        features = []
        for k, name in enumerate(STAGES):
            blocks = self.body[name]
            assert isinstance(blocks, Iterable)  # a ResNet layer: check_resnet_body went through its blocks
            first, *rest = blocks
            x = first(x) if feedback is None else block_with_feedback(first, x, feedback[k])
            for block in rest:
                x = block(x)
            features.append(x)
        if CONTEXT in self.body:  # the body's global context block (nas.nets.backbone) makes its C5
            features[-1] = self.body[CONTEXT](features[-1])
        return features

    def fuse(self, new: Tensor, previous: Tensor) -> Tensor:
        """The fusion module: g = sigmoid(1x1 conv of both), g * new + (1 - g) * previous."""
        g = torch.sigmoid(self.gate(torch.cat([new, previous], dim=1)))
        return g * new + (1 - g) * previous


def block_with_feedback(block: BasicBlock | Bottleneck, x: Tensor, feedback: Tensor) -> Tensor:
    """A torchvision residual block with ``feedback`` added to its residual sum before the last ReLU
    (DetectoRS Fig. 5): relu(F(x) + shortcut(x) + feedback). (N, C_in, H, W) -> (N, C_out, H', W')."""
    shortcut = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return block.relu(out + shortcut + feedback)


def check_resnet_body(body: nn.Module) -> None:
    """ValueError unless ``body`` is a torchvision ResNet cut after layer4, as ``resnet_body`` makes."""
    names = [name for name in body.keys() if name != CONTEXT] if isinstance(body, nn.ModuleDict) else []
    if names[-len(STAGES) :] != list(STAGES) or not all(
        # body is a ModuleDict here (names holds its stages), which the checker cannot follow
        isinstance(block, BasicBlock | Bottleneck)
        for name in STAGES
        for block in body[name]  # type: ignore[index]
    ):
        raise ValueError(
            "RFP feeds back into a torchvision ResNet body ending in layer2..layer4 of BasicBlock or "
            f"Bottleneck blocks (nas.nets.backbone.resnet_body), got {type(body).__name__}"
        )
