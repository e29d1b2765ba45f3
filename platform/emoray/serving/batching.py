"""Request batching inside one process, for the servers that run without Ray Serve.

``@serve.batch`` only works inside a Serve replica. :class:`MicroBatcher` gives the plain
FastAPI server and the in-process floor of ``emoray bench serve`` the same behaviour, so the
benchmark compares batching with batching: concurrent calls queue; a worker takes the first
call, waits up to ``wait_s`` for more (0: only what is already queued), and runs at most
``max_batch_size`` of them as one call of ``fn`` in a worker thread, so the event loop keeps
accepting requests while the model runs. Calls that queue while a batch runs form the next
batch, so batches grow with the load even when ``wait_s`` is 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from emoray.errors import ConfigError


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
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in waiting])
                if len(results) != len(waiting):
                    raise RuntimeError(f"batched call returned {len(results)} results for "
                                       f"{len(waiting)} items")
            except Exception as err:        # every caller of this batch gets the error
                for _, fut in waiting:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), result in zip(waiting, results):
                if not fut.done():
                    fut.set_result(result)
