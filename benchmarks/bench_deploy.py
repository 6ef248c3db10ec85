"""Benchmark the packed 1-bit engine against torch fp32 and onnxruntime fp32 (ratios from one run).

    python benchmarks/bench_deploy.py [--quick] [--threads 2] [--repeats 7]

Everything compared runs in this process with the same thread count, after warm-up; each number is the
median of ``--repeats`` timed runs, and the baseline is timed interleaved with the thing compared.
Prints: kernel (binary conv vs torch fp32 conv2d at ResNet-18 CIFAR layer shapes), end to end at batch 128
and batch 1 (packed vs onnxruntime fp32 of the same float network vs torch eager fp32), and sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def interleaved(fns: dict, repeats: int, rounds: int = 2) -> dict:
    """Median seconds per callable. Blocks of ``repeats`` runs of each callable (after one warm-up run)
    alternate for ``rounds`` rounds (ABCABC), so slow drifts of machine load hit all alike while one runtime's
    spinning worker threads do not steal the cores of the next call."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            f()
            for _ in range(repeats):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_kernel(c: int, hw: int, nb: int, reps: int, rng) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rbnn.deploy import fast
    from rbnn.deploy.packing import pack_signs

    k = 9 * c
    xf, wf = torch.randn(nb, c, hw, hw), torch.randn(c, c, 3, 3)
    wb = pack_signs(np.where(rng.random((c, 3, 3, c)) < 0.5, -1.0, 1.0))
    wpop = fast.tap_popcounts(wb)
    wblk = fast.row_window_weights(wb, c)
    wrow = fast.per_channel_weights(wblk, c)
    rw = (3 * c + 63) // 64
    out = np.empty((nb, hw, hw, c), np.float32)
    one, zero = np.ones(c, np.float64), np.zeros(c, np.float64)  # the epilogue's float64 out_mul, out_add
    dummy = np.zeros((1, 1, 1, 1), np.float32)
    xin = rng.standard_normal((nb, hw, hw, c)).astype(np.float32)
    zshift, zmean = np.zeros(c, np.float32), np.zeros(nb, np.float32)
    xw = np.empty((nb, hw + 2, hw, rw), np.uint64)
    fast.pack_rows(xin, zshift, zmean, 1, 1, 3, 1, xw)
    f0 = np.float32(0)

    def binary():
        fast.bconv_kernel(
            xw, wblk, wrow, wpop, 3, 3, one, zero, dummy, False, f0, f0, False, 1, 1, 1, 1, 1, 1, hw, hw, c, out
        )

    def packed_layer():
        xq = np.empty(xw.shape, np.uint64)
        fast.pack_rows(xin, zshift, zmean, 1, 1, 3, 1, xq)
        fast.bconv_kernel(
            xq, wblk, wrow, wpop, 3, 3, one, zero, dummy, False, f0, f0, False, 1, 1, 1, 1, 1, 1, hw, hw, c, out
        )

    with torch.no_grad():
        t = interleaved({"torch": lambda: F.conv2d(xf, wf, padding=1), "binary": binary, "layer": packed_layer}, reps)
    gops = 2 * nb * hw * hw * c * k / t["binary"] / 1e9
    print(
        f"  C={c:3d} {hw:2d}x{hw:<2d} K={k:4d}: kernel {t['torch'] / t['binary']:5.1f}x faster "
        f"({gops:5.0f} GOPS-equiv), with input packing {t['torch'] / t['layer']:4.1f}x "
        f"(torch fp32 {t['torch'] * 1e3:6.2f} ms)"
    )


def _randomize(m):
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.5 + 1)
    return m.eval()


def bench_model(name: str, method: str, batches, reps: int, threads: int, tmp: Path, rng) -> None:
    import warnings

    import numpy as np
    import onnxruntime as ort
    import torch

    import rbnn.deploy as deploy
    from rbnn.models import create

    binm = _randomize(create(name, method=method))
    fpm = _randomize(create(name, method="fp"))
    info = deploy.export(binm, tmp / f"{name}.rbnn", input_shape=(3, 32, 32))
    packed = deploy.load(tmp / f"{name}.rbnn", backend="fast")
    onnx_path = tmp / f"{name}_fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fpm,
            (torch.zeros(1, 3, 32, 32),),
            str(onnx_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    for batch in batches:
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            t = interleaved(
                {
                    "packed": lambda x=x: packed.predict(x),
                    "onnxruntime fp32": lambda x=x: sess.run(None, {"input": x}),
                    "torch eager fp32": lambda xt=xt: fpm(xt),
                },
                reps if batch > 1 else 5 * reps,
            )
        ips = ", ".join(f"{k} {batch / v:7.0f} img/s" for k, v in t.items())
        print(f"\n[end to end] {name} ({method}), batch {batch}: {ips}")
        print(
            f"  packed vs onnxruntime fp32: {t['onnxruntime fp32'] / t['packed']:.2f}x; "
            f"vs torch eager fp32: {t['torch eager fp32'] / t['packed']:.2f}x; "
            f"packed latency {t['packed'] * 1e3:.2f} ms"
        )
    total = deploy.size_report(tmp / f"{name}.rbnn")[-1]
    sd = info["float32_state_dict_bytes"]
    print(
        f"[size] {name}: file {total['file_bytes'] / 1e6:.3f} MB vs fp32 state_dict {sd / 1e6:.2f} MB "
        f"({sd / total['file_bytes']:.1f}x smaller); binary conv weights {total['binary_weight_ratio']:.1f}x "
        f"smaller than float32 ({total['binary_weight_packed_bytes'] / 1e3:.1f} KB packed vs "
        f"{4 * total['binary_params'] / 1e6:.2f} MB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats (smoke test)")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np
    import torch

    from rbnn.deploy import fast

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    reps = 2 if args.quick else args.repeats
    print(
        f"CPU: {cpu_name()}; threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}, "
        f"onnxruntime {args.threads}; torch {torch.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    fast.warmup()
    rng = np.random.default_rng(0)
    print("\n[kernel] binary 3x3 conv (pre-packed input) vs torch fp32 conv2d, batch 16, ResNet-18 CIFAR shapes")
    for c, hw in [(64, 32), (128, 16), (256, 8), (512, 4)] if not args.quick else [(64, 32), (256, 8)]:
        bench_kernel(c, hw, 16, reps, rng)
    tmp = Path(tempfile.mkdtemp())
    for name in ("resnet18_cifar", "resnet20_bireal"):
        bench_model(name, "rbnn", (args.batch, 1), reps, args.threads, tmp, rng)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
