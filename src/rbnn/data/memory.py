"""Memory a dataset would need, checked before it is allocated.

A typo such as ``data.image_size=2800``, a synthetic dataset of 100000x100000 pixels or an IDX header that
declares billions of images must fail at once with the number, not after minutes of swapping or an OOM kill.
"""

from __future__ import annotations

import os

from ..errors import DataError


def available_bytes() -> int | None:
    """Memory the system can give this process now: ``MemAvailable`` (Linux), else the physical memory, else
    None (unknown: nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def human(nbytes: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # unreachable


def ensure_fits(nbytes: int, what: str, hint: str = "") -> None:
    """Raise DataError when ``what`` would need more than the memory available now."""
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise DataError(f"{what} needs {human(nbytes)} of memory, more than the {human(avail)} available"
                        + (f"; {hint}" if hint else ""))
