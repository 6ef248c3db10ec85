"""Bit packing of ±1 (and ternary) values into uint64 words, NumPy only.

Convention (LCE-compatible): **bit 1 = negative (−1)**, bit 0 = +1. Bits are packed along the *last* axis:
element ``i`` of that axis goes to word ``i // 64``, bit ``i % 64`` (little-endian within the word). Unused
high bits of the last word are 0 in both activations and weights, so they XOR to 0 and never count.

For ternary values {−1, 0, +1} (``sign(0) = 0``) a second bit-plane, the *nonzero mask*, has bit 1 where the
value is nonzero. A dot product of two packed vectors is then

    dot = popcount(m_a & m_w) − 2·popcount((a ^ w) & m_a & m_w)

which for pure ±1 vectors (all mask bits set over the K real elements) is the familiar K − 2·popcount(a ^ w).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def n_words(k: int) -> int:
    """Number of uint64 words that hold ``k`` bits."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis into uint64 words (shape ``(..., n_words(K))``)."""
    bits = np.asarray(bits, dtype=bool)
    k = bits.shape[-1]
    nw = n_words(k)
    padded = np.zeros(bits.shape[:-1] + (nw * WORD_BITS,), dtype=bool)
    padded[..., :k] = bits
    # np.packbits(bitorder="little") gives bytes whose bit j is element 8*byte+j; 8 little-endian bytes make a
    # uint64 whose bit i is element i of the 64-block.
    by = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: boolean array of shape ``(..., k)``."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64)).astype("<u8", copy=False)
    by = words.view(np.uint8)
    bits = np.unpackbits(by, axis=-1, bitorder="little")
    return bits[..., :k].astype(bool)


def pack_signs(values: np.ndarray) -> np.ndarray:
    """Pack the sign bits of a real/±1 array along the last axis (bit 1 where value < 0)."""
    return pack_bits(np.asarray(values) < 0)


def pack_nonzero(values: np.ndarray) -> np.ndarray:
    """Pack the nonzero mask of an array along the last axis (bit 1 where value != 0)."""
    return pack_bits(np.asarray(values) != 0)


def unpack_signs(words: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """±1 (or {−1,0,+1} with ``mask``) float32 values from packed sign bits."""
    v = 1.0 - 2.0 * unpack_bits(words, k).astype(np.float32)
    if mask is not None:
        v = v * unpack_bits(mask, k)
    return v.astype(np.float32)
