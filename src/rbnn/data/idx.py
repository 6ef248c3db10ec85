"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

An IDX file is a big-endian header ``0x00 0x00 <type> <ndim>``, ``ndim`` uint32 sizes, then the data.
Only unsigned bytes (type 0x08) are used: images ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
The reader checks the magic number, the sizes and the exact byte count, and reports any problem as a
one-line ``DataError`` naming the file. The declared size is checked before any data is decompressed and the
data is streamed with that size as a cap (a gzip bomb is refused, not inflated).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .memory import ensure_fits

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


# deflate never expands more than 1032:1, so a gzip file of B bytes cannot hold more than ~1032*B bytes
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def _open(path: Path):
    """The file's decompressed byte stream (gzip detected by its magic bytes) and whether it is gzip."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if gz else open(path, "rb")), gz


def _read_exact(f, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _header(f, path: Path, expected_magic: int | None) -> tuple[int, ...]:
    """Check the magic number and return the dimensions the header declares."""
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(head)} bytes, not even a 4-byte magic number")
    (magic,) = struct.unpack(">I", head)
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"IDX file {path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                        f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}, unsigned bytes)")
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08 or magic & 0xFF == 0:
        raise DataError(f"IDX file {path}: magic number 0x{magic:08x} is not an unsigned-byte IDX header "
                        "(expected 0x000008NN)")
    ndim = magic & 0xFF
    raw = _read_exact(f, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"IDX file {path} is truncated: {4 + len(raw)} bytes, header needs {4 + 4 * ndim}")
    return struct.unpack(f">{ndim}I", raw)


def _check_declared(path: Path, dims: tuple[int, ...], gz: bool) -> int:
    """The payload size the header declares, refused before anything is decompressed when the file cannot
    hold it (raw: its exact size; gzip: deflate's maximum ratio) or when it would not fit in memory."""
    header = 4 + 4 * len(dims)
    payload = math.prod(dims)
    size = path.stat().st_size
    if not gz and size != header + payload:
        what = "truncated" if size < header + payload else "longer than its header says"
        raise DataError(f"IDX file {path} is {what}: {size} bytes, header {tuple(dims)} needs {header + payload}")
    if gz and payload > MAX_DEFLATE_RATIO * size:
        raise DataError(f"IDX file {path} is truncated: its header {tuple(dims)} declares {payload + header} bytes, "
                        f"more than a {size}-byte gzip file can hold")
    ensure_fits(payload, f"IDX file {path} (header {tuple(dims)})")
    return payload


def _payload(f, path: Path, dims: tuple[int, ...], payload: int) -> np.ndarray:
    """Stream exactly ``payload`` bytes into an array of the header's shape; refuse a stream that holds less or
    more (without reading the rest of it)."""
    out = np.empty(payload, dtype=np.uint8)
    pos = 0
    while pos < payload:
        chunk = f.read(min(_CHUNK, payload - pos))
        if not chunk:
            header = 4 + 4 * len(dims)
            raise DataError(f"IDX file {path} is truncated: {header + pos} bytes, "
                            f"header {tuple(dims)} needs {header + payload}")
        out[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        pos += len(chunk)
    if f.read(1):
        raise DataError(f"IDX file {path} is longer than its header says: header {tuple(dims)} needs "
                        f"{4 + 4 * len(dims) + payload} bytes, the file holds more")
    return out.reshape(dims)


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes into a uint8 array of the header's shape. The header's sizes are
    checked before the data is decompressed, and the data is streamed with a cap of exactly that size: a small
    gzip file that inflates to gigabytes is refused after reading at most what the header declares."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    try:
        f, gz = _open(path)
        with f:
            dims = _header(f, path, expected_magic)
            payload = _check_declared(path, dims, gz)
            return _payload(f, path, dims, payload)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {type(e).__name__}: {e} "
                        "(truncated or corrupt gzip; re-install or re-copy the file)") from None


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
