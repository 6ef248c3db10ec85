"""CIFAR-10 from a local ``cifar-10-batches-py`` directory (the python-pickle release), loaded safely.

The release holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickled dicts with
``b"data"`` a uint8 array (N, 3072) (1024 red, 1024 green, 1024 blue values, row-major 32x32) and
``b"labels"`` a list of ints in 0..9. The pickles are read with :class:`SafeUnpickler`, which resolves only
the few globals a numpy array needs; any other global (``os.system``, ``builtins.eval``, ...) is refused
before it can be called, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
DIRNAME = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HINT = (f"set data.root=DIR where DIR is the {DIRNAME} directory of the CIFAR-10 python release "
        f"(or its parent), holding data_batch_1..5 and test_batch; nothing is downloaded")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of arrays
            allowed[(mod, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # protocol <= 2 pickles written by Python 3 encode bytes as _codecs.encode(str, 'latin1'): harmless
    import _codecs
    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array reconstruction globals; everything else is an error."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def safe_load(path: str | Path):
    """Unpickle ``path`` with :class:`SafeUnpickler` (Python-2 pickles decoded with ``encoding='bytes'``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"refusing CIFAR-10 batch {path}: {e} (only plain dicts, lists and numpy arrays "
                        "are loaded; the file is corrupt or not the CIFAR-10 release)") from None
    except Exception as e:  # truncated or garbage input raises many types (EOFError, ValueError, ...)
        raise DataError(f"cannot unpickle CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None


def _get(d: dict, key: str):
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 3, 32, 32), labels int64 (N,), validated."""
    path = Path(path)
    d = safe_load(path)
    if not isinstance(d, dict):
        raise DataError(f"CIFAR-10 batch {path}: expected a pickled dict, got {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        raise DataError(f"CIFAR-10 batch {path}: expected keys b'data' and b'labels', got "
                        f"{sorted(map(repr, d.keys()))}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 batch {path}: b'data' must be a uint8 array (N, 3072), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"CIFAR-10 batch {path}: b'labels' must be a list of ints") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 batch {path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"CIFAR-10 batch {path}: labels must be in [0, {len(CLASSES)}), "
                        f"found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def find_dir(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root, root / DIRNAME):
        if (cand / TEST_FILE).is_file() or (cand / TRAIN_FILES[0]).is_file():
            return cand
    if not root.exists():
        raise DataError(f"CIFAR-10 not found at {root}: no such directory; {HINT}")
    raise DataError(f"CIFAR-10 not found at {root}: no {TRAIN_FILES[0]} or {TEST_FILE} in it or in "
                    f"{root / DIRNAME}; {HINT}")


def load_cifar10(root: str | Path, splits=("train", "test")) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': (images, labels)}; images uint8 (N, 3, 32, 32)."""
    d = find_dir(root)
    out = {}
    for split in splits:
        names = TRAIN_FILES if split == "train" else (TEST_FILE,)
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 at {d} is incomplete: missing {', '.join(missing)}; {HINT}")
        parts = [read_batch(d / n) for n in names]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out
