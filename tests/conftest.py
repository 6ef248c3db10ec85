import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fashion_root() -> Path:
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    return FASHION


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops gain nothing from threads, and OpenMP spin-waits make them slow on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
