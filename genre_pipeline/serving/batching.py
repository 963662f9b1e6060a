"""Micro-batching with a bounded queue: concurrent requests become one model call, and a request the
queue cannot take is refused at once instead of waiting behind everyone else.

A request is a job of one or more rows (a ``/predict/batch`` call is one job). One worker takes the
oldest job, gathers more for up to ``max_wait_s`` or until ``max_rows``, runs the model once on all of
their rows in a thread, and gives each caller its own rows' answers. A job not started by its
deadline is answered 503 and never run; a started one is waited for (a 256-movie batch with posters
takes ten seconds here, and stopping to wait for it would only waste that work). Every model member
predicts each row on its own, so a movie's answer does not depend on the movies batched with it (tested).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full, or a job waited past its deadline: try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int, reason: str):
        super().__init__(message)
        self.retry_after_s, self.reason = retry_after_s, reason  # reason: "queue_full" or "deadline"


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    max_rows: int = 16  # rows in one model call, gathered from concurrent requests
    max_wait_s: float = 0.004  # how long the first job of a call waits for company
    max_queue: int = 64  # jobs waiting; one more is refused with 503 at once
    deadline_s: float = 10.0  # a job not started by then is answered 503 and never run

    def __post_init__(self):
        if self.max_rows < 1 or self.max_queue < 1:
            raise ValueError("max_rows and max_queue must be at least 1")
        if self.max_wait_s < 0 or self.deadline_s <= 0:
            raise ValueError("max_wait_s must be at least 0 and deadline_s positive")


@dataclasses.dataclass
class _Job:
    rows: list[dict]
    deadline: float
    future: asyncio.Future
    started: bool = False


class MicroBatcher:
    """``predict(rows) -> (model, answers)`` runs in a worker thread, one call at a time; ``observe`` is
    told each call's row count and duration, ``on_queue`` the queue depth whenever it changes."""

    def __init__(
        self,
        predict: Callable[[list[dict]], tuple[object, list]],
        options: BatchingOptions,
        *,
        observe: Callable[[int, float], None] = lambda rows, seconds: None,
        on_queue: Callable[[int], None] = lambda depth: None,
    ):
        self.predict, self.options, self.observe, self.on_queue = predict, options, observe, on_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._rows_per_s = 0.0  # recent throughput, for Retry-After

    def start(self) -> None:
        self._queue = asyncio.Queue(self.options.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        if self._rows_per_s <= 0:
            return 1
        return max(1, math.ceil(self.depth * self.options.max_rows / self._rows_per_s))

    async def submit(self, rows: list[dict]) -> tuple[object, list]:
        """The model and one answer per row; Overloaded when the queue is full or the deadline passed."""
        job = _Job(rows, time.monotonic() + self.options.deadline_s, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"the server is at capacity ({self.options.max_queue} requests waiting)",
                self.retry_after_s(),
                "queue_full",
            ) from None
        self.on_queue(self.depth)
        done, _ = await asyncio.wait({job.future}, timeout=self.options.deadline_s)
        if not done and not job.started:
            job.future.cancel()  # the worker skips it
            raise Overloaded(
                f"the request waited {self.options.deadline_s:g} s for the model", self.retry_after_s(), "deadline"
            )
        return await job.future

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        rows = len(jobs[0].rows)
        until = time.monotonic() + self.options.max_wait_s
        while rows < self.options.max_rows:
            if self._queue.empty():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                jobs.append(self._queue.get_nowait())
            rows += len(jobs[-1].rows)
        self.on_queue(self.depth)
        now = time.monotonic()
        taken = [job for job in jobs if not job.future.done() and job.deadline > now]
        for job in taken:
            job.started = True
        return taken

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            rows = [row for job in jobs for row in job.rows]
            started = time.perf_counter()
            try:
                model, answers = await asyncio.to_thread(self.predict, rows)
            except Exception as error:  # noqa: BLE001 - each job is retried alone: one bad row fails only its caller
                if len(jobs) == 1:
                    self._settle(jobs[0], None, error)
                    continue
                for job in jobs:
                    try:
                        self._settle(job, await asyncio.to_thread(self.predict, job.rows), None)
                    except Exception as error:  # noqa: BLE001 - handed to the caller, whose handler answers
                        self._settle(job, None, error)
                continue
            seconds = time.perf_counter() - started
            self.observe(len(rows), seconds)
            rate = len(rows) / max(seconds, 1e-6)
            self._rows_per_s = 0.8 * self._rows_per_s + 0.2 * rate if self._rows_per_s else rate
            start = 0
            for job in jobs:
                self._settle(job, (model, answers[start : start + len(job.rows)]), None)
                start += len(job.rows)

    @staticmethod
    def _settle(job: _Job, result, error: BaseException | None) -> None:
        if job.future.done():  # the caller gave up meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
