"""A bounded pool of decode workers that serves the page's newest view first and drops the
work of views the page has left.

Every tile request carries the page's ``session`` and view generation ``gen`` (the page
raises it each time the view comes to rest). Jobs wait in a priority queue, newest
generation first; a worker about to start a job whose generation is older than the newest
one its session has sent drops it (:class:`StaleRequest`) instead of decoding it. A request
for a tile that is already queued or decoding joins that job.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

# Sessions whose newest generation is remembered; the oldest is forgotten beyond this.
MAX_SESSIONS = 64


class StaleRequest(Exception):
    """The page moved to a newer view before this tile was started; it was not decoded."""


class QueueFull(Exception):
    """Too many tiles are waiting; the request was refused."""


@dataclass
class _Job:
    key: Hashable
    session: str
    gen: int
    work: Callable[[], Any]
    future: Future = field(default_factory=Future)
    started: bool = False


# How long close() waits for a worker to finish the tile it is decoding.
CLOSE_WAIT_S = 60.0


class DecodeScheduler:
    """``workers`` threads running submitted jobs; at most ``max_queued`` wait at a time."""

    def __init__(self, workers: int, max_queued: int = 256) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.max_queued = max_queued
        self.dropped = 0  # jobs dropped as stale, for tests and the benchmark
        self._heap: list[tuple[int, int, _Job]] = []
        self._jobs: dict[Hashable, _Job] = {}  # queued or running, by key
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"tile-decoder-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, session: str, gen: int, work: Callable[[], Any]) -> Future:
        """A future of ``work()``'s result for tile ``key``, requested by view ``gen`` of
        ``session``; it fails with :class:`StaleRequest` if dropped, :class:`QueueFull`
        if too many jobs wait."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            newest = max(self._newest.pop(session, gen), gen)
            self._newest[session] = newest
            if len(self._newest) > MAX_SESSIONS:
                self._newest.popitem(last=False)
            job = self._jobs.get(key)
            if job is not None:
                if not job.started and gen > job.gen:
                    # Re-queue under the newer view; the old heap entry is skipped when popped.
                    job.session, job.gen = session, gen
                    heapq.heappush(self._heap, (-gen, next(self._order), job))
                return job.future
            if sum(not j.started for j in self._jobs.values()) >= self.max_queued:
                future: Future = Future()
                future.set_exception(QueueFull(f"more than {self.max_queued} tiles are waiting"))
                return future
            job = _Job(key, session, gen, work)
            self._jobs[key] = job
            heapq.heappush(self._heap, (-gen, next(self._order), job))
            self._cond.notify()
            return job.future

    def queued(self) -> int:
        """How many jobs wait for a worker."""
        with self._cond:
            return sum(not job.started for job in self._jobs.values())

    def close(self) -> None:
        """Stop the workers after their current job and wait for them; queued jobs fail as
        stale. Waiting matters: a worker still inside torch when the interpreter exits aborts
        the process ("terminate called without an active exception")."""
        with self._cond:
            self._closed = True
            for job in self._jobs.values():
                if not job.started:
                    job.future.set_exception(StaleRequest("the viewer is shutting down"))
            self._jobs.clear()
            self._heap.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=CLOSE_WAIT_S)

    def _next_job(self) -> _Job | None:
        """The next job to run (None when closed), dropping stale ones on the way."""
        with self._cond:
            while True:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                neg_gen, _, job = heapq.heappop(self._heap)
                if job.started or -neg_gen != job.gen or self._jobs.get(job.key) is not job:
                    continue  # an entry superseded by a re-queue
                if job.gen < self._newest.get(job.session, job.gen):
                    del self._jobs[job.key]
                    self.dropped += 1
                    job.future.set_exception(StaleRequest("the page has moved to a newer view"))
                    continue
                job.started = True
                return job

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                result = job.work()
            except BaseException as error:  # handed to the waiting request, not lost
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            finally:
                with self._cond:
                    self._jobs.pop(job.key, None)
