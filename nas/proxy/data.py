"""The data of a proxy trial: both splits letterboxed, the backbone's weights and, when the
backbone is frozen, its cached C3..C5 -- a plain container, made by ``nas.proxy.prepare`` once
and shared by every trial on a machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nas.data.letterbox import ProxySplit


@dataclass
class ProxyData:
    """Letterboxed splits, the backbone's weights and, when frozen, its cached C3..C5."""

    train: ProxySplit
    val: ProxySplit
    num_classes: int
    body_state: dict[str, Tensor]
    features: dict[str, list[Tensor]] | None = None  # split -> [C3, C4, C5], float16

    def inputs(
        self, split: str, index: Tensor, device: torch.device | None = None, images: bool = False
    ) -> Tensor | list[Tensor]:
        """The detector's inputs for images ``index``: cached C3..C5, or images in [0, 1] -- always
        with ``images`` (a neck that runs the backbone itself)."""
        if self.features is not None and not images:
            return [c[index].to(device).float() for c in self.features[split]]
        return getattr(self, split).images[index].to(device).float().div_(255)

    def targets(self, index: Tensor, device: torch.device | None = None) -> list[dict[str, Tensor]]:
        """The training targets of images ``index``."""
        return [
            {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.train.targets[i].items()}
            for i in index.tolist()
        ]
