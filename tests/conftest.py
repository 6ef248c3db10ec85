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


@pytest.fixture(scope="module", params=[("resnet20", "xnor"), ("resnet20_bireal", "rbnn")], ids=lambda p: p[0])
def resnet20_engines(request, tmp_path_factory):
    """(fast, reference) engines of an exported ResNet-20 with random weights and BatchNorm. xnor: a float stem
    writing the first layer's bits, option-A shortcuts, threshold bits; Bi-Real + RBNN: float residuals around
    every conv, per-sample means (two parallel phases per layer)."""
    from test_deploy_helpers import randomize

    import rbnn.deploy as deploy
    from rbnn import models

    name, method = request.param
    path = tmp_path_factory.mktemp(name) / "m.rbnn"
    deploy.export(randomize(models.create(name, method=method)), path, input_shape=(3, 32, 32))
    return deploy.load(path, backend="fast"), deploy.load(path, backend="reference")
