"""Shared pytest fixtures (kept small)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def tiny_cfg(tmp_path):
    """A training configuration that runs in a few seconds on a CPU (digits subset)."""
    return {"model": "resnet8", "data": "digits", "train_subset": 96, "test_subset": 64, "batch_size": 32, "epochs": 2,
            "export": False, "out_dir": str(tmp_path / "runs"), "run_name": "run", "threads": 1}


@pytest.fixture
def cifar_dir(tmp_path):
    """A tiny CIFAR-10 folder in the python-pickle format (random images)."""
    from model.data import write_cifar_folder
    return write_cifar_folder(str(tmp_path / "cifar-10-batches-py"), n_train_per_batch=8, n_test=12)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests use tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    try:
        import torch
    except ImportError:         # hardware-only environments
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
