"""The in-process batcher of the servers without Ray Serve (MicroBatcher), the router's
coalescer of encoder calls (CallCoalescer) and the Server-Timing steps (Timings): real
asyncio, real threads, no Ray (the Serve path is tests/integration/serving)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from emoray.errors import ConfigError
from emoray.serving.api import Timings
from emoray.serving.batching import CallCoalescer, MicroBatcher


def _slow_double(delay: float = 0.02):
    threads = set()

    def fn(items):
        threads.add(threading.get_ident())
        time.sleep(delay)                   # a forward pass holding its worker thread
        return [2 * x for x in items]

    return fn, threads


def test_concurrent_calls_are_batched_and_answered_in_order():
    fn, threads = _slow_double()
    batcher = MicroBatcher(fn, max_batch_size=4, wait_s=0.0)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(10)))

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert sum(batcher.sizes) == 10 and max(batcher.sizes) <= 4
    assert len(batcher.sizes) < 10                      # some calls shared a batch
    assert threading.get_ident() not in threads         # the model ran off the event loop


def test_wait_collects_late_arrivals_and_zero_wait_does_not():
    async def staggered(batcher, gap):
        async def late(i):
            await asyncio.sleep(gap * i)
            return await batcher(i)
        return await asyncio.gather(*(late(i) for i in range(4)))

    fn, _ = _slow_double(0.0)
    waiting = MicroBatcher(fn, max_batch_size=8, wait_s=0.2)
    assert asyncio.run(staggered(waiting, 0.005)) == [0, 2, 4, 6]
    assert waiting.sizes == [4]                         # all four within the wait
    eager = MicroBatcher(fn, max_batch_size=8, wait_s=0.0)
    t0 = time.perf_counter()
    asyncio.run(eager(1))
    assert time.perf_counter() - t0 < 0.15 and eager.sizes == [1]   # a lone call waits not
    assert asyncio.run(staggered(eager, 0.05)) == [0, 2, 4, 6]
    assert len(eager.sizes) > 2                         # came apart: nothing was waited for


def test_a_failing_batch_fails_its_callers_only():
    def fn(items):
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return [x + 1 for x in items]

    batcher = MicroBatcher(fn, max_batch_size=8, wait_s=0.05)

    async def main():
        bad = await asyncio.gather(batcher(1), batcher(-1), return_exceptions=True)
        good = await batcher(5)                         # the batcher goes on
        return bad, good

    bad, good = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in bad) and good == 6


def test_wrong_result_count_is_an_error_not_a_hang():
    batcher = MicroBatcher(lambda items: items[:1], max_batch_size=8, wait_s=0.05)

    async def main():
        return await asyncio.wait_for(asyncio.gather(batcher(1), batcher(2),
                                                     return_exceptions=True), 5)

    out = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in out)


def test_a_new_event_loop_gets_a_new_worker():
    fn, _ = _slow_double(0.0)
    batcher = MicroBatcher(fn, max_batch_size=2, wait_s=0.0)
    assert asyncio.run(batcher(3)) == 6
    assert asyncio.run(batcher(4)) == 8                 # asyncio.run per request


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="max_batch_size 0"):
        MicroBatcher(lambda xs: xs, max_batch_size=0, wait_s=0.0)
    with pytest.raises(ConfigError, match="wait -1"):
        MicroBatcher(lambda xs: xs, max_batch_size=1, wait_s=-1)


def _remote_double(delay: float = 0.02):
    """An async call that takes ``delay`` (a hop to another process), recording each
    call's size and how many calls ran when it started."""
    state = {"running": 0, "calls": []}

    async def fn(items):
        state["calls"].append((len(items), state["running"]))
        state["running"] += 1
        await asyncio.sleep(delay)
        state["running"] -= 1
        return [2 * x for x in items]

    return fn, state


def test_coalescer_sends_partial_batches_only_below_the_inflight_bound():
    fn, state = _remote_double()
    co = CallCoalescer(fn, max_batch_size=4, max_inflight=2)

    async def burst(n):
        return await asyncio.gather(*(co(i) for i in range(n)))

    assert asyncio.run(burst(20)) == [2 * i for i in range(20)]
    assert sum(co.sizes) == 20 and max(co.sizes) <= 4 and len(co.sizes) <= 7
    assert co.sizes[:2] == [1, 1]                     # the first two go out at once, alone
    for size, running in state["calls"]:
        assert running < 2 or size == 4               # past the bound: full batches only
    assert max(r for _, r in state["calls"]) >= 2      # the burst grew past the bound

    async def trickle():                               # 3 at a time: never a full batch
        out = []
        for k in range(0, 12, 3):
            out += await asyncio.gather(*(co(i) for i in range(k, k + 3)))
        return out

    state["calls"].clear()
    assert asyncio.run(trickle()) == [2 * i for i in range(12)]
    assert max(r for _, r in state["calls"]) <= 1      # at most 2 in flight


def test_coalescer_waits_for_more_only_while_busy_and_never_past_a_full_batch():
    fn, state = _remote_double(0.0)
    load = {"busy": True}
    co = CallCoalescer(fn, max_batch_size=4, max_inflight=1, busy_wait_s=0.05,
                       busy=lambda: load["busy"])

    async def staggered(n, gap):
        async def late(i):
            await asyncio.sleep(gap * i)
            return await co(i)
        return await asyncio.gather(*(late(i) for i in range(n)))

    assert asyncio.run(staggered(3, 0.005)) == [0, 2, 4]
    assert co.sizes == [3]                       # busy: the partial batch waited for all 3
    t0 = time.perf_counter()
    assert asyncio.run(staggered(4, 0.0)) == [0, 2, 4, 6]
    assert co.sizes[-1] == 4 and time.perf_counter() - t0 < 0.04   # full: no wait
    load["busy"] = False
    co.sizes.clear()
    assert asyncio.run(staggered(3, 0.02)) == [0, 2, 4]
    assert co.sizes == [1, 1, 1]                 # idle: each goes out at once
    with pytest.raises(ConfigError, match="busy wait -1"):
        CallCoalescer(fn, max_batch_size=1, max_inflight=1, busy_wait_s=-1)


def test_coalescer_sends_a_lone_call_at_once():
    fn, _ = _remote_double(0.0)
    co = CallCoalescer(fn, max_batch_size=8, max_inflight=1)

    async def main():
        t0 = time.perf_counter()
        assert await co(3) == 6
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.1 and co.sizes == [1]


def test_coalescer_failure_reaches_that_batch_only_and_it_goes_on():
    async def fn(items):
        await asyncio.sleep(0.01)
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return [x + 1 for x in items]

    co = CallCoalescer(fn, max_batch_size=8, max_inflight=1)

    async def main():
        first = asyncio.ensure_future(co(0))             # in flight alone
        await asyncio.sleep(0)
        bad = await asyncio.gather(co(1), co(-1), return_exceptions=True)  # one batch
        return await first, bad, await co(5)

    first, bad, good = asyncio.run(main())
    assert first == 1 and all(isinstance(r, ValueError) for r in bad) and good == 6


def test_coalescer_leaves_out_cancelled_callers_and_counts_results():
    fn, _ = _remote_double(0.02)
    co = CallCoalescer(fn, max_batch_size=8, max_inflight=1)

    async def main():
        busy = asyncio.ensure_future(co(0))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(co(1))
        kept = asyncio.ensure_future(co(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await busy, await kept

    assert asyncio.run(main()) == (0, 4) and co.sizes == [1, 1]   # 1 never went out
    short = CallCoalescer(lambda items: _first(items), max_batch_size=8, max_inflight=1)

    async def three():
        return await asyncio.wait_for(asyncio.gather(short(1), short(2), short(3),
                                                     return_exceptions=True), 5)

    out = asyncio.run(three())
    assert out[0] == 1 and all(isinstance(r, RuntimeError) and "2 items" in str(r)
                               for r in out[1:])
    with pytest.raises(ConfigError, match="max_inflight 0"):
        CallCoalescer(fn, max_batch_size=1, max_inflight=0)


async def _first(items):
    await asyncio.sleep(0.01)
    return items[:1]


def test_timings_header_sums_repeated_steps():
    t = Timings()
    with t.step("prepare"):
        time.sleep(0.01)
    with t.step("eeg"):
        pass
    with t.step("eeg"):
        time.sleep(0.005)
    with pytest.raises(KeyError):
        with t.step("combine"):                         # a failing step is still timed
            raise KeyError("x")
    assert list(t.ms) == ["prepare", "eeg", "combine"]
    assert t.ms["prepare"] >= 10 and t.ms["eeg"] >= 5
    parts = t.header().split(", ")
    assert parts[0].startswith("prepare;dur=") and parts[1].startswith("eeg;dur=")
