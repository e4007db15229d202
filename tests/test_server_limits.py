"""Issue #17 for the server: bounded work per request, real cancellation, user errors as 422.

All against a tiny model; the disconnect test runs a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402

from diffusionsat.server import create_app  # noqa: E402
from diffusionsat.server.config import check_bind  # noqa: E402

CAPTIONS = ["a satellite image of farmland in united states", "a satellite image of a river in peru"]
LONG = 1000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from diffusionsat.models.presets import build_pipeline

    folder = tmp_path_factory.mktemp("limits") / "tiny-model"
    build_pipeline("tiny", CAPTIONS, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def client_for(model_dir: Path, tmp_path: Path, **settings) -> TestClient:
    settings.setdefault("output_dir", tmp_path / "out")
    return TestClient(create_app(model_dir, **settings))


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def slow_down(unet: torch.nn.Module, seconds: float) -> list:
    """Make every down/up block of the UNet take ``seconds``: one step then takes several."""
    handles = []
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if block is not None:
            handles.append(block.register_forward_pre_hook(lambda *_: time.sleep(seconds)))
    return handles


# --- item 1: bounded work ------------------------------------------------------------------------------
def test_heavy_request_is_refused_with_422_naming_the_limit(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        heavy = {"prompt": "farmland", "width": 2048, "height": 2048, "num_images": 4, "steps": 1000}
        answer = client.post("/v1/generate", json=heavy)
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error"] == "over_limit" and body["limit"] == "max_steps" and "--max-steps" in body["detail"]
        answer = client.post("/v1/generate", json={**heavy, "steps": 10})
        body = answer.json()
        assert answer.status_code == 422 and body["limit"] == "max_pixels" and body["field"] == "width", body
        assert "--max-pixels" in body["detail"]
        # 4 images that fit one by one, but not together
        body = client.post("/v1/generate", json={**heavy, "steps": 10, "width": 1024, "height": 1024}).json()
        assert body["limit"] == "max_pixels" and body["field"] == "num_images", body
        assert client.get("/health").json()["queue"]["waiting"] == 0
        assert client.app.state.queue.stats()["jobs_kept"] == 0  # nothing queued


def test_limits_are_configurable_and_memory_is_estimated(model_dir, tmp_path):
    with client_for(model_dir, tmp_path / "a", max_pixels=4096 * 4096, max_steps=1000) as client:
        accepted = client.post("/v1/generate", json={"prompt": "x", "width": 16, "height": 16, "steps": 1000})
        assert accepted.status_code == 202
        client.delete(f"/v1/jobs/{accepted.json()['id']}")
    with client_for(model_dir, tmp_path / "b", max_memory_bytes=64 * 1024**2) as client:
        body = client.post("/v1/generate", json={"prompt": "x", "width": 512, "height": 512, "steps": 2}).json()
        assert body["error"] == "over_limit" and body["limit"] == "max_memory" and "GiB" in body["detail"], body
        assert client.post("/v1/generate", json={"prompt": "x", "steps": 2}).status_code == 202


def test_estimate_grows_with_pixels_and_images(tiny_pipeline):
    from diffusionsat.server.tasks import estimate_memory

    small = estimate_memory(tiny_pipeline, 64, 64, 1)
    assert estimate_memory(tiny_pipeline, 128, 128, 1) > 3 * small
    assert estimate_memory(tiny_pipeline, 2048, 2048, 4) > 4 * 1024**3  # the 15.5 GB request


# --- item 1: cancellation -----------------------------------------------------------------------------
def test_running_job_is_cancelled_within_one_step(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, max_steps=LONG) as client:
        handles = slow_down(client.app.state.model.pipeline.unet, 0.15)
        try:
            job_id = client.post("/v1/generate", json={"prompt": "x", "steps": LONG}).json()["id"]
            job = client.app.state.queue.get(job_id)
            wait_until(lambda: job.step >= 1, what="the first step")
            began = time.monotonic()
            wait_until(lambda: job.step >= 2, what="the second step")
            step_seconds = time.monotonic() - began
            time.sleep(step_seconds / 3)  # now in the middle of a step
            cancelled_at = time.monotonic()
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
            wait_until(lambda: job.state.finished, timeout=step_seconds * 2, what="the cancellation")
            latency = time.monotonic() - cancelled_at
        finally:
            for handle in handles:
                handle.remove()
        assert job.state.value == "cancelled" and job.step <= 3
        assert latency < step_seconds * 0.6, (latency, step_seconds)  # within the step, not at its end
        assert not (tmp_path / "out" / job_id).exists()


def test_client_disconnect_cancels_its_job(model_dir, tmp_path):
    app = create_app(model_dir, output_dir=tmp_path / "out", max_steps=LONG)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="the server")
        port = server.servers[0].sockets[0].getsockname()[1]
        body = json.dumps({"prompt": "x", "steps": LONG}).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/generate?wait=true HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        queue = app.state.queue
        wait_until(lambda: queue.stats()["running"] == 1, what="the job to run")
        job = next(iter(queue._jobs.values()))
        wait_until(lambda: job.step >= 1, what="a step")
        sock.close()  # the client goes away without a word
        closed = time.monotonic()
        wait_until(lambda: job.state.finished, timeout=10, what="the cancellation")
        assert job.state.value == "cancelled" and "disconnected" in job.error
        assert time.monotonic() - closed < 5 and job.step < LONG
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_wait_answers_the_finished_job(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        answer = client.post("/v1/generate?wait=true", json={"prompt": "x", "steps": 2})
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text


# --- item 5 / 7: user errors and small things -----------------------------------------------------------
def test_lone_surrogate_prompt_is_422_and_queues_nothing(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        raw = b'{"prompt": "farm \\ud800 land", "steps": 2}'
        answer = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/json")
        body = answer.json()
        assert body["field"] == "prompt" and "UTF-8" in body["detail"], body
        assert client.app.state.queue.stats()["jobs_kept"] == 0


def test_retry_after_is_estimated_from_measured_job_times(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, workers=1, max_queue=0) as client:
        for _ in range(3):  # measured jobs take well under a second
            done = client.post("/v1/generate?wait=true", json={"prompt": "x", "steps": 2})
            assert done.json()["status"] == "succeeded"
        queue = client.app.state.queue
        assert max(queue._durations) < 5
        running = client.post("/v1/generate", json={"prompt": "x", "steps": 40}).json()["id"]
        full = client.post("/v1/generate", json={"prompt": "x", "steps": 2})
        assert full.status_code == 429 and 1 <= int(full.headers["retry-after"]) <= 5, full.headers
        client.delete(f"/v1/jobs/{running}")


@pytest.mark.parametrize("token", ["          ", "  short  ", " padded-token-123 "])
def test_blank_or_padded_tokens_are_refused(token):
    with pytest.raises(ValueError, match="token"):
        check_bind("0.0.0.0", token)
