"""A search's run folder and its Optuna study: everything needed to resume, inspect and export.

    runs/NAME/config.json          the resolved search config (what a resume reuses)
    runs/NAME/study.db             the Optuna study (SQLite), unless --storage names another
    runs/NAME/controller.pt        the rl controller's state (policy, optimiser, baseline)
    runs/NAME/trials/NNNN/         per Optuna trial: genotype.json, metrics.json, checkpoint.pt, tb/
    runs/NAME/baseline/fpn/        FPN trained on the same proxy, the leaderboard's reference
    runs/NAME/tune/                Ray Tune's own records

Each Optuna trial records, as user attributes, its ``genotype``, a one-line ``summary``, the AP
breakdown, ``params``, ``flops``, ``latency_ms``, where it ran (``node``, ``gpus``, ``device``,
``started``), the ``driver`` that ran it (host:pid) and, when it failed, the ``failure`` reason.

Several drivers may share one study (``--storage postgresql://...``, a search started on several
machines): Optuna numbers their trials apart, each driver stops when the study holds the
search's trials, and a resume reruns only the trials of drivers that are gone -- killed on this
machine (their process no longer exists), or silent elsewhere: a driver records a heartbeat for
its running trials every ``HEARTBEAT`` seconds on such a storage, and a trial without one for
``GRACE`` seconds is failed and rerun by whichever driver finds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from nas.errors import RunError
from nas.settings import ProxySettings

# The driver records its trials' heartbeats itself (nas.search.driver), not through Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
Opened = TypeVar("Opened")
_OPEN_ATTEMPTS = 20  # 5 s: initialising a schema takes milliseconds
DRIVER = f"{socket.gethostname()}:{os.getpid()}"  # this process, as the trials it runs record it
HEARTBEAT = 30  # seconds between a driver's heartbeats for its running trials (shared storages)
GRACE = 180  # seconds without a heartbeat after which a running trial's driver is taken as gone
COST_IMAGE_SIZE = 512  # FLOPs and CPU latency of a neck are measured at this square input size


def _while_initialised_elsewhere(
    opening: Callable[[], Opened], retried: tuple[type[Exception], ...] = (IntegrityError, OperationalError)
) -> Opened:
    """``opening()``, tried again while another process is writing a new database's schema.

    Every Optuna storage object stamps a fresh database's schema version when it opens it; a
    second process doing so at the same moment gets an IntegrityError (or, from SQLite, an
    OperationalError such as "database is locked").
    """
    for _ in range(_OPEN_ATTEMPTS - 1):
        try:
            return opening()
        except retried:
            time.sleep(0.25)
    return opening()


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at the SQLAlchemy ``url``; heartbeats on where drivers can share it
    (anything but SQLite). One that cannot be opened is a ``RunError`` naming the database
    (its password left out) and the reason."""
    shared = not url.startswith("sqlite")
    heartbeats: dict[str, Any] = (
        {"heartbeat_interval": HEARTBEAT, "grace_period": GRACE, "heartbeat_stale_trial_callback": _rerun}
        if shared
        else {}
    )
    try:
        where = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise RunError(f"storage {url!r}: not a SQLAlchemy database URL") from None
    try:
        with _heartbeats_api():
            # A server's OperationalError is a refused or failed connection: no use waiting.
            retried = (IntegrityError,) if shared else (IntegrityError, OperationalError)
            return _while_initialised_elsewhere(
                lambda: optuna.storages.RDBStorage(url, **heartbeats), retried
            )
    except ImportError:
        raise RunError(f"storage {where}: no database driver for it is installed") from None
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise RunError(f"storage {where}: {reason}") from None


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
        storage: optuna.storages.BaseStorage | None = None,
    ) -> optuna.Study:
        """The run's study, made if missing, in ``storage`` (default: ``open_storage`` of its URL)."""
        self.path.mkdir(parents=True, exist_ok=True)
        storage = storage or open_storage(self.storage_url(config))
        return _while_initialised_elsewhere(
            lambda: optuna.create_study(
                storage=storage,
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
        storage = open_storage(self.storage_url(config))
        return _while_initialised_elsewhere(
            lambda: optuna.load_study(study_name=config.name, storage=storage)
        )

    def baseline_metrics(self, neck: str = "fpn") -> dict[str, Any] | None:
        """The baseline's metrics and costs, once its training finished."""
        path = self.baseline_dir(neck) / "metrics.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return {**record["metrics"], **record.get("costs", {})}


@contextmanager
def _heartbeats_api() -> Iterator[None]:
    """Optuna's heartbeat API, used knowingly: "experimental" since Optuna 2.9, its warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def requeue_interrupted(study: optuna.Study, driver: str | None = None) -> int:
    """Fails the RUNNING trials of ``driver`` (this one, stopping) -- or, without one, those of
    drivers that are gone -- and enqueues their decisions again (the new trial's ``rerun_of``
    names the old one), so they are rerun; returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stopped = [t for t in running if t.user_attrs.get("driver") == driver or (driver is None and _gone(t))]
    for trial in stopped:
        study.tell(trial.number, state=TrialState.FAIL)
        _rerun(study, trial)
    if driver is None:  # drivers on other machines, silent for GRACE seconds (a shared storage)
        with _heartbeats_api():
            optuna.storages.fail_stale_trials(study)
    return len(running) - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _gone(trial: FrozenTrial) -> bool:
    """Was ``trial`` left RUNNING by a driver process of this machine that no longer exists?"""
    host, _, pid = str(trial.user_attrs.get("driver", ":")).rpartition(":")
    if not pid.isdigit():
        return True  # recorded before drivers were: one driver a study, the one now resuming
    if host != socket.gethostname():
        return False
    # This process resuming its own study in-process (the tests) takes its old trials as gone too.
    return int(pid) == os.getpid() or not process_alive(int(pid))


def process_alive(pid: int) -> bool:
    """Is there a process ``pid`` on this machine (another user's included)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _rerun(study: optuna.Study, trial: FrozenTrial) -> None:
    study.enqueue_trial(trial.params, user_attrs={**trial.user_attrs, "rerun_of": trial.number})


def interrupted_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Trials that were interrupted and rerun: they do not count towards the budget."""
    return {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}


def count_done(study: optuna.Study) -> int:
    """Trials that count towards the budget: finished, pruned, or failed for a reason of their own."""
    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in finished and t.number not in interrupted for t in trials)


def claimed(study: optuna.Study) -> int:
    """Trials done or running (by any driver): those the budget has given out."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return count_done(study) + running
