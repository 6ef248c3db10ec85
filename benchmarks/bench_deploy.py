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


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds per callable, timing them round-robin so machine noise hits all alike."""
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats (smoke test)")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np
    import torch
    import torch.nn.functional as F

    import rbnn.deploy as deploy
    from rbnn.deploy import fast
    from rbnn.deploy.packing import pack_signs

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    reps = 3 if args.quick else args.repeats
    print(
        f"CPU: {cpu_name()}; threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; "
        f"torch {torch.__version__}, numpy {np.__version__}, numba {numba.__version__}"
    )
    fast.warmup()
    rng = np.random.default_rng(0)

    # ---- 1. kernel ------------------------------------------------------------------------------------
    print(
        "\n[kernel] binary 3x3 conv (pre-packed input) vs torch fp32 conv2d, batch 16, ResNet-18 CIFAR shapes"
    )
    shapes = [(64, 32), (128, 16), (256, 8), (512, 4)] if not args.quick else [(64, 32), (256, 8)]
    nb = 16
    for c, hw in shapes:
        k = 9 * c
        xf = torch.randn(nb, c, hw, hw)
        wf = torch.randn(c, c, 3, 3)
        xs = np.where(rng.random((nb, hw + 2, hw + 2, c)) < 0.5, -1.0, 1.0)
        xs[:, 0, :, :] = xs[:, -1, :, :] = xs[:, :, 0, :] = xs[:, :, -1, :] = 1.0
        xp = pack_signs(xs)
        xp[:, 0], xp[:, -1], xp[:, :, 0], xp[:, :, -1] = 0, 0, 0, 0
        wb = pack_signs(np.where(rng.random((c, 3, 3, c)) < 0.5, -1.0, 1.0))
        wpop = np.bitwise_count(wb).sum(-1, dtype=np.int64).reshape(c, 9)
        out = np.empty((nb, hw, hw, c), np.float32)
        one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
        dummy = np.zeros((1, 1, 1, 1), np.float32)

        def binary():
            fast.bconv_kernel(
                xp,
                wb,
                wpop,
                one,
                zero,
                dummy,
                False,
                np.float32(0),
                np.float32(0),
                False,
                1,
                1,
                1,
                1,
                1,
                1,
                hw,
                hw,
                c,
                out,
            )

        xin = np.asarray(rng.standard_normal((nb, hw, hw, c)), np.float32)
        prep = fast._BinPrep.__new__(fast._BinPrep)

        def packed_layer():
            xq = np.zeros((nb, hw + 2, hw + 2, n_w), np.uint64)
            fast.pack_nhwc(xin, zshift, zmean, 1, 1, xq)
            fast.bconv_kernel(
                xq,
                wb,
                wpop,
                one,
                zero,
                dummy,
                False,
                np.float32(0),
                np.float32(0),
                False,
                1,
                1,
                1,
                1,
                1,
                1,
                hw,
                hw,
                c,
                out,
            )

        n_w = wb.shape[-1]
        zshift, zmean = np.zeros(c, np.float32), np.zeros(nb, np.float32)
        del prep
        with torch.no_grad():
            t = interleaved(
                {"torch": lambda: F.conv2d(xf, wf, padding=1), "binary": binary, "layer": packed_layer}, reps
            )
        gops = 2 * nb * hw * hw * c * k / t["binary"] / 1e9
        print(
            f"  C={c:3d} {hw:2d}x{hw:<2d} K={k:4d}: kernel {t['torch'] / t['binary']:5.1f}x faster "
            f"({gops:5.0f} GOPS-equiv), with input packing {t['torch'] / t['layer']:4.1f}x "
            f"(torch {t['torch'] * 1e3:6.2f} ms)"
        )

    # ---- 2. end to end ------------------------------------------------------------------------------------
    import onnxruntime as ort

    from rbnn.models import create

    def randomize(m):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                    mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.5 + 1)
        return m.eval()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    tmp = Path(tempfile.mkdtemp())
    results = {}
    for name, method in [("resnet18_cifar", "rbnn"), ("resnet20_bireal", "rbnn")]:
        binm = randomize(create(name, method=method))
        fpm = randomize(create(name, method="fp"))
        info = deploy.export(binm, tmp / f"{name}.rbnn", input_shape=(3, 32, 32))
        packed = deploy.load(tmp / f"{name}.rbnn", backend="fast")
        onnx_path = tmp / f"{name}_fp32.onnx"
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
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        for batch in (args.batch, 1):
            x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                t = interleaved(
                    {
                        "packed": lambda: packed.predict(x),
                        "onnxruntime fp32": lambda: sess.run(None, {"input": x}),
                        "torch eager fp32": lambda: fpm(xt),
                    },
                    reps if batch > 1 else 5 * reps,
                )
            ips = {k: batch / v for k, v in t.items()}
            results[(name, batch)] = t
            print(
                f"\n[end to end] {name} ({method}), batch {batch}: "
                + ", ".join(f"{k} {v:7.0f} img/s" for k, v in ips.items())
            )
            print(
                f"  packed vs onnxruntime fp32: {t['onnxruntime fp32'] / t['packed']:.2f}x; "
                f"vs torch eager fp32: {t['torch eager fp32'] / t['packed']:.2f}x"
            )
        rows = deploy.size_report(tmp / f"{name}.rbnn")
        total = rows[-1]
        print(
            f"[size] {name}: file {total['file_bytes'] / 1e6:.3f} MB vs fp32 state_dict "
            f"{info['float32_state_dict_bytes'] / 1e6:.2f} MB ({info['float32_state_dict_bytes'] / total['file_bytes']:.1f}x "
            f"smaller); binary weights {total['binary_weight_ratio']:.1f}x smaller than float32 "
            f"({total['binary_weight_packed_bytes'] / 1e3:.1f} KB packed)"
        )


if __name__ == "__main__":
    main()
