"""One-image runs of the fast engine replay their recorded kernel launches (:mod:`rbnn.runtime.launches`): the
replay must be used where it is exact, give the reference engine's logits for every new image, survive results
being kept by the caller, and be refused for runs that compute outside a launch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from test_deploy_helpers import rand_input

from rbnn.runtime import kernels, launches
from rbnn.runtime.launches import Replayer, copy_into, launch
from rbnn.runtime.threads import run_managed


def _state(fast, shape):
    return fast.ops.replayer._local.states.get(shape)


def test_one_image_runs_replay_and_stay_exact(resnet20_engines):
    fast, refm = resnet20_engines
    xs = [rand_input((3, 32, 32), 1, seed=s) for s in range(8)]
    outs = [fast.predict(x) for x in xs]
    state = _state(fast, (1, 3, 32, 32))
    assert isinstance(state, tuple) and state[0] == "ok"  # runs 4..8 were replays
    assert len(state[1].calls) >= 20  # the stem, 18 binary convs, shortcuts, pooling, the classifier
    for x, out in zip(xs, outs):  # every earlier result intact after later runs, every run exact
        np.testing.assert_array_equal(out, refm.predict(x))
    again = fast.predict(xs[0])  # a replayed run returns a copy, not the kept array
    again[:] = np.nan
    np.testing.assert_array_equal(fast.predict(xs[0]), refm.predict(xs[0]))


def test_pooled_batches_and_tiles_replay_and_stay_exact(resnet20_engines, monkeypatch):
    # a batch of 3 runs untiled with a pool of arrays, one of 40 as tiles on two threads (each thread records
    # its own tiles): the pool hands out the same arrays every run, so both are replayed
    fast, refm = resnet20_engines
    replays = []
    original = launches._Recorded.replay
    monkeypatch.setattr(launches._Recorded, "replay", lambda self, e: replays.append(1) or original(self, e))
    for n in (3, 40):
        xs = [rand_input((3, 32, 32), n, seed=40 + s) for s in range(5)]
        outs = [fast.predict(x) for x in xs]
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out, refm.predict(x))
    state = _state(fast, (3, 3, 32, 32))
    assert isinstance(state, tuple) and state[0] == "ok"
    assert len(replays) >= 2 + 2 * 2  # batch 3: the check and 2 replays; batch 40: at least that per thread


def test_threads_replay_their_own_recordings(resnet20_engines):
    fast, refm = resnet20_engines
    xs = [rand_input((3, 32, 32), 1, seed=20 + i) for i in range(16)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(fast.predict, xs))
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out, refm.predict(x))


def _run_managed(fn, x):
    return run_managed(fn, x, numba.get_num_threads())


def test_a_run_computing_outside_a_launch_is_refused():
    # a fresh NumPy array per run: its memory differs between the recorded run and the check
    def fresh(x):
        out = np.empty(2, np.float32)
        launch(copy_into, out, x.sum(axis=(1, 2, 3)).repeat(2) * 2)
        return x, out

    r = Replayer()
    xs = [np.full((1, 2, 2, 2), v, np.float32) for v in (1.0, 2.0, 3.0, 4.0)]
    outs = [_run_managed(lambda x: r.run(fresh, lambda a: a, x), x) for x in xs]
    assert r._local.states[(1, 2, 2, 2)] == "refused"
    np.testing.assert_array_equal(outs[-1], [64.0, 64.0])


def test_a_hidden_in_place_write_is_refused():
    # a kept array written by NumPy outside a launch: the replay would return the last normal run's values
    kept = np.zeros(2, np.float32)
    out = np.zeros(2, np.float32)

    def hidden(x):
        kept[:] = x.reshape(-1)[:2] * 3  # not a launch
        launch(copy_into, out, kept)
        return x, out

    r = Replayer()
    xs = [np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) + v for v in range(5)]
    outs = [_run_managed(lambda x: r.run(hidden, lambda a: a, x), x) for x in xs]
    assert r._local.states[(1, 1, 2, 2)] == "refused"
    np.testing.assert_array_equal(outs[-1], [12.0, 15.0])


def test_launches_are_recorded_with_their_thread_counts_only_while_recording():
    seen = []
    launch(lambda *a: seen.append(a), 1, 2)  # not recording: just the call
    assert seen == [(1, 2)] and getattr(launches._recording, "calls", None) is None
    launches._recording.calls = calls = []
    try:
        x = np.zeros(3, np.float32)
        launch(copy_into, x, np.ones(3, np.float32))
        launch(kernels.gap_kernel, np.ones((1, 2, 2, 3), np.float32), np.zeros((1, 1, 1, 3), np.float32))
    finally:
        launches._recording.calls = None
    assert x.tolist() == [1.0, 1.0, 1.0]
    # a Python copy records no thread count (replay does not switch for it); a numba kernel records its own
    assert [(k, t) for k, _, t in calls] == [(copy_into, 0), (kernels.gap_kernel, numba.get_num_threads())]
