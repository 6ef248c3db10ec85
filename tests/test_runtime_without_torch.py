"""The runtime installs and runs without torch: a fresh venv (no system site packages) gets only numpy, numba
(with its llvmlite) and rbnn itself, all with ``--no-deps``, then loads a ``.rbnn`` file exported here and
predicts the same logits bit for bit. Skipped only when pip cannot reach a package index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import llvmlite
import numba
import numpy as np
import pytest
from test_deploy_helpers import rand_input, tiny

from rbnn.export import export
from rbnn.runtime import load

REPO = Path(__file__).resolve().parents[1]

# pip's words for "no index reachable" (requests/urllib3 connection errors, DNS, proxies, offline mode)
NETWORK_ERRORS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ProxyError",
    "Connection refused",
    "No matching distribution found for numpy",
    "No matching distribution found for numba",
)

IN_VENV = """
import sys
import numpy as np
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch is importable in the runtime-only venv")
import rbnn.runtime as rt
assert rt.__file__.startswith(sys.prefix), (rt.__file__, sys.prefix)
x = np.load(sys.argv[2])
for backend in ("fast", "reference"):
    np.save(f"{sys.argv[3]}.{backend}.npy", rt.load(sys.argv[1], backend=backend).predict(x))
assert "torch" not in sys.modules
"""


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _pip_install(py: Path, args: list[str], cwd: Path) -> None:
    """This interpreter's pip installs into the venv of ``py`` (``--python``, pip >= 22.3): no pip in the venv."""
    r = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", *args], cwd)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if any(s in out for s in NETWORK_ERRORS):
            pytest.skip(f"pip cannot reach a package index: {out.strip().splitlines()[-1]}")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{out[-3000:]}")


def _source_copy(dst: Path) -> Path:
    """The files a build of rbnn needs, copied so that building writes nothing into the repository."""
    dst.mkdir()
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    shutil.copy(REPO / "README.md", dst / "README.md")
    shutil.copytree(REPO / "src" / "rbnn", dst / "src" / "rbnn", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_runtime_installs_and_predicts_without_torch(tmp_path):
    start = time.perf_counter()
    path, x = tmp_path / "m.rbnn", rand_input((3, 8, 8), 3, seed=4)
    export(tiny("rbnn"), path, input_shape=(3, 8, 8))
    np.save(tmp_path / "x.npy", x)
    want = {b: load(path, backend=b).predict(x) for b in ("fast", "reference")}

    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # exactly the runtime's dependencies, pinned to the versions here (pip's cache keeps it quick), and rbnn
    # built from a copy of this tree: with --no-deps nothing else (torch above all) can come in
    pins = [f"numpy=={np.__version__}", f"numba=={numba.__version__}", f"llvmlite=={llvmlite.__version__}"]
    _pip_install(py, ["--no-deps", *pins, str(_source_copy(tmp_path / "src_copy"))], tmp_path)

    (tmp_path / "run.py").write_text(IN_VENV)
    r = _run([str(py), "run.py", str(path), str(tmp_path / "x.npy"), str(tmp_path / "got")], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for backend, logits in want.items():
        got = np.load(tmp_path / f"got.{backend}.npy")
        assert got.shape == (3, 5) and got.dtype == np.float32
        np.testing.assert_array_equal(got, logits)  # bit for bit, both engines
    print(f"export + venv + install + predict: {time.perf_counter() - start:.1f} s")
