// segserve's try-it page: one file, no build step, no third-party code.
//
// Memory: the picked File is sent as the request body as it is (never read into
// JavaScript) and shown by one <img> from an object URL, so a big photo is decoded
// once, by the browser, for display. The hover map is the label PNG at the model's
// size (mask_size=model), decoded into a small canvas; the overlay is either the
// server's `overlay` output or that label map coloured in a canvas stretched over
// the photo by CSS.
"use strict";

const KEY_STORAGE = "segserve-api-key";
const $ = (id) => document.getElementById(id);

const state = {
  file: null,
  photoUrl: null,
  overlayUrl: null,
  // null: not known yet; false once the server answered 422 to outputs=overlay.
  overlaySupported: null,
  labels: null, // Uint8Array of class ids, mask width x height
  maskWidth: 0,
  maskHeight: 0,
  names: new Map(), // class id -> name, from the answer's class table
  overlayShown: true,
};

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// Every call to the API carries the key when one was entered.
function apiFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(path, { ...options, headers });
}

// The API's own message for a failed answer: {"error": {"code", "message"}}.
async function errorText(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && error.message) return `${response.status} ${error.code}: ${error.message}`;
  } catch (e) {
    // not JSON: a proxy's page or a plain-text answer, shown as it came
  }
  return `${response.status} ${response.statusText}: ${text.slice(0, 300) || "(empty body)"}`;
}

function setPhase(phase) {
  document.body.dataset.state = phase; // "busy" | "done" | "error": what tests wait on
}

function showError(element, message) {
  element.textContent = message;
  element.hidden = false;
}

// A distinct colour per class id (golden-angle hues), the same in the canvas and legend.
function colour(id) {
  const hue = (id * 137.508) % 360;
  const s = 0.7;
  const l = id % 2 ? 0.45 : 0.6;
  const k = (n) => (n + hue / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
  return [Math.round(255 * f(0)), Math.round(255 * f(8)), Math.round(255 * f(4))];
}

function cssColour(id) {
  const [r, g, b] = colour(id);
  return `rgb(${r}, ${g}, ${b})`;
}

function definitionList(element, rows) {
  element.replaceChildren();
  for (const [term, value, cls] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (cls) dd.className = cls;
    element.append(dt, dd);
  }
}

const ms = (value) => (typeof value === "number" ? value.toFixed(1) : "–");

// ------------------------------------------------------------------ models panel

async function loadModels() {
  const panelError = $("models-error");
  panelError.hidden = true;
  let listing;
  try {
    const response = await apiFetch("v1/models");
    if (!response.ok) {
      showError(panelError, `models: ${await errorText(response)}`);
      return;
    }
    listing = await response.json();
  } catch (e) {
    showError(panelError, `models: cannot reach the server (${e.message})`);
    return;
  }
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(new Option("auto (by budget)", "auto"));
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const model of listing.models) {
    const isDefault = model.name === listing.default;
    select.append(new Option(isDefault ? `${model.name} (default)` : model.name, model.name));
    const routing = model.routing || {};
    const service = routing.service;
    const fit = service && service.samples
      ? `${service.fixed_ms} ms + ${service.ms_per_megapixel} ms/MP (±${service.residual_std_ms}, ` +
        `${service.samples} samples); 512×512: ${routing.predicted_ms_512x512} ms`
      : routing.note || "no samples yet";
    const device = model.device
      ? `${model.device.kind}${model.device.cpu_threads ? ` (${model.device.cpu_threads} threads)` : ""}`
      : "–";
    const replicas = model.replicas && Object.keys(model.replicas).length
      ? Object.entries(model.replicas).map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ")
      : String(model.num_replicas ?? "–");
    const weights = model.weights || model.weights_policy || "?";
    const row = body.insertRow();
    row.dataset.model = model.name;
    const cells = [
      (isDefault ? "★ " : "") + model.name + (model.ready === false ? " (not ready)" : ""),
      model.framework,
      weights,
      device,
      replicas,
      fit,
    ];
    cells.forEach((text, i) => {
      const cell = row.insertCell();
      cell.textContent = text ?? "–";
      if (i === 2 && weights === "random") cell.className = "random";
    });
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

// ------------------------------------------------------------------ segmentation

function requestUrl(withOverlay) {
  const params = new URLSearchParams();
  params.set("model", $("model").value);
  params.set("outputs", withOverlay ? "classes,mask,overlay" : "classes,mask");
  params.set("mask_size", "model"); // the hover map's memory is bounded by the model's size
  const budget = Number($("budget").value);
  if (budget > 0) {
    params.set("budget_ms", String(budget));
    if ($("strict").checked) params.set("strict", "true");
  }
  return `v1/segment?${params}`;
}

async function post(withOverlay) {
  return apiFetch(requestUrl(withOverlay), {
    method: "POST",
    // The File itself: the browser streams it, the page never holds its bytes.
    body: state.file,
    headers: { "Content-Type": state.file.type || "application/octet-stream", Accept: "application/json" },
  });
}

async function segment() {
  if (!state.file) return;
  $("error").hidden = true;
  $("send").disabled = true;
  $("status").textContent = `Segmenting ${state.file.name} …`;
  setPhase("busy");
  const started = performance.now();
  try {
    const tryOverlay = state.overlaySupported !== false;
    let response = await post(tryOverlay);
    if (tryOverlay && response.status === 422) {
      const message = await errorText(response.clone());
      if (message.includes("overlay")) {
        state.overlaySupported = false; // this server has no overlay output: draw it here
        response = await post(false);
      }
    }
    if (!response.ok) {
      showFailure(await errorText(response));
      return;
    }
    const body = await response.json();
    if (tryOverlay) state.overlaySupported = Boolean(body.overlay);
    await show(body, performance.now() - started);
    $("status").textContent = `${state.file.name}: ${body.width}×${body.height}, answered in ${ms(performance.now() - started)} ms`;
    setPhase("done");
  } catch (e) {
    showFailure(`cannot reach the server: ${e.message}`);
  } finally {
    $("send").disabled = false;
  }
}

function showFailure(message) {
  showError($("error"), message);
  $("status").textContent = "The request failed.";
  $("details").hidden = true;
  $("stage").hidden = true;
  $("opacity-row").hidden = true;
  $("weights-warning").hidden = true;
  setPhase("error");
}

async function decodeLabels(mask) {
  const bytes = Uint8Array.from(atob(mask.data), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const labels = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < labels.length; i++) labels[i] = rgba[4 * i]; // grey: R = G = B = id
  return { labels, width: canvas.width, height: canvas.height };
}

function drawLabels() {
  const canvas = $("overlay-canvas");
  canvas.width = state.maskWidth;
  canvas.height = state.maskHeight;
  const context = canvas.getContext("2d");
  const image = context.createImageData(state.maskWidth, state.maskHeight);
  const colours = new Map();
  for (let i = 0; i < state.labels.length; i++) {
    const id = state.labels[i];
    let rgb = colours.get(id);
    if (!rgb) colours.set(id, (rgb = colour(id)));
    image.data.set(rgb, 4 * i);
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

async function show(body, roundTripMs) {
  // Classes with ids above 255 come in a 16-bit PNG, which canvases reduce to 8 bits.
  const eightBit = !(body.classes || []).some((c) => c.id > 255);
  state.names = new Map((body.classes || []).map((c) => [c.id, c.name]));
  state.labels = null;
  if (body.mask && eightBit) {
    const decoded = await decodeLabels(body.mask);
    state.labels = decoded.labels;
    state.maskWidth = decoded.width;
    state.maskHeight = decoded.height;
  }
  const overlayImage = $("overlay-image");
  const canvas = $("overlay-canvas");
  if (state.overlayUrl) URL.revokeObjectURL(state.overlayUrl);
  state.overlayUrl = null;
  if (body.overlay && body.overlay.data) {
    const bytes = Uint8Array.from(atob(body.overlay.data), (c) => c.charCodeAt(0));
    const type = body.overlay.format === "jpeg" ? "image/jpeg" : "image/png";
    state.overlayUrl = URL.createObjectURL(new Blob([bytes], { type }));
    overlayImage.src = state.overlayUrl;
    overlayImage.hidden = false;
    canvas.hidden = true;
    overlayImage.dataset.source = "server";
  } else if (state.labels) {
    drawLabels();
    overlayImage.hidden = true;
    canvas.hidden = false;
    canvas.dataset.source = "labels";
  }
  $("stage").hidden = false;
  $("stage").style.aspectRatio = `${body.width} / ${body.height}`;
  $("opacity-row").hidden = false;
  applyOpacity();

  const warning = $("weights-warning");
  warning.hidden = body.weights !== "random";
  warning.textContent = `weights: random. ${body.warning || ""} The classes below are not a real segmentation.`;

  const budget = body.budget || {};
  definitionList($("choice"), [
    ["model", body.model],
    ["weights", body.weights, body.weights === "random" ? "random" : ""],
    ["chosen by", budget.chosen_by || "–"],
    ["budget", budget.budget_ms == null ? "none" : `${ms(budget.budget_ms)} ms`],
    ["predicted", `${ms(budget.predicted_ms)} ms`],
    ["actual", `${ms(body.timings_ms.total)} ms`],
    ["budget met", budget.met == null ? "–" : budget.met ? "yes" : "no"],
    ["image", `${body.width}×${body.height}, processed at ${body.processed.width}×${body.processed.height}`],
    ["batch size", String(body.batch_size)],
  ]);
  const t = body.timings_ms;
  definitionList($("timings"), [
    ["decode", ms(t.decode)],
    ["queue", ms(t.queue)],
    ["inference", ms(t.inference)],
    ["encode", ms(t.encode)],
    ["total (server)", ms(t.total)],
    ["round trip", ms(roundTripMs)],
  ]);
  const legend = $("legend").tBodies[0];
  legend.replaceChildren();
  for (const row of body.classes || []) {
    const tr = legend.insertRow();
    tr.dataset.classId = String(row.id);
    const swatch = tr.insertCell();
    swatch.className = "swatch";
    if (!body.overlay) {
      const span = document.createElement("span");
      span.style.background = cssColour(row.id);
      swatch.append(span);
    }
    tr.insertCell().textContent = row.name;
    tr.insertCell().textContent = String(row.id);
    tr.insertCell().textContent = `${(100 * row.fraction).toFixed(2)} %`;
  }
  $("hover").textContent = state.labels
    ? "Hover over the image to see each pixel's class."
    : "Hover is off for this answer (no 8-bit label map).";
  $("details").hidden = false;
}

function applyOpacity() {
  const value = state.overlayShown ? Number($("opacity").value) / 100 : 0;
  $("overlay-image").style.opacity = String(value);
  $("overlay-canvas").style.opacity = String(value);
  $("toggle").textContent = state.overlayShown ? "hide overlay" : "show overlay";
}

function onHover(event) {
  if (!state.labels) return;
  const rect = $("stage").getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * state.maskWidth);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * state.maskHeight);
  if (x < 0 || y < 0 || x >= state.maskWidth || y >= state.maskHeight) return;
  const id = state.labels[y * state.maskWidth + x];
  $("hover").textContent = `class: ${state.names.get(id) ?? "?"} (id ${id})`;
  for (const tr of $("legend").tBodies[0].rows) {
    tr.classList.toggle("hovered", tr.dataset.classId === String(id));
  }
}

// ------------------------------------------------------------------ wiring

function pick(file) {
  if (!file) return;
  state.file = file;
  $("file-name").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(file);
  const photo = $("photo");
  photo.hidden = false;
  photo.src = state.photoUrl;
  segment();
}

function init() {
  const key = $("api-key");
  key.value = apiKey();
  key.addEventListener("change", () => {
    if (key.value) sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  // A format the browser cannot show (TIFF in Chromium): the overlay alone, on white.
  $("photo").addEventListener("error", () => ($("photo").hidden = true));
  $("budget").addEventListener("input", () => {
    const v = Number($("budget").value);
    $("budget-value").textContent = v > 0 ? `${v} ms` : "none";
  });
  for (const id of ["model", "budget", "strict"]) $(id).addEventListener("change", segment);
  $("send").addEventListener("click", segment);
  $("opacity").addEventListener("input", applyOpacity);
  $("toggle").addEventListener("click", () => {
    state.overlayShown = !state.overlayShown;
    applyOpacity();
  });
  $("stage").addEventListener("mousemove", onHover);
  $("refresh-models").addEventListener("click", loadModels);
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
