"""Holds a local Ray cluster for a driver (``nas.search.cluster.local_cluster``).

Run as ``python -m nas.search.local_ray`` in a session of its own: starts the cluster, prints
its address on one line, and stops it when its stdin closes -- the driver closing it, or dying.
"""

from __future__ import annotations

import logging
import signal
import sys


def main() -> None:
    import ray

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver says when to stop, by closing stdin
    logging.getLogger("ray").setLevel(logging.ERROR)
    # "local": a new cluster, never one a `ray start` on this machine left behind.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        print(ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.read()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
