"""Bounded load test of ``diffusionsat serve`` on 127.0.0.1.

Fires ``--requests`` requests, ``--concurrency`` at a time, in a fixed mix: valid generation jobs,
invalid metadata (422), oversized bodies (413), model card and health reads. Then it polls every
accepted job to its end. It reports the answers by kind, transport errors (there must be none),
and the server's resident memory before, at its peak and after the load.

Start a server itself (a subprocess, so its memory is measured alone)::

    python benchmarks/serve_load.py --model path/to/model --requests 100 --concurrency 20

or load one that is already running (memory is then not measured)::

    python benchmarks/serve_load.py --url http://127.0.0.1:7860 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

#: Request kinds in their order within every block of ten requests, and the answers each may get.
MIX = ["generate"] * 8 + ["invalid", "oversized", "model", "health", "heavy", "surrogate"] * 2
EXPECTED = {
    "generate": {202, 429},  # accepted, or refused with Retry-After when the queue is full
    "invalid": {422},
    "heavy": {422},  # over the work limits (2048² × 4 images × 1000 steps)
    "surrogate": {422},  # a prompt with a lone surrogate
    "oversized": {413},
    "model": {200},
    "health": {200},
}
FINAL = ("succeeded", "failed", "cancelled")
#: What the server logs once its job queue has stopped cleanly on SIGTERM.
GRACEFUL_STOP = "job queue stopped"


@dataclass
class LoadReport:
    """What happened: answers per kind, transport errors, job outcomes, timings and memory (bytes)."""

    requests: int
    concurrency: int
    answers: dict[str, dict[int, int]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    retry_after_missing: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rss_before: int | None = None
    rss_peak: int | None = None
    rss_after: int | None = None

    @property
    def ok(self) -> bool:
        """Every request got a defined answer and every accepted job finished."""
        return not self.unexpected and not self.transport_errors and not self.retry_after_missing and set(
            self.jobs) <= {"succeeded"}


async def _one(client: httpx.AsyncClient, kind: str, steps: int) -> tuple[int, str | None, bool]:
    """Send one request of ``kind``; returns (status, job id, whether Retry-After was present)."""
    if kind == "generate":
        body = {"prompt": "a satellite image of farmland", "steps": steps,
                "metadata": {"lat": 47.0, "lon": -99.2, "gsd": 5.0, "date": "2019-07-15"}}
        answer = await client.post("/v1/generate", json=body)
    elif kind == "invalid":
        answer = await client.post("/v1/generate", json={"prompt": "x", "metadata": {"lat": 100}})
    elif kind == "heavy":
        answer = await client.post("/v1/generate", json={"prompt": "x", "width": 2048, "height": 2048,
                                                         "num_images": 4, "steps": 1000})
    elif kind == "surrogate":
        answer = await client.post("/v1/generate", content=b'{"prompt": "a \\ud800 b"}',
                                   headers={"content-type": "application/json"})
    elif kind == "oversized":
        answer = await client.post("/v1/generate", json={"prompt": "x" * 200_000})
    elif kind == "model":
        answer = await client.get("/v1/model")
    else:
        answer = await client.get("/health")
    job_id = answer.json().get("id") if answer.status_code == 202 else None
    return answer.status_code, job_id, answer.status_code not in (429, 503) or "retry-after" in answer.headers


async def run_load(base_url: str, requests: int = 100, concurrency: int = 20, steps: int = 2,
                   token: str | None = None, job_timeout: float = 120.0) -> LoadReport:
    """Run the mix against ``base_url`` and follow every accepted job to its end."""
    report = LoadReport(requests=requests, concurrency=concurrency)
    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    job_ids: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency)
    began = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60.0, limits=limits) as client:
        async def fire(i: int) -> None:
            kind = MIX[i % len(MIX)]
            async with gate:
                try:
                    status, job_id, retry_ok = await _one(client, kind, steps)
                except httpx.HTTPError as err:
                    report.transport_errors.append(f"{kind}: {type(err).__name__}: {err}")
                    return
            answers[kind][status] += 1
            if status not in EXPECTED[kind]:
                report.unexpected.append(f"{kind}: HTTP {status}")
            if not retry_ok:
                report.retry_after_missing += 1
            if job_id:
                job_ids.append(job_id)

        await asyncio.gather(*(fire(i) for i in range(requests)))
        outcomes: collections.Counter = collections.Counter()
        deadline = time.monotonic() + job_timeout
        for job_id in job_ids:  # polling also tells the server the jobs are still wanted
            while True:
                try:
                    job = (await client.get(f"/v1/jobs/{job_id}")).json()
                except httpx.HTTPError as err:
                    report.transport_errors.append(f"poll: {type(err).__name__}: {err}")
                    break
                if job.get("status") in FINAL or time.monotonic() > deadline:
                    outcomes[job.get("status", "missing")] += 1
                    break
                await asyncio.sleep(0.05)
    report.seconds = round(time.monotonic() - began, 2)
    report.answers = {kind: dict(counter) for kind, counter in answers.items()}
    report.jobs = dict(outcomes)
    return report


# --- a server of our own, in a subprocess -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str | Path, port: int, *args: str, log=subprocess.DEVNULL) -> subprocess.Popen:
    """``diffusionsat -v serve`` of this interpreter's environment, one torch thread; its log goes to ``log``."""
    script = Path(sys.executable).with_name("diffusionsat")
    command = [str(script)] if script.exists() else [shutil.which("diffusionsat") or "diffusionsat"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [*command, "-v", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(model), "--threads", "1", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


class RssSampler:
    """Samples a process's resident memory every 50 ms in a thread, keeping the peak."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def settle(url: str, timeout: float = 30.0) -> None:
    """Wait until the server has nothing running or waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = httpx.get(url + "/health", timeout=5).json()["queue"]
        if queue["running"] == 0 and queue["waiting"] == 0:
            return
        time.sleep(0.1)


def measure(model: str | Path, requests: int, concurrency: int, steps: int, warmup: int, *serve_args: str
            ) -> tuple[LoadReport, str]:
    """Start a server, warm it up, load it, measure its memory, stop it with SIGTERM.

    Returns the report and the server's log (it ends with the graceful shutdown's lines).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        return _measure(url, port, log, model, requests, concurrency, steps, warmup, *serve_args)


def _measure(url, port, log, model, requests, concurrency, steps, warmup, *serve_args) -> tuple[LoadReport, str]:
    process = start_server(model, port, *serve_args, log=log)
    try:
        wait_ready(url, process)
        if warmup:  # first requests allocate caches and thread arenas that stay: not a leak
            asyncio.run(run_load(url, warmup, concurrency, steps))
            settle(url)
        with RssSampler(process.pid) as sampler:
            before = sampler.rss()
            report = asyncio.run(run_load(url, requests, concurrency, steps))
            settle(url)
            time.sleep(0.5)
            report.rss_before, report.rss_after, report.rss_peak = before, sampler.rss(), sampler.peak
        if httpx.get(url + "/health", timeout=5).status_code != 200:
            report.unexpected.append("server unhealthy after the load")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.seek(0)
    return report, log.read().decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="start `diffusionsat serve --model MODEL` on a free 127.0.0.1 port")
    target.add_argument("--url", help="load a running server instead")
    parser.add_argument("--token", default=None)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=8)
    args = parser.parse_args(argv)
    stopped = True
    if args.url:
        report = asyncio.run(run_load(args.url, args.requests, args.concurrency, args.steps, args.token))
    else:
        report, log = measure(args.model, args.requests, args.concurrency, args.steps, args.warmup,
                              "--workers", str(args.workers), "--max-queue", str(args.max_queue))
        stopped = GRACEFUL_STOP in log
    print(json.dumps({**asdict(report), "ok": report.ok, "graceful_stop": stopped}, indent=2))
    return 0 if report.ok and stopped else 1


if __name__ == "__main__":
    sys.exit(main())
