"""The Ray cluster a search or a comparison runs on: joined, or started and stopped here."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")
_fetched: dict[str, Any] = {}  # this worker process's fetched shared values, by object id


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[None]:
    """Uses the Ray session already open in this process, else joins ``address``, else starts a
    local cluster (``local_cluster``); what it started, it stops.

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
    with contextlib.ExitStack() as stack:
        if address is None:
            address = stack.enter_context(local_cluster())
        else:
            _check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        stack.callback(ray.shutdown)
        rays_handler = signal.signal(signal.SIGTERM, _as_ctrl_c)
        stack.callback(signal.signal, signal.SIGTERM, rays_handler)
        yield


def _check_reachable(address: str) -> None:
    """A UsageError when nothing answers at a ``host:port`` address: Ray itself would retry
    for minutes (measured: still retrying after 150 s). Other forms (``auto``, ``ray://``) go to Ray."""
    from nas.errors import UsageError

    host, _, port = address.rpartition(":")
    if not host or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


@contextmanager
def local_cluster(timeout: float = 120.0) -> Iterator[str]:
    """A local Ray cluster held by a process of its own session (``nas.search.local_ray``);
    yields its address, and stops it on leaving.

    Ray's processes are children of whoever starts them and share its process group. Started
    by the driver, they died with it when SIGTERM went to the whole group -- as ``timeout`` and
    batch schedulers send it -- and the driver, left without its cluster, could not stop
    cleanly (measured: 60 s waiting for the GCS, Ray's fatal error, exit 1, no resume line).
    The holder is outside that group; it stops the cluster when its stdin closes, which also
    happens when the driver dies without a word (SIGKILL).
    """
    # Authenticated as this process's Ray will join it: that read RAY_AUTH_MODE when imported (unset:
    # no token sent), and a process that imported Ray before nasfpn could not set it (nas.search).
    auth = os.environ.get("RAY_AUTH_MODE", "disabled")
    holder = subprocess.Popen(
        [sys.executable, "-m", "nas.search.local_ray"],
        env={**os.environ, "RAY_AUTH_MODE": auth},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        address = _first_line(holder.stdout, timeout)
        if not address:
            raise RuntimeError(f"the local Ray cluster did not start (exit status {holder.wait()})")
        yield address
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def _first_line(stream: IO[str], timeout: float) -> str:
    """The first line of ``stream`` without its newline; "" if none comes within ``timeout`` s."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ""


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
