import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# tests/helpers.py is imported as `helpers`.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 + 8 image embedded dataset."""
    from nas.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("data") / "shapes", train=16, val=8, size=128, seed=3)


@pytest.fixture(scope="session")
def backbone_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ResNet-10 weights: spares the tests the backbone's pretraining."""
    from nas.nets.backbone import resnet_body

    path = tmp_path_factory.mktemp("backbone") / "resnet10.pt"
    torch.manual_seed(0)
    torch.save(resnet_body("resnet10").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session; yields its address for subprocesses to join.

    It declares one GPU, GPU machine or not: Ray schedules GPU shares by the declared resource,
    and a trial whose torch sees no CUDA trains on the CPU.
    """
    import ray

    ray.init(
        address="local",  # not the multi-node cluster of tests/ray_nodes.py, whatever runs first
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster, and immune to a busy sibling core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server of this machine's (Debian's) PostgreSQL, with a database
    ``nasfpn``; yields its SQLAlchemy URL. ``make test`` installs the server (make postgres)."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    assert found, "PostgreSQL's initdb is not installed: `make test` installs it (make postgres)"
    bin_dir = Path(found).resolve().parent  # the server's own tools, not Debian's wrappers
    root = Path(tempfile.mkdtemp(prefix="nasfpn-pg-"))
    # The server refuses to run as root: there, it runs as Debian's postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, cwd=root)

    run(str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(root / "data"),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    try:
        run(str(bin_dir / "createdb"), "-h", str(root), "-p", str(port), "-U", "postgres", "nasfpn")
        yield f"postgresql://postgres@127.0.0.1:{port}/nasfpn"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
