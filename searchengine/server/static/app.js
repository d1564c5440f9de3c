// The searchengine web page: text search as you type, search by image, detail with closest
// texts and "more like this", filters by date, folder and camera. The search and its filters
// live in the page's URL (/?q=dog&after=2023-01-01), so a search can be bookmarked, shared and
// gone back to. Plain JavaScript, no dependencies; every text is set with textContent (never
// innerHTML), so file names and captions cannot inject markup.
"use strict";

const PAGE = 24;
const DEBOUNCE_MS = 250;
const $ = (id) => document.getElementById(id);
const FILTERS = ["after", "before", "folder", "camera", "sort"];  // control ids = query names

const state = {
  mode: null,      // "text" | "image" | "similar"
  query: "",       // text query
  file: null,      // File for image search
  mediaId: null,   // id for "more like this"
  offset: 0,
  controller: null,
  sequence: 0,
};

// -- HTTP -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    await signIn();
    return api(url, options);
  }
  let body = null;
  if ((response.headers.get("content-type") || "").includes("application/json")) {
    body = await response.json();
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.detail) || `HTTP ${response.status}`);
  }
  return body;
}

function signIn() {
  const dialog = $("login");
  return new Promise((resolve) => {
    const form = $("login-form");
    form.onsubmit = async (event) => {
      event.preventDefault();
      const response = await fetch("/api/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token").value }),
      });
      if (response.ok) {
        $("login-error").hidden = true;
        dialog.close();
        resolve();
      } else {
        $("login-error").textContent = "Wrong token.";
        $("login-error").hidden = false;
      }
    };
    if (!dialog.open) dialog.showModal();
  });
}

// -- searching --------------------------------------------------------------------------------

// The filters as query parameters, only those set (sort by score is the default).
function filterParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = $(name).value;
    if (value && !(name === "sort" && value === "score")) params.set(name, value);
  }
  return params;
}

function searchRequest(offset) {
  const filters = filterParams().toString();
  const page = `k=${PAGE}&offset=${offset}${filters ? "&" + filters : ""}`;
  if (state.mode === "text") {
    return [`/api/search?q=${encodeURIComponent(state.query)}&${page}`, {}];
  }
  if (state.mode === "similar") {
    return [`/api/similar/${state.mediaId}?${page}`, {}];
  }
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  return [`/api/search/image?${page}`, { method: "POST", body: form }];
}

async function run(append = false) {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const sequence = ++state.sequence;
  const offset = append ? state.offset + PAGE : 0;
  const [url, options] = searchRequest(offset);
  const started = performance.now();
  setStatus("Searching…");
  try {
    const result = await api(url, { ...options, signal: controller.signal });
    if (sequence !== state.sequence) return;  // a newer search has started
    state.offset = offset;
    showError(null);
    render(result.hits, append);
    if (state.mode === "similar") $("query-label").textContent = `Photos like ${basename(result.query)}`;
    const took = Math.round(performance.now() - started);
    const shown = $("results").children.length;
    const filtered = [...filterParams().keys()].some((name) => name !== "sort");
    // `matched`: how many photos passed the filters (an empty answer is not an error)
    const passed = filtered && typeof result.matched === "number"
      ? ` (filtered: ${result.matched} photo${result.matched === 1 ? "" : "s"} pass)` : "";
    setStatus(`${shown} result${shown === 1 ? "" : "s"} for ${describe(result.query)}` +
              `${passed || (filtered ? " (filtered)" : "")} · ${took} ms`);
    $("more").hidden = result.hits.length < PAGE;
  } catch (error) {
    if (error.name === "AbortError") return;
    if (sequence !== state.sequence) return;
    if (!append) render([], false);
    $("more").hidden = true;
    showError(error.message);
    setStatus("");
  }
}

function describe(query) {
  if (state.mode === "text") return `“${query}”`;
  if (state.mode === "similar") return `photos like ${basename(query)}`;
  return `the image ${query}`;
}

function searchText(text, push = false) {
  typed.cancel();
  state.mode = "text";
  state.query = text.trim();
  $("query-image").hidden = true;
  remember(push);
  if (!state.query) {
    if (state.controller) state.controller.abort();
    state.sequence++;
    render([], false);
    $("more").hidden = true;
    showError(null);
    loadStatus();
    return;
  }
  run();
}

function searchImage(file) {
  if (!file) return;
  typed.cancel();
  state.mode = "image";
  state.file = file;
  $("query").value = "";
  const preview = $("query-preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("query-label").textContent = `Photos like ${file.name || "your image"}`;
  $("query-image").hidden = false;
  remember(false);  // an upload has no URL: the page's URL keeps the filters only
  run();
}

function searchSimilar(hit, push = true) {
  typed.cancel();
  state.mode = "similar";
  state.mediaId = hit.id;
  $("query").value = "";
  $("query-preview").src = thumbnailUrl(hit.id, 128);
  $("query-label").textContent = hit.path ? `Photos like ${basename(hit.path)}` : "Photos like…";
  $("query-image").hidden = false;
  remember(push);
  run();
  window.scrollTo({ top: 0 });
}

// -- the URL ----------------------------------------------------------------------------------

// The page's URL for the current search and filters: /?q=…, /?like=ID, plus the filters set.
function pageUrl() {
  const params = new URLSearchParams();
  if (state.mode === "text" && state.query) params.set("q", state.query);
  if (state.mode === "similar") params.set("like", String(state.mediaId));
  for (const [name, value] of filterParams()) params.set(name, value);
  const search = params.toString();
  return search ? `/?${search}` : "/";
}

// Record the search in the URL: a new history entry for a new kind of search (so Back returns
// to the previous one), the same entry while a query is typed or a filter changed.
function remember(push) {
  const url = pageUrl();
  if (url === location.pathname + location.search) return;
  history[push ? "pushState" : "replaceState"](null, "", url);
}

// Set the controls from the URL and run the search it names (on load, and on Back/Forward).
function restore() {
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) setControl(name, params.get(name) || (name === "sort" ? "score" : ""));
  const like = params.get("like");
  if (like !== null && /^[0-9]{1,18}$/.test(like)) {
    searchSimilar({ id: Number(like), path: null }, false);
    return;
  }
  $("query").value = params.get("q") || "";
  searchText($("query").value);
}

// A select offers the value it is given even before (or without) the facets that list it.
function setControl(name, value) {
  const control = $(name);
  if (control.tagName === "SELECT" && value &&
      !Array.from(control.options).some((option) => option.value === value)) {
    control.append(new Option(value, value));
  }
  control.value = value;
}

function filtersChanged() {
  if (state.mode === "image" && state.file) {
    remember(false);
    run();
  } else if (state.mode === "similar") {
    remember(false);
    run();
  } else {
    searchText($("query").value);
  }
}

// -- rendering --------------------------------------------------------------------------------

const thumbnailUrl = (id, size = 256) => `/api/images/${id}/thumbnail?size=${size}`;
const basename = (path) => String(path).split(/[\\/]/).pop();

function render(hits, append) {
  const list = $("results");
  if (!append) list.replaceChildren();
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "card";
    const button = document.createElement("button");
    button.type = "button";
    button.title = hit.path;
    button.dataset.id = hit.id;
    const image = document.createElement("img");
    image.src = thumbnailUrl(hit.id);
    image.alt = basename(hit.path);
    image.loading = "lazy";
    image.decoding = "async";
    const caption = document.createElement("span");
    caption.className = "caption";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(rank, score);
    button.append(image, caption);
    button.addEventListener("click", () => openDetail(hit));
    item.append(button);
    list.append(item);
  }
}

async function openDetail(hit) {
  const dialog = $("detail");
  $("detail-title").textContent = basename(hit.path);
  $("detail-score").textContent = `rank ${hit.rank} · score ${hit.score.toFixed(4)}`;
  $("detail-image").src = thumbnailUrl(hit.id, 1024);
  $("detail-image").alt = basename(hit.path);
  $("detail-original").href = `/api/images/${hit.id}`;
  $("detail-meta").replaceChildren();
  $("detail-texts").replaceChildren(listItem("…", "muted"));
  $("more-like-this").onclick = () => { dialog.close(); searchSimilar(hit); };
  if (!dialog.open) dialog.showModal();
  loadInfo(hit.id);
  loadTexts(hit.id);
}

async function loadInfo(id) {
  try {
    const info = await api(`/api/images/${id}/info`);
    const rows = [
      ["Path", info.path],
      ["Size", `${info.width} × ${info.height} px · ${formatBytes(info.size)}`],
      ["Format", info.format],
      ["Taken", info.taken_at ? info.taken_at.replace("T", " ") : "—"],
      ["Camera", info.camera || "—"],
      ["Id", String(info.id)],
    ];
    const meta = $("detail-meta");
    meta.replaceChildren();
    for (const [name, value] of rows) {
      const term = document.createElement("dt");
      term.textContent = name;
      const description = document.createElement("dd");
      description.textContent = value;
      meta.append(term, description);
    }
  } catch (error) {
    const problem = document.createElement("dd");
    problem.className = "error";
    problem.textContent = error.message;
    $("detail-meta").replaceChildren(problem);
  }
}

async function loadTexts(id) {
  const list = $("detail-texts");
  try {
    const result = await api(`/api/lookup/${id}?k=5`);
    list.replaceChildren();
    for (const hit of result.hits) {
      const item = listItem(hit.text, "text");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      item.append(" ", score);
      list.append(item);
    }
    if (!result.hits.length) list.append(listItem("No texts indexed.", "muted"));
  } catch (error) {
    const message = error.status === 409 ? "No texts indexed yet (searchengine add-texts)." : error.message;
    list.replaceChildren(listItem(message, "muted"));
  }
}

function listItem(text, className) {
  const item = document.createElement("li");
  item.className = className;
  item.textContent = text;
  return item;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// Fill the folder and camera choices from the collection (`/api/facets`), keeping the selection.
async function loadFacets() {
  try {
    const facets = await api("/api/facets");
    fillSelect("folder", "All folders", facets.folders.map((f) => [f.folder, `${f.folder} (${f.count})`]));
    fillSelect("camera", "Any camera", facets.cameras.map((c) => [c.camera, `${c.camera} (${c.count})`]));
    $("camera").disabled = !facets.cameras.length && !$("camera").value;
    for (const name of ["after", "before"]) {
      if (facets.first_taken) $(name).min = facets.first_taken.slice(0, 10);
      if (facets.last_taken) $(name).max = facets.last_taken.slice(0, 10);
    }
  } catch (error) {
    showError(error.message);
  }
}

function fillSelect(id, anyLabel, choices) {
  const select = $(id);
  const chosen = select.value;
  select.replaceChildren(new Option(anyLabel, ""));
  for (const [value, label] of choices) select.append(new Option(label, value));
  setControl(id, chosen);
}

async function loadStatus() {
  try {
    const status = await api("/api/status");
    setStatus(`${status.images} photos · model ${status.serving_model}. Type to search.`);
  } catch (error) {
    showError(error.message);
    setStatus("");
  }
}

// -- wiring -----------------------------------------------------------------------------------

// `fn` once calls stop for `ms`; `.cancel()` drops a call still waiting.
function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  debounced.cancel = () => { clearTimeout(timer); timer = null; };
  return debounced;
}

// The search as you type, run once typing pauses. Every search cancels it when it starts, so a
// typed search still waiting never fires after Enter, "more like this" or an image search.
const typed = debounce(() => searchText($("query").value), DEBOUNCE_MS);

function wireDragAndDrop() {
  const overlay = $("drop");
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth++;
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    searchImage(event.dataTransfer.files[0]);
  });
}

function start() {
  const input = $("query");
  input.addEventListener("input", typed);
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText(input.value, true);
  });
  $("filters").addEventListener("change", filtersChanged);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("filters").addEventListener("reset", () => setTimeout(filtersChanged));  // after the reset
  window.addEventListener("popstate", restore);
  $("file").addEventListener("change", (event) => {
    searchImage(event.target.files[0]);
    event.target.value = "";
  });
  $("more").addEventListener("click", () => run(true));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("click", (event) => {
    if (event.target === $("detail")) $("detail").close();  // a click on the backdrop
  });
  wireDragAndDrop();
  loadFacets();
  restore();
}

document.addEventListener("DOMContentLoaded", start);
