"""A training's state saved as it goes, so an interrupted training resumes where it stopped.

A two-stage proxy training in a comparison runs for up to an hour on a CPU; a crash, a Ctrl-C
or a stopped machine would otherwise lose all of it. Every ``every`` seconds ``ResumeFile``
writes the model, the optimiser, the LR schedule, the random-number state and the last
evaluation to one file, replacing the previous copy atomically (a kill mid-write leaves the
older one). A later training with the same ``key`` (neck, settings, seed, data) goes on from
the saved step and ends with the same weights and AP as one that never stopped; a file saved by
another training, or one that cannot be read, is ignored and overwritten.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESUME_FILE = "resume.pt"
SAVE_EVERY = 120.0  # seconds: at most this much training is lost


class ResumeFile:
    """The saved state of the training ``key`` at ``path``; ``state`` is None when there is none.
    ``on_save`` is called after each save."""

    def __init__(
        self,
        path: str | Path,
        key: dict[str, Any],
        every: float = SAVE_EVERY,
        on_save: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = Path(path)
        self.on_save = on_save
        self.key = json.loads(json.dumps(key))  # tuples become lists, as they come back from disk
        self.every = every
        self.state = self._load()
        self._started = self._last_save = time.monotonic()

    @property
    def step(self) -> int:
        """Optimiser steps already done (0 without a saved state)."""
        return self.state["step"] if self.state is not None else 0

    def elapsed(self) -> float:
        """Training seconds spent in all: up to the saved state in earlier runs, and in this one."""
        earlier = self.state["seconds"] if self.state is not None else 0.0
        return earlier + time.monotonic() - self._started

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> dict[str, float]:
        """Loads the saved state into the training; returns its last evaluation's metrics."""
        assert self.state is not None
        model.load_state_dict(self.state["model"])
        optimizer.load_state_dict(self.state["optimizer"])
        scheduler.load_state_dict(self.state["scheduler"])
        torch.set_rng_state(self.state["rng"])
        if "cuda_rng" in self.state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.state["cuda_rng"])
        return dict(self.state["metrics"])

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        metrics: dict[str, float],
    ) -> None:
        """Writes the state after ``step`` steps (and the training seconds spent, in all)."""
        state = {
            "key": self.key,
            "step": step,
            "seconds": self.elapsed(),
            "metrics": metrics,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)
        self._last_save = time.monotonic()
        self.on_save()

    def remove(self) -> None:
        """The training finished: its state is no longer needed."""
        self.path.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None  # cut short by a full disk or a foreign file: start afresh
        return state if isinstance(state, dict) and state.get("key") == self.key else None
