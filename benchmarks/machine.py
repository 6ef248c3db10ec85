"""What machine a benchmark ran on: every printed ratio names the CPU (machines differ between sessions)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    """The SIMD flags that matter for these kernels (popcount, AVX2/FMA, AVX-512 and VNNI for int8)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                keep = ("popcnt", "avx2", "fma", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "avx_vnni")
                return " ".join(f for f in keep if f in have) or "none of " + ", ".join(keep)
    except OSError:
        pass
    return "unknown"
