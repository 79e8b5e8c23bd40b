// The icv playground: a client of the server's HTTP API, nothing more.
// Columns: the prompt unsteered and at several scales of the chosen mix of vectors, one
// streamed request per column, sent together so that the server batches them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { settings: null, controller: null, shared: null };
const KEY_ITEM = "icv-api-key";

// -- talking to the server ----------------------------------------------------------

function errorText(body, response) {
  return (body && body.error && body.error.message) || `${response.status} ${response.statusText}`;
}

// The server's API key, if it has one: asked once, kept for this tab only, sent on every call.
function withKey(options = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  if (!key) return options;
  return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } };
}

class KeyNeeded extends Error {}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, withKey(options));
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error(`cannot reach the server (${error.message})`);
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_ITEM);
    askForKey();
    const body = await response.json().catch(() => null);
    throw new KeyNeeded(errorText(body, response));
  }
  return response;
}

async function api(path, options = {}) {
  const response = await call(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(body, response));
  return body;
}

function askForKey() {
  $("key-box").hidden = false;
  $("api-key").focus();
}

function useKey() {
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("api-key").value = "";
  $("key-box").hidden = true;
  if (!state.settings) start();
}

function postJSON(body, signal) {
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal };
}

function postFile(file) {
  return { method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file };
}

// A download link fetches with the key, then saves what came (a plain link could not send it).
async function download(event) {
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const response = await call(link.href);
    if (!response.ok) throw new Error(errorText(await response.json().catch(() => null), response));
    const saved = document.createElement("a");
    saved.href = URL.createObjectURL(await response.blob());
    saved.download = link.dataset.filename;
    saved.click();
    setTimeout(() => URL.revokeObjectURL(saved.href), 60_000);
  } catch (error) {
    showBanner(`download failed: ${error.message}`);
  }
}

function downloadLinks(links, name) {
  for (const [link, format] of links) {
    link.href = `/v1/vectors/${encodeURIComponent(name)}/download?format=${format}`;
    link.dataset.filename = `${name}.${format}`;
  }
}

function say(element, text, kind = "") {
  element.textContent = text;
  element.className = `message ${kind}`;
}

function tooBig(file) {
  const limit = state.settings.limits.max_upload_bytes;
  if (file.size <= limit) return null;
  return `${file.name} is ${megabytes(file.size)}: this server takes files up to ${megabytes(limit)}`;
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

// -- vectors ------------------------------------------------------------------------

function vectorRows() {
  return [...$("vectors").querySelectorAll(".vector")];
}

function chosenVectors() {
  return vectorRows().filter((row) => row.querySelector("input[type=checkbox]").checked).map((row) => {
    const text = row.querySelector(".strength").value.trim();
    const strength = Number(text);
    if (text === "" || !Number.isFinite(strength)) {
      throw new Error(`the strength of '${row.dataset.name}' is not a number`);
    }
    return { vector: row.dataset.name, strength };
  });
}

function sliderRange(described) {
  const mark = Math.abs(described.default_strength) || 1;
  const top = Math.min(4 * mark, state.settings.limits.max_strength);
  return { min: -top, max: top, step: top / 400, mark: described.default_strength };
}

function vectorRow(described, choice) {
  const row = $("vector-row").content.firstElementChild.cloneNode(true);
  const name = described.name;
  row.dataset.name = name;
  row.querySelector(".name").textContent = name;
  const box = row.querySelector("input[type=checkbox]");
  const slider = row.querySelector(".slider");
  const number = row.querySelector(".strength");
  const ticks = row.querySelector("datalist");
  if (described.missing) {
    row.classList.add("missing");
    slider.hidden = true;
    row.querySelector(".files").hidden = true;
    row.querySelector(".default").textContent = "not loaded on this server";
  } else {
    const range = sliderRange(described);
    Object.assign(slider, { min: range.min, max: range.max, step: range.step });
    ticks.id = `ticks-${name}`;
    ticks.append(new Option("", range.mark), new Option("", 0));
    slider.setAttribute("list", ticks.id);
    slider.setAttribute("aria-label", `strength of ${name}`);
    const which = described.recommended_strength === null ? "default" : "recommended";
    row.querySelector(".default").textContent = `${which} ${round(range.mark)}`;
    downloadLinks([[row.querySelector("a.safetensors"), "safetensors"], [row.querySelector("a.gguf"), "gguf"]], name);
    for (const link of row.querySelectorAll("a")) link.addEventListener("click", download);
  }
  const strength = choice ? choice.strength : described.default_strength;
  number.value = round(strength);
  slider.value = strength;
  box.checked = Boolean(choice && choice.checked);
  slider.addEventListener("input", () => {
    number.value = round(Number(slider.value));
    box.checked = true;
  });
  number.addEventListener("input", () => {
    slider.value = number.value;
    box.checked = true;
  });
  return row;
}

function round(value) {
  return Number(value.toPrecision(4));
}

async function loadVectors(extra = []) {
  const choices = new Map(vectorRows().map((row) => [row.dataset.name, {
    checked: row.querySelector("input[type=checkbox]").checked,
    strength: Number(row.querySelector(".strength").value),
  }]));
  for (const item of extra) choices.set(item.name, item);
  const listed = await api("/v1/vectors");
  const known = new Set(listed.data.map((v) => v.name));
  const missing = [...choices].filter(([name, c]) => c.missing && !known.has(name))
    .map(([name]) => ({ name, missing: true, default_strength: 0, recommended_strength: null }));
  const rows = [...listed.data, ...missing].map((v) => vectorRow(v, choices.get(v.name)));
  $("vectors").replaceChildren(...rows);
  $("no-vectors").hidden = rows.length > 0;
  const conditions = listed.conditions || [];
  $("conditions").replaceChildren(...conditions.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.label = `layer ${c.layer}, score ${c.comparison} ${round(c.threshold)}`;
    return option;
  }));
  $("when-field").hidden = conditions.length === 0 && !$("when").value;
}

async function uploadVector(file) {
  const message = $("vector-message");
  const problem = tooBig(file);
  if (problem) return say(message, problem, "error");
  const name = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[._-]+/, "");
  say(message, `loading ${file.name}\u2026`, "busy");
  try {
    const query = new URLSearchParams({ name: name || "uploaded", filename: file.name });
    const made = await api(`/v1/vectors/upload?${query}`, postFile(file));
    await loadVectors();
    say(message, `loaded '${made.name}' from ${file.name}`, "ok");
  } catch (error) {
    say(message, error.message, "error");
  }
}

// -- the prompt ---------------------------------------------------------------------

function promptFormat() {
  return document.querySelector("input[name=format]:checked").value;
}

function promptText() {
  const text = $("prompt").value;
  if (promptFormat() !== "paraphrase") return text;
  const around = state.settings.prompt_formats.paraphrase;
  return around.before + text + around.after;
}

function showPrompt() {
  $("prompt-sent").textContent = promptFormat() === "chat" ? `(a user turn) ${$("prompt").value}` : promptText();
}

// -- generating ---------------------------------------------------------------------

function scales() {
  const parts = $("scales").value.split(",").map((s) => s.trim()).filter(Boolean);
  const values = parts.map(Number);
  if (!values.length || values.length > 5 || values.some((v) => !Number.isFinite(v))) {
    throw new Error("scales of the mix: one to five numbers separated by commas, e.g. 0.5, 1, 2");
  }
  return values;
}

function requestFor(steering) {
  const chat = promptFormat() === "chat";
  const body = chat ? { messages: [{ role: "user", content: $("prompt").value }] } : { prompt: promptText() };
  if (promptFormat() === "paraphrase") body.stop = state.settings.prompt_formats.paraphrase.stop;
  body.max_tokens = Number($("max-tokens").value);
  body.temperature = Number($("temperature").value);
  body.stream = true;
  if (steering) {
    body.steering = steering;
    body.steering_positions = $("positions").value;
    const when = $("when").value.trim();
    if (when) body.steering_when = when;
  }
  return { path: chat ? "/v1/chat/completions" : "/v1/completions", body };
}

function plan() {
  const mix = chosenVectors();
  const columns = [{ title: "unsteered", steering: null }];
  if (mix.length) {
    for (const scale of scales()) {
      const steering = mix.map((t) => ({ vector: t.vector, strength: round(t.strength * scale) }));
      columns.push({ title: `\u00d7 ${scale}`, steering });
    }
  }
  return columns.map((c) => ({ ...c, ...requestFor(c.steering) }));
}

function columnView(planned) {
  const view = $("column").content.firstElementChild.cloneNode(true);
  view.querySelector("h3").textContent = planned.title;
  view.querySelector(".steering").textContent = planned.steering
    ? planned.steering.map((t) => `${t.vector} ${t.strength}`).join(" + ") : "no steering";
  view.querySelector(".request pre").textContent = `POST ${planned.path}\n${JSON.stringify(planned.body, null, 1)}`;
  view.dataset.path = planned.path;
  view.dataset.body = JSON.stringify(planned.body);
  view.dataset.state = "waiting";
  return view;
}

function settle(view, stateName, note) {
  view.dataset.state = stateName;
  const end = view.querySelector(".end");
  end.textContent = note;
  end.className = `end ${stateName}`;
}

async function stream(view, planned, signal) {
  const response = await call(planned.path, postJSON(planned.body, signal));
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error(errorText(body, response));
  }
  const text = view.querySelector(".text");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  view.dataset.state = "streaming";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the server closed the stream before it ended");
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        text.textContent += choice.delta ? (choice.delta.content || "") : choice.text;
        if (choice.steering_decision) showDecision(view, choice.steering_decision);
        if (choice.finish_reason) {
          const why = choice.finish_reason === "length" ? "max tokens reached" : "finished";
          settle(view, "done", why);
        }
      }
    }
  }
}

// With steering_when: whether the condition fired for the prompt (the response's steering_decision).
function decisionNote(decision) {
  if (!decision) return "";
  const scores = Object.entries(decision.scores || {})
    .map(([name, score]) => `${name} ${Number(score).toFixed(3)}`).join(", ");
  const verdict = decision.steered ? "condition fired: steered" : "condition did not fire: unsteered";
  return scores ? `${verdict} (score ${scores})` : verdict;
}

function showDecision(view, decision) {
  const shown = view.querySelector(".decision");
  shown.textContent = decisionNote(decision);
  shown.hidden = !decision;
  view.dataset.decision = decision.steered ? "fired" : "rejected";
}

async function runColumn(view, planned, signal) {
  try {
    await stream(view, planned, signal);
  } catch (error) {
    if (error.name === "AbortError") settle(view, "stopped", "stopped");
    else settle(view, "failed", error.message);
  }
}

async function generate() {
  stop();
  hideBanner();
  let columns;
  try {
    columns = plan();
  } catch (error) {
    return showBanner(error.message);
  }
  remember(columns);
  const controller = new AbortController();
  state.controller = controller;
  const views = columns.map(columnView);
  $("columns").replaceChildren(...views);
  running(true);
  // Every column's request is sent before any is awaited: the server batches them together.
  const runs = columns.map((planned, i) => runColumn(views[i], planned, controller.signal));
  await Promise.all(runs);
  if (state.controller === controller) {
    state.controller = null;
    running(false);
  }
}

function stop() {
  if (state.controller) state.controller.abort();
  state.controller = null;
  running(false);
}

function running(on) {
  $("stop").disabled = !on;
  $("status").textContent = on ? "generating\u2026" : "";
}

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

// -- a shareable address: the view's settings in the URL's fragment ----------------

function remember(columns) {
  const view = {
    format: promptFormat(),
    prompt: $("prompt").value,
    vectors: chosenVectors().map((t) => [t.vector, t.strength]),
    scales: $("scales").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    positions: $("positions").value,
    when: $("when").value,
  };
  history.replaceState(null, "", `#${encodeURIComponent(JSON.stringify(view))}`);
  return columns;
}

function restore() {
  if (location.hash.length < 2) return [];
  let view;
  try {
    view = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  } catch (error) {
    showBanner("this address's settings could not be read; the defaults are shown");
    return [];
  }
  const radio = document.querySelector(`input[name=format][value="${CSS.escape(String(view.format))}"]`);
  if (radio) radio.checked = true;
  const fields = { prompt: "prompt", scales: "scales", max_tokens: "max-tokens", temperature: "temperature",
    positions: "positions", when: "when" };
  for (const [key, id] of Object.entries(fields)) if (view[key] !== undefined) $(id).value = view[key];
  const vectors = Array.isArray(view.vectors) ? view.vectors : [];
  return vectors.filter((v) => Array.isArray(v) && typeof v[0] === "string")
    .map(([name, strength]) => ({ name, strength: Number(strength), checked: true, missing: true }));
}

// -- building a vector from pairs ---------------------------------------------------

function addPair(source = "", target = "") {
  const row = $("pair-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".source").value = source;
  row.querySelector(".target").value = target;
  row.querySelector(".remove").addEventListener("click", () => row.remove());
  $("pairs").tBodies[0].append(row);
}

function typedPairs() {
  return [...$("pairs").tBodies[0].rows]
    .map((row) => ({ source: row.querySelector(".source").value, target: row.querySelector(".target").value }))
    .filter((p) => p.source.trim() || p.target.trim());
}

async function loadPairs(file) {
  const message = $("build-message");
  const problem = tooBig(file);
  if (problem) return say(message, problem, "error");
  try {
    const read = await api(`/v1/demos/parse?${new URLSearchParams({ filename: file.name })}`, postFile(file));
    $("pairs").tBodies[0].replaceChildren();
    for (const pair of read.data) addPair(pair.source, pair.target);
    say(message, `read ${read.data.length} pairs from ${file.name}`, "ok");
  } catch (error) {
    say(message, error.message, "error");
  }
}

async function extractVector() {
  const message = $("build-message");
  const pairs = typedPairs();
  if (!pairs.length) return say(message, "type at least one pair (a source and its target)", "error");
  const name = $("new-name").value.trim();
  $("extract").disabled = true;
  $("downloads").hidden = true;
  say(message, `extracting '${name}' from ${pairs.length} pairs\u2026`, "busy");
  try {
    const made = await api("/v1/vectors/extract", postJSON({ name, pairs }));
    await loadVectors();
    downloadLinks([[$("download-safetensors"), "safetensors"], [$("download-gguf"), "gguf"]], made.name);
    $("downloads").hidden = false;
    say(message, `'${made.name}' is ready (${made.metadata.num_demos} pairs, method ${made.metadata.method}); ` +
      "choose it above to steer with it", "ok");
  } catch (error) {
    say(message, error.message, "error");
  } finally {
    $("extract").disabled = false;
  }
}

// -- start --------------------------------------------------------------------------

function fileInput(id, handle) {
  $(id).addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) await handle(file);
    event.target.value = "";
  });
}

function wire() {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("add-pair").addEventListener("click", () => addPair());
  $("extract").addEventListener("click", extractVector);
  $("use-key").addEventListener("click", useKey);
  $("api-key").addEventListener("keydown", (event) => { if (event.key === "Enter") useKey(); });
  for (const link of [$("download-safetensors"), $("download-gguf")]) link.addEventListener("click", download);
  fileInput("vector-file", uploadVector);
  fileInput("pairs-file", loadPairs);
  for (const input of document.querySelectorAll("input[name=format], #prompt")) {
    input.addEventListener("input", showPrompt);
  }
  addPair();
  addPair();
}

async function start() {
  hideBanner();
  try {
    state.settings = await api("/v1/playground");
    $("model").textContent = state.settings.model;
    document.querySelector("input[name=format][value=chat]").disabled = !state.settings.chat;
    await loadVectors(restore());
    showPrompt();
    document.body.dataset.ready = "true";
  } catch (error) {
    state.settings = null;
    $("model").textContent = "";
    if (!(error instanceof KeyNeeded)) showBanner(`the page could not start: ${error.message}`);
  }
}

wire();
start();
