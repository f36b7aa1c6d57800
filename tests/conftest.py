import sys
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
