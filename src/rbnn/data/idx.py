"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

An IDX file is a big-endian header ``0x00 0x00 <type> <ndim>``, ``ndim`` uint32 sizes, then the data.
Only unsigned bytes (type 0x08) are used: images ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
The reader checks the magic number, the sizes and the exact byte count, and reports any problem as a
one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist` "
                      f"(files under {FASHION_MNIST_ROOT}) or set data.root=DIR holding "
                      "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
                      "t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)")
IDX_HINT = ("set data.root=DIR holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
            "t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz); nothing is downloaded")

# (split, kind) -> accepted base names (the second spelling is used by some MNIST mirrors)
FILE_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {type(e).__name__}: {e} "
                        "(truncated or corrupt gzip; re-install or re-copy the file)") from None


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes into a uint8 array of the header's shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, not even a 4-byte magic number")
    (magic,) = struct.unpack(">I", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"IDX file {path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                        f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}, unsigned bytes)")
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08 or magic & 0xFF == 0:
        raise DataError(f"IDX file {path}: magic number 0x{magic:08x} is not an unsigned-byte IDX header "
                        "(expected 0x000008NN)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, header needs {header}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {what}: {len(data)} bytes, "
                        f"header {tuple(dims)} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_idx_file(root: Path, split: str, kind: str) -> Path | None:
    for base in FILE_NAMES[(split, kind)]:
        for name in (base + ".gz", base):
            p = root / name
            if p.is_file():
                return p
    return None


def load_idx_split(root: str | Path, split: str, hint: str = IDX_HINT,
                   dataset: str = "IDX") -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """Images (N, 1, H, W) uint8 and labels (N,) uint8 of ``split`` ('train' or 'test') under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{dataset} not found at {root}: no such directory; {hint}")
    img_path = find_idx_file(root, split, "images")
    lbl_path = find_idx_file(root, split, "labels")
    for p, kind in ((img_path, "images"), (lbl_path, "labels")):
        if p is None:
            base = FILE_NAMES[(split, kind)][0]
            raise DataError(f"{dataset} not found at {root}: missing {base}(.gz); {hint}")
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"IDX files disagree: {img_path} has {len(images)} images, "
                        f"{lbl_path} has {len(labels)} labels")
    return images[:, None], labels, img_path, lbl_path
