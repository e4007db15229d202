"""A bounded job queue with N sampler threads, progress, cancellation and expiry.

Sampling takes seconds to minutes, so the REST API answers at once with a job id and the client
polls. The queue protects the machine: at most ``workers`` jobs sample at a time, at most
``max_queue`` wait, and anything beyond is refused (the API turns that into 429 + Retry-After).
A job nobody polls any more is cancelled (its client went away), a job that runs too long is
cancelled, and finished jobs are deleted with their files after ``job_ttl``.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ServerConfig

logger = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobCancelled(Exception):
    """Raised inside a running job (from its progress callback) to stop sampling early."""


_current = threading.local()


def current_job() -> Job | None:
    """The job this sampler thread is running, if any."""
    return getattr(_current, "job", None)


def check_cancelled(*_args: Any) -> None:
    """Raise :class:`JobCancelled` if this thread's job was cancelled (a forward pre-hook)."""
    job = current_job()
    if job is not None and job.cancel_event.is_set():
        raise JobCancelled(job.cancel_reason)


def install_cancel_hooks(module: Any) -> int:
    """Check the cancel flag before every block of ``module`` (a torch model), not only per step.

    One denoising step of a large request can take minutes; with these hooks a cancelled job stops
    within one block of the network. Modules are shared by the workers, so the hook looks up the
    job of the calling thread. Returns the number of hooks installed.
    """
    count = 0
    for sub in module.modules():
        name = type(sub).__name__
        if "Block" in name or "Transformer" in name or "Attention" in name:
            sub.register_forward_pre_hook(check_cancelled)
            count += 1
    return count


class QueueFull(Exception):
    """No room in the queue; ``retry_after`` is an estimate in whole seconds."""

    def __init__(self, retry_after: int, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(QueueFull):
    """The server is stopping and takes no new work."""


@dataclass
class JobResult:
    """One output image of a job: its files by kind (``png``, ``json``, ``tif``) and its sidecar."""

    index: int
    files: dict[str, Path]
    record: dict[str, Any]


#: What a job runs: ``work(worker_resource, job) -> results``. It must call ``job.report`` per step.
Work = Callable[[Any, "Job"], Sequence[JobResult]]


@dataclass(eq=False)  # a job is equal only to itself (queue lookups must not compare fields)
class Job:
    """One unit of work and everything a client may ask about it."""

    task: str
    work: Work
    folder: Path
    summary: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    step: int = 0
    steps: int = 0
    error: str | None = None
    results: list[JobResult] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished_at: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by the client"

    @property
    def progress(self) -> float:
        if self.state is JobState.SUCCEEDED:
            return 1.0
        return round(self.step / self.steps, 4) if self.steps else 0.0

    def report(self, step: int, steps: int) -> None:
        """Progress callback for the sampler; raises :class:`JobCancelled` once cancelled."""
        self.step, self.steps = step, steps
        if self.cancel_event.is_set():
            raise JobCancelled(self.cancel_reason)

    def touch(self) -> None:
        """A client asked about this job: it is still wanted."""
        self.last_seen = time.monotonic()


class JobQueue:
    """``len(resources)`` worker threads, each owning one resource (e.g. its own pipeline)."""

    def __init__(self, resources: Sequence[Any], config: ServerConfig):
        if not resources:
            raise ValueError("JobQueue needs at least one worker resource")
        self.config = config
        self._resources = list(resources)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self._accepting = False
        self._stop = threading.Event()
        self._durations: collections.deque[float] = collections.deque(maxlen=20)  # measured, for Retry-After
        self.completed = 0

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
            self._accepting = True
            self._stop.clear()
            for i, resource in enumerate(self._resources):
                thread = threading.Thread(target=self._worker, args=(resource,), name=f"sampler-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
            reaper = threading.Thread(target=self._reaper, name="job-reaper", daemon=True)
            reaper.start()
            self._threads.append(reaper)
        logger.info("job queue started: %d sampler(s), up to %d waiting", len(self._resources), self.config.max_queue)

    def shutdown(self, grace: float | None = None) -> None:
        """Stop taking work, cancel waiting jobs, give running ones ``grace`` s, then cancel them."""
        grace = self.config.shutdown_grace if grace is None else grace
        with self._cond:
            self._accepting = False
            for job in list(self._waiting):
                self._finish(job, JobState.CANCELLED, "server shutting down")
            self._waiting.clear()
            deadline = time.monotonic() + grace
            while self._running() and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            for job in self._running():
                job.cancel_reason = "server shutting down"
                job.cancel_event.set()
            self._stop.set()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=max(1.0, grace))
        self._threads = []
        logger.info("job queue stopped")

    @property
    def accepting(self) -> bool:
        return self._accepting

    # --- client operations --------------------------------------------------------------------
    def submit(self, task: str, work: Work, summary: dict[str, Any] | None = None) -> Job:
        """Queue a job, or raise :class:`QueueFull` / :class:`ShuttingDown` with a Retry-After."""
        with self._cond:
            if not self._accepting:
                raise ShuttingDown(self._retry_after(), "the server is shutting down; retry on a restarted server")
            if len(self._waiting) >= self.config.max_queue and not self._idle_worker():
                raise QueueFull(
                    self._retry_after(),
                    f"job queue is full ({len(self._waiting)} waiting, {len(self._resources)} sampling)",
                )
            job_id = uuid.uuid4().hex
            job = Job(task=task, work=work, folder=self._folder(job_id), summary=summary or {}, id=job_id)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._cond.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.touch()
            return job

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> Job | None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self._cancel(job, reason)
            return job

    def position(self, job: Job) -> int | None:
        """0-based place among waiting jobs, ``None`` when not waiting."""
        with self._cond:
            try:
                return self._waiting.index(job)
            except ValueError:
                return None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "accepting": self._accepting,
                "workers": len(self._resources),
                "running": len(self._running()),
                "waiting": len(self._waiting),
                "max_queue": self.config.max_queue,
                "jobs_kept": len(self._jobs),
                "completed": self.completed,
            }

    # --- internals ----------------------------------------------------------------------------
    def _folder(self, job_id: str) -> Path:
        assert self.config.output_dir is not None, "ServerConfig.output_dir must be set before jobs run"
        return Path(self.config.output_dir) / job_id

    def _running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.state is JobState.RUNNING]

    def _idle_worker(self) -> bool:
        return len(self._running()) + len(self._waiting) < len(self._resources)

    def _retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: when the first running job ends.

        Estimated from measured job times (median of the last 20) and each running job's progress;
        before any job has finished, from the running jobs' progress alone.
        """
        typical = statistics.median(self._durations) if self._durations else None
        now = time.time()
        remaining = []
        for job in self._running():
            elapsed = now - (job.started or now)
            if job.progress > 0.02:
                remaining.append(elapsed * (1 - job.progress) / job.progress)
            elif typical is not None:
                remaining.append(max(0.0, typical - elapsed))
        if remaining:
            estimate = min(remaining)
        else:
            estimate = typical if typical is not None else 1.0
        return int(min(3600, max(1, math.ceil(estimate))))

    def _cancel(self, job: Job, reason: str) -> None:
        if job.state is JobState.QUEUED:
            self._waiting.remove(job)
            self._finish(job, JobState.CANCELLED, reason)
        elif job.state is JobState.RUNNING:
            job.cancel_reason = reason
            job.cancel_event.set()

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        if state is not JobState.SUCCEEDED:  # files gone before anyone can see the job as finished
            job.results = []
            shutil.rmtree(job.folder, ignore_errors=True)
        job.error = error
        job.finished_at = time.time()
        job.state = state
        self._cond.notify_all()

    def _worker(self, resource: Any) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop.is_set():
                    self._cond.wait(timeout=1.0)
                if self._stop.is_set():
                    return
                job = self._waiting.popleft()
                job.state = JobState.RUNNING
                job.started = time.time()
            self._run(resource, job)

    def _run(self, resource: Any, job: Job) -> None:
        began = time.monotonic()
        _current.job = job
        try:
            job.folder.mkdir(parents=True, exist_ok=True)
            results = list(job.work(resource, job))
        except JobCancelled as err:
            with self._cond:
                self._finish(job, JobState.CANCELLED, str(err))
            logger.info("job %s cancelled: %s", job.id, err)
            return
        except ValueError as err:  # bad input found only while running (e.g. model-specific size)
            with self._cond:
                self._finish(job, JobState.FAILED, str(err))
            logger.info("job %s rejected: %s", job.id, err)
            return
        except Exception as err:  # noqa: BLE001 - a failed job must not kill its sampler thread
            logger.exception("job %s failed", job.id)
            with self._cond:
                self._finish(job, JobState.FAILED, f"internal error: {type(err).__name__}: {err}")
            return
        finally:
            _current.job = None
        with self._cond:
            if job.cancel_event.is_set():  # cancelled after the last step: still cancelled, no files
                self._finish(job, JobState.CANCELLED, job.cancel_reason)
                return
            job.results = results
            self._finish(job, JobState.SUCCEEDED)
            self.completed += 1
            self._durations.append(time.monotonic() - began)

    def _reaper(self) -> None:
        """Cancel abandoned or overlong jobs; delete expired ones with their files."""
        while not self._stop.wait(self.config.reaper_interval):
            self.reap()

    def reap(self, now: float | None = None) -> None:
        now_mono = time.monotonic() if now is None else now
        now_wall = time.time()
        cfg = self.config
        with self._cond:
            for job in list(self._jobs.values()):
                if not job.state.finished and now_mono - job.last_seen > cfg.abandon_after:
                    self._cancel(job, f"abandoned: not polled for {cfg.abandon_after:g} s")
                elif job.state is JobState.RUNNING and job.started and now_wall - job.started > cfg.max_job_seconds:
                    self._cancel(job, f"timed out after {cfg.max_job_seconds:g} s")
            finished = sorted((j for j in self._jobs.values() if j.state.finished), key=lambda j: j.finished_at or 0)
            excess = max(0, len(self._jobs) - cfg.max_jobs_kept)
            for i, job in enumerate(finished):
                if i < excess or now_wall - (job.finished_at or now_wall) > cfg.job_ttl:
                    del self._jobs[job.id]
                    shutil.rmtree(job.folder, ignore_errors=True)
