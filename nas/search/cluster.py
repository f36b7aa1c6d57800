"""The Ray cluster a search or a comparison runs on: joined, or started and stopped here."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_fetched: dict[str, Any] = {}  # this worker process's fetched shared values, by object id


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[None]:
    """Uses the Ray session already open in this process, else joins ``address``, else starts a
    local cluster; what it started, it stops.

    Meanwhile SIGTERM (``kill``, a batch system's time limit) stops the work as Ctrl-C does --
    finished work kept, the resume command printed -- where Ray's own handler would abort the
    process with a stack dump.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    # Ray's start-up notices (token auth, local instance) are not the user's business.
    logging.getLogger("ray").setLevel(logging.ERROR)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    rays_handler = signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, rays_handler)
        ray.shutdown()


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Whatever Ctrl-C does now: Tune's graceful stop while a search runs, else KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # ignored, as in a background job: stop all the same
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def trial_resources(
    workers: int | None, cpus_per_trial: float, gpus_per_trial: float | None
) -> tuple[int, float, float]:
    """Trainings at a time, CPUs and GPUs of each, with the defaults filled in: a whole GPU a
    training where this machine has one, and as many at a time as its CPUs (or GPUs) hold."""
    import os

    import torch

    gpus = gpus_per_trial if gpus_per_trial is not None else float(torch.cuda.is_available())
    if workers is None:
        held = torch.cuda.device_count() / gpus if gpus > 0 else (os.cpu_count() or 1) / cpus_per_trial
        workers = max(1, int(held))
    return workers, cpus_per_trial, gpus


class SharedObject(Generic[T]):
    """A value put in Ray's object store once and deserialised at most once per worker process.

    Every ``ray.get`` deserialises anew: the proxy's data (700 MB of tensors, 4,096 target dicts)
    took 3-6 s a fetch on two cores, paid by every trial. A worker keeps the last value it
    fetched, so the trials of a reused actor and the tasks of a pooled worker fetch it once.
    """

    def __init__(self, value: T) -> None:
        import ray

        self._ref = ray.put(value)

    def get(self) -> T:
        import ray

        key = self._ref.hex()
        if key not in _fetched:
            _fetched.clear()  # one shared value per worker: a new search's data replaces the last
            _fetched[key] = ray.get(self._ref)
        return _fetched[key]
