// shelfsight: search by words, shown only when the index's model has a text tower (GET /text says so).
// Self-contained: it adds its own form above the results and fills the page's result list with the hits.
"use strict";

(function () {
  const byId = (id) => document.getElementById(id);

  function make(tag, props) { return Object.assign(document.createElement(tag), props || {}); }

  function showHits(hits, took) {
    if (typeof renderResults === "function") {
      renderResults(hits); // the page's own rendering (click a hit for similar items)
    } else {
      byId("results").replaceChildren(...hits.map((hit) => {
        const item = make("li", { className: "result" });
        item.append(make("img", { src: hit.image_url, alt: hit.label || hit.id }),
                    make("div", { className: "meta", textContent: `${hit.label} · ${hit.score.toFixed(3)}` }));
        return item;
      }));
    }
    byId("results-title").textContent = `Products matching the words (${took.toFixed(0)} ms)`;
  }

  async function searchText(event) {
    event.preventDefault();
    const text = byId("text-query").value.trim();
    const error = byId("error");
    if (!text) return;
    const form = new FormData();
    form.append("text", text);
    form.append("k", byId("k") ? byId("k").value : "10");
    const category = byId("category") ? byId("category").value.trim() : "";
    if (category) form.append("category", category);
    document.body.classList.add("busy");
    try {
      const response = await fetch("/search/text", { method: "POST", body: form });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
      if (error) error.hidden = true;
      showHits(body.results, body.took_ms);
    } catch (failure) {
      if (error) { error.textContent = failure.message; error.hidden = false; }
    } finally {
      document.body.classList.remove("busy");
    }
  }

  async function addTextBox() {
    let status;
    try {
      status = await (await fetch("/text")).json();
    } catch (failure) {
      return; // no text side: the page stays as it is
    }
    if (!status.available) return;
    const form = make("form", { id: "text-search", className: "text-search" });
    form.style.cssText = "display:flex;gap:.5rem;margin:.75rem 0";
    const input = make("input", { id: "text-query", type: "search", placeholder: "or describe a product…",
                                  maxLength: status.max_text_bytes, autocomplete: "off" });
    input.style.cssText = "flex:1;min-width:0;padding:.4rem .6rem";
    input.setAttribute("aria-label", "search by words");
    form.append(input, make("button", { type: "submit", textContent: "Search" }));
    form.addEventListener("submit", searchText);
    const anchor = byId("options") || byId("results");
    anchor.parentNode.insertBefore(form, anchor.nextSibling);
  }

  addTextBox();
})();
