// DiffusionSat web page: plain JS, no external resources (the page must work offline).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { task: "generate", model: null, token: sessionStorage.getItem("diffusionsat-token") || "", job: null };
const SVG = "http://www.w3.org/2000/svg";
const MAP_HINT = "Click the map to choose a location (scroll to zoom, drag to pan, double-click to reset).";

// --- API calls (bearer token when the server asks for one) ---------------------------------------
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new ApiError("This server needs an API token: enter it above.", null);
  }
  return response;
}

class ApiError extends Error {
  constructor(message, field) { super(message); this.field = field; }
}

async function json(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    let message = body.detail || response.statusText;
    if (body.allowed && !message.includes(body.allowed)) message += " (allowed: " + body.allowed + ")";
    if (response.status === 429 || response.status === 503) {
      message += " — try again in " + (response.headers.get("Retry-After") || "a few") + " s";
    }
    throw new ApiError(message, body.field || null);
  }
  return body;
}

// --- the world map from the bundled country outlines ---------------------------------------------
function ringPath(ring) {
  return "M" + ring.map(([lon, lat]) => lon.toFixed(2) + " " + (-lat).toFixed(2)).join("L") + "Z";
}

async function drawMap() {
  const grid = $("graticule");
  for (let lon = -150; lon <= 150; lon += 30) grid.appendChild(line(lon, -90, lon, 90));
  for (let lat = -60; lat <= 60; lat += 30) grid.appendChild(line(-180, -lat, 180, -lat));
  const world = await (await fetch("/assets/countries.geojson")).json();
  const group = $("countries");
  for (const feature of world.features) {
    const geometry = feature.geometry;
    if (!geometry) continue;
    const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", polygons.map((rings) => rings.map(ringPath).join("")).join(""));
    path.setAttribute("class", "country");
    path.setAttribute("fill-rule", "evenodd");
    path.dataset.name = feature.properties.name;
    const title = document.createElementNS(SVG, "title");
    title.textContent = feature.properties.name;
    path.appendChild(title);
    group.appendChild(path);
  }
}

function line(x1, y1, x2, y2) {
  const el = document.createElementNS(SVG, "line");
  Object.entries({ x1, y1, x2, y2, class: "grid" }).forEach(([k, v]) => el.setAttribute(k, v));
  return el;
}

// Zoom (wheel) and pan (drag) by changing the SVG viewBox; a drag is not a click.
const WORLD_WIDTH = 360;
const view = { x: -180, y: -90, w: WORLD_WIDTH };
let drag = null;

function toMap(event) {
  const svg = $("map");
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  return point.matrixTransform(svg.getScreenCTM().inverse());
}

function setView(x, y, w) {
  view.w = Math.max(WORLD_WIDTH / 64, Math.min(WORLD_WIDTH, w));
  view.x = Math.max(-180, Math.min(180 - view.w, x));
  view.y = Math.max(-90, Math.min(90 - view.w / 2, y));
  $("map").setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.w / 2}`);
  $("marker-dot").setAttribute("r", String((2.2 * view.w) / WORLD_WIDTH));
}

function onWheel(event) {
  event.preventDefault();
  const p = toMap(event);
  const w = Math.max(WORLD_WIDTH / 64, Math.min(WORLD_WIDTH, view.w * (event.deltaY < 0 ? 0.8 : 1.25)));
  const k = w / view.w;
  setView(p.x - (p.x - view.x) * k, p.y - (p.y - view.y) * k, w);
}

function onPointerDown(event) {
  drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y, moved: false };
}

function onPointerMove(event) {
  if (!drag || !(event.buttons & 1)) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
  if (!drag.moved) return;
  const scale = view.w / $("map").getBoundingClientRect().width;
  setView(drag.vx - dx * scale, drag.vy - dy * scale, view.w);
}

function onMapClick(event) {
  const dragged = drag && drag.moved;
  drag = null;
  if (dragged) return;
  const p = toMap(event);
  const lon = Math.max(-180, Math.min(180, p.x));
  const lat = Math.max(-90, Math.min(90, -p.y));
  $("lat").value = lat.toFixed(4);
  $("lon").value = lon.toFixed(4);
  const country = event.target.dataset ? event.target.dataset.name : null;
  updateMarker(country);
}

function updateMarker(country) {
  const lat = parseFloat($("lat").value);
  const lon = parseFloat($("lon").value);
  const known = Number.isFinite(lat) && Number.isFinite(lon);
  $("marker").setAttribute("visibility", known ? "visible" : "hidden"); // SVG ignores the hidden attribute
  if (!known) {
    $("place-readout").textContent = MAP_HINT;
    return;
  }
  $("marker-dot").setAttribute("cx", lon);
  $("marker-dot").setAttribute("cy", -lat);
  $("marker-h").setAttribute("y1", -lat);
  $("marker-h").setAttribute("y2", -lat);
  $("marker-v").setAttribute("x1", lon);
  $("marker-v").setAttribute("x2", lon);
  const where = `${Math.abs(lat).toFixed(3)}° ${lat >= 0 ? "N" : "S"}, ${Math.abs(lon).toFixed(3)}° ${lon >= 0 ? "E" : "W"}`;
  $("place-readout").textContent = country ? `${where} — ${country}` : where;
}

// --- tabs -------------------------------------------------------------------------------------------
const RUN_LABELS = { generate: "Generate", superres: "Super-resolve", temporal: "Generate at target date", inpaint: "In-paint" };

function selectTask(task) {
  state.task = task;
  document.querySelectorAll("[role=tab]").forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.task === task)));
  document.querySelectorAll(".tabpanel").forEach((panel) => { panel.hidden = panel.dataset.task !== task; });
  $("run").textContent = RUN_LABELS[task];
  $("size").closest("label").hidden = task !== "generate";
  $("bands-label").hidden = task === "generate";
  showAvailability();
}

function showAvailability() {
  const info = state.model && state.model.tasks[state.task];
  const off = info && !info.available;
  $("unavailable").hidden = !off;
  $("unavailable").textContent = off ? info.reason : "";
  $("run").disabled = Boolean(off) || Boolean(state.job);
}

// --- the request ----------------------------------------------------------------------------------
function metadata() {
  const md = {};
  const number = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  for (const [key, id] of [["lat", "lat"], ["lon", "lon"], ["gsd", "gsd"]]) {
    const v = number(id);
    if (v !== null) md[key] = v;
  }
  // Unknown unless asked for: 0 % is a real value (clear sky), not the same as "not known".
  if ($("cloud-known").checked) md.cloud_cover = Number($("cloud").value) / 100;
  if ($("date").value) md.date = $("date").value;
  return md;
}

function samplingFields() {
  const fields = { prompt: $("prompt").value, metadata: metadata() };
  const integer = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  if (integer("seed") !== null) fields.seed = integer("seed");
  if (integer("steps") !== null) fields.steps = integer("steps");
  if (integer("guidance") !== null) fields.guidance_scale = integer("guidance");
  if (integer("num-images") !== null) fields.num_images = integer("num-images");
  if ($("scheduler").value) fields.scheduler = $("scheduler").value;
  return fields;
}

async function submit() {
  const fields = samplingFields();
  if (state.task === "generate") {
    const size = $("size").value.trim();
    if (size !== "") { fields.width = Number(size); fields.height = Number(size); }
    return json(await api("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(fields),
    }));
  }
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) {
    form.append(key, key === "metadata" ? JSON.stringify(value) : String(value));
  }
  if ($("bands").value.trim()) form.append("bands", $("bands").value.trim());
  if (state.task === "superres") {
    requireFile("sr-image", "choose a low-resolution image");
    form.append("image", $("sr-image").files[0]);
    form.append("scale", $("sr-scale").value);
    form.append("consistency", $("sr-consistency").checked ? "true" : "false");
  } else if (state.task === "temporal") {
    requireFile("tp-frames", "choose at least one past image");
    [...$("tp-frames").files].forEach((file) => form.append("frames", file));
    document.querySelectorAll("#tp-dates input").forEach((input) => form.append("frame_dates", input.value));
  } else if (state.task === "inpaint") {
    requireFile("ip-image", "choose an image to fill");
    form.append("image", $("ip-image").files[0]);
    if ($("ip-mask").files.length) form.append("mask", $("ip-mask").files[0]);
    else form.append("mask", await drawnMask(), "mask.png");
  }
  return json(await api("/v1/" + state.task, { method: "POST", body: form }));
}

function requireFile(id, message) {
  if (!$(id).files.length) throw new ApiError(message, id);
}

const FIELD_INPUTS = {
  "metadata.lat": "lat", "metadata.lon": "lon", "metadata.gsd": "gsd", "metadata.cloud_cover": "cloud",
  "metadata.date": "date", "metadata.year": "date", "metadata.month": "date", "metadata.day": "date",
  prompt: "prompt", seed: "seed", steps: "steps", guidance_scale: "guidance", num_images: "num-images",
  width: "size", height: "size", scheduler: "scheduler", image: "sr-image", scale: "sr-scale", consistency: "sr-consistency",
  frames: "tp-frames", mask: "ip-mask", bands: "bands",
};

function showError(error) {
  $("error").hidden = false;
  $("error").textContent = error.message;
  const id = error.field && (FIELD_INPUTS[error.field] || FIELD_INPUTS[error.field.replace(/\[\d+\]$/, "")] || error.field);
  if (id && $(id)) { $(id).setAttribute("aria-invalid", "true"); $(id).focus(); }
}

function clearError() {
  $("error").hidden = true;
  document.querySelectorAll("[aria-invalid=true]").forEach((el) => el.removeAttribute("aria-invalid"));
}

async function run() {
  clearError();
  let job;
  try {
    job = await submit();
  } catch (error) {
    showError(error);
    return;
  }
  state.job = job.id;
  $("cancel").hidden = false;
  $("progress").hidden = false;
  showAvailability();
  try {
    await follow(job);
  } catch (error) {
    showError(error);
  } finally {
    state.job = null;
    $("cancel").hidden = true;
    $("progress").hidden = true;
    showAvailability();
  }
}

async function follow(job) {
  for (;;) {
    const done = ["succeeded", "failed", "cancelled"].includes(job.status);
    $("progress").value = job.progress;
    if (job.status === "queued") $("status").textContent = `queued (${job.queue_position ?? 0} ahead)`;
    else if (job.status === "running") $("status").textContent = `sampling, step ${job.step} of ${job.steps || "…"}`;
    else $("status").textContent = job.status + (job.error ? ": " + job.error : "");
    if (done) {
      if (job.status === "succeeded") for (const result of job.results) await addCard(job, result);
      if (job.status === "failed") throw new ApiError(job.error || "the job failed", null);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    job = await json(await api(job.links.self));
  }
}

async function cancel() {
  if (state.job) await api("/v1/jobs/" + state.job, { method: "DELETE" }).catch(() => null);
}

// --- gallery --------------------------------------------------------------------------------------
async function blobOf(url) {
  const response = await api(url);
  if (!response.ok) throw new ApiError("download failed: " + response.status, null);
  return response.blob();
}

async function addCard(job, result) {
  const record = result.record;
  const md = record.metadata || {};
  const figure = document.createElement("figure");
  figure.className = "card";
  const img = document.createElement("img");
  img.alt = record.prompt || "generated image";
  img.src = URL.createObjectURL(await blobOf(result.files.png));
  figure.appendChild(img);
  const caption = document.createElement("figcaption");
  const prompt = document.createElement("p");
  prompt.className = "prompt";
  prompt.textContent = record.prompt || "(no prompt)";
  caption.appendChild(prompt);
  const dl = document.createElement("dl");
  const rows = [
    ["place", md.lat !== undefined && md.lon !== undefined ? `${md.lat.toFixed(3)}, ${md.lon.toFixed(3)}` : "unknown"],
    ["date", md.date || [md.year, md.month, md.day].filter((v) => v !== undefined).join("-") || "unknown"],
    ["GSD", md.gsd !== undefined ? md.gsd + " m/px" : "unknown"],
    ["cloud", md.cloud_cover !== undefined ? Math.round(md.cloud_cover * 100) + " %" : "unknown"],
    ["seed", record.seed], ["steps", `${record.steps} (${record.scheduler})`],
    ["size", `${record.width}×${record.height}`], ["model", `${record.model} ${record.model_version || ""}`],
  ];
  for (const [key, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  caption.appendChild(dl);
  const downloads = document.createElement("div");
  downloads.className = "downloads";
  for (const [kind, label] of [["png", "PNG"], ["geotiff", "GeoTIFF"], ["json", "JSON sidecar"]]) {
    if (!result.files[kind]) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "⬇ " + label;
    button.dataset.kind = kind;
    button.addEventListener("click", () => download(result.files[kind]).catch(showError));
    downloads.appendChild(button);
  }
  caption.appendChild(downloads);
  figure.appendChild(caption);
  $("empty").hidden = true;
  $("gallery").prepend(figure);
}

async function download(url) {
  const blob = await blobOf(url);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const [, id, name] = url.match(/jobs\/([0-9a-f]+)\/files\/(.+)$/);
  link.download = `diffusionsat-${id.slice(0, 8)}-${name}`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// --- temporal frames and the in-painting mask -----------------------------------------------------
function listFrames() {
  const list = $("tp-dates");
  list.textContent = "";
  [...$("tp-frames").files].forEach((file) => {
    const item = document.createElement("li");
    const label = document.createElement("label");
    label.textContent = file.name;
    const input = document.createElement("input");
    input.type = "date";
    input.required = true;
    input.setAttribute("aria-label", "acquisition date of " + file.name);
    label.appendChild(input);
    item.appendChild(label);
    list.appendChild(item);
  });
}

// The painted mask lives in an off-screen canvas; the visible canvas shows the image with it on top.
const inpaint = { bitmap: null, mask: document.createElement("canvas"), last: null };

async function loadInpaintImage() {
  const file = $("ip-image").files[0];
  $("ip-draw").hidden = true;
  inpaint.bitmap = null;
  if (!file || !file.type.includes("png")) return; // GeoTIFFs: the browser cannot show them; upload a mask
  inpaint.bitmap = await createImageBitmap(file);
  for (const canvas of [$("ip-canvas"), inpaint.mask]) {
    canvas.width = inpaint.bitmap.width;
    canvas.height = inpaint.bitmap.height;
  }
  redrawInpaint();
  $("ip-draw").hidden = false;
}

function redrawInpaint() {
  const ctx = $("ip-canvas").getContext("2d");
  ctx.drawImage(inpaint.bitmap, 0, 0);
  ctx.drawImage(inpaint.mask, 0, 0);
}

function paint(event) {
  if (!(event.buttons & 1) || !inpaint.bitmap) {
    inpaint.last = null;
    return;
  }
  const canvas = $("ip-canvas");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * canvas.width;
  const y = ((event.clientY - box.top) / box.height) * canvas.height;
  const from = event.type === "pointerdown" || !inpaint.last ? { x, y } : inpaint.last;
  inpaint.last = { x, y };
  // Whole image pixels along the stroke, so what is painted is exactly the mask that is sent.
  const r = Math.floor(Math.max(canvas.width, canvas.height) / 32);
  const ctx = inpaint.mask.getContext("2d");
  ctx.fillStyle = "rgba(230, 40, 40, 0.65)";
  const steps = Math.max(1, Math.ceil(2 * Math.hypot(x - from.x, y - from.y)));
  for (let i = 0; i <= steps; i++) {
    const px = Math.floor(from.x + ((x - from.x) * i) / steps) - r;
    const py = Math.floor(from.y + ((y - from.y) * i) / steps) - r;
    ctx.clearRect(px, py, 2 * r + 1, 2 * r + 1);
    ctx.fillRect(px, py, 2 * r + 1, 2 * r + 1);
  }
  redrawInpaint();
}

// The server wants a 1-band mask: encode the painted overlay as an 8-bit greyscale PNG.
async function drawnMask() {
  const canvas = inpaint.mask;
  if (!inpaint.bitmap) throw new ApiError("upload a mask or paint one on a PNG image", "ip-mask");
  const { width, height } = canvas;
  const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  const raw = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) raw[y * (width + 1) + 1 + x] = rgba[(y * width + x) * 4 + 3] > 0 ? 255 : 0;
  }
  const zlib = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
  const header = new Uint8Array(13);
  new DataView(header.buffer).setUint32(0, width);
  new DataView(header.buffer).setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8);
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header), chunk("IDAT", zlib), chunk("IEND", new Uint8Array())];
  return new Blob(parts, { type: "image/png" });
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function crc32(bytes) {
  let crc = -1;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ -1) >>> 0;
}

// --- start ----------------------------------------------------------------------------------------
async function loadModel() {
  try {
    state.model = await json(await api("/v1/model"));
  } catch (error) {
    $("model-info").textContent = error.message;
    return;
  }
  const m = state.model;
  $("model-info").textContent = `model ${m.name}${m.version ? " (" + m.version + ")" : ""}, ${m.default_size} px`;
  $("token-box").hidden = !state.token;
  $("size").placeholder = String(m.default_size);
  $("size").step = String(m.size_multiple);
  $("size").min = String(m.size_multiple);
  const select = $("scheduler");
  for (const name of m.schedulers) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const info = m.tasks[tab.dataset.task];
    tab.classList.toggle("off", Boolean(info && !info.available));
    if (info && !info.available) tab.title = info.reason;
  }
  showAvailability();
}

function init() {
  $("map").addEventListener("click", onMapClick);
  $("map").addEventListener("wheel", onWheel, { passive: false });
  $("map").addEventListener("pointerdown", onPointerDown);
  $("map").addEventListener("pointermove", onPointerMove);
  $("map").addEventListener("dblclick", () => setView(-180, -90, WORLD_WIDTH));
  for (const id of ["lat", "lon"]) $(id).addEventListener("input", () => updateMarker(null));
  const showCloud = () => {
    $("cloud").disabled = !$("cloud-known").checked;
    $("cloud-out").value = $("cloud-known").checked ? $("cloud").value + " %" : "unknown";
  };
  $("cloud").addEventListener("input", showCloud);
  $("cloud-known").addEventListener("change", showCloud);
  document.querySelectorAll("[role=tab]").forEach((tab) => tab.addEventListener("click", () => selectTask(tab.dataset.task)));
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  $("tp-frames").addEventListener("change", listFrames);
  $("ip-image").addEventListener("change", () => loadInpaintImage().catch(showError));
  $("ip-canvas").addEventListener("pointerdown", paint);
  $("ip-canvas").addEventListener("pointermove", paint);
  $("ip-clear").addEventListener("click", () => {
    inpaint.mask.getContext("2d").clearRect(0, 0, inpaint.mask.width, inpaint.mask.height);
    if (inpaint.bitmap) redrawInpaint();
  });
  $("token").value = state.token;
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("diffusionsat-token", state.token);
    loadModel();
  });
  // Leaving the page cancels its running job at once (otherwise the server cancels it once unpolled).
  window.addEventListener("pagehide", () => {
    if (!state.job) return;
    const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
    fetch("/v1/jobs/" + state.job, { method: "DELETE", keepalive: true, headers }).catch(() => null);
  });
  drawMap().catch((error) => { $("place-readout").textContent = "map unavailable: " + error.message; });
  loadModel();
  selectTask("generate");
}

init();
