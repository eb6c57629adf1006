// shelfsight visual search page: pick or drop a photo, POST it to /search, show similar items and tags.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, tagging: false };

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadHealth() {
  try {
    const response = await fetch("/health");
    const health = await response.json();
    state.tagging = health.tagging;
    setStatus(`${health.model} · ${health.items.toLocaleString()} items · ${health.encoder} encoder` +
              (health.tagging ? ` · tagging ${health.classes.length} classes` : ""));
    const list = $("classes");
    list.replaceChildren(...health.classes.map((name) => Object.assign(document.createElement("option"), { value: name })));
  } catch (error) {
    setStatus("service unreachable");
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderHits(listId, results) {
  $(listId).replaceChildren(...results.map((hit, rank) => {
    const item = element("li", "result");
    item.dataset.id = hit.id;
    item.dataset.label = hit.label;
    item.tabIndex = 0;
    item.title = `${hit.id}: show similar items`;
    const image = element("img");
    image.src = hit.image_url;
    image.alt = hit.label || hit.id;
    const meta = element("div", "meta");
    meta.append(element("div", "label", `${rank + 1}. ${hit.label || "(no label)"}`),
                element("div", "score", `score ${hit.score.toFixed(3)}`));
    item.append(image, meta);
    // the item's own URL is its image URL without "/image": the service encodes ids once, the page reuses it
    const itemUrl = hit.image_url.slice(0, -"/image".length);
    item.addEventListener("click", () => showSimilar(hit, itemUrl));
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); showSimilar(hit, itemUrl); }
    });
    return item;
  }));
}

function renderResults(results) {
  renderHits("results", results);
  // the service flags each result against its threshold (match: true/false; null without one): when the top
  // result is not a close match, say so and grey the results rather than show a confident wrong answer
  const noMatch = results.length > 0 && results[0].match === false;
  $("results").classList.toggle("no-match", noMatch);
  $("results-note").classList.toggle("no-match-note", noMatch);
  $("results-note").textContent = noMatch ? "No close match in the catalogue: the nearest items are shown greyed." :
    results.length ? "Click a product to see similar items." : "No similar item found.";
}

async function showSimilar(hit, itemUrl) {
  const box = $("similar-box");
  box.hidden = false;
  $("similar-title").textContent = `Similar to ${hit.label || hit.id}`;
  $("similar-note").textContent = "Loading…";
  showError("");
  try {
    const query = new URLSearchParams({ k: $("k").value });
    const category = $("category").value.trim();
    if (category) query.set("category", category);
    const response = await fetch(`${itemUrl}/similar?${query}`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
    box.dataset.source = hit.id;
    renderHits("similar", body.results);
    $("similar-note").textContent = body.results.length ? `${body.results.length} items, from the stored vector ` +
      `(${body.took_ms.toFixed(0)} ms)` : "No similar item found.";
    box.scrollIntoView({ block: "nearest" });
  } catch (error) {
    $("similar").replaceChildren();
    $("similar-note").textContent = "";
    showError(error.message);
  }
}

function renderTags(tags) {
  $("tags-box").hidden = !tags;
  $("tags").replaceChildren(...(tags || []).map((tag) => {
    const row = element("li", "tag");
    row.dataset.label = tag.label;
    const bar = element("span", "bar");
    const fill = element("i");
    fill.style.width = `${(100 * tag.probability).toFixed(1)}%`;
    bar.append(fill);
    if (tag.match === false) row.classList.add("no-match");
    row.append(element("span", "name", tag.label), element("span", "p", `${(100 * tag.probability).toFixed(1)}%`), bar);
    return row;
  }));
}

async function search() {
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "photo");
  form.append("k", $("k").value);
  const category = $("category").value.trim();
  if (category) form.append("category", category);
  showError("");
  document.body.classList.add("busy");
  $("results-note").textContent = "Searching…";
  $("similar-box").hidden = true;
  try {
    const response = await fetch("/search", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      throw new Error(`${response.status}: ${detail}`);
    }
    renderResults(body.results);
    renderTags(body.tags);
    $("results-title").textContent = `Similar products (${body.took_ms.toFixed(0)} ms, ${body.encoder})`;
    document.body.dataset.state = "done";
  } catch (error) {
    renderResults([]);
    renderTags(null);
    showError(error.message);
    document.body.dataset.state = "error";
  } finally {
    document.body.classList.remove("busy");
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = `${file.name || "photo"} · drop or choose another`;
  search();
}

const drop = $("drop");
$("file").addEventListener("change", (event) => choose(event.target.files[0]));
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  choose(event.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
});
$("k").addEventListener("change", search);
$("category").addEventListener("change", search);
loadHealth();
