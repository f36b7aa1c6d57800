"""Where the work runs: the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible (e.g. a Ray worker given a GPU share), else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
