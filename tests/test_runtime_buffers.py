"""The fast engine's plan reuses each step's arrays from one run to the next on the same thread
(:mod:`rbnn.runtime.buffers`): results must not change, must not be overwritten by a later run, and the arrays
must really be reused (a fresh 512 KB activation per step cost page faults: docs/deploy.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from test_deploy_helpers import rand_input

from rbnn.runtime.buffers import StepBuffers


def test_runs_reuse_arrays_and_stay_exact(resnet20_engines):
    fast, refm = resnet20_engines
    xs = [rand_input((3, 32, 32), n, seed=s) for n, s in ((2, 0), (2, 1), (3, 2), (2, 3), (1, 4), (2, 5))]
    fast.predict(xs[0])
    kept = dict(fast.ops.buffers._local.arrays)
    assert len(kept) > 10 and sum(a.nbytes for a in kept.values()) > 100_000
    outs = [fast.predict(xs[1])]  # the same shape again: the same arrays, overwritten
    assert all(fast.ops.buffers._local.arrays[k] is a for k, a in kept.items())
    outs = [fast.predict(xs[0]), *outs, *(fast.predict(x) for x in xs[2:])]  # other shapes (new arrays), back
    for x, out in zip(xs, outs):  # every earlier result intact after later runs, every run exact
        np.testing.assert_array_equal(out, refm.predict(x))


def test_concurrent_callers_keep_their_own_arrays(resnet20_engines):
    fast, refm = resnet20_engines
    xs = [rand_input((3, 32, 32), 2, seed=10 + i) for i in range(6)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(fast.predict, xs))
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out, refm.predict(x))


def test_step_buffers_outside_a_run_are_fresh_and_zeroed_on_request():
    b = StepBuffers()
    a1, a2 = b.get(("n", "out"), (2, 3), np.float32), b.get(("n", "out"), (2, 3), np.float32)
    assert a1 is not a2  # not inside a run: ops called on their own never share memory
    assert b.activate() and not b.activate()  # a nested run does not own the arrays
    z = b.get(("n", "pad"), (4,), np.uint64, zeroed=True)
    assert not z.any()
    z[1] = 7
    assert b.get(("n", "pad"), (4,), np.uint64, zeroed=True) is z  # kept: the caller's contract keeps it valid
    assert b.get(("n", "pad"), (5,), np.uint64, zeroed=True) is not z  # another shape: a new zeroed array
    b.deactivate()
    b.release()
    b.activate()
    assert b.get(("n", "pad"), (5,), np.uint64) is not z
    b.deactivate()


def test_pool_hands_on_dead_arrays_but_not_ones_a_live_view_reads():
    """While pooling, take() reuses an array given back by a dead value, but not one that a live value views
    (a flatten's reshape outlives the conv output it views); ending the pooling returns every array."""
    b = StepBuffers()
    assert b.activate()
    b.pooling(True)
    a = b.take(("x", "out"), (2, 3), np.float32)
    b.give(a, [])
    assert b.take(("y", "out"), (2, 3), np.float32) is a  # the dead value's array, warm
    c = b.take(("z", "out"), (2, 3), np.float32)
    assert c is not a
    b.give(c, [c.reshape(-1)])  # a live view of it: kept out of the pool
    d = b.take(("w", "out"), (2, 3), np.float32)
    assert d is not c and d is not a
    b.pooling(False)  # every array back
    assert sum(len(v) for v in b._local.pool.values()) == 3
    b.deactivate()
    assert b.take(("v", "out"), (2, 3), np.float32) is not a  # outside a run: a fresh array


def test_pooled_runs_take_the_same_arrays_every_time():
    """Runs with the same sequence of takes and gives get the same arrays in the same places (the launch replay
    of .launches needs it): the pool starts every run from the same order, whatever order the last run gave
    its arrays back in."""
    b = StepBuffers()

    def run():
        assert b.activate()
        b.pooling(True)
        a1 = b.take(("a", "out"), (4,), np.float32)
        a2 = b.take(("b", "out"), (4,), np.float32)
        a3 = b.take(("c", "out"), (4,), np.float32)
        b.give(a1, [a2, a3])
        a4 = b.take(("d", "out"), (4,), np.float32)  # a1's array, warm
        b.pooling(False)  # a2, a3, a4 go back now (the pool's last-in-first-out order would reverse them)
        b.deactivate()
        return [id(a) for a in (a1, a2, a3, a4)]

    runs = [run() for _ in range(4)]
    assert runs[1] == runs[2] == runs[3]
    assert len(set(runs[1])) == 3 and runs[1][0] == runs[1][3]


def test_owns_only_a_pooled_array_that_one_live_value_uses():
    """A step may write its output over its dying residual only when the pool handed that array out and no other
    live value views it (a reshape of it that outlives it would change under the step)."""
    b = StepBuffers()
    assert b.activate()
    outside = np.zeros((2, 3), np.float32)
    assert not b.owns(outside, [outside])  # not pooling: never
    b.pooling(True)
    a = b.take(("x", "out"), (2, 3), np.float32)
    assert b.owns(a, [a]) and not b.owns(a, [a, a.reshape(-1)]) and not b.owns(outside, [outside])
    b.pooling(False)
    b.deactivate()
