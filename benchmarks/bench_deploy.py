"""Benchmark the packed 1-bit engine against onnxruntime int8 and fp32 and torch fp32 (ratios from one run).

    python benchmarks/bench_deploy.py [--quick] [--threads 2] [--repeats 7] [--rounds 2] [--models resnet20:xnor,...]
        [--no-kernel] [--in-process]

Each engine runs in its own worker process (``spawn``: a fresh interpreter, as a user deploys one engine) with the
same thread count; the parent builds every file once, then asks one worker at a time for a block of timed runs
(one warm-up run first), alternating the engines in rounds (ABCDABCD) with a 0.2 s pause between blocks so the
previous engine's spinning worker threads fall asleep; each number is the median over all rounds. In one process,
onnxruntime's and torch's intra-op threads keep spinning after a call and steal the cores from the next engine,
unevenly. ``--in-process`` times all engines interleaved in this process instead (the old way, for comparison).
Prints: the CPU model and flags; kernel (binary conv vs torch fp32 conv2d at ResNet-18 CIFAR layer shapes);
end to end at batch 128 and batch 1 for resnet18_cifar (rbnn), resnet20 (xnor) and resnet20_bireal (rbnn):
packed vs onnxruntime int8 (static QDQ, per-channel, U8 activations / S8 weights, reduce_range, MinMax
calibrated on 64 real Fashion-MNIST test images padded to 32x32 and repeated to 3 channels) vs onnxruntime
fp32 of the same float network vs torch eager fp32; and sizes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from machine import cpu_flags, cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


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


def calibration_images(n: int = 64):
    """``n`` real Fashion-MNIST test images as the 3x32x32 float input the CIFAR models take (normalized)."""
    import numpy as np

    from rbnn.data.idx import FASHION_MNIST_ROOT, load_idx_split

    x, _, _, _ = load_idx_split(FASHION_MNIST_ROOT, "test")
    x = x[:n].reshape(n, 1, 28, 28).astype(np.float32) / 255.0
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    x = (x - 0.2860) / 0.3530
    return np.ascontiguousarray(np.repeat(x, 3, axis=1))


def quantize_int8(fp32_path: Path, int8_path: Path, calib) -> None:
    """onnxruntime static int8: QDQ, per-channel weights (S8), U8 activations, reduce_range, MinMax."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def bench_kernel(c: int, hw: int, nb: int, reps: int, rng) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rbnn.runtime import kernels as fast
    from rbnn.runtime.packing import pack_signs

    k = 9 * c
    xf, wf = torch.randn(nb, c, hw, hw), torch.randn(c, c, 3, 3)
    wb = pack_signs(np.where(rng.random((c, 3, 3, c)) < 0.5, -1.0, 1.0))
    wpop = fast.tap_popcounts(wb)
    wcol = fast.row_window_weights(wb, c)
    rw = (3 * c + 63) // 64
    out = np.empty((nb, hw, hw, c), np.float32)
    one, zero = np.ones(c, np.float64), np.zeros(c, np.float64)  # the epilogue's float64 out_mul, out_add
    dummy, dummy_bits = np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.uint64)
    xin = rng.standard_normal((nb, hw, hw, c)).astype(np.float32)
    zshift, zmean = np.zeros(c, np.float32), np.zeros(nb, np.float32)
    xw = np.empty((nb, hw + 2, hw, rw), np.uint64)
    fast.pack_rows(xin, zshift, zmean, False, 1, 1, 3, 1, xw)
    # geometry (kernels.G_*): 3x3, stride 1, padding 1, no next layer; float output only
    g = np.zeros(fast.GEOM_LEN, np.int64)
    g[[fast.G_KH, fast.G_KW, fast.G_SH, fast.G_SW, fast.G_DH, fast.G_DW, fast.G_PH, fast.G_PW]] = 1
    g[[fast.G_KH, fast.G_KW]] = 3
    g[[fast.G_H, fast.G_W, fast.G_C, fast.G_HO, fast.G_WO, fast.G_O]] = (hw, hw, c, hw, hw, c)
    g[[fast.G_NKW, fast.G_NDW, fast.G_FLOAT]] = 1
    cbase, rowcls = fast.border_table(wpop, g)
    lohi = np.zeros(2, np.float32)
    no_thresholds = np.zeros((2, c), np.int32)

    def binary():
        fast.bconv_kernel(xw, wcol, cbase, rowcls, g, one, zero, dummy, lohi, out, zshift, dummy_bits, no_thresholds)

    def packed_layer():
        xq = np.empty(xw.shape, np.uint64)
        fast.pack_rows(xin, zshift, zmean, False, 1, 1, 3, 1, xq)
        fast.bconv_kernel(xq, wcol, cbase, rowcls, g, one, zero, dummy, lohi, out, zshift, dummy_bits, no_thresholds)

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


def _export_fp32(fpm, path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fpm, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}},
                          opset_version=17, dynamo=False)


ENGINES = ("packed", "onnxruntime int8", "onnxruntime fp32", "torch eager fp32")
INPUT_SEED = 0  # every engine times the same input: rng standard normal, NCHW float32
PAUSE_S = 0.2  # between blocks, so the previous engine's spinning threads fall asleep
REPLY_POLL_S = 1.0  # how often the parent checks that a silent worker is still alive


@dataclass(frozen=True)
class Artifacts:
    """The files one model is timed from, written once by the parent and read by every engine."""

    name: str  # models.create name of the float network (method "fp") whose state dict is ``torch_state``
    rbnn: Path
    fp32: Path
    int8: Path
    torch_state: Path


class Engine(NamedTuple):
    """One loaded engine: ``run(prepare(x))`` is the timed call; ``profile`` only for the packed engine."""

    run: Callable[[Any], object]
    prepare: Callable[[Any], Any] = lambda x: x
    profile: Callable[..., dict[str, float]] | None = None


def make_input(batch: int):
    import numpy as np

    return np.random.default_rng(INPUT_SEED).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def build_artifacts(name: str, method: str, tmp: Path, calib) -> tuple[Artifacts, dict]:
    """Export the binary model to .rbnn and the float one to fp32/int8 ONNX and a torch state dict."""
    import torch

    import rbnn.deploy as deploy
    from rbnn.models import create

    binm = _randomize(create(name, method=method))
    fpm = _randomize(create(name, method="fp"))
    art = Artifacts(name, tmp / f"{name}.rbnn", tmp / f"{name}_fp32.onnx", tmp / f"{name}_int8.onnx",
                    tmp / f"{name}_fp32.pt")
    info = deploy.export(binm, art.rbnn, input_shape=(3, 32, 32))
    _export_fp32(fpm, art.fp32)
    quantize_int8(art.fp32, art.int8, calib)
    torch.save(fpm.state_dict(), art.torch_state)
    return art, info


def _ort_engine(path: Path, threads: int) -> Engine:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Engine(lambda x: sess.run(None, {"input": x}))


def _torch_engine(art: Artifacts) -> Engine:
    import torch

    from rbnn.models import create

    fpm = create(art.name, method="fp")
    fpm.load_state_dict(torch.load(art.torch_state, weights_only=True))
    fpm.eval()

    def run(xt):
        with torch.no_grad():
            return fpm(xt)

    return Engine(run, prepare=torch.from_numpy)


def load_engine(engine: str, art: Artifacts, threads: int) -> Engine:
    """Load only ``engine``'s runtime (the packed one through the torch-free rbnn.runtime)."""
    if engine == "packed":
        from rbnn.runtime import load

        packed = load(art.rbnn, backend="fast")
        return Engine(packed.predict, profile=packed.profile)
    if engine == "onnxruntime int8":
        return _ort_engine(art.int8, threads)
    if engine == "onnxruntime fp32":
        return _ort_engine(art.fp32, threads)
    if engine == "torch eager fp32":
        return _torch_engine(art)
    raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")


def time_block(eng: Engine, batch: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls on the shared input, after one warm-up call."""
    x = eng.prepare(make_input(batch))
    eng.run(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.run(x)
        times.append(time.perf_counter() - t)
    return times


def _set_worker_threads(engine: str, threads: int) -> None:
    """This process's thread pools: numba's count must be in the environment before numba is imported."""
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    if engine == "packed":
        import numba

        numba.set_num_threads(threads)
    elif engine == "torch eager fp32":
        import torch

        torch.set_num_threads(threads)


def _serve(conn, eng: Engine) -> None:
    """Answer commands until "stop" (or the parent is gone): ("time", batch, repeats) -> seconds per call,
    ("profile", batch, repeats) -> the packed engine's seconds per op kind."""
    while True:
        try:
            cmd, *arg = conn.recv()
        except EOFError:
            return
        if cmd == "stop":
            return
        try:
            if cmd == "time":
                conn.send(("ok", time_block(eng, *arg)))
            elif cmd == "profile" and eng.profile is not None:
                conn.send(("ok", eng.profile(make_input(arg[0]), repeats=arg[1])))
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception:
            conn.send(("error", traceback.format_exc(limit=3)))


def worker_main(conn, engine: str, art: Artifacts, threads: int) -> None:
    """Entry point of one engine's worker process: set threads, load the engine, say ready, serve."""
    try:
        _set_worker_threads(engine, threads)
        eng = load_engine(engine, art, threads)
        if engine != "torch eager fp32" and "torch" in sys.modules:  # never imported here today; if it ever is,
            sys.modules["torch"].set_num_threads(1)  # keep its pool from spinning beside this engine's
    except Exception:
        conn.send(("error", traceback.format_exc(limit=3)))
        return
    conn.send(("ready", os.getpid()))
    _serve(conn, eng)
    conn.close()


class Workers:
    """One spawned worker process per engine, asked one at a time; closing stops them all (stop, join, and
    terminate what does not exit), so none outlives the ``with`` block, also when it raises."""

    def __init__(self, art: Artifacts, threads: int, engines: tuple[str, ...] = ENGINES) -> None:
        self.art, self.threads, self.engines = art, threads, engines
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}

    def __enter__(self) -> Workers:
        try:
            for engine in self.engines:
                self._start(engine)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, engine: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child, engine, self.art, self.threads), daemon=True,
                           name=f"bench {engine}")
        proc.start()
        child.close()  # so that the parent's recv sees EOF when the worker dies
        self.procs[engine], self.conns[engine] = proc, parent
        self._reply(engine)

    def _reply(self, engine: str):
        conn, proc = self.conns[engine], self.procs[engine]
        while not conn.poll(REPLY_POLL_S):
            if not proc.is_alive():
                raise RuntimeError(f"{engine} worker exited with code {proc.exitcode} without answering")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise RuntimeError(f"{engine} worker closed its pipe (exit code {proc.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"{engine} worker failed:\n{payload}")
        return payload

    def ask(self, engine: str, *cmd):
        self.conns[engine].send(cmd)
        return self._reply(engine)

    def time(self, batch: int, repeats: int, rounds: int = 2) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Median seconds per engine over all rounds, and the medians of each round: blocks alternate in rounds,
        one worker active at a time."""
        times: dict[str, list[float]] = {k: [] for k in self.engines}
        per_round = []
        for _ in range(rounds):
            this = {}
            for engine in self.engines:
                time.sleep(PAUSE_S)
                block = self.ask(engine, "time", batch, repeats)
                times[engine] += block
                this[engine] = statistics.median(block)
            per_round.append(this)
        return {k: statistics.median(v) for k, v in times.items()}, per_round

    def profile(self, batch: int, repeats: int) -> dict[str, float]:
        time.sleep(PAUSE_S)
        return self.ask("packed", "profile", batch, repeats)

    def close(self) -> None:
        for engine, proc in self.procs.items():
            conn = self.conns[engine]
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
            conn.close()
        self.procs, self.conns = {}, {}


class InProcess:
    """All engines loaded in this process and timed interleaved (``--in-process``; the old way)."""

    def __init__(self, art: Artifacts, threads: int) -> None:
        self.engines = {k: load_engine(k, art, threads) for k in ENGINES}

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.engines = {}

    def time(self, batch: int, repeats: int, rounds: int = 2) -> tuple[dict[str, float], list[dict[str, float]]]:
        x = make_input(batch)
        t = interleaved({k: partial(e.run, e.prepare(x)) for k, e in self.engines.items()}, repeats, rounds)
        return t, [t]

    def profile(self, batch: int, repeats: int) -> dict[str, float]:
        return self.engines["packed"].profile(make_input(batch), repeats=repeats)


def bench_model(name: str, method: str, batches, reps: int, threads: int, tmp: Path, calib,
                in_process: bool = False, rounds: int = 2) -> dict:
    import rbnn.deploy as deploy

    art, info = build_artifacts(name, method, tmp, calib)
    results = {}
    with InProcess(art, threads) if in_process else Workers(art, threads) as timer:
        for batch in batches:
            t, per_round = timer.time(batch, reps if batch > 1 else 5 * reps, rounds)
            ratios = sorted(r["onnxruntime int8"] / r["packed"] for r in per_round)
            ips = ", ".join(f"{k} {batch / v:7.0f} img/s" for k, v in t.items())
            print(f"\n[end to end] {name} ({method}), batch {batch}: {ips}")
            print(
                f"  packed vs onnxruntime int8: {t['onnxruntime int8'] / t['packed']:.2f}x; "
                f"vs onnxruntime fp32: {t['onnxruntime fp32'] / t['packed']:.2f}x; "
                f"vs torch eager fp32: {t['torch eager fp32'] / t['packed']:.2f}x; "
                f"latency packed {t['packed'] * 1e3:.2f} ms, int8 {t['onnxruntime int8'] * 1e3:.2f} ms; "
                f"vs int8 per round {ratios[0]:.2f}-{ratios[-1]:.2f}x, median {statistics.median(ratios):.2f}x "
                f"({len(ratios)} rounds)"
            )
            results[batch] = t
            print_split(timer.profile(batch, max(3, reps)), batch)
    total = deploy.size_report(art.rbnn)[-1]
    sd = info["float32_state_dict_bytes"]
    print(
        f"[size] {name}: file {total['file_bytes'] / 1e6:.3f} MB vs fp32 state_dict {sd / 1e6:.2f} MB "
        f"({sd / total['file_bytes']:.1f}x smaller), int8 onnx {art.int8.stat().st_size / 1e6:.2f} MB; binary "
        f"conv weights {total['binary_weight_ratio']:.1f}x smaller than float32 "
        f"({total['binary_weight_packed_bytes'] / 1e3:.1f} KB packed vs {4 * total['binary_params'] / 1e6:.2f} MB)"
    )
    return results


def print_split(seconds_by_kind: dict[str, float], batch: int) -> None:
    """The packed engine's time per kind of op (median run), largest first."""
    total = sum(seconds_by_kind.values())
    parts = ", ".join(f"{k} {v * 1e3:.2f} ms ({100 * v / total:.0f}%)"
                      for k, v in sorted(seconds_by_kind.items(), key=lambda kv: -kv[1]))
    print(f"  packed time split at batch {batch} ({total * 1e3:.2f} ms): {parts}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per shape (ratios per round printed)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats (smoke test)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", default="resnet18_cifar:rbnn,resnet20:xnor,resnet20_bireal:rbnn",
                    help="comma-separated name:method pairs to time end to end")
    ap.add_argument("--no-kernel", action="store_true", help="skip the single-layer kernel comparison")
    ap.add_argument("--in-process", action="store_true",
                    help="time all engines interleaved in this process (the old way) instead of one worker each")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np
    import torch

    from rbnn.runtime import kernels as fast

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    reps = 2 if args.quick else args.repeats
    print(f"CPU: {cpu_name()}; flags: {cpu_flags()}; {os.cpu_count()} logical CPUs")
    print(
        f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}, "
        f"onnxruntime {args.threads}; torch {torch.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    print("timing: all engines in this process, interleaved (--in-process)" if args.in_process else
          f"timing: each engine in its own spawned worker process, one active at a time, {PAUSE_S} s pause "
          "between blocks")
    fast.warmup()
    rng = np.random.default_rng(0)
    if not args.no_kernel:
        print("\n[kernel] binary 3x3 conv (pre-packed input) vs torch fp32 conv2d, batch 16, ResNet-18 CIFAR shapes")
        for c, hw in [(64, 32), (128, 16), (256, 8), (512, 4)] if not args.quick else [(64, 32), (256, 8)]:
            bench_kernel(c, hw, 16, reps, rng)
    calib = calibration_images(64)
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in (m.split(":") for m in args.models.split(",")):
            bench_model(name, method, (args.batch, 1), reps, args.threads, Path(tmp), calib, args.in_process,
                        args.rounds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
