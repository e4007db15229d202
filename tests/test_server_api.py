"""REST API of ``diffusionsat serve``: success, every validation error, auth, queue limits, lifecycle."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from diffusionsat.cli.main import main as cli_main  # noqa: E402
from diffusionsat.server import InsecureBindError, create_app  # noqa: E402

CAPTIONS = ["a satellite image of farmland in united states", "a satellite image of a river in peru"]
PLACE = {"lat": 47.0, "lon": -99.2, "gsd": 5.0, "cloud_cover": 0.1, "date": "2019-07-15"}
LONG = 1000  # steps of a job that is still running when the test acts on it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from diffusionsat.models.presets import build_pipeline

    folder = tmp_path_factory.mktemp("server") / "tiny-model"
    build_pipeline("tiny", CAPTIONS, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """Samplers share 2 busy cores with other work: one torch thread keeps steps fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def client_for(model_dir: Path, tmp_path: Path, **settings) -> TestClient:
    settings.setdefault("output_dir", tmp_path / "out")
    settings.setdefault("max_steps", LONG)
    return TestClient(create_app(model_dir, **settings))


def wait_for(client: TestClient, job_id: str, states=("succeeded", "failed", "cancelled"), timeout=60.0, **headers) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job}")


def png_bytes(width: int, height: int, bands: int = 3, value: int = 128) -> bytes:
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[bands]
    shape = (height, width) if bands == 1 else (height, width, bands)
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tif_bytes(width: int, height: int, bands: int = 4) -> bytes:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=width, height=height, count=bands, dtype="uint16",
                          crs="EPSG:32614", transform=from_origin(500000, 5200000, 10, 10)) as dst:
            dst.write(np.full((bands, height, width), 1000, dtype=np.uint16))
        assert rasterio.__version__
        return memfile.read()


# --- success ------------------------------------------------------------------------------------------
def test_generate_job_and_downloads(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        answer = client.post("/v1/generate", json={"prompt": CAPTIONS[0], "metadata": PLACE, "seed": 7, "steps": 3,
                                                   "num_images": 2})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert answer.headers["location"] == f"/v1/jobs/{job_id}"
        assert answer.json()["status"] in ("queued", "running")
        job = wait_for(client, job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["step"] == job["steps"] == 3
        assert [r["seed"] for r in job["results"]] == [7, 8]
        files = job["results"][1]["files"]
        assert set(files) == {"png", "json", "geotiff"}

        png = client.get(files["png"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert "attachment" in png.headers["content-disposition"]
        assert PIL.Image.open(io.BytesIO(png.content)).size == (16, 16)
        sidecar = client.get(files["json"]).json()
        assert sidecar["seed"] == 8 and sidecar["metadata"] == PLACE and sidecar["prompt"] == CAPTIONS[0]
        assert sidecar["model"] == "tiny-model" and sidecar["steps"] == 3
        from rasterio.io import MemoryFile

        with MemoryFile(client.get(files["geotiff"]).content) as memfile, memfile.open() as src:
            assert src.crs.to_epsg() == 32614 and src.res == (5.0, 5.0) and src.count == 3

        # Outputs live in one generated folder per job, under generated names only.
        written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
        assert written == sorted(f"{job_id}/image_{i}.{ext}" for i in (0, 1) for ext in ("png", "json", "tif"))


def test_same_seed_reproduces_and_scheduler_resets_between_jobs(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        def run(**extra):
            body = {"prompt": CAPTIONS[1], "metadata": {"lat": -8.4, "lon": -74.4}, "seed": 3, "steps": 2, **extra}
            job = wait_for(client, client.post("/v1/generate", json=body).json()["id"])
            assert job["status"] == "succeeded", job
            return job["results"][0], client.get(job["results"][0]["files"]["png"]).content

        first, first_png = run()
        euler, _ = run(scheduler="euler")
        again, again_png = run()
        assert euler["record"]["scheduler"] == "euler"
        assert first["record"]["scheduler"] == again["record"]["scheduler"] == "ddpm"
        assert first_png == again_png
        plain, plain_png = run(anchored_guidance=False)  # this model has no anchor: the same image, recorded
        assert plain["record"]["anchored_guidance"] is False and plain_png == first_png
        assert "geotiff" not in first["files"]  # no gsd: not georeferenced, so no GeoTIFF


def test_model_health_docs_and_page_are_local(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        model = client.get("/v1/model").json()
        assert model["name"] == "tiny-model" and model["default_size"] == 16 and model["size_multiple"] == 2
        assert model["version"] and "ddpm" in model["schedulers"]
        assert model["tasks"]["generate"]["available"] is True
        assert model["tasks"]["superres"] == {
            "available": False, "component": "controlnet_superres", "reason": model["tasks"]["superres"]["reason"]}
        assert str(model_dir) not in json.dumps(model)  # no server paths leak
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert client.head("/health").status_code == 200 and client.head("/").status_code == 200
        assert health.json()["queue"] == {"workers": 1, "running": 0, "waiting": 0, "max_queue": 8}

        spec = client.get("/openapi.json").json()
        assert {"/v1/generate", "/v1/superres", "/v1/temporal", "/v1/inpaint", "/v1/jobs/{job_id}", "/v1/model",
                "/health"} <= set(spec["paths"])
        assert {"409", "429", "503"} <= set(spec["paths"]["/v1/superres"]["post"]["responses"])
        docs = client.get("/docs")
        assert docs.status_code == 200 and "/static/docs.js" in docs.text
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        for name in ("app.js", "app.css", "docs.js", "docs.css", "index.html", "docs.html"):
            text = client.get(f"/static/{name}").text
            assert "//cdn" not in text and "https://" not in text and "http://" not in text.replace(
                "http://www.w3.org/2000/svg", ""), name
        world = client.get("/assets/countries.geojson").json()
        assert len(world["features"]) > 100


# --- every validation error ---------------------------------------------------------------------------
INVALID = [
    ({"metadata": {"lat": 91}}, "metadata.lat", "[-90, 90]"),
    ({"metadata": {"lon": -180.5}}, "metadata.lon", "[-180, 180]"),
    ({"metadata": {"gsd": 0}}, "metadata.gsd", "(0, 1000]"),
    ({"metadata": {"gsd": "ten"}}, "metadata.gsd", "(0, 1000]"),
    ({"metadata": {"cloud_cover": 1.5}}, "metadata.cloud_cover", "[0, 1]"),
    ({"metadata": {"cloud_cover": 150}, "cloud_cover_percent": True}, "metadata.cloud_cover", "[0, 100]"),
    ({"metadata": {"date": "2021-02-30"}}, "metadata.date", "February 2021 has 28 days"),
    ({"metadata": {"date": "yesterday"}}, "metadata.date", "YYYY-MM-DD"),
    ({"metadata": {"year": 1900}}, "metadata.year", "[1950, 2100]"),
    ({"metadata": {"month": 13}}, "metadata.month", "[1, 12]"),
    ({"metadata": {"day": 0}}, "metadata.day", "[1, 31]"),
    ({"metadata": {"latitude": 3}}, "metadata.latitude", "allowed: cloud_cover, date"),
    ({"steps": 0}, "steps", "[1, 1000]"),
    ({"steps": 1001}, "steps", "[1, 1000]"),
    ({"steps": "many"}, "steps", "valid integer"),
    ({"guidance_scale": 51}, "guidance_scale", "[0, 50]"),
    ({"metadata_guidance_scale": -1}, "metadata_guidance_scale", "[0, 50]"),
    ({"num_images": 0}, "num_images", "[1, 64]"),
    ({"num_images": 65}, "num_images", "[1, 64]"),
    ({"width": 12}, "width", "must be a multiple of 8"),
    ({"height": 4096}, "height", "out of range; allowed [8, 2048]"),
    ({"scheduler": "warp"}, "scheduler", "ddim"),
    ({"seed": -1}, "seed", "[0, 2^63)"),
    ({"geotiff": True, "metadata": {"lat": 1.0}}, "geotiff", "lat, lon and gsd"),
    ({"prompt": 5}, "prompt", "valid string"),
    ({"colour": "red"}, "colour", "not permitted"),
    ({"metadata": [1, 2]}, "metadata", "valid dictionary"),
]


@pytest.mark.parametrize(("change", "field", "allowed"), INVALID, ids=[f"{i}-{f}" for i, (_, f, _) in enumerate(INVALID)])
def test_invalid_fields_answer_422_naming_field_and_range(model_dir, tmp_path, change, field, allowed):
    with client_for(model_dir, tmp_path) as client:
        answer = client.post("/v1/generate", json={"prompt": "farmland", "steps": 2, **change})
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error"] == "invalid_field" and body["field"] == field
        assert allowed in body["detail"] + body.get("allowed", ""), body
        assert client.get("/health").json()["queue"]["waiting"] == 0  # nothing was queued


def test_missing_prompt_bad_json_and_oversized_bodies(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, max_json_bytes=4096) as client:
        missing = client.post("/v1/generate", json={"steps": 2})
        assert missing.status_code == 422 and missing.json()["field"] == "prompt"
        broken = client.post("/v1/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
        assert broken.status_code == 422 and broken.json()["field"] == "body"
        huge = client.post("/v1/generate", json={"prompt": "x" * 5000})
        assert huge.status_code == 413 and huge.json()["error"] == "too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        chunked = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert client.get("/health").status_code == 200


def test_model_specific_size_is_checked_before_queueing(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        ok = client.post("/v1/generate", json={"prompt": "x", "steps": 1, "width": 24, "height": 32})
        assert ok.status_code == 202
        job = wait_for(client, ok.json()["id"])
        assert (job["results"][0]["record"]["width"], job["results"][0]["record"]["height"]) == (24, 32)


# --- auth and binding ---------------------------------------------------------------------------------
def test_public_bind_requires_token_and_token_is_enforced(model_dir, tmp_path):
    with pytest.raises(InsecureBindError, match="--token"):
        create_app(model_dir, host="0.0.0.0", output_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="at least 8"):
        create_app(model_dir, host="0.0.0.0", token="short", output_dir=tmp_path / "b")
    token = "s3cret-token-123"
    with client_for(model_dir, tmp_path, host="0.0.0.0", token=token) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000"}, {"Authorization": f"Basic {token}"}):
            answer = client.get("/v1/model", headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert client.post("/v1/generate", json={"prompt": "x"}, headers=headers).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/model", headers=auth).status_code == 200
        job = client.post("/v1/generate", json={"prompt": "x", "steps": 1}, headers=auth)
        assert job.status_code == 202
        finished = wait_for(client, job.json()["id"], **auth)
        assert client.get(finished["results"][0]["files"]["png"]).status_code == 401
        assert client.get(finished["results"][0]["files"]["png"], headers=auth).status_code == 200
        # The page, its assets and the liveness probe carry no secrets and need no token.
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False), ("", False),
])
def test_only_loopback_binds_without_token(host, loopback):
    from diffusionsat.server import check_bind, is_loopback

    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(InsecureBindError, match="--token"):
            check_bind(host, None)
        check_bind(host, "a-long-enough-token")


def test_cli_refuses_public_bind_without_token_and_missing_model(capsys, tmp_path):
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert cli_main(["serve", "--token", "short", "--model", str(tmp_path / "nope")]) == 2
    assert "at least 8 characters" in capsys.readouterr().err  # refused before looking for the model
    assert cli_main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_without_model_says_to_pass_model(capsys, monkeypatch, tmp_path):
    import diffusionsat.loading as loading

    # An installation without the embedded model (e.g. a slim build): serve must ask for --model.
    monkeypatch.setattr(loading, "default_model_path", lambda: tmp_path / "no-default-model")
    assert cli_main(["serve"]) == 2
    assert "--model" in capsys.readouterr().err


# --- queue limits, cancellation, expiry, shutdown -----------------------------------------------------
def test_full_queue_answers_429_with_retry_after_and_cancel_frees_it(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, workers=1, max_queue=1) as client:
        running = client.post("/v1/generate", json={"prompt": "x", "steps": LONG}).json()
        wait_for(client, running["id"], states=("running",))
        deadline = time.monotonic() + 30
        while (progress := client.get(f"/v1/jobs/{running['id']}").json())["step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert progress["steps"] == LONG and 0 < progress["progress"] < 1
        assert progress["progress"] == pytest.approx(progress["step"] / LONG, abs=1e-3)
        waiting = client.post("/v1/generate", json={"prompt": "x", "steps": LONG})
        assert waiting.status_code == 202 and waiting.json()["queue_position"] == 0
        full = client.post("/v1/generate", json={"prompt": "x", "steps": 1})
        assert full.status_code == 429 and full.json()["error"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1

        cancelled = client.delete(f"/v1/jobs/{waiting.json()['id']}").json()
        assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by the client"
        client.delete(f"/v1/jobs/{running['id']}")
        stopped = wait_for(client, running["id"], timeout=10)
        assert stopped["status"] == "cancelled" and stopped["step"] < LONG
        assert not (tmp_path / "out" / running["id"]).exists()
        assert client.post("/v1/generate", json={"prompt": "x", "steps": 1}).status_code == 202
        assert client.delete("/v1/jobs/unknown").status_code == 404


def test_workers_sample_concurrently(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, workers=2, max_queue=0) as client:
        ids = [client.post("/v1/generate", json={"prompt": "x", "steps": LONG}).json()["id"] for _ in range(2)]
        for job_id in ids:
            wait_for(client, job_id, states=("running",))
        assert client.get("/health").json()["queue"]["running"] == 2
        assert client.post("/v1/generate", json={"prompt": "x", "steps": 1}).status_code == 429
        for job_id in ids:
            client.delete(f"/v1/jobs/{job_id}")


def test_shutting_down_answers_503_with_retry_after(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        client.app.state.queue.shutdown(grace=0.1)
        answer = client.post("/v1/generate", json={"prompt": "x", "steps": 1})
        assert answer.status_code == 503 and answer.json()["error"] == "shutting_down"
        assert int(answer.headers["retry-after"]) >= 1
        assert client.get("/health").status_code == 503


def test_abandoned_job_is_cancelled_and_finished_jobs_expire(model_dir, tmp_path):
    settings = {"abandon_after": 0.4, "reaper_interval": 0.05, "job_ttl": 0.5}
    with client_for(model_dir, tmp_path, **settings) as client:
        queue = client.app.state.queue
        abandoned = queue.get(client.post("/v1/generate", json={"prompt": "x", "steps": LONG}).json()["id"])
        deadline = time.monotonic() + 10
        while not abandoned.state.finished and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody polls the job: its client went away
        assert abandoned.state.value == "cancelled" and "abandoned" in abandoned.error

        done = wait_for(client, client.post("/v1/generate", json={"prompt": "x", "steps": 1}).json()["id"])
        folder = tmp_path / "out" / done["id"]
        assert done["status"] == "succeeded" and folder.is_dir()
        time.sleep(1.2)
        assert client.get(f"/v1/jobs/{done['id']}").status_code == 404
        assert not folder.exists()


def test_shutdown_cancels_running_job_and_stops_workers(model_dir, tmp_path):
    client = client_for(model_dir, tmp_path, shutdown_grace=0.2)
    with client:
        job_id = client.post("/v1/generate", json={"prompt": "x", "steps": LONG}).json()["id"]
        wait_for(client, job_id, states=("running",))
        queue = client.app.state.queue
        began = time.monotonic()
    assert time.monotonic() - began < 10
    job = queue._jobs[job_id]
    assert job.state.value == "cancelled" and job.error == "server shutting down"
    assert not queue.accepting and queue._threads == []


def test_file_names_are_never_paths(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        job = wait_for(client, client.post("/v1/generate", json={"prompt": "x", "steps": 1}).json()["id"])
        base = f"/v1/jobs/{job['id']}/files/"
        assert client.get(base + "0.png").status_code == 200
        for name in ("..%2F..%2Fetc%2Fpasswd", "0.exe", "1.png", "0.png.json", "%2e%2e"):
            assert client.get(base + name).status_code == 404, name
        assert client.get("/v1/jobs/..%2F..%2Fetc/files/0.png").status_code == 404


# --- conditional tasks: uploads are validated, then the model must have the task's ControlNet --------
def test_conditional_tasks_answer_409_naming_the_missing_component(model_dir, tmp_path):
    with client_for(model_dir, tmp_path) as client:
        sr = client.post("/v1/superres", files={"image": ("s2.tif", tif_bytes(8, 8, 13), "image/tiff")},
                         data={"scale": "2", "prompt": "x", "metadata": json.dumps(PLACE)})
        temporal = client.post(
            "/v1/temporal",
            files=[("frames", ("a.png", png_bytes(16, 16), "image/png")), ("frames", ("b.png", png_bytes(16, 16), "image/png"))],
            data={"frame_dates": ["2018-01-01", "2019-01-01"], "metadata": json.dumps(PLACE)},
        )
        inpaint = client.post("/v1/inpaint", files={"image": ("i.png", png_bytes(16, 16), "image/png"),
                                                    "mask": ("m.png", png_bytes(16, 16, 1, 255), "image/png")})
        for answer, component in ((sr, "controlnet_superres"), (temporal, "controlnet_temporal"),
                                  (inpaint, "controlnet_inpaint")):
            assert answer.status_code == 409, answer.text
            body = answer.json()
            assert body["error"] == "model_component_missing" and body["component"] == component
            assert component in body["detail"]
        assert client.get("/health").json()["queue"]["waiting"] == 0


@pytest.fixture(scope="module")
def task_model_dir(model_dir, tmp_path_factory) -> Path:
    """The tiny model plus one ControlNet per task (controlnet_superres/, _temporal/, _inpaint/)."""
    import shutil

    from diffusionsat.models.controlnet import SatControlNet
    from diffusionsat.models.controlnet_3d import SatControlNet3D
    from diffusionsat.models.sat_unet import SatUNet

    folder = tmp_path_factory.mktemp("tasks") / "task-model"
    shutil.copytree(model_dir, folder)
    unet = SatUNet.from_pretrained(folder / "unet")
    SatControlNet.from_unet(unet, conditioning_channels=4).save_pretrained(folder / "controlnet_superres")
    SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=3).save_pretrained(folder / "controlnet_temporal")
    SatControlNet.from_unet(unet, conditioning_channels=4).save_pretrained(folder / "controlnet_inpaint")
    return folder


def test_superres_job_keeps_the_georeference_with_a_finer_gsd(task_model_dir, tmp_path):
    with client_for(task_model_dir, tmp_path) as client:
        assert all(t["available"] for t in client.get("/v1/model").json()["tasks"].values())
        answer = client.post("/v1/superres", files={"image": ("../secret/s2.tif", tif_bytes(8, 8, 4), "image/tiff")},
                             data={"scale": "2", "prompt": "farmland", "steps": "2", "seed": "5"})
        assert answer.status_code == 202, answer.text
        job = wait_for(client, answer.json()["id"])
        assert job["status"] == "succeeded", job
        result = job["results"][0]
        assert result["record"]["task"] == "superres" and result["record"]["scale"] == 2
        assert result["record"]["task_inputs"] == ["s2.tif"]  # the client's name, stripped; never a server path
        from rasterio.io import MemoryFile

        with MemoryFile(client.get(result["files"]["geotiff"]).content) as memfile, memfile.open() as src:
            assert (src.width, src.height) == (16, 16) and src.crs.to_epsg() == 32614
            assert src.res == (5.0, 5.0) and src.bounds.left == 500000 and src.bounds.top == 5200000
        assert not list((tmp_path / "out" / job["id"]).glob("input-*"))  # uploads are not kept


def test_superres_consistency_field_back_projects_onto_the_input_or_not(model_dir, tmp_path):
    """`consistency` (default true) as the CLI's --consistency/--no-consistency: RGB in, RGB out."""
    import shutil

    from diffusionsat.models.controlnet import SatControlNet
    from diffusionsat.models.sat_unet import SatUNet

    folder = tmp_path / "rgb-sr-model"
    shutil.copytree(model_dir, folder)
    SatControlNet.from_unet(SatUNet.from_pretrained(folder / "unet"), conditioning_channels=3).save_pretrained(
        folder / "controlnet_superres")
    low = np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(low).save(buffer, format="PNG")
    errors = {}
    with client_for(folder, tmp_path) as client:
        for value in ("true", "false"):
            answer = client.post("/v1/superres", files={"image": ("low.png", buffer.getvalue(), "image/png")},
                                 data={"scale": "2", "steps": "2", "seed": "1", "consistency": value})
            assert answer.status_code == 202, answer.text
            job = wait_for(client, answer.json()["id"])
            assert job["status"] == "succeeded", job
            result = job["results"][0]
            assert (result["record"]["back_projection_steps"] > 0) == (value == "true")
            high = np.asarray(PIL.Image.open(io.BytesIO(client.get(result["files"]["png"]).content)).convert("RGB"))
            averaged = high.astype(float).reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
            errors[value] = np.abs(averaged - low).mean()
        bad = client.post("/v1/superres", files={"image": ("low.png", buffer.getvalue(), "image/png")},
                          data={"consistency": "maybe"})
        assert bad.status_code == 422 and "consistency" in bad.text
    assert errors["true"] < 0.1 * errors["false"], errors  # the 2× average follows the input only when back-projected


def test_temporal_and_inpaint_jobs(task_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(scene).save(buffer, format="PNG")
    fill = np.zeros((16, 16), dtype=np.uint8)
    fill[:, :8] = 255
    mask = io.BytesIO()
    PIL.Image.fromarray(fill).save(mask, format="PNG")
    with client_for(task_model_dir, tmp_path) as client:
        temporal = client.post(
            "/v1/temporal",
            files=[("frames", ("b.png", png_bytes(16, 16, value=200), "image/png")),
                   ("frames", ("a.png", png_bytes(16, 16, value=50), "image/png"))],
            data={"frame_dates": "2019-05-01,2017-05-01", "metadata": json.dumps({"date": "2021-06-01"}), "steps": "2"},
        )
        inpaint = client.post("/v1/inpaint", files={"image": ("i.png", buffer.getvalue(), "image/png"),
                                                    "mask": ("m.png", mask.getvalue(), "image/png")},
                              data={"steps": "2", "seed": "1", "num_images": "2"})
        assert temporal.status_code == 202 and inpaint.status_code == 202, (temporal.text, inpaint.text)
        done = wait_for(client, temporal.json()["id"])
        assert done["status"] == "succeeded", done
        record = done["results"][0]["record"]
        assert record["task"] == "temporal" and record["frame_dates"] == ["2017-05-01", "2019-05-01"]
        assert record["metadata"]["date"] == "2021-06-01"

        done = wait_for(client, inpaint.json()["id"])
        assert done["status"] == "succeeded", done
        assert [r["seed"] for r in done["results"]] == [1, 2] and done["progress"] == 1.0
        for result in done["results"]:
            out = np.asarray(PIL.Image.open(io.BytesIO(client.get(result["files"]["png"]).content)).convert("RGB"))
            assert np.array_equal(out[:, 8:], scene[:, 8:])  # unmasked pixels exactly as given
            assert "geotiff" not in result["files"]  # a plain PNG without lat/lon/gsd has no place on Earth


def test_task_errors_found_while_running_fail_the_job_with_the_reason(task_model_dir, tmp_path):
    with client_for(task_model_dir, tmp_path) as client:  # the SR ControlNet takes 4 bands, not 3
        answer = client.post("/v1/superres", files={"image": ("rgb.png", png_bytes(8, 8), "image/png")},
                             data={"scale": "2", "steps": "1"})
        job = wait_for(client, answer.json()["id"])
        assert job["status"] == "failed" and "trained for 4" in job["error"], job
        assert client.post("/v1/superres", files={"image": ("s2.tif", tif_bytes(8, 8, 4), "image/tiff")},
                           data={"bands": "1,2,5"}).json()["field"] == "bands"


def test_generic_controlnet_serves_the_tasks_it_fits(model_dir, tmp_path):
    import shutil

    from diffusionsat.models.controlnet_3d import SatControlNet3D
    from diffusionsat.models.sat_unet import SatUNet

    folder = tmp_path / "temporal-model"
    shutil.copytree(model_dir, folder)
    SatControlNet3D.from_unet(SatUNet.from_pretrained(folder / "unet"), conditioning_channels=3,
                              max_frames=2).save_pretrained(folder / "controlnet")
    with client_for(folder, tmp_path) as client:
        tasks = client.get("/v1/model").json()["tasks"]
        assert tasks["temporal"]["available"] is True
        assert tasks["superres"]["available"] is False and tasks["inpaint"]["available"] is False


def test_task_without_a_runner_is_501(task_model_dir, tmp_path, monkeypatch):
    from diffusionsat.server import tasks

    monkeypatch.delitem(tasks.TASK_RUNNERS, "inpaint")
    with client_for(task_model_dir, tmp_path) as client:
        answer = client.post("/v1/inpaint", files={"image": ("i.png", png_bytes(16, 16), "image/png"),
                                                   "mask": ("m.png", png_bytes(16, 16, 1, 255), "image/png")})
        assert answer.status_code == 501 and answer.json()["component"] == "controlnet_inpaint"
        assert client.get("/v1/model").json()["tasks"]["inpaint"]["available"] is False


UPLOAD_ERRORS = [
    ("superres", {"image": ("x.png", b"GIF89a....", "image/gif")}, {}, 422, "image", "not a GeoTIFF or PNG"),
    ("superres", {"image": ("x.png", b"", "image/png")}, {}, 422, "image", "empty"),
    ("superres", {"image": ("x.png", png_bytes(8, 8)[:40], "image/png")}, {}, 422, "image", "cannot read"),
    ("superres", {"image": ("x.png", png_bytes(40, 40), "image/png")}, {}, 413, "image", "pixels"),
    ("superres", {"image": ("x.png", png_bytes(8, 8), "image/png")}, {"scale": "9"}, 422, "scale", "[2, 8]"),
    ("superres", {"image": ("x.png", png_bytes(8, 8), "image/png")}, {"scale": "8"}, 422, "scale", "exceed"),
    ("superres", {"image": ("x.tif", tif_bytes(8, 8, 40), "image/tiff")}, {}, 422, "image", "[1, 32]"),
    ("superres", {"image": ("x.png", png_bytes(8, 8), "image/png")}, {"metadata": "{lat"}, 422, "metadata", "JSON"),
    ("superres", {"image": ("x.png", png_bytes(8, 8), "image/png")}, {"metadata": '{"lat": 95}'}, 422,
     "metadata.lat", "[-90, 90]"),
    ("superres", {"image": ("x.png", png_bytes(8, 8), "image/png")}, {"steps": "0"}, 422, "steps", "[1, 1000]"),
    ("superres", {}, {}, 422, "image", "required"),
    ("inpaint", {"image": ("i.png", png_bytes(16, 16), "image/png"), "mask": ("m.png", png_bytes(8, 8, 1, 255), "image/png")},
     {}, 422, "mask", "must match"),
    ("inpaint", {"image": ("i.png", png_bytes(16, 16), "image/png"), "mask": ("m.png", png_bytes(16, 16, 3), "image/png")},
     {}, 422, "mask", "1 band"),
    ("inpaint", {"image": ("i.png", png_bytes(16, 16), "image/png"), "mask": ("m.png", png_bytes(16, 16, 1, 0), "image/png")},
     {}, 422, "mask", "no pixels"),
    ("temporal", [("frames", ("a.png", png_bytes(16, 16), "image/png"))],
     {"frame_dates": ["2018-01-01", "2019-01-01"], "metadata": '{"date": "2020-01-01"}'}, 422, "frame_dates", "one per frame"),
    ("temporal", [("frames", ("a.png", png_bytes(16, 16), "image/png")), ("frames", ("b.png", png_bytes(16, 16), "image/png"))],
     {"frame_dates": "2018-01-01,2019-02-30", "metadata": '{"date": "2020-01-01"}'}, 422, "frame_dates[1]", "28 days"),
    ("temporal", [("frames", ("a.png", png_bytes(16, 16), "image/png"))],
     {"frame_dates": ["2018-01-01"], "metadata": '{"lat": 3}'}, 422, "metadata.date", "target date"),
    ("temporal", [("frames", ("a.png", png_bytes(16, 16), "image/png")), ("frames", ("b.png", png_bytes(8, 8), "image/png"))],
     {"frame_dates": ["2018-01-01", "2019-01-01"], "metadata": '{"date": "2020-01-01"}'}, 422, "frames[1]", "must match"),
    ("temporal", [("frames", (f"{i}.png", png_bytes(8, 8), "image/png")) for i in range(4)],
     {"frame_dates": ["2018-01-01"] * 4, "metadata": '{"date": "2020-01-01"}'}, 422, "frames", "[1, 3]"),
]


@pytest.mark.parametrize(("task", "files", "data", "status", "field", "text"), UPLOAD_ERRORS,
                         ids=[f"{i}-{e[0]}-{e[4]}" for i, e in enumerate(UPLOAD_ERRORS)])
def test_upload_errors_name_the_field(model_dir, tmp_path, task, files, data, status, field, text):
    settings = {"max_image_pixels": 1024, "max_frames": 3}
    with client_for(model_dir, tmp_path, **settings) as client:
        answer = client.post(f"/v1/{task}", files=files or None, data=data)
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert body["field"] == field and text in body["detail"] + body.get("allowed", ""), body


def test_upload_byte_limit_and_client_file_names_are_not_used(model_dir, tmp_path):
    with client_for(model_dir, tmp_path, max_upload_bytes=2000) as client:
        big = client.post("/v1/superres", files={"image": ("big.tif", tif_bytes(64, 64, 1), "image/tiff")})
        assert big.status_code == 413 and big.json()["field"] == "image"
        sneaky = client.post("/v1/superres", files={"image": ("../../evil.png", png_bytes(8, 8), "image/png")},
                             data={"scale": "2"})
        assert sneaky.status_code == 409
    assert not (tmp_path / "evil.png").exists() and not any((tmp_path / "out").rglob("*evil*"))
