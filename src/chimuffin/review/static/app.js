"use strict";
// The review page: PaCMAP plot (plotly: lasso/box selection), thumbnails, label actions.
// Talks only to the local server: GET /api/state, GET /thumb?path=, POST /api/label.

const COLORS = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a"];
const FIXED = { undefined: "#b9b9b9", remove: "#222222" };
const MAX_THUMBS = 300;

const S = { data: null, index: new Map(), selection: [], excluded: new Set(), colorBy: "label" };
const $ = (id) => document.getElementById(id);

function colorOf(name) {
  const i = S.data.classes.indexOf(name);
  return i >= 0 ? COLORS[i % COLORS.length] : FIXED[name] || "#999";
}

function markerColors() {
  const p = S.data.points;
  if (S.colorBy === "confidence") {
    return { color: p.confidence, colorscale: "Viridis", cmin: 0.5, cmax: 1,
             showscale: true, colorbar: { title: { text: "confidence" }, thickness: 12 } };
  }
  return { color: p[S.colorBy].map(colorOf), showscale: false };
}

function legend() {
  if (S.colorBy === "confidence") { $("legend").textContent = ""; return; }
  const names = S.colorBy === "label" ? S.data.labels : S.data.classes;
  $("legend").innerHTML = names.map((n) =>
    `<span class="swatch" style="background:${colorOf(n)}"></span>${n}`).join("");
}

function draw() {
  const p = S.data.points;
  const trace = {
    type: "scatter", mode: "markers", x: p.x, y: p.y, text: p.path,
    customdata: p.path.map((_, i) => [p.label[i], p.prediction[i], p.confidence[i]]),
    hovertemplate: "%{text}<br>label %{customdata[0]}<br>predicted %{customdata[1]} " +
      "(%{customdata[2]:.2f})<extra></extra>",
    marker: { size: 7, opacity: 0.85, ...markerColors() },
    selected: { marker: { opacity: 1 } }, unselected: { marker: { opacity: 0.25 } },
  };
  const layout = {
    dragmode: "lasso", hovermode: "closest", margin: { l: 10, r: 10, t: 10, b: 10 },
    xaxis: { visible: false }, yaxis: { visible: false },
  };
  const config = { displaylogo: false, responsive: true, scrollZoom: true,
                   modeBarButtonsToRemove: ["toImage", "autoScale2d"] };
  Plotly.newPlot("plot", [trace], layout, config);
  const plot = $("plot");
  plot.on("plotly_selected", (ev) => {
    setSelection(ev ? ev.points.map((pt) => p.path[pt.pointIndex]) : [], false);
  });
  plot.on("plotly_deselect", () => setSelection([], false));
  legend();
}

function recolor() {
  const m = markerColors();
  const p = S.data.points;
  Plotly.restyle("plot", {
    "marker.color": [m.color], "marker.showscale": m.showscale,
    "marker.colorscale": m.colorscale || null, "marker.cmin": m.cmin, "marker.cmax": m.cmax,
    customdata: [p.path.map((_, i) => [p.label[i], p.prediction[i], p.confidence[i]])],
  });
  legend();
}

function thumb(path, caption, onClick) {
  const div = document.createElement("div");
  div.className = "thumb";
  div.title = path;
  div.dataset.path = path;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = path;
  img.src = "/thumb?path=" + encodeURIComponent(path);
  div.append(img, document.createTextNode(caption));
  if (onClick) div.addEventListener("click", () => onClick(div));
  return div;
}

function setSelection(paths, highlight) {
  S.selection = paths;
  S.excluded.clear();
  if (highlight) {
    const idx = paths.map((x) => S.index.get(x)).filter((i) => i !== undefined);
    Plotly.restyle("plot", { selectedpoints: [idx.length ? idx : null] });
  }
  renderSelection();
}

function renderSelection() {
  const grid = $("selection");
  grid.replaceChildren();
  const p = S.data.points;
  for (const path of S.selection.slice(0, MAX_THUMBS)) {
    const i = S.index.get(path);
    const caption = i === undefined ? "" : `${p.label[i]} / ${p.prediction[i]}`;
    const t = thumb(path, caption, (div) => {
      if (S.excluded.has(path)) S.excluded.delete(path); else S.excluded.add(path);
      div.classList.toggle("excluded", S.excluded.has(path));
      selectionInfo();
    });
    grid.append(t);
  }
  selectionInfo();
}

function selectionInfo() {
  const n = S.selection.length, out = S.excluded.size;
  let text = n ? `${n - out} selected` : "nothing selected";
  if (out) text += ` (${out} left out)`;
  if (n > MAX_THUMBS) text += `, first ${MAX_THUMBS} shown`;
  $("selection-info").textContent = text;
}

function renderQueue() {
  const box = $("queue");
  box.replaceChildren();
  if (!S.data.queue.length) { box.textContent = "empty (run `dvc repro suggest`)"; return; }
  const clusters = new Map();
  for (const r of S.data.queue) {
    if (!clusters.has(r.cluster)) clusters.set(r.cluster, []);
    clusters.get(r.cluster).push(r);
  }
  for (const [id, rows] of clusters) {
    const div = document.createElement("div");
    div.className = "cluster";
    div.dataset.cluster = id;
    const head = document.createElement("header");
    const first = rows[0];
    head.innerHTML = `<span>#${first.rank}: ${rows.length} image(s), ${first.kind}; ` +
      `${first.reason}; proposed <b>${first.proposed}</b></span>`;
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "select";
    btn.addEventListener("click", () => setSelection(rows.map((r) => r.path), true));
    head.append(btn);
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const r of rows) grid.append(thumb(r.path, r.proposed, null));
    div.append(head, grid);
    box.append(div);
  }
  markDone();
}

function markDone() {
  for (const div of document.querySelectorAll(".cluster")) {
    const paths = [...div.querySelectorAll(".thumb")].map((t) => t.dataset.path);
    const done = paths.every((x) => S.done.has(x));
    div.classList.toggle("done", done);
  }
}

function renderCounts(c) {
  const labels = S.data.labels.map((l) => `${l} ${c.labels[l]}`).join(", ");
  const sources = Object.entries(c.by_source).map(([k, v]) => `${k} ${v}`).join(", ");
  $("counts").textContent = `labels: ${labels} | decisions: ${c.decisions}` +
    (sources ? ` (${sources})` : "");
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function applyLabel(label) {
  const paths = S.selection.filter((x) => !S.excluded.has(x));
  if (!paths.length) { status("select images first", true); return; }
  let res, body;
  try {
    res = await fetch("/api/label", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ paths, label }),
    });
    body = await res.json();
  } catch (e) {
    status(`could not save: ${e}`, true);
    return;
  }
  if (!res.ok || !body.ok) { status(`not saved: ${body.error || res.status}`, true); return; }
  const p = S.data.points;
  for (const x of body.paths) {
    const i = S.index.get(x);
    if (i !== undefined) p.label[i] = label;
    S.done.add(x);
  }
  renderCounts(body.counts);
  status(`saved: ${body.paths.length} image(s) -> ${label} (${body.changed} changed)`, false);
  recolor();
  Plotly.restyle("plot", { selectedpoints: [null] });
  Plotly.relayout("plot", { selections: [] });
  setSelection([], false);
  markDone();
}

function keyMap() {
  const keys = {};
  S.data.classes.forEach((c, i) => { keys[String(i + 1)] = c; });
  keys.u = "undefined";
  keys.x = "remove";
  keys.Delete = "remove";
  return keys;
}

function buttons() {
  const keys = keyMap();
  const byLabel = {};
  for (const [k, l] of Object.entries(keys)) if (!byLabel[l]) byLabel[l] = k;
  const box = $("buttons");
  for (const label of S.data.labels) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.label = label;
    b.textContent = `${label} (${byLabel[label]})`;
    b.addEventListener("click", () => applyLabel(label));
    box.append(b);
  }
  $("key-help").textContent = Object.entries(byLabel).map(([l, k]) => `${k} ${l}`).join(", ");
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea") || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === "Escape") { setSelection([], true); return; }
    if (keys[ev.key]) { ev.preventDefault(); applyLabel(keys[ev.key]); }
  });
  $("clear").addEventListener("click", () => setSelection([], true));
}

async function main() {
  const res = await fetch("/api/state");
  if (!res.ok) { status(`could not load: ${res.status}`, true); return; }
  S.data = await res.json();
  S.done = new Set();
  S.data.points.path.forEach((x, i) => S.index.set(x, i));
  $("color-by").addEventListener("change", (ev) => { S.colorBy = ev.target.value; recolor(); });
  buttons();
  draw();
  renderQueue();
  renderCounts(S.data.counts);
  document.body.dataset.ready = "1";
}

main();
