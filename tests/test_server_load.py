"""Bounded load test against a real ``diffusionsat serve`` process on 127.0.0.1.

200 mixed requests, all at once: the server stays up, every request gets a defined answer (202/429
for jobs, 422 for invalid, over-limit and non-UTF-8 requests, 413, 200), every accepted job
finishes, its memory returns within 10 % of where it started, and SIGTERM stops it gracefully.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("psutil")
pytest.importorskip("httpx")

CAPTIONS = ["a satellite image of farmland in united states", "a satellite image of a river in peru"]
#: Allowed resident-memory growth over a whole load round after warm-up (a leak of one image per
#: request, or of job payloads, would exceed it; allocator noise does not).
MAX_GROWTH = 24 * 1024 * 1024
#: … and relative to the memory at the start (issue #17: back within 10 %).
MAX_RELATIVE_GROWTH = 0.10


def test_server_survives_bounded_load_and_memory_returns(tmp_path, load_script):
    from diffusionsat.models.presets import build_pipeline

    bench = load_script("benchmarks/serve_load.py")
    model = tmp_path / "tiny-model"
    build_pipeline("tiny", CAPTIONS, seed=0).save_pretrained(model)
    report, log = bench.measure(model, 200, 200, 2, 20, "--workers", "2", "--max-queue", "8")

    assert report.transport_errors == [], report.transport_errors[:5]
    assert report.unexpected == [], report.unexpected[:5]
    assert report.retry_after_missing == 0
    assert sum(sum(counts.values()) for counts in report.answers.values()) == 200
    assert report.answers["invalid"] == {422: 20} and report.answers["oversized"] == {413: 20}
    assert report.answers["heavy"] == {422: 20} and report.answers["surrogate"] == {422: 20}
    assert report.answers["model"] == {200: 20} and report.answers["health"] == {200: 20}
    accepted = report.answers["generate"].get(202, 0)
    assert accepted >= 10 and report.jobs == {"succeeded": accepted}
    assert report.rss_after - report.rss_before < MAX_GROWTH, report
    assert report.rss_after < report.rss_before * (1 + MAX_RELATIVE_GROWTH), report
    print(f"load: {report.seconds} s, RSS before {report.rss_before >> 20} MiB, peak {report.rss_peak >> 20} MiB, "
          f"after {report.rss_after >> 20} MiB")
    assert bench.GRACEFUL_STOP in log, log[-2000:]
