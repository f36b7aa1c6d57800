"""What a search optimises: AP alone, or AP with a hardware cost (latency or FLOPs).

``--objective ap`` maximises COCO AP. ``ap,latency`` and ``ap,flops`` are hardware-aware and
come in two forms:

- ``pareto``: an Optuna multi-objective study (maximise AP, minimise the cost); the result is
  a Pareto front. Controllers ``random`` and ``tpe`` support it.
- ``scalar``: one value per trial, MnasNet's reward ``AP * (cost / target) ** w`` with
  ``w = -0.07`` (Tan et al. 2019), ``target`` the cost of FPN on the same proxy unless given.
  Every controller supports it; ``rl`` and ``evolution`` need it (they learn from one reward).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from nas.controllers import CONTROLLERS

COSTS = {"latency": "latency_ms", "flops": "flops"}  # objective name -> metric key
MULTI_OBJECTIVE_CONTROLLERS = tuple(name for name, c in CONTROLLERS.items() if c.multi_objective)
MNAS_WEIGHT = -0.07


@dataclass(frozen=True)
class Objective:
    """``cost`` None for AP alone; ``form`` pareto | scalar; ``target`` the scalar form's cost."""

    cost: str | None = None
    form: str = "scalar"
    target: float | None = None
    weight: float = MNAS_WEIGHT

    @classmethod
    def parse(cls, text: str, form: str | None, controller: str, target: float | None = None) -> Objective:
        """``ap`` | ``ap,latency`` | ``ap,flops``; ValueError with a one-line reason otherwise."""
        parts = [p.strip() for p in text.split(",")]
        if parts[0] != "ap" or len(parts) > 2 or (len(parts) == 2 and parts[1] not in COSTS):
            raise ValueError(f"--objective {text!r}: give ap, ap,latency or ap,flops")
        if len(parts) == 1:
            if form == "pareto":
                raise ValueError("--reward pareto needs a second objective (ap,latency or ap,flops)")
            return cls()
        if form is None:
            form = "pareto" if controller in MULTI_OBJECTIVE_CONTROLLERS else "scalar"
        if form == "pareto" and controller not in MULTI_OBJECTIVE_CONTROLLERS:
            raise ValueError(
                f"controller {controller!r} learns from one reward: use --reward scalar "
                f"(Pareto search: --controller {' or '.join(MULTI_OBJECTIVE_CONTROLLERS)})"
            )
        return cls(cost=parts[1], form=form, target=target)

    @property
    def name(self) -> str:
        return "ap" if self.cost is None else f"ap,{self.cost}"

    @property
    def cost_key(self) -> str | None:
        return COSTS[self.cost] if self.cost else None

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """Optuna study directions."""
        return ["maximize", "minimize"] if self.form == "pareto" and self.cost else ["maximize"]

    def needs_target(self) -> bool:
        return self.cost is not None and self.form == "scalar" and self.target is None

    def values(self, metrics: dict[str, Any]) -> list[float]:
        """The study's value(s) for a trial's metrics (AP as a fraction in [0, 1])."""
        ap = float(metrics["AP"])
        if self.cost is None:
            return [ap]
        cost = float(metrics[COSTS[self.cost]])
        if self.form == "pareto":
            return [ap, cost]
        assert self.target is not None, "the scalar reward's target is set before the search starts"
        return [ap * (cost / self.target) ** self.weight]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
