"use strict";
// The review page, shared parts and the plot view: PaCMAP plot (plotly lasso/box selection),
// thumbnails of the selection, the review queue by cluster. verify.js holds the verify view.
// Talks only to the local server: GET /api/state, GET /thumb?path=, GET and POST /api/retrain
// (retrain.js), POST /api/{label,verify,
// accept-cluster,clear,undo}.

const COLORS = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a"];
const FIXED = { undefined: "#b9b9b9", remove: "#222222" };
const MAX_THUMBS = 300;
const BIG_SELECTION = 100;  // asks before writing more than this many images at once
const UNREACHABLE = "the review server is not reachable (is `chimuffin review` still " +
  "running?); your marks are kept, try again once it runs";

const S = {
  data: null, view: null, busy: false,
  serverDown: false,  // a request found the server gone (the poll says when it answers again)
  decisions: new Map(),  // path -> [label, source]: the label file, kept current from answers
  index: new Map(),      // path -> point index
  selection: [], excluded: new Set(), colorBy: "label", dims: 2, plotDrawn: false,
  validation: new Set(),  // validation images (validation.csv, val128/): bulk actions skip them
  mouse: null,  // the last mouse event on the plot
};
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  e.append(...children);
  return e;
}

function colorOf(name) {
  const i = S.data.classes.indexOf(name);
  return i >= 0 ? COLORS[i % COLORS.length] : FIXED[name] || "#999";
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// --- labels as the label file says ---

function isVerified(path) {
  const d = S.decisions.get(path);
  return !!d && S.data.person_sources.includes(d[1]);
}

function baseLabel(path) {
  const i = S.index.get(path);
  return i === undefined ? "undefined" : S.data.points.base[i];
}

function currentLabel(path) {
  const d = S.decisions.get(path);
  return d ? d[0] : baseLabel(path);
}

// a validation image (validation.csv or the dataset's val128/ folder)
function isValidation(path) {
  return S.validation.has(path);
}

// where an image's label now comes from: its decision's source, or its folder
function sourceOf(path) {
  const d = S.decisions.get(path);
  if (d) return d[1];
  if (isValidation(path)) return "validation";
  return baseLabel(path) === "undefined" ? "" : "folder";
}

// what a bulk action (a selection of several, a queue cluster) never changes: an answer a
// person gave, a validation image
function bulkSkips(path) {
  return isVerified(path) ? "answered" : isValidation(path) ? "validation" : null;
}

function skippedText(skipped) {
  const n = Object.values(skipped || {}).reduce((t, v) => t + v.length, 0);
  if (!n) return "";
  const why = [];
  if (skipped.answered) why.push(`${skipped.answered.length} a person's answer(s)`);
  if (skipped.validation) why.push(`${skipped.validation.length} validation image(s)`);
  return `, ${n} skipped (${why.join(", ")}: a bulk action never changes them)`;
}

// somebody already labeled it: a folder or validation label, or a decision
function isLabeled(path) {
  return S.decisions.has(path) || baseLabel(path) !== "undefined";
}

// --- writing: every action goes through here ---

async function post(url, body) {
  try {
    const res = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return { ok: res.ok, status: res.status, body: await res.json() };
  } catch {  // no answer at all: the server is down (fetch says only "Failed to fetch")
    S.serverDown = true;  // the action's own line says so; the poll need not say it again
    return { ok: false, status: 0, body: { error: UNREACHABLE } };
  }
}

// POST an action; when the server says it would change images somebody already labeled, ask
// the person and send it again confirmed. Returns the answer, or null when nothing was written.
async function write(url, body) {
  if (S.busy) return null;
  S.busy = true;
  try {
    let r = await post(url, body);
    if (!r.ok && r.body.needs_correction) {
      if (!window.confirm(`${r.body.error}\n\nCorrect this validation image?`)) {
        status("nothing changed", false);
        return null;
      }
      body = { ...body, correction: true, confirm: true };  // the question was the confirmation
      r = await post(url, body);
    }
    if (!r.ok && r.body.needs_confirm) {
      const ok = window.confirm(`${r.body.overwrites} image(s) already have a label (a folder ` +
        "or validation label, or an earlier decision) that this would change. Change them?");
      if (!ok) { status("nothing changed", false); return null; }
      r = await post(url, { ...body, confirm: true });
    }
    if (!r.ok) { status(`not saved: ${r.body.error || r.status}`, true); return null; }
    applyAnswer(r.body);
    return r.body;
  } finally {
    S.busy = false;
  }
}

function applyAnswer(a) {
  verifyBeforeChange(a.changes);  // the marks kept for those pages, read with the old file
  for (const [path, d] of Object.entries(a.changes)) {
    if (d) S.decisions.set(path, d); else S.decisions.delete(path);
    const i = S.index.get(path);
    if (i !== undefined) S.data.points.label[i] = currentLabel(path);
  }
  renderSummary(a);
  if (S.plotDrawn) recolor();
  markDone();
  verifyRefresh(a);
}

// Undo the last action; true when it was undone.
async function undo() {
  if (S.busy) return false;
  S.busy = true;
  let r;
  try { r = await post("/api/undo", {}); } finally { S.busy = false; }
  if (!r.ok) {
    status(`${r.status ? "undo refused" : "not undone"}: ${r.body.error || r.status}`, true);
    return false;
  }
  applyAnswer(r.body);
  status(`undone: ${r.body.undone.what}`, false);
  if (r.body.undone.kind === "verify") verifyUndone(r.body.undone);
  return true;
}

// The history's "undo back to here": the last n actions, the latest first, one by one (each
// an ordinary undo, so each puts the label file back exactly); stops at the first refusal.
async function undoBackTo(n) {
  if (n > 1 && !window.confirm(`Undo the last ${n} actions, the latest first?`)) return;
  for (let i = 0; i < n; i++) if (!await undo()) return;
  if (n > 1) status(`undone: the last ${n} actions`, false);
}

function renderHistory(items) {
  const list = $("history-list");
  $("history").querySelector("summary").textContent = `history (${items.length})`;
  list.replaceChildren(...items.map((h, i) => {
    const b = el("button", { type: "button",
                             textContent: i ? `undo back to here (${i + 1})` : "undo" });
    b.addEventListener("click", () => undoBackTo(i + 1));
    const at = h.at ? new Date(h.at * 1000).toTimeString().slice(0, 8) : "";  // HH:MM:SS
    return el("li", {}, el("time", { textContent: at }), " ",
              el("span", { className: "what", textContent: h.what }), b);
  }));
  if (!items.length) list.append(el("li", { textContent: "nothing yet" }));
}

// --- counts, progress, undo ---

function renderSummary(a) {
  renderCounts(a.counts);
  renderProgress(a.progress);
  $("undo-info").textContent = a.undo.last ? `last: ${a.undo.last}` : "nothing to undo";
  $("undo").disabled = !a.undo.last;
  renderHistory(a.history || []);
}

function renderCounts(c) {
  const labels = S.data.labels.map((l) => `${l} ${c.labels[l]}`).join(", ");
  const sources = Object.entries(c.by_source).map(([k, v]) => `${k} ${v}`).join(", ");
  $("counts").textContent = `labels: ${labels} | decisions: ${c.decisions}` +
    (sources ? ` (${sources})` : "");
}

function listed(obj) {
  return Object.entries(obj).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ");
}

function renderProgress(p) {
  S.progress = p;  // (the verify view says when every pool image is verified)
  let t = `verified ${p.verified} of ${p.pool} pool images`;
  if (p.verified) t += ` (${listed(p.verified_by_label)})`;
  if (p.pages) {
    t += ` · left: ${p.left} images on ${p.pages_left} of ${p.pages} pages`;
    if (p.left) t += ` (${listed(p.left_by_class)})`;
  }
  if (p.off_pages) t += ` · ${p.off_pages} on no page`;
  t += p.per_minute === null ? " · pace: after two pages"
    : ` · ${p.per_minute} images/min, about ${Math.ceil(p.minutes_left)} min left`;
  const box = $("progress");
  box.textContent = t;
  Object.assign(box.dataset, { verified: p.verified, left: p.left, pagesLeft: p.pages_left });
}

// --- thumbnails ---

function thumb(path, caption, onClick) {
  const div = el("div", { className: "thumb", title: path });
  div.dataset.path = path;
  const img = el("img", { loading: "lazy", alt: path, src: "/thumb?path=" + encodeURIComponent(path) });
  div.append(img, el("span", { className: "caption", textContent: caption }));
  if (onClick) div.addEventListener("click", () => onClick(div));
  return div;
}

// --- the plot view ---

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
  $("legend").replaceChildren(...names.flatMap((n) => [
    el("span", { className: "swatch", style: `background:${colorOf(n)}` }), n]));
}

function customdata() {
  const p = S.data.points;
  return p.path.map((_, i) => [p.label[i], p.prediction[i], p.confidence[i]]);
}

// The PaCMAP scatter in 2-D (lasso and box selection) or 3-D (turn it with the mouse; no
// lasso in plotly's 3-D scenes, so the queue's "select" is the way to select there).
function trace() {
  const p = S.data.points, flat = S.dims === 2;
  return {
    type: flat ? "scatter" : "scatter3d", mode: "markers",
    ...(flat ? { x: p.x, y: p.y } : { x: p.x3, y: p.y3, z: p.z3 }),
    text: p.path, customdata: customdata(),
    hovertemplate: "%{text}<br>label %{customdata[0]}<br>predicted %{customdata[1]} " +
      "(%{customdata[2]:.2f})<extra></extra>",
    marker: { size: flat ? 7 : 3, opacity: 0.85, ...markerColors() },
    ...(flat ? { selected: { marker: { opacity: 1 } }, unselected: { marker: { opacity: 0.25 } } }
      : {}),
  };
}

function plotLayout() {
  const hidden = { visible: false };
  return {
    dragmode: "lasso", hovermode: "closest", margin: { l: 10, r: 10, t: 10, b: 10 },
    xaxis: hidden, yaxis: hidden,
    scene: { xaxis: hidden, yaxis: hidden, zaxis: hidden, dragmode: "orbit" },
  };
}

// offline: no "edit in Chart Studio" / "send to cloud" link or button, no plotly logo
// the toolbar always shows (the hint points at it), not only while the mouse is on the plot
const PLOT_CONFIG = {
  displaylogo: false, responsive: true, scrollZoom: true, displayModeBar: true,
  showSendToCloud: false, showEditInChartStudio: false, showLink: false,
  modeBarButtonsToRemove: ["toImage", "autoScale2d", "sendDataToCloud"] };

// a point's row: plotly names it pointIndex in 2-D, pointNumber in 3-D
const pointRow = (pt) => (pt.pointIndex !== undefined ? pt.pointIndex : pt.pointNumber);

function draw() {
  if (S.plotDrawn) return;
  $("plot").textContent = "";
  const p = S.data.points;
  Plotly.newPlot("plot", [trace()], plotLayout(), PLOT_CONFIG);
  const plot = $("plot");
  plot.on("plotly_selected", (ev) => {
    setSelection(ev ? ev.points.map((pt) => p.path[pointRow(pt)]) : [], false, null);
  });
  plot.on("plotly_deselect", () => setSelection([], false, null));
  // plotly's 3-D hover carries no mouse event: the last mouse position on the plot stands in
  plot.addEventListener("mousemove", (ev) => { S.mouse = ev; });
  plot.on("plotly_hover", (ev) => showHoverThumb(p.path[pointRow(ev.points[0])],
                                                 ev.event || S.mouse));
  plot.on("plotly_unhover", () => { $("hover-thumb").hidden = true; });
  legend();
  S.plotDrawn = true;
  document.body.dataset.plot = "1";
  renderDims();
}

// 2-D <-> 3-D (button or `d`); the selection and the colouring stay
function toggleDims() {
  if (!S.data.points.z3) {
    status("no 3-D coordinates in the embed stage's pacmap.parquet: run `dvc repro embed`", true);
    return;
  }
  S.dims = S.dims === 2 ? 3 : 2;
  if (S.plotDrawn) {
    $("hover-thumb").hidden = true;
    Plotly.react("plot", [trace()], plotLayout(), PLOT_CONFIG);
    const idx = S.selection.map((x) => S.index.get(x)).filter((i) => i !== undefined);
    if (S.dims === 2 && idx.length) Plotly.restyle("plot", { selectedpoints: [idx] });
  }
  renderDims();
}

function renderDims() {
  $("dims").textContent = S.dims === 2 ? "3-D view (d)" : "2-D view (d)";
  $("dims").disabled = !S.data.points.z3;
  document.body.dataset.dims = String(S.dims);
}

// plotly.js (4.8 MB) loads only when the plot view first opens: the verify view never waits
// for it. Once: the promise is kept.
let plotlyLoading = null;

function loadPlotly() {
  if (!plotlyLoading) {
    $("plot").textContent = "loading the plot…";
    plotlyLoading = new Promise((resolve, reject) => {
      const s = el("script", { src: "/static/plotly.min.js" });
      s.onload = resolve;
      s.onerror = () => { plotlyLoading = null; reject(new Error(UNREACHABLE)); };
      document.head.append(s);
    });
  }
  return plotlyLoading;
}

function plotFailed(e) {
  $("plot").textContent = "";
  status(`the plot could not load: ${e.message}`, true);
}

// The image under the mouse, above the pointer (below near the top): plotly's own label sits
// level with the point, to one side, and stays readable.
function showHoverThumb(path, mouse) {
  const box = $("hover-thumb"), img = box.querySelector("img");
  img.src = "/thumb?path=" + encodeURIComponent(path);
  img.alt = path;
  box.querySelector("span").textContent = currentLabel(path);
  box.hidden = false;
  const w = box.offsetWidth, h = box.offsetHeight;
  const clear = 36;  // half the height of plotly's label, and a little more
  const y = mouse.clientY - clear - h >= 0 ? mouse.clientY - clear - h : mouse.clientY + clear;
  box.style.left = `${Math.min(Math.max(0, mouse.clientX - w / 2), innerWidth - w)}px`;
  box.style.top = `${Math.min(y, innerHeight - h)}px`;
}

function recolor() {
  const m = markerColors();
  Plotly.restyle("plot", {
    "marker.color": [m.color], "marker.showscale": m.showscale,
    "marker.colorscale": m.colorscale || null, "marker.cmin": m.cmin, "marker.cmax": m.cmax,
    customdata: [customdata()],
  });
  legend();
}

// The selection grid sits under the cluster it came from (or at the top for a lasso).
function setSelection(paths, highlight, cluster) {
  S.selection = paths;
  S.excluded.clear();
  if (highlight && S.plotDrawn) {
    const idx = paths.map((x) => S.index.get(x)).filter((i) => i !== undefined);
    Plotly.restyle("plot", { selectedpoints: [idx.length ? idx : null] });
  }
  const box = $("selection-box");
  if (cluster) cluster.after(box); else $("actions").after(box);
  renderSelection();
  if (cluster) box.scrollIntoView({ block: "nearest" });
}

function renderSelection() {
  const grid = $("selection");
  grid.replaceChildren();
  const p = S.data.points;
  for (const path of S.selection.slice(0, MAX_THUMBS)) {
    const i = S.index.get(path);
    const caption = i === undefined ? "" : `${p.label[i]} / ${p.prediction[i]}`;
    grid.append(thumb(path, caption, (div) => {
      if (S.excluded.has(path)) S.excluded.delete(path); else S.excluded.add(path);
      div.classList.toggle("excluded", S.excluded.has(path));
      selectionInfo();
    }));
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

function chosen() {
  return S.selection.filter((x) => !S.excluded.has(x));
}

// What the person should know before a write: labeled images it changes, a big selection.
function overwriteQuestion(paths, labelOf) {
  if (paths.length > 1) paths = paths.filter((x) => !bulkSkips(x));  // left as they are
  // one validation image: the server says what correcting it means, and asks
  else if (paths.length === 1 && isValidation(paths[0])) paths = [];
  const changed = paths.filter((x) => isLabeled(x) && currentLabel(x) !== labelOf(x));
  const folder = changed.filter((x) => !S.decisions.has(x)).length;
  const parts = [];
  if (changed.length) {
    parts.push(`${changed.length} of them already have a label that this changes ` +
      `(${folder} folder or validation label(s), ${changed.length - folder} decision(s))`);
  }
  if (paths.length > BIG_SELECTION) parts.push(`that is more than ${BIG_SELECTION} images`);
  return { changed: changed.length, question: parts.join("; ") };
}

async function applyLabel(label) {
  const all = chosen();
  if (!all.length) { status("select images first", true); return; }
  // several images: the validation ones stay out (the server refuses validation.csv's)
  const paths = all.length > 1 ? all.filter((x) => !isValidation(x)) : all;
  const left = all.filter((x) => !paths.includes(x));
  const q = overwriteQuestion(paths, () => label);
  if (q.question && !window.confirm(`Label ${paths.length} image(s) ${label}? ${q.question}.`)) {
    status("nothing changed", false);
    return;
  }
  const a = paths.length ? await write("/api/label", { paths, label, confirm: q.changed > 0 })
    : { paths: [], labels_changed: 0, skipped: {} };
  if (!a) return;
  const skipped = { ...a.skipped };
  if (left.length) skipped.validation = [...(skipped.validation || []), ...left];
  if (paths.length === 1 && isValidation(paths[0]) && a.labels_changed) {
    status(`corrected the validation image ${paths[0]}: now ${label} (the decision's note ` +
           "says it is a validation correction; undo takes it back)", false);
  } else {
    status(`saved: ${a.paths.length} image(s) -> ${label} (${a.labels_changed} label(s) ` +
           `changed${skippedText(skipped)})`, false);
  }
  clearPlotSelection();
  setSelection([], false, null);
}

// no point stays dimmed and no lasso outline stays drawn (one call: plotly redraws once)
function clearPlotSelection() {
  if (S.plotDrawn) Plotly.update("plot", { selectedpoints: [null] }, { selections: [] });
}

async function clearSelection() {
  const paths = chosen().filter((x) => S.decisions.has(x));
  if (!paths.length) { status("no decisions in the selection", true); return; }
  if (!window.confirm(`Clear the decisions of ${paths.length} image(s)? They fall back to ` +
                      "their folder label.")) return;
  const a = await write("/api/clear", { paths });
  if (a) status(`cleared ${a.changed} decision(s)`, false);
}

// --- the review queue ---

function clusters() {
  const out = new Map();
  for (const r of S.data.queue) {
    if (!out.has(r.cluster)) out.set(r.cluster, []);
    out.get(r.cluster).push(r);
  }
  return out;
}

function renderQueue() {
  const box = $("queue");
  box.replaceChildren();
  if (!S.data.queue.length) { box.textContent = "empty (run `dvc repro suggest`)"; return; }
  for (const [id, rows] of clusters()) {
    const div = el("div", { className: "cluster" });
    div.dataset.cluster = id;
    const proposed = {};
    for (const r of rows) proposed[r.proposed] = (proposed[r.proposed] || 0) + 1;
    const select = el("button", { type: "button", textContent: "select" });
    select.addEventListener("click", () => setSelection(rows.map((r) => r.path), true, div));
    const accept = el("button", { type: "button", textContent: "accept proposals",
                                  className: "accept" });
    accept.addEventListener("click", () => acceptCluster(id, rows));
    // the cluster number is the one the label file's note records ("queue cluster N")
    const head = el("header", {},
      el("span", { textContent: `cluster ${id} · ${rows.length} image(s): ` +
                   `${whyListed(rows)} · proposes ${listed(proposed)}` }), select, accept);
    const grid = el("div", { className: "grid" });
    for (const r of rows) {
      // a click selects this one image: the label keys then answer it alone
      const t = thumb(r.path, `proposed ${r.proposed}`, () => setSelection([r.path], true, div));
      t.title = `${r.path}\n#${r.rank}: ${why(r)}; proposed ${r.proposed}`;
      t.querySelector(".caption").append(el("span", { className: "now" }));
      t.style.borderColor = colorOf(r.proposed);
      grid.append(t);
    }
    div.append(head, grid);
    box.append(div);
  }
  markDone();
}

// why an image is in the queue: a label issue, or the pool image's reason (uncertain, ...)
function why(r) {
  return r.kind === "label_issue" ? `label issue (${r.reason})` : r.reason;
}

// over the whole cluster, most frequent first: "1 label issue, 23 uncertain"
function whyListed(rows) {
  const n = new Map();
  for (const r of rows) {
    const k = r.kind === "label_issue" ? "label issue" : r.reason;
    n.set(k, (n.get(k) || 0) + 1);
  }
  return [...n].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${v} ${k}`).join(", ");
}

async function acceptCluster(id, rows) {
  const q = overwriteQuestion(rows.map((r) => r.path),
                              (x) => rows.find((r) => r.path === x).proposed);
  if (q.question && !window.confirm(`Accept the proposals for ${rows.length} image(s)? ` +
                                    `${q.question}.`)) return;
  const a = await write("/api/accept-cluster", { cluster: id, confirm: q.changed > 0 });
  if (a) status(`saved: queue cluster ${id}, ${rows.length} image(s) as proposed: ` +
                `${a.labels_changed} label(s) changed${skippedText(a.skipped)}`, false);
}

// A cluster is done when a person answered every image in it (read from the label file).
function markDone() {
  for (const div of document.querySelectorAll(".cluster")) {
    const paths = [...div.querySelectorAll(".grid .thumb")].map((t) => t.dataset.path);
    div.classList.toggle("done", paths.every(isVerified));
    for (const t of div.querySelectorAll(".grid .thumb")) {
      const d = S.decisions.get(t.dataset.path);
      t.classList.toggle("verified", isVerified(t.dataset.path));
      const src = sourceOf(t.dataset.path);
      t.querySelector(".now").textContent = ` · now ${currentLabel(t.dataset.path)}` +
        (src ? ` (${src})` : "");
      t.querySelector(".caption").dataset.decided = d ? `now ${d[0]}` : "";
    }
  }
}

// --- keys and views ---

function plotKeys() {
  const keys = S.data.classes.map((c, i) => ({ keys: [String(i + 1)], shown: String(i + 1),
                                              does: c, run: () => applyLabel(c) }));
  keys.push({ keys: ["u"], shown: "u", does: "undefined", run: () => applyLabel("undefined") },
            { keys: ["x", "Delete"], shown: "x", does: "remove", run: () => applyLabel("remove") },
            { keys: ["Escape"], shown: "Esc", does: "deselect",
              run: () => setSelection([], true, null) },
            { keys: ["z"], shown: "z", does: "undo", run: undo },
            { keys: ["d"], shown: "d", does: "the plot in 3-D / in 2-D", run: toggleDims });
  return keys;
}

// Keys that work in every view: switch views, the key map.
function viewKeys() {
  return [
    { keys: ["v"], shown: "v", does: "the verify view", run: () => showView("verify") },
    { keys: ["g"], shown: "g", does: "the plot and queue view", run: () => showView("plot") },
    { keys: ["w"], shown: "w", does: "the validation view (validation.js)",
      run: () => showView("validation") },
    { keys: ["q"], shown: "q", does: "the review queue (in the plot view)", run: showQueue },
    { keys: ["?"], shown: "?", does: "every key (this map) on/off", run: () => setHelp(null) },
    { keys: ["R"], shown: "Shift+R", once: true, does: "retrain in the background now (new " +
      "proposals replace the pages not verified yet when it finishes)", run: requestRetrain },
    { keys: ["F"], shown: "Shift+F", once: true, does: "the final model: the last background " +
      "model trained on every label, as a DVC experiment (the workspace is not changed)",
      run: requestFinal },
    { keys: ["H"], shown: "Shift+H", does: "heatmap on/off: where the proposing model sees " +
      "its class, over the image in focus", run: toggleHeatmap },
  ];
}

function showQueue() {
  showView("plot");
  // its heading just under the sticky action bar (not under it)
  $("right").scrollTop += $("queue-head").getBoundingClientRect().top -
    $("actions").getBoundingClientRect().bottom - 4;
}

function keyTable(keys) {
  return el("table", {}, ...keys.map((k) => el("tr", {},
    el("td", {}, el("kbd", { textContent: k.shown })), el("td", { textContent: k.does }))));
}

// the key map of both views and the view keys; null toggles it
function setHelp(on) {
  const box = $("help");
  box.hidden = on === null ? !box.hidden : !on;
  if (box.hidden) return;
  $("help-tables").replaceChildren(
    el("div", {}, el("h4", { textContent: "Anywhere" }), keyTable(viewKeys())),
    el("div", {}, el("h4", { textContent: "Verify pages" }), keyTable(verifyKeys())),
    el("div", {}, el("h4", { textContent: "Plot and queue" }), keyTable(plotKeys())));
}

function plotButtons() {
  const box = $("buttons");
  const keyOf = Object.fromEntries(plotKeys().map((k) => [k.does, k.shown]));
  for (const label of S.data.labels) {
    const b = el("button", { type: "button", textContent: `${label} (${keyOf[label]})` });
    b.dataset.label = label;
    b.addEventListener("click", () => applyLabel(label));
    box.append(b);
  }
  $("key-help").textContent = [...plotKeys(), ...viewKeys()].map((k) => `${k.shown} ${k.does}`)
    .join(", ");
  $("deselect").addEventListener("click", () => setSelection([], true, null));
  $("clear-selection").addEventListener("click", clearSelection);
  $("dims").addEventListener("click", toggleDims);
  renderDims();
}

function showView(name) {
  S.view = name;
  for (const v of ["verify", "plot", "validation"]) $(`${v}-view`).hidden = v !== name;
  for (const b of document.querySelectorAll("#views button")) {
    b.classList.toggle("active", b.dataset.view === name);
  }
  if (name === "plot") {
    if (S.plotDrawn) Plotly.Plots.resize("plot"); else loadPlotly().then(draw, plotFailed);
    history.replaceState(null, "", "#plot");
  } else if (name === "validation") {
    validationShown();
  } else {
    verifyShown();
  }
}

// A control with the focus (reached with Tab) gets its own keys: Enter and Space press the
// focused button, type into the focused box. Esc gives the keys back to the page.
const CONTROLS = "button, input, select, textarea, a[href], summary, [contenteditable], " +
                 "[tabindex]:not([tabindex='-1'])";

function onKey(ev) {
  if (ev.target instanceof Element && ev.target.closest(CONTROLS)) {
    if (ev.key === "Escape") ev.target.blur();
    else if (ev.target.closest("button, a, summary") && ev.key.length === 1 && ev.key !== " " &&
             !ev.ctrlKey && !ev.altKey && !ev.metaKey) {
      // a page key on a focused button: it does nothing, so say where the keys go
      status(`the keys go to the focused "${ev.target.textContent.trim()}"; Esc ` +
             "gives them back to the page", false);
    }
    return;
  }
  if (ev.altKey || ev.metaKey || (ev.ctrlKey && ev.key !== "z")) return;
  if (!$("help").hidden && ev.key !== "?") {  // the key map is open: keys close it only
    if (ev.key === "Escape") { ev.preventDefault(); setHelp(false); }
    return;
  }
  const keys = [...viewKeys(), ...(S.view === "verify" ? verifyKeys()
    : S.view === "validation" ? validationKeys() : plotKeys())];
  const k = keys.find((x) => x.keys.includes(ev.key));
  if (!k) return;
  ev.preventDefault();
  if (k.once && ev.repeat) return;  // a held Enter must not accept page after page
  k.run(ev);
}

async function main() {
  const res = await fetch("/api/state");
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    status(`could not load: ${body.error || res.status}`, true);
    return;
  }
  S.data = await res.json();
  S.data.points.path.forEach((x, i) => S.index.set(x, i));
  S.validation = new Set(S.data.validation || []);
  for (const [path, d] of Object.entries(S.data.decisions)) S.decisions.set(path, d);
  $("color-by").addEventListener("change", (ev) => {
    S.colorBy = ev.target.value;
    if (S.plotDrawn) recolor();
  });
  // a click never leaves the focus on a button or "history": the page keeps its keys
  document.addEventListener("mousedown", (ev) => {
    if (ev.target.closest("button, summary")) ev.preventDefault();
  });
  document.addEventListener("keydown", onKey);
  for (const b of document.querySelectorAll("#views button")) {
    b.addEventListener("click", () => showView(b.dataset.view));
  }
  $("undo").addEventListener("click", undo);
  $("help-button").addEventListener("click", () => setHelp(null));
  $("help").addEventListener("click", () => setHelp(false));
  plotButtons();
  renderQueue();
  renderSummary(S.data);
  const wanted = location.hash.slice(1).split("?")[0];
  verifyInit();
  retrainInit();
  finalInit();
  // no validation beyond the seeds' own: the page asks for it first (validation.js)
  const askFirst = await validationInit();
  showView(askFirst || wanted === "validation" ? "validation" : wanted === "plot" ||
           (wanted !== "verify" && S.data.pages.error) ? "plot" : "verify");
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", main);
