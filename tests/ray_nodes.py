"""A Ray cluster of several nodes on this machine, for the tests that need more than one.

``python tests/ray_nodes.py N`` starts a head node and N - 1 worker nodes -- each its own raylet
and object store, one CPU each -- prints the cluster's address, then reads commands on stdin:
``kill`` SIGKILLs the newest worker node's processes (a machine lost) and ``add`` adds a worker
node, each printing ``done``; the end of stdin stops the cluster.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "token")  # as nas.search sets it for its drivers

from ray.cluster_utils import Cluster  # noqa: E402 -- reads RAY_AUTH_MODE when imported

NODE = {"num_cpus": 1, "object_store_memory": 200 * 2**20}


def main(nodes: int) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    workers = [cluster.add_node(**NODE) for _ in range(nodes - 1)]
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "kill" and workers:
                cluster.remove_node(workers.pop(), allow_graceful=False)
            elif line.strip() == "add":
                workers.append(cluster.add_node(**NODE))
                cluster.wait_for_nodes()
            print("done", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
