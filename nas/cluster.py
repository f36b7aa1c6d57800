"""The Ray cluster a search or a comparison runs on: joined, or started and stopped here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[None]:
    """Uses the Ray session already open in this process, else joins ``address``, else starts a
    local cluster; what it started, it stops."""
    import ray

    if ray.is_initialized():
        yield
        return
    # Ray's start-up notices (token auth, local instance) are not the user's business.
    logging.getLogger("ray").setLevel(logging.ERROR)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()
