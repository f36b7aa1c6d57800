"""A search's run folder and its Optuna study: everything needed to resume, inspect and export.

    runs/NAME/config.json          the resolved search config (what a resume reuses)
    runs/NAME/study.db             the Optuna study (SQLite), unless --storage names another
    runs/NAME/controller.pt        the rl controller's state (policy, optimiser, baseline)
    runs/NAME/trials/NNNN/         per Optuna trial: genotype.json, metrics.json, checkpoint.pt, tb/
    runs/NAME/baseline/fpn/        FPN trained on the same proxy, the leaderboard's reference
    runs/NAME/tune/                Ray Tune's own records

Each Optuna trial records, as user attributes, its ``genotype``, a one-line ``summary``, the AP
breakdown, ``params``, ``flops``, ``latency_ms``, where it ran (``node``, ``gpus``, ``device``,
``started``) and, when it failed, the ``failure`` reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from nas.errors import RunError
from nas.settings import ProxySettings

_OPEN_ATTEMPTS = 20  # 5 s: initialising a schema takes milliseconds
COST_IMAGE_SIZE = 512  # FLOPs and CPU latency of a neck are measured at this square input size


def _while_initialised_elsewhere(open_study: Callable[[], optuna.Study]) -> optuna.Study:
    """``open_study()``, tried again while another process is writing a new database's schema.

    Every Optuna storage object stamps a fresh database's schema version when it opens it; a
    second process doing so at the same moment gets an IntegrityError (or "database is locked").
    """
    for _ in range(_OPEN_ATTEMPTS - 1):
        try:
            return open_study()
        except (IntegrityError, OperationalError):
            time.sleep(0.25)
    return open_study()


@dataclass(frozen=True)
class SearchConfig:
    """What a search is: resolved once, saved in ``config.json``, reused on resume."""

    name: str
    space: str = "nasfpn"
    space_options: dict[str, Any] = field(default_factory=dict)
    controller: str = "rl"
    trials: int = 20
    seed: int = 0
    seed_with: tuple[str, ...] = ()
    objective: dict[str, Any] = field(default_factory=dict)  # nas.search.objectives.Objective.to_dict()
    proxy: dict[str, Any] = field(default_factory=dict)  # ProxySettings as a dict
    data: dict[str, str] = field(default_factory=dict)  # train_json, val_json, images
    scheduler: str = "asha"
    workers: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage: str | None = None  # None: SQLite study.db in the run folder
    calibration: dict[str, str] = field(default_factory=dict)  # folder, budget: --budget calibrated

    @property
    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(**self.proxy)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SearchConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["seed_with"] = tuple(data.get("seed_with", ()))
        return cls(**data)


class RunFolder:
    """``runs/NAME``: paths, the saved config and the study."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """The run folder at ``path``; RunError if no search has written one there."""
        run = cls(path)
        if not run.exists():
            raise RunError(f"{path}: not a search run folder (no config.json)")
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def controller_state(self) -> Path:
        return self.path / "controller.pt"

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / f"{number:04d}"

    def baseline_dir(self, neck: str = "fpn") -> Path:
        return self.path / "baseline" / neck

    def exists(self) -> bool:
        return self.config_file.is_file()

    def load_config(self) -> SearchConfig:
        try:
            return SearchConfig.from_json(self.config_file.read_text())
        except (OSError, ValueError, TypeError) as e:
            raise RunError(f"{self.config_file}: not a search config ({e})") from None

    def save_config(self, config: SearchConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config.to_json() + "\n")

    def storage_url(self, config: SearchConfig) -> str:
        return config.storage or f"sqlite:///{(self.path / 'study.db').resolve()}"

    def open_study(
        self,
        config: SearchConfig,
        directions: Sequence[Literal["maximize", "minimize"]],
        sampler: optuna.samplers.BaseSampler | None = None,
    ) -> optuna.Study:
        self.path.mkdir(parents=True, exist_ok=True)
        return _while_initialised_elsewhere(
            lambda: optuna.create_study(
                storage=self.storage_url(config),
                study_name=config.name,
                directions=directions,
                sampler=sampler,
                load_if_exists=True,
            )
        )

    def load_study(self) -> optuna.Study:
        """The study of an existing run, for reading (status, report, export, compare).

        Raises KeyError while the run's search has not created its study. A reader never creates
        the database file: it would race the search that is about to.
        """
        config = self.load_config()
        if config.storage is None and not (self.path / "study.db").is_file():
            raise KeyError(f"{self.path}: no study yet")
        url = self.storage_url(config)
        return _while_initialised_elsewhere(lambda: optuna.load_study(study_name=config.name, storage=url))

    def baseline_metrics(self, neck: str = "fpn") -> dict[str, Any] | None:
        """The baseline's metrics and costs, once its training finished."""
        path = self.baseline_dir(neck) / "metrics.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return {**record["metrics"], **record.get("costs", {})}


def requeue_interrupted(study: optuna.Study) -> int:
    """Fails the trials a killed search left RUNNING and enqueues their decisions again (the
    new trial's ``rerun_of`` names the old one), so they are rerun; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={**trial.user_attrs, "rerun_of": trial.number})
    return len(stale)


def interrupted_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Trials that were interrupted and rerun: they do not count towards the budget."""
    return {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}


def count_done(study: optuna.Study) -> int:
    """Trials that count towards the budget: finished, pruned, or failed for a reason of their own."""
    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in finished and t.number not in interrupted for t in trials)
