// corgigan's explore page: plain JavaScript, talking only to the server that served it (see serve.py).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,            // /api/info
  latent: null,          // id of the projected photo, once there is one
  latentDone: null,      // id of the photo whose projection has finished
  busy: false,           // one image request at a time: sliders move faster than the CPU draws
  pending: false,        // inputs changed while busy: draw again when the current request ends
  pendingForce: false,
  shown: "",             // query of the image on screen
  objectUrl: null,
  grid: null,            // {start, count, cols} of the grid on screen
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text, done) {
  const el = $("project-status");
  el.textContent = text;
  el.dataset.state = done ? "done" : "";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// fetch, turning a failed request or a JSON {"error": ...} answer into an Error with that message.
async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error(`the server did not answer (${e.message}); is corgigan serve still running?`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error) message = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function seedOf(id) {
  const max = state.info ? state.info.limits.max_seed : 4294967295;
  const value = Math.max(0, Math.min(max, Math.floor(Number($(id).value) || 0)));
  $(id).value = value;
  return value;
}

function viewQuery() {
  const q = new URLSearchParams();
  if ($("source-photo").checked && state.latent) q.set("latent", state.latent);
  else q.set("seed", seedOf("seed"));
  q.set("psi", $("psi").value);
  if ($("mix-on").checked) {
    q.set("mix", seedOf("mix-seed"));
    q.set("cutoff", $("cutoff").value);
  }
  for (const d of state.info.directions) {
    const value = $(`dir-${d.index}`).value;
    if (Number(value) !== 0) q.set(`d${d.index}`, value);
  }
  return q.toString();
}

// Draw the image the controls describe. `force`: draw even if the query is unchanged (a photo's latent
// changes while its projection runs).
async function render(force) {
  if (!state.info) return;
  const query = viewQuery();
  if (!force && query === state.shown) return;
  if (state.busy) {
    state.pending = true;
    state.pendingForce = state.pendingForce || Boolean(force);
    return;
  }
  state.busy = true;
  const view = $("view");
  const finalPhoto = state.latent !== null && state.latentDone === state.latent && query.includes("latent=");
  view.dataset.state = "loading";
  const t0 = performance.now();
  try {
    const blob = await (await api(`/api/image?${query}`)).blob();
    const url = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => {
      view.onload = resolve;
      view.onerror = () => reject(new Error("the image did not decode"));
      view.src = url;
    });
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = url;
    state.shown = query;
    view.dataset.query = query;
    if (finalPhoto) view.dataset.projection = state.latent;
    $("download").href = `/api/image?${query}`;
    const ms = performance.now() - t0;
    $("view-status").textContent = `${state.info.resolution} px in ${ms.toFixed(0)} ms`;
    view.dataset.state = "ready";
  } catch (e) {
    view.dataset.state = "error";
    showError(e.message);
  } finally {
    state.busy = false;
    if (state.pending) {
      const again = state.pendingForce;
      state.pending = false;
      state.pendingForce = false;
      render(again);
    }
  }
}

async function drawGrid() {
  const cap = state.info.limits.grid;
  const count = Math.max(1, Math.min(cap, Math.floor(Number($("grid-count").value) || 1)));
  $("grid-count").value = count;
  const start = seedOf("grid-start");
  const cols = Math.min(count, 8);
  const q = new URLSearchParams({ start, count, cols, psi: $("psi").value });
  const img = $("grid");
  img.dataset.state = "loading";
  try {
    const blob = await (await api(`/api/grid?${q}`)).blob();
    img.src = URL.createObjectURL(blob);
    state.grid = { start, count, cols };
    img.dataset.state = "ready";
  } catch (e) {
    img.dataset.state = "error";
    showError(e.message);
  }
}

function pickFromGrid(event) {
  if (!state.grid) return;
  const rect = $("grid").getBoundingClientRect();
  const tile = rect.width / state.grid.cols;
  const col = Math.floor((event.clientX - rect.left) / tile);
  const row = Math.floor((event.clientY - rect.top) / tile);
  const index = row * state.grid.cols + col;
  if (col < 0 || col >= state.grid.cols || index < 0 || index >= state.grid.count) return;
  $("seed").value = state.grid.start + index;
  $("source-seed").checked = true;
  render();
}

async function projectPhoto() {
  clearError();
  const file = $("upload").files[0];
  if (!file) {
    showError("choose a photo first");
    return;
  }
  const limits = state.info.limits;
  if (file.size > limits.max_upload_bytes) {
    showError(`the photo is ${(file.size / 2 ** 20).toFixed(1)} MB; this server takes at most ` +
              `${(limits.max_upload_bytes / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  const steps = Math.max(1, Math.min(limits.max_steps, Math.floor(Number($("steps").value) || 1)));
  $("steps").value = steps;
  const q = new URLSearchParams({ steps, space: $("space").value });
  $("project-btn").disabled = true;
  setStatus("uploading…");
  try {
    const answer = await (await api(`/api/project?${q}`, {
      method: "POST",
      headers: { "X-Corgigan": "1", "Content-Type": file.type || "application/octet-stream" },
      body: file,
    })).json();
    state.latent = answer.latent;
    showAsFound();
    $("source-photo").disabled = false;
    $("source-photo").checked = true;
    $("target").src = `/api/target?id=${answer.latent}`;
    $("target").hidden = false;
    $("download-latent").href = `/api/latent?id=${answer.latent}`;
    await follow(answer.job, answer.latent);
  } catch (e) {
    setStatus("");
    showError(e.message);
  } finally {
    $("project-btn").disabled = false;
  }
}

// A new photo is shown as the projection finds it: no truncation, mixing or direction moves.
function showAsFound() {
  $("psi").value = 1;
  $("psi-value").textContent = "1.00";
  $("mix-on").checked = false;
  for (const d of state.info.directions) {
    $(`dir-${d.index}`).value = 0;
    $(`dir-${d.index}-value`).textContent = "0";
  }
}

// Poll a projection, showing its latent as it improves, until it ends.
async function follow(job, latent) {
  for (;;) {
    const j = await (await api(`/api/job?id=${job}`)).json();
    if (j.state === "error") throw new Error(j.error);
    if (j.state === "done") {
      state.latentDone = latent;
      const e = j.errors;
      setStatus(`done: ${j.steps} steps in ${j.space.toUpperCase()}, ${j.seconds} s; ` +
                `MSE ${e.mse.toFixed(4)}, PSNR ${e.psnr.toFixed(1)} dB`, true);
      $("download-latent").hidden = false;
      render(true);
      return;
    }
    setStatus(`${j.state}: step ${j.step} of ${j.steps}`);
    if (state.latent === latent && $("source-photo").checked) render(true);
    await sleep(400);
  }
}

function buildDirections(directions) {
  const box = $("directions");
  const max = state.info.limits.max_sigmas;
  for (const d of directions) {
    const row = document.createElement("div");
    row.className = "direction";
    const label = document.createElement("label");
    label.htmlFor = `dir-${d.index}`;
    label.textContent = `${d.name} (layers ${d.layers[0]}–${d.layers[1] - 1}) `;
    const out = document.createElement("output");
    out.id = `dir-${d.index}-value`;
    out.textContent = "0";
    label.append(out);
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", id: `dir-${d.index}`, min: -max, max, step: 0.1, value: 0 });
    slider.addEventListener("input", () => {
      out.textContent = Number(slider.value).toFixed(1);
      render();
    });
    row.append(label, slider);
    box.append(row);
  }
  $("directions-box").hidden = directions.length === 0;
}

async function start() {
  try {
    state.info = await (await api("/api/info")).json();
  } catch (e) {
    showError(`cannot read the model: ${e.message}`);
    return;
  }
  const info = state.info;
  $("model-info").textContent = `${info.checkpoint}: ${info.resolution} px, ${info.num_ws} ws of ` +
    `${info.w_dim}, kimg ${Number(Number(info.kimg).toFixed(3))}` + (info.detector ? ", dog detector" : "");
  const cutoff = $("cutoff");
  cutoff.max = info.num_ws;
  cutoff.value = Math.floor(info.num_ws / 2);
  $("cutoff-value").textContent = cutoff.value;
  $("steps").max = info.limits.max_steps;
  $("steps").value = info.limits.default_steps;
  $("grid-count").max = info.limits.grid;
  $("grid-count").value = Math.min(8, info.limits.grid);
  buildDirections(info.directions);

  $("psi").addEventListener("input", () => {
    $("psi-value").textContent = Number($("psi").value).toFixed(2);
    render();
  });
  cutoff.addEventListener("input", () => {
    $("cutoff-value").textContent = cutoff.value;
    render();
  });
  for (const id of ["seed", "mix-seed", "mix-on", "source-seed", "source-photo"]) {
    $(id).addEventListener("change", () => render());
  }
  $("seed-random").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 100000);
    $("source-seed").checked = true;
    render();
  });
  $("directions-reset").addEventListener("click", () => {
    for (const d of info.directions) {
      $(`dir-${d.index}`).value = 0;
      $(`dir-${d.index}-value`).textContent = "0";
    }
    render();
  });
  $("grid-refresh").addEventListener("click", drawGrid);
  $("grid").addEventListener("click", pickFromGrid);
  $("project-btn").addEventListener("click", projectPhoto);
  await render();
  await drawGrid();
}

document.addEventListener("DOMContentLoaded", start);
