"""Request batching inside one process: for the servers that run without Ray Serve, and
for the Serve router's calls to its encoder deployments.

``@serve.batch`` only works inside a Serve replica. :class:`MicroBatcher` gives the plain
FastAPI server and the in-process floor of ``emoray bench serve`` the same behaviour, so the
benchmark compares batching with batching: concurrent calls queue; a worker takes the first
call, waits up to ``wait_s`` for more (0: only what is already queued), and runs at most
``max_batch_size`` of them as one call of ``fn`` in a worker thread, so the event loop keeps
accepting requests while the model runs. Calls that queue while a batch runs form the next
batch, so batches grow with the load even when ``wait_s`` is 0.

:class:`CallCoalescer` does the same for an *async* call that crosses a process boundary:
the router sends each encoder deployment one call per batch of requests instead of one per
request, so the cost of a Serve hop (serialising, routing, the replica's request wrapper:
a few ms of CPU on each side, more than the encoder's own work here) is paid once per batch.
``@serve.batch`` cannot do this: it batches inside the replica, after every request has
paid its own hop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from emoray.errors import ConfigError


async def _deliver(batch: list[tuple[Any, asyncio.Future]], results: Awaitable[list[Any]]
                   ) -> None:
    """Await a batch's ``results`` and give each caller its own; a failure (or a result
    count that does not match) goes to every caller of the batch, a cancellation cancels
    them. Callers that went away meanwhile are skipped."""
    try:
        out = await results
        if len(out) != len(batch):
            raise RuntimeError(f"batched call returned {len(out)} results for "
                               f"{len(batch)} items")
    except asyncio.CancelledError:
        for _, fut in batch:
            fut.cancel()
        raise
    except Exception as err:              # every caller of this batch gets the error
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(err)
        return
    for (_, fut), result in zip(batch, out):
        if not fut.done():
            fut.set_result(result)


class MicroBatcher:
    """Batch concurrent ``await batcher(item)`` calls into ``fn(items) -> results``.

    Parameters
    ----------
    fn : callable
        ``fn(list_of_items) -> list_of_results`` (same length, same order); run in a thread.
    max_batch_size : int
        Most items per call of ``fn``.
    wait_s : float
        How long the first item of a batch waits for others.

    Notes
    -----
    An exception raised by ``fn`` is raised to every caller of that batch; the batcher
    goes on with the next. The worker belongs to the event loop of the first call and is
    made again when a call comes from another loop (``asyncio.run`` per request); calls
    from several loops running at the same time are not supported (one server, one loop).
    """

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch_size: int,
                 wait_s: float):
        if max_batch_size < 1 or wait_s < 0:
            raise ConfigError(f"batching: max_batch_size {max_batch_size} must be >= 1 and "
                              f"wait {wait_s} s >= 0")
        self.fn, self.max_batch_size, self.wait_s = fn, max_batch_size, wait_s
        self.sizes: list[int] = []              # batch sizes run so far (for reports)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run())
        done = loop.create_future()
        self._queue.put_nowait((item, done))
        return await done

    async def _take(self) -> list[tuple[Any, asyncio.Future]]:
        queue = self._queue
        batch = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._take()
            waiting = [(item, fut) for item, fut in batch if not fut.done()]  # not cancelled
            if not waiting:
                continue
            self.sizes.append(len(waiting))
            await _deliver(waiting, asyncio.to_thread(self.fn, [item for item, _ in waiting]))


class CallCoalescer:
    """Coalesce concurrent ``await coalescer(item)`` calls into ``await fn(items)``.

    While fewer than ``max_inflight`` calls of ``fn`` run, whatever is queued goes out at
    once (a lone call at low load goes out alone: nothing waits for a batch to fill). While
    ``max_inflight`` run, calls wait in a queue and go out together when one returns, or as
    soon as ``max_batch_size`` of them are queued: waiting gains a full batch nothing, and
    so under heavy load the calls in flight grow past ``max_inflight`` (which is what lets
    the deployment behind ``fn`` see the load and scale out).

    Parameters
    ----------
    fn : callable
        ``async fn(list_of_items) -> list_of_results`` (same length, same order).
    max_batch_size : int
        Most items per call of ``fn``.
    max_inflight : int
        Calls of ``fn`` running at once below which a partial batch goes out.

    Notes
    -----
    An exception raised by ``fn`` is raised to every caller of that batch. A caller that is
    cancelled before its batch goes out is left out of it. One event loop per coalescer
    (a Serve replica's); the queue is made again when a call comes from another loop.
    """

    def __init__(self, fn: Callable[[list[Any]], Awaitable[list[Any]]], max_batch_size: int,
                 max_inflight: int, busy_wait_s: float = 0.0,
                 busy: Callable[[], bool] | None = None):
        if max_batch_size < 1 or max_inflight < 1 or busy_wait_s < 0:
            raise ConfigError(f"batching: max_batch_size {max_batch_size} and max_inflight "
                              f"{max_inflight} must be >= 1, busy wait {busy_wait_s} s >= 0")
        self.fn, self.max_batch_size, self.max_inflight = fn, max_batch_size, max_inflight
        self.busy_wait_s, self.busy = busy_wait_s, busy
        self.sizes: list[int] = []              # batch sizes sent so far (for reports)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[tuple[Any, asyncio.Future]] = deque()
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue, self._inflight, self._timer = loop, deque(), 0, None
        done = loop.create_future()
        self._queue.append((item, done))
        self._pump()
        return await done

    def _flush(self) -> None:
        self._timer = None
        self._pump(flush=True)

    def _pump(self, flush: bool = False) -> None:
        while self._queue and (self._inflight < self.max_inflight
                               or len(self._queue) >= self.max_batch_size):
            if (not flush and len(self._queue) < self.max_batch_size and self.busy_wait_s
                    and self.busy is not None and self.busy()):
                if self._timer is None:        # busy: a partial batch waits a little
                    self._timer = self._loop.call_later(self.busy_wait_s, self._flush)
                return
            flush = False
            batch: list[tuple[Any, asyncio.Future]] = []
            while self._queue and len(batch) < self.max_batch_size:
                item, fut = self._queue.popleft()
                if not fut.done():                       # not cancelled meanwhile
                    batch.append((item, fut))
            if batch:
                self._inflight += 1
                task = self._loop.create_task(self._send(batch))
                self._tasks.add(task)              # the loop keeps only a weak reference
                task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        loop = self._loop
        try:
            self.sizes.append(len(batch))
            await _deliver(batch, self.fn([item for item, _ in batch]))
        finally:
            if self._loop is loop:
                self._inflight -= 1
                self._pump()
