"""The web page in a real browser (Debian chromium + Playwright): map click, date, generate, download."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from diffusionsat.server import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
CAPTIONS = ["a satellite image of farmland in united states", "a satellite image of a river in peru"]
SCREENSHOTS = os.environ.get("DIFFUSIONSAT_SCREENSHOTS")  # set to a folder to keep the page's screenshots


def install_chromium() -> str | None:
    """Install Debian's chromium when missing; return why not when it cannot be done."""
    if CHROMIUM.exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): apt-get install chromium"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ([apt, "install", "-y", "--no-install-recommends", "chromium"],
                    [apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            subprocess.run(command, env=env, check=False, capture_output=True, timeout=900)
        except (subprocess.TimeoutExpired, OSError) as err:
            return f"installing chromium with apt failed: {err}"
        if CHROMIUM.exists():
            return None
    return f"apt-get could not install chromium ({CHROMIUM} still missing; no package registry reachable?)"


@pytest.fixture(scope="module")
def browser():
    reason = install_chromium()
    if reason:
        pytest.skip(reason)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def serving(app):
    """``app`` on a real free 127.0.0.1 port (uvicorn in a thread); yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusionsat.models.presets import build_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("browser") / "tiny-model"
    build_pipeline("tiny", CAPTIONS, seed=0).save_pretrained(folder)
    yield folder
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def live_server(model_dir):
    """The app with a tiny model on 127.0.0.1, no token."""
    with serving(create_app(model_dir, output_dir=model_dir.parent / "out")) as url:
        yield url


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_pick_place_and_date_generate_and_download(browser, live_server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside = []
    page.on("request", lambda request: None if request.url.startswith((live_server, "blob:", "data:"))
            else outside.append(request.url))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_server + "/")
    # (Playwright's wait_for_function evaluates strings, which the page's CSP rightly forbids: use locators.)
    sync_api.expect(page.locator("#countries path").nth(100)).to_be_attached()
    sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-model")

    assert not page.locator("#marker").is_visible()
    # Click the map where 47° N, 99.2° W lies (equirectangular: x ∝ lon, y ∝ -lat).
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (180 - 99.2) / 360, box["y"] + box["height"] * (90 - 47.0) / 180)
    assert abs(float(page.input_value("#lat")) - 47.0) < 1.0
    assert abs(float(page.input_value("#lon")) + 99.2) < 1.0
    sync_api.expect(page.locator("#place-readout")).to_contain_text("United States")
    assert page.locator("#marker").is_visible()

    # Zoom in with the wheel for a finer click: the place is then set to a small fraction of a degree.
    for _ in range(6):
        page.mouse.wheel(0, -120)
    sync_api.expect(page.locator("#map")).to_have_attribute("viewBox", re.compile(r"^\S+ \S+ \d{1,2}(\.\d+)? "))
    x0, y0, w, h = (float(v) for v in page.get_attribute("#map", "viewBox").split())
    page.mouse.click(box["x"] + box["width"] * (-99.2 - x0) / w, box["y"] + box["height"] * (-47.0 - y0) / h)
    assert abs(float(page.input_value("#lat")) - 47.0) < 0.25
    assert abs(float(page.input_value("#lon")) + 99.2) < 0.25
    sync_api.expect(page.locator("#place-readout")).to_contain_text("United States")  # the marker does not catch clicks

    page.fill("#date", "2019-07-15")
    page.fill("#gsd", "5")
    page.fill("#steps", "3")
    page.fill("#seed", "11")
    page.fill("#prompt", CAPTIONS[0])
    page.click("#run")
    image = page.locator(".card img").first
    image.wait_for(timeout=60_000)
    sync_api.expect(image).to_have_js_property("naturalWidth", 16)
    card = page.locator(".card").first
    sync_api.expect(card).to_contain_text("2019-07-15")
    sync_api.expect(card).to_contain_text("5 m/px")
    sync_api.expect(card).to_contain_text("seed11")
    sync_api.expect(card).to_contain_text(re.compile(r"cloud\s*unknown"))  # 0 % is not sent unless asked for
    sync_api.expect(page.locator("#status")).to_have_text("succeeded")
    shot(page, "generate.png")

    with page.expect_download() as info:
        card.locator("button[data-kind=png]").click()
    png = tmp_path / "download.png"
    info.value.save_as(png)
    assert info.value.suggested_filename.endswith("-0.png")
    assert PIL.Image.open(png).size == (16, 16)
    with page.expect_download() as info:
        card.locator("button[data-kind=geotiff]").click()
    import rasterio

    tif = tmp_path / "download.tif"
    info.value.save_as(tif)
    from pyproj import Transformer

    with rasterio.open(tif) as src:
        assert src.crs.to_epsg() == 32614 and src.res == (5.0, 5.0)  # UTM 14N at 5 m/px
        # Its centre is the clicked place.
        lon, lat = float(page.input_value("#lon")), float(page.input_value("#lat"))
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
        cx, cy = src.xy(src.height / 2, src.width / 2, offset="ul")
        assert abs(cx - x) < 5 and abs(cy - y) < 5

    assert outside == [], f"the page reached outside the server: {outside}"
    assert errors == []
    page.close()


def test_bad_input_and_unavailable_task_are_explained(browser, live_server):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(live_server + "/")
    sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-model")
    page.fill("#lat", "95")
    page.fill("#steps", "2")
    page.click("#run")
    sync_api.expect(page.locator("#error")).to_contain_text("metadata.lat")
    sync_api.expect(page.locator("#error")).to_contain_text("[-90, 90]")
    assert not page.locator("#marker").is_visible()  # no longitude: no place to mark
    assert page.get_attribute("#lat", "aria-invalid") == "true"

    page.click("[role=tab][data-task=superres]")
    sync_api.expect(page.locator("#unavailable")).to_contain_text("controlnet_superres")
    assert page.locator("#run").is_disabled()
    page.click("[role=tab][data-task=generate]")
    assert page.locator("#run").is_enabled()
    shot(page, "errors.png")

    page.goto(live_server + "/docs")
    sync_api.expect(page.locator("#paths")).to_contain_text("/v1/generate")
    page.close()



def test_task_tabs_build_frames_and_a_one_band_mask(browser, live_server, tmp_path):
    """Temporal lists a date per frame; a mask painted on a PNG is encoded as a 1-band PNG of its size."""
    import numpy as np

    picture = tmp_path / "scene.png"
    PIL.Image.fromarray(np.full((32, 48, 3), 90, dtype=np.uint8)).save(picture)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(live_server + "/")
    sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-model")

    page.click("[role=tab][data-task=temporal]")
    page.set_input_files("#tp-frames", [str(picture), str(picture)])
    assert page.locator("#tp-dates input[type=date]").count() == 2

    page.click("[role=tab][data-task=inpaint]")
    page.set_input_files("#ip-image", str(picture))
    overlay = page.locator("#ip-canvas")
    overlay.wait_for()
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.up()
    data = page.evaluate("async () => Array.from(new Uint8Array(await (await drawnMask()).arrayBuffer()))")
    mask = PIL.Image.open(io.BytesIO(bytes(data)))
    assert mask.mode == "L" and mask.size == (48, 32)
    pixels = np.asarray(mask)
    assert set(np.unique(pixels)) == {0, 255}
    assert pixels[16, 12] == 255 and pixels[16, 40] == 0 and pixels[2, 2] == 0
    page.close()


def test_token_is_asked_for_and_sent_with_every_request(browser, model_dir, tmp_path):
    token = "browser-token-42"
    app = create_app(model_dir, host="0.0.0.0", token=token, output_dir=tmp_path / "out")
    with serving(app) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        page.goto(url + "/")
        sync_api.expect(page.locator("#token-box")).to_be_visible()
        sync_api.expect(page.locator("#model-info")).to_contain_text("token")
        page.fill("#token", token)
        page.click("#token-save")
        sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-model")
        page.fill("#steps", "2")
        page.click("#run")
        sync_api.expect(page.locator(".card img").first).to_have_js_property("naturalWidth", 16, timeout=60_000)
        with page.expect_download() as info:
            page.locator(".card button[data-kind=json]").first.click()
        saved = tmp_path / "sidecar.json"
        info.value.save_as(saved)
        assert json.loads(saved.read_text())["steps"] == 2
        page.close()


def test_inpaint_tab_runs_a_job_with_the_painted_mask(browser, model_dir, tmp_path):
    import numpy as np

    from diffusionsat.models.controlnet import SatControlNet
    from diffusionsat.models.sat_unet import SatUNet

    folder = tmp_path / "inpaint-model"
    shutil.copytree(model_dir, folder)
    SatControlNet.from_unet(SatUNet.from_pretrained(folder / "unet"), conditioning_channels=4).save_pretrained(
        folder / "controlnet_inpaint")
    scene = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    picture = tmp_path / "scene.png"
    PIL.Image.fromarray(scene).save(picture)
    with serving(create_app(folder, output_dir=tmp_path / "out")) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        page.goto(url + "/")
        sync_api.expect(page.locator("#model-info")).to_contain_text("inpaint-model")
        page.click("[role=tab][data-task=inpaint]")
        assert page.locator("#unavailable").is_hidden() and page.locator("#run").is_enabled()
        page.set_input_files("#ip-image", str(picture))
        box = page.locator("#ip-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        page.mouse.up()
        page.fill("#steps", "2")
        page.click("#run")
        image = page.locator(".card img").first
        sync_api.expect(image).to_have_js_property("naturalWidth", 16, timeout=60_000)
        shot(page, "inpaint.png")
        with page.expect_download() as info:
            page.locator(".card button[data-kind=png]").first.click()
        saved = tmp_path / "filled.png"
        info.value.save_as(saved)
        out = np.asarray(PIL.Image.open(saved).convert("RGB"))
        assert np.array_equal(out[:, 10:], scene[:, 10:])  # far from the painted stroke: untouched
        page.close()


def test_leaving_the_page_cancels_its_job(browser, model_dir, tmp_path):
    app = create_app(model_dir, output_dir=tmp_path / "out", max_steps=1000)  # a long job to leave
    with serving(app) as url:
        page = browser.new_page()
        page.goto(url + "/")
        sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-model")
        page.fill("#steps", "1000")
        page.click("#run")
        sync_api.expect(page.locator("#status")).to_contain_text("sampling", timeout=30_000)
        job = next(iter(app.state.queue._jobs.values()))
        page.close(run_before_unload=True)
        deadline = time.monotonic() + 20
        while not job.state.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.state.value == "cancelled" and job.error == "cancelled by the client"
