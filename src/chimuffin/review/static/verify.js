"use strict";
// The verify view: the suggest stage's pages in page order, one at a time. A page proposes
// one class for all its images; the person marks the exceptions and accepts the page with one
// key. Everything works from the keyboard (the key map below is the one the page shows).

const HOLD_MS = 350;  // click and hold a thumbnail this long: the enlarged view, until release
// An image is doubtful (a likely exception) when the model and its labeled neighbours disagree,
// or when its score for the page's class is under this (two classes: 0.5 is a coin toss).
const DOUBT_BELOW = 0.6;

const V = {
  pages: [], filtered: [], pos: 0, cursor: 0,
  marks: new Map(),  // page number -> Map(path -> label): exceptions, until the page is accepted
  pageOf: new Map(),  // path -> page number
  zoom: false, holdTimer: null, held: false, prefetched: new Set(),
  flipped: new Map(),  // page number -> paths the last flip marked (f again takes them back)
  shownPage: null,  // the page on screen, and which of its images have been fully in view:
  seen: new Set(),  // (paths) Enter accepts only a page whose every image was on screen
  mustSee: new Set(),  // pages whose marks the label file changed: seen again from the top
  sorted: false,  // images of a page: doubtful first, then by score (s)
  before: new Map(),  // path -> [label, verified] before the answer being applied
  unseenPage: null,  // the page whose "not accepted yet" message is showing (it follows)
};

function verifyKeys() {
  const c = S.data.classes;
  return [
    { keys: ["ArrowLeft", "h"], shown: "← h", does: "move left", run: () => move(-1) },
    { keys: ["ArrowRight", "l"], shown: "→ l", does: "move right", run: () => move(1) },
    { keys: ["ArrowUp", "k"], shown: "↑ k", does: "move up", run: () => move(-columns()) },
    { keys: ["ArrowDown", "j"], shown: "↓ j", does: "move down", run: () => move(columns()) },
    ...c.map((cls, i) => ({ keys: [String(i + 1)], shown: String(i + 1),
                            does: `mark: ${cls}`, run: () => mark(cls) })),
    { keys: ["o"], shown: "o", does: "mark: the other class", run: () => mark(otherClass()) },
    { keys: ["u"], shown: "u", does: "mark: undefined", run: () => mark("undefined") },
    { keys: ["x", "Delete"], shown: "x Del", does: "mark: remove", run: () => mark("remove") },
    { keys: ["0", "Backspace"], shown: "0 ⌫", does: "unmark", run: () => mark(null) },
    { keys: ["Enter", "a"], shown: "Enter a", once: true, run: acceptPage,
      does: "accept the page (marked images get their mark), go to the next unverified" },
    { keys: ["n", "PageDown", "]"], shown: "n ]", does: "next page", run: () => turn(1) },
    { keys: ["p", "PageUp", "["], shown: "p [", does: "previous page", run: () => turn(-1) },
    { keys: ["e", " "], shown: "e Space", does: "enlarged view on/off (or click and hold)",
      run: () => setZoom(!V.zoom) },
    { keys: ["Escape"], shown: "Esc", does: "close the enlarged view", run: () => setZoom(false) },
    { keys: ["z"], shown: "z Ctrl+Z", once: true, does: "undo the last action", run: undo },
    { keys: ["c"], shown: "c", once: true, does: "clear the decision of the image at the cursor",
      run: clearCursor },
    { keys: ["C"], shown: "Shift+C", once: true, does: "clear the decisions of the whole page",
      run: clearPage },
    { keys: ["."], shown: ".", does: "cursor to the next doubtful image (dashed, ?)",
      run: nextDoubtful },
    { keys: ["s"], shown: "s", does: "sort a page's images: doubtful first, then the " +
      "lowest score / the page's own order", run: toggleSort },
    { keys: ["f"], shown: "f", does: "flip: every unmarked image gets the other class " +
      "(marks kept; f again takes the flip back)", run: flipPage },
    { keys: ["K"], shown: "Shift+K", does: "fold the key panel away or back",
      run: () => setLayout({ folded: !layout().folded }) },
  ];
}

// --- which pages ---

function current() {
  return V.filtered[V.pos] || null;
}

function pageVerified(pg) {
  return fullPage(pg).images.every((im) => isVerified(im.path));
}

// a page with every image, also where the label filters show only some of them
function fullPage(pg) {
  return pg.hidden ? pageNamed(pg.page) || pg : pg;
}

function filterValues() {
  return { cls: $("filter-class").value, min: Number($("filter-min").value),
           max: Number($("filter-max").value), verified: $("filter-verified").value,
           label: $("filter-label").value, source: $("filter-source").value };
}

// The label filters: an image's label now ("none" while nobody labeled it) and where that
// label comes from (a decision's source, its folder, validation, or "none").
function labelNow(path) {
  return isLabeled(path) ? currentLabel(path) : "none";
}

function imageShown(im, f) {
  return (f.label === "all" || labelNow(im.path) === f.label) &&
    (f.source === "all" || (sourceOf(im.path) || "none") === f.source);
}

// They hide images, not only pages: a page shows the images they keep and counts the
// others (Enter refuses the page while it hides any); a page keeping none is hidden.
function withShownImages(pg, f) {
  const images = pg.images.filter((im) => imageShown(im, f));
  return { ...pg, images, hidden: pg.images.length - images.length };
}

function shownByFilter(pg, f) {
  const done = f.verified === "all" || (f.verified === "done") === pageVerified(pg);
  return done && (f.cls === "all" || pg.label === f.cls) && pg.page_score >= f.min &&
    pg.page_score <= f.max;
}

// Find by file name: the first page (in order) holding an image whose path contains the
// text; the filters are reset when they hide it; the cursor goes on the image.
function findImage(text) {
  const want = text.trim().toLowerCase();
  if (!want) return;
  const pg = V.pages.find((p) => p.images.some((im) => im.path.toLowerCase().includes(want)));
  if (!pg) { status(`no image on the pages has a file name with "${text.trim()}"`, true); return; }
  const f = filterValues(), im = pg.images.find((x) => x.path.toLowerCase().includes(want));
  if (!shownByFilter(pg, f) || !imageShown(im, f)) resetFilters();
  applyFilter(pg.page);
  const shown = current();
  V.cursor = shown.images.findIndex((im) => im.path.toLowerCase().includes(want));
  renderCursor();
  status(`found ${shown.images[V.cursor].path} on page ${pg.page}`, false);
}

function resetFilters() {
  $("filter-class").value = "all";
  $("filter-min").value = 0;
  $("filter-max").value = 1;
  $("filter-verified").value = "all";
  $("filter-label").value = "all";
  $("filter-source").value = "all";
}

// Filters only hide pages: the order stays the file's. Within a page the images are in the
// file's order, or, sorted, the doubtful ones first, then by score, lowest first.
function applyFilter(keepPage) {
  const f = filterValues();
  V.filtered = V.pages.filter((pg) => shownByFilter(pg, f))
    .map((pg) => withShownImages(pg, f)).filter((pg) => pg.images.length)
    .map((pg) => (V.sorted ? sortedPage(pg) : pg));
  let pos = V.filtered.findIndex((pg) => pg.page === keepPage);
  if (pos < 0) pos = V.filtered.findIndex((pg) => !pageVerified(pg));
  V.pos = Math.max(pos, 0);
  V.cursor = 0;
  renderPage();
}

function sortedPage(pg) {
  const images = [...pg.images].sort((a, b) => (doubtful(b) - doubtful(a)) ||
                                               (a.score - b.score));
  return { ...pg, images };
}

function toggleSort() {
  V.sorted = !V.sorted;
  applyFilter(current() ? current().page : null);
  status(V.sorted ? "images sorted: doubtful first, then the lowest score"
                  : "images in the page's own order", false);
}

function turn(step) {
  const pos = V.pos + step;
  if (pos < 0 || pos >= V.filtered.length) {
    status(step > 0 ? "this is the last page" : "this is the first page", false);
    return;
  }
  V.pos = pos;
  V.cursor = 0;
  renderPage();
}

function gotoNextUnverified() {
  const n = V.filtered.length;
  for (let k = 1; k <= n; k++) {
    const pos = (V.pos + k) % n;
    if (!pageVerified(V.filtered[pos])) { V.pos = pos; V.cursor = 0; renderPage(); return; }
  }
  renderPage();
  status("every page shown by the filter is verified", false);
}

function remember() {
  const pg = current(), f = filterValues();
  const q = new URLSearchParams({ class: f.cls, min: f.min, max: f.max, pages: f.verified,
                                  label: f.label, source: f.source });
  if (pg) q.set("page", pg.page);
  if (V.sorted) q.set("sort", "doubtful");
  history.replaceState(null, "", `#verify?${q}`);
}

// --- marks ---

// A page's marks start from what people already decided on it (a verified page shows its
// exceptions), or from the marks kept in the browser over a reload; after that they are the
// person's until the page is accepted.
function marksOf(pg) {
  if (!V.marks.has(pg.page)) {
    let m = storedMarks(pg);
    if (!m) {
      m = new Map();
      for (const im of fullPage(pg).images) {
        const d = S.decisions.get(im.path);
        if (isVerified(im.path) && d[0] !== pg.label) m.set(im.path, d[0]);
      }
    }
    V.marks.set(pg.page, m);
  }
  return V.marks.get(pg.page);
}

// --- marks kept over a reload ---
// Marks not yet accepted live in the browser's localStorage, per page, with what the label
// file said about the page's images when they were made: if the file changed since (an
// accept, an undo, another tool), the kept marks no longer apply and are dropped.

const MARKS_KEY = "chimuffin-review-marks";

function pageBasis(pg) {  // (in path order: the same whatever order the page shows)
  const paths = fullPage(pg).images.map((im) => im.path).sort();
  return JSON.stringify(paths.map((x) => [x, S.decisions.get(x) || null]));
}

function readStore() {
  try { return JSON.parse(localStorage.getItem(MARKS_KEY)) || {}; } catch { return {}; }
}

function writeStore(store) {
  try {
    if (Object.keys(store).length) localStorage.setItem(MARKS_KEY, JSON.stringify(store));
    else localStorage.removeItem(MARKS_KEY);
  } catch { /* storage off or full: the marks stay in this page only */ }
}

function storedMarks(pg) {
  const store = readStore(), kept = store[pg.page];
  if (!kept) return null;
  if (kept.basis !== pageBasis(pg)) { delete store[pg.page]; writeStore(store); return null; }
  return new Map(Object.entries(kept.marks));
}

function keepMarks(pg) {
  const store = readStore();
  store[pg.page] = { basis: pageBasis(pg), marks: Object.fromEntries(marksOf(pg)) };
  writeStore(store);
}

function forgetMarks(page) {
  const store = readStore();
  if (page in store) { delete store[page]; writeStore(store); }
}

function otherClass() {
  const pg = current();
  if (!pg) return null;
  const others = S.data.classes.filter((c) => c !== pg.label);
  const now = marksOf(pg).get(pg.images[V.cursor].path);
  const i = others.indexOf(now);
  return others[(i + 1) % others.length];
}

// mark(label): the cursor image gets `label` as an exception; again (or the page's own class,
// or null) unmarks it.
function mark(label) {
  const pg = current();
  if (!pg) return;
  const marks = marksOf(pg), path = pg.images[V.cursor].path;
  if (label === null || label === pg.label || marks.get(path) === label) marks.delete(path);
  else marks.set(path, label);
  keepMarks(pg);
  renderPage();
}

function cycleMark(i) {
  const pg = current(), marks = marksOf(pg), path = pg.images[i].path;
  const order = [...S.data.classes.filter((c) => c !== pg.label), "undefined", "remove", null];
  const next = order[(order.indexOf(marks.has(path) ? marks.get(path) : null) + 1) % order.length];
  V.cursor = i;
  mark(next === null ? null : next);
}

function doubtful(im) {
  return !im.agree || im.score < DOUBT_BELOW;
}

function nextDoubtful() {
  const pg = current();
  if (!pg) return;
  const n = pg.images.length;
  for (let k = 1; k <= n; k++) {
    const i = (V.cursor + k) % n;
    if (doubtful(pg.images[i])) { V.cursor = i; renderCursor(); return; }
  }
  status("no doubtful image on this page", false);
}

// A page that is mostly the other class: every unmarked image gets the other class, the marks
// already made stay. Pressed again while nothing is unmarked, it takes that flip back.
function flipPage() {
  const pg = current();
  if (!pg) return;
  const marks = marksOf(pg), other = S.data.classes.find((c) => c !== pg.label);
  const unmarked = pg.images.filter((im) => !marks.has(im.path)).map((im) => im.path);
  if (unmarked.length) {
    for (const path of unmarked) marks.set(path, other);
    V.flipped.set(pg.page, unmarked);
    status(`flipped: ${unmarked.length} image(s) marked ${other}; mark the ones that are ` +
           `${pg.label} (${S.data.classes.indexOf(pg.label) + 1} or o), then Enter`, false);
  } else {
    const back = (V.flipped.get(pg.page) || []).filter((x) => marks.get(x) === other);
    for (const path of back) marks.delete(path);
    V.flipped.delete(pg.page);
    status(back.length ? `flip taken back: ${back.length} image(s) unmarked`
                       : "every image is marked: nothing to flip", false);
  }
  keepMarks(pg);
  renderPage();
}

// --- actions ---

async function acceptPage() {
  const pg = current();
  if (!pg || refuseHidden(pg)) return;
  if (showUnseen(pg)) return;
  const exceptions = Object.fromEntries(marksOf(pg));
  const a = await write("/api/verify", { page: pg.page, exceptions });
  if (!a) return;
  const k = Object.keys(exceptions).length;
  $("notice").hidden = true;
  V.unseenPage = null;
  status(a.changed ? `page ${pg.page} verified: ${pg.images.length} image(s), ${k} exception(s)`
                   : `page ${pg.page}: already verified like this, nothing changed`, false);
  gotoNextUnverified();
}

// Enter writes every image of the page: never while the label filters hide some of them.
function refuseHidden(pg) {
  if (!pg.hidden) return false;
  status(`not accepted: the label filters hide ${pg.hidden} image(s) of this page; set ` +
         "\"label now\" and \"label source\" to all, look at them, then Enter accepts", true);
  return true;
}

async function clearCursor() {
  const pg = current();
  if (!pg) return;
  const path = pg.images[V.cursor].path;
  if (!S.decisions.has(path)) { status("this image has no decision to clear", true); return; }
  const a = await write("/api/clear", { paths: [path] });
  if (a) status(`cleared the decision of ${path}`, false);
}

async function clearPage() {
  const pg = current();
  if (!pg) return;
  const paths = pg.images.map((im) => im.path).filter((x) => S.decisions.has(x));
  if (!paths.length) { status("no decisions on this page", true); return; }
  if (!window.confirm(`Clear the decisions of ${paths.length} image(s) on page ${pg.page}?`)) {
    return;
  }
  const a = await write("/api/clear", { paths });
  if (a) status(`cleared ${a.changed} decision(s) on page ${pg.page}`, false);
}

// After an undo of a page: show that page again with the marks it was accepted with.
function verifyUndone(undone) {
  V.marks.set(undone.page, new Map(Object.entries(undone.exceptions || {})));
  const pg = V.pages.find((x) => x.page === undone.page);
  if (pg) keepMarks(pg);
  let pos = V.filtered.findIndex((pg) => pg.page === undone.page);
  if (pos < 0) {  // hidden by the filter: show every page again
    resetFilters();
    applyFilter(undone.page);
    pos = V.pos;
  }
  V.pos = pos;
  V.cursor = 0;
  renderPage();
}

// --- cursor and enlarged view ---

function columns() {
  const items = $("page-grid").children;
  if (!items.length) return 1;
  const top = items[0].offsetTop;
  let n = 0;
  while (n < items.length && items[n].offsetTop === top) n++;
  return n;
}

function move(step) {
  const pg = current();
  if (!pg) return;
  V.cursor = Math.min(Math.max(V.cursor + step, 0), pg.images.length - 1);
  renderCursor();
}

function renderCursor() {
  const items = $("page-grid").children;
  for (let i = 0; i < items.length; i++) items[i].classList.toggle("cursor", i === V.cursor);
  if (items[V.cursor]) items[V.cursor].scrollIntoView({ block: "nearest" });
  renderZoom();
}

function setZoom(on) {
  V.zoom = on && !!current();
  renderZoom();
}

function renderZoom() {
  const box = $("zoom"), pg = current();
  box.hidden = !V.zoom;
  if (!V.zoom || !pg) return;
  const im = pg.images[V.cursor], m = marksOf(pg).get(im.path), d = S.decisions.get(im.path);
  $("zoom-img").src = "/thumb?path=" + encodeURIComponent(im.path);
  $("zoom-img").alt = im.path;
  $("zoom-info").textContent = `${im.path} · page proposes ${pg.label} (score ` +
    `${im.score.toFixed(2)}) · model ${im.model_label}, neighbours ${im.knn_label}` +
    (m ? ` · marked ${m}` : "") + (d ? ` · decided ${d[0]} (${d[1]})` : "");
  renderEvidence(im.path);
}

// What stands behind the proposal (the suggest stage's suggestions.parquet and
// neighbours.parquet): the model, the labeled neighbours' vote, the k labeled neighbours that
// voted (label now, similarity), the most similar image.
function renderEvidence(path) {
  const box = $("zoom-evidence"), ev = S.data.evidence.images[path];
  if (!ev) {
    box.replaceChildren(S.data.evidence.error ? `no evidence: ${S.data.evidence.error}` : "");
    return;
  }
  const pct = (x) => (x === null ? "?" : x.toFixed(2));
  const thumb = (p) => el("img", { alt: p, src: "/thumb?path=" + encodeURIComponent(p) });
  const figure = (p, what) => el("figure", {}, thumb(p),
    el("figcaption", { textContent: `${what}: ${currentLabel(p)}` }), el("small", {
      textContent: p }));
  const nbs = ev.neighbours, row = [], lines = [
    el("p", { textContent: `model: ${ev.model_label} ${pct(ev.model_conf)} · labeled ` +
              `neighbours vote ${ev.knn_label} ${pct(ev.knn_conf)} (mean similarity ` +
              `${pct(ev.knn_sim)})` })];
  if (nbs === undefined) {  // older outputs: only the nearest one is known
    lines.push(el("p", { textContent: `neighbours not recorded: ${S.data.evidence.error}` }));
    if (ev.nearest_labeled) row.push(figure(ev.nearest_labeled, "nearest labeled"));
  } else {
    lines.push(el("p", { textContent: nbs.length ? `the ${nbs.length} labeled neighbours ` +
      "that voted, nearest first (label now, similarity: embedding cosine):"
      : "no labeled image voted" }));
    row.push(el("ol", { className: "neighbours" }, ...nbs.map(([p, sim]) =>
      el("li", { title: p }, thumb(p),
         el("span", { textContent: currentLabel(p) }), el("small", { textContent: pct(sim) })))));
  }
  if (ev.dup_of) {
    const f = figure(ev.dup_of, (ev.near_duplicate ? "NEAR-DUPLICATE" : "most similar") +
                     `, similarity ${pct(ev.dup_sim)}`);
    // not the neighbours' kind: the two images' tiny pixel signatures compared
    f.append(el("small", { className: "kind", textContent:
                           `pixel-signature cosine ${pct(ev.dup_sim)}` }));
    row.push(f);
  }
  box.replaceChildren(...lines, el("div", { className: "figures" }, ...row));
}

// --- drawing ---

function pageThumb(pg, im, i, marks) {
  const m = marks.get(im.path), d = S.decisions.get(im.path);
  const div = el("div", { className: "thumb big", title: `${im.path}\nscore ${im.score} for ` +
    `${pg.label}; model ${im.model_label}, neighbours ${im.knn_label}` });
  div.dataset.path = im.path;
  div.dataset.mark = m || "";
  if (m) div.style.borderColor = colorOf(m);
  div.classList.toggle("marked", !!m);
  div.classList.toggle("verified", isVerified(im.path));
  div.classList.toggle("doubt", doubtful(im));
  const img = el("img", { alt: im.path, draggable: false,
                          src: "/thumb?path=" + encodeURIComponent(im.path) });
  // the image's score for the page's class, as a bar: a long green one is a sure image
  const level = im.score >= 0.8 ? "high" : im.score >= DOUBT_BELOW ? "mid" : "low";
  const bar = el("span", { className: `conf ${level}` },
                 el("i", { style: `width:${Math.round(100 * im.score)}%` }));
  const caption = el("span", { className: "caption",
                               textContent: `${im.score.toFixed(2)}${im.agree ? "" : " ≠"}` });
  if (m) caption.append(el("b", { textContent: ` → ${m}` }));
  else if (d && isVerified(im.path)) caption.append(` ✓ ${d[0]}`);
  div.append(img, bar, caption);
  div.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    V.held = false;
    clearTimeout(V.holdTimer);
    V.holdTimer = setTimeout(() => {
      V.held = true;
      V.cursor = i;
      renderCursor();
      setZoom(true);
    }, HOLD_MS);
  });
  div.addEventListener("click", () => {
    if (V.held) { V.held = false; return; }
    cycleMark(i);
  });
  return div;
}

// --- every image seen before an accept ---

// The images fully inside the scrolling box now count as seen (the box's own edges: the
// bar above it does not scroll, so nothing is hidden under it).
function noteSeen() {
  const box = $("page-scroll"), r = box.getBoundingClientRect();
  if (S.view !== "verify" || !r.height) return;
  const items = $("page-grid").children;
  for (let i = 0; i < items.length; i++) {
    const t = items[i].getBoundingClientRect();
    if (t.top >= r.top - 1 && t.bottom <= r.bottom + 1) V.seen.add(items[i].dataset.path);
  }
  followUnseen();
}

// Before an accept: if some images of the page were never on screen, scroll the first of
// them to the top, say so, and accept nothing (the next Enter accepts once all were seen).
function showUnseen(pg) {
  noteSeen();
  const unseen = pg.images.map((_, i) => i).filter((i) => !V.seen.has(pg.images[i].path));
  if (!unseen.length) return false;
  const box = $("page-scroll"), item = $("page-grid").children[unseen[0]];
  box.scrollTop += item.getBoundingClientRect().top - box.getBoundingClientRect().top - 4;
  noteSeen();
  const left = pg.images.length - V.seen.size;
  status(`not accepted yet: ${unseen.length} image(s) of this page were not on screen; ` +
         "they are shown now" + (left ? ` (${left} still below)` : "") +
         ". Look, then Enter accepts.", false);
  $("status").className = "notice";
  V.unseenPage = pg.page;
  return true;
}

// The "not accepted yet" message follows the scroll: how many are still below, or that
// every image has been on screen now.
function followUnseen() {
  const pg = current();
  if (!pg || V.unseenPage !== pg.page || !$("status").textContent.startsWith("not accepted")) {
    return;
  }
  const left = pg.images.filter((im) => !V.seen.has(im.path)).length;
  status(left ? `not accepted yet: ${left} image(s) of this page still below; scroll, or ` +
                "Enter shows them."
              : "not accepted yet: every image of this page has been on screen now; Enter " +
                "accepts.", false);
  $("status").className = "notice";
}

// Every pool image verified: said, with what to do next.
function renderPoolDone() {
  const p = S.progress, box = $("pool-done");
  const done = !!p && p.pool > 0 && p.verified >= p.pool;
  box.hidden = !done;
  if (done) {
    box.textContent = `The pool is done: every pool image is verified (${p.verified} images). ` +
      "Next: `dvc repro` trains the model on them (the pipeline reads " +
      "data/labels/decisions.csv); then keep them with `git add data/labels/decisions.csv " +
      "dvc.lock && git commit -m \"labels\"`. Shift+R retrains in the background to look " +
      "for mistakes meanwhile.";
  }
  return done;
}

function renderPage() {
  const grid = $("page-grid"), head = $("page-head"), pg = current();
  if (S.view === "verify") remember();
  const done = renderPoolDone();
  if (!pg) {
    grid.replaceChildren();
    head.textContent = V.pages.length ? "no page matches the filter"
      : S.data.pages.error || done ? ""
        : "no pages: the suggest stage left no pool image to verify";
    setZoom(false);
    return;
  }
  const marks = marksOf(pg);
  head.replaceChildren(
    `Page ${pg.page} proposes `, el("b", { textContent: pg.label, style: `color:${colorOf(pg.label)}` }),
    ` · page score ${pg.page_score.toFixed(2)} · ${pg.images.length} images · ` +
    `${pg.images.filter(doubtful).length} doubtful (?) · ` +
    `${marks.size} exception(s) marked · ${V.pos + 1} of ${V.filtered.length} pages shown` +
    (pageVerified(pg) ? " · ✓ verified" : "") + proposedBy(pg) +
    (pg.hidden ? ` · ${pg.hidden} image(s) hidden by the label filters: Enter accepts the ` +
                 "page only with them shown" : ""));
  head.dataset.page = pg.page;
  grid.replaceChildren(...pg.images.map((im, i) => pageThumb(pg, im, i, marks)));
  if (V.shownPage !== pg.page || V.mustSee.has(pg.page)) {  // from its top, header in view
    V.shownPage = pg.page;
    V.mustSee.delete(pg.page);
    V.seen = new Set();
    V.unseenPage = null;
    $("page-scroll").scrollTop = 0;
  }
  renderCursor();
  noteSeen();
  prefetch(V.filtered[V.pos + 1]);
}

// the next page's images load while the person looks at this one: turning a page is instant
function prefetch(pg) {
  if (!pg || V.prefetched.has(pg.page)) return;
  V.prefetched.add(pg.page);
  for (const im of pg.images) new Image().src = "/thumb?path=" + encodeURIComponent(im.path);
}

// --- layout: the key panel folded away, the thumbnails' size (kept in the browser) ---

const LAYOUT_KEY = "chimuffin-review-layout";

function layout() {
  try {
    return { thumb: 128, folded: false, ...JSON.parse(localStorage.getItem(LAYOUT_KEY)) };
  } catch { return { thumb: 128, folded: false }; }
}

function setLayout(change) {
  const l = { ...layout(), ...change };
  try { localStorage.setItem(LAYOUT_KEY, JSON.stringify(l)); } catch { /* this page only */ }
  applyLayout(l);
}

function applyLayout(l) {
  document.body.classList.toggle("keys-folded", l.folded);
  $("page-grid").style.setProperty("--thumb", `${l.thumb}px`);
  $("thumb-size").value = String(l.thumb);
  renderCursor();
  noteSeen();  // more images may be on screen now
}

// --- set up ---

function labelFilterOptions() {
  const option = (v, text) => el("option", { value: v, textContent: text || v });
  $("filter-label").replaceChildren(option("all"), ...S.data.classes.map((c) => option(c)),
    option("undefined"), option("remove"), option("none", "none yet"));
  $("filter-source").replaceChildren(option("all"), ...S.data.sources.map((c) => option(c)),
    option("folder"), option("validation"), option("none"));
}

function verifyInit() {
  const info = S.data.pages;
  V.pages = info.list;
  for (const pg of V.pages) for (const im of pg.images) V.pageOf.set(im.path, pg.page);
  const missing = $("verify-missing");
  missing.hidden = !info.error;
  missing.textContent = info.error ? `No pages to verify: ${info.error}. The plot and queue ` +
    "view works without them." : "";
  $("verify-bar").hidden = !!info.error;
  const sel = $("filter-class");
  sel.replaceChildren(el("option", { value: "all", textContent: "all" }),
                      ...S.data.classes.map((c) => el("option", { value: c, textContent: c })));
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  if (q.has("class")) sel.value = q.get("class");
  if (q.has("min")) $("filter-min").value = q.get("min");
  if (q.has("max")) $("filter-max").value = q.get("max");
  labelFilterOptions();
  for (const [id, key] of [["filter-verified", "pages"], ["filter-label", "label"],
                           ["filter-source", "source"]]) {
    if (q.has(key)) $(id).value = q.get(key);
  }
  V.sorted = q.get("sort") === "doubtful";
  $("find").addEventListener("change", (ev) => findImage(ev.target.value));
  for (const id of ["filter-class", "filter-min", "filter-max", "filter-verified",
                    "filter-label", "filter-source"]) {
    $(id).addEventListener("change", () => applyFilter(current() ? current().page : null));
  }
  $("prev-page").addEventListener("click", () => turn(-1));
  $("next-page").addEventListener("click", () => turn(1));
  $("accept-page").addEventListener("click", acceptPage);
  $("thumb-size").addEventListener("change", (ev) => setLayout({ thumb: Number(ev.target.value) }));
  $("fold-keys").addEventListener("click", () => setLayout({ folded: !layout().folded }));
  $("clear-page").addEventListener("click", clearPage);
  $("zoom").addEventListener("click", () => setZoom(false));
  $("page-scroll").addEventListener("scroll", noteSeen, { passive: true });
  window.addEventListener("resize", noteSeen);
  document.addEventListener("pointerup", () => {
    clearTimeout(V.holdTimer);
    if (V.held) setZoom(false);
  });
  $("key-map").replaceChildren(...[...verifyKeys(), ...viewKeys()].map((k) => el("tr", {},
    el("td", {}, el("kbd", { textContent: k.shown })), el("td", { textContent: k.does }))),
    el("tr", {}, el("td", { textContent: "click" }),
       el("td", { textContent: "cycle the mark: other class, undefined, remove, none" })),
    el("tr", {}, el("td", { textContent: "0.93 ≠ ✓" }),
       el("td", { textContent: "under an image: its score for the page's class (and as a " +
                  "bar); ≠ the model and the neighbours disagree; ✓ a person verified it" })),
    el("tr", {}, el("td", { textContent: "? dashed" }),
       el("td", { textContent: "doubtful, a likely exception: ≠, or a score under " +
                  `${DOUBT_BELOW}` })));
  applyFilter(q.has("page") ? Number(q.get("page")) : null);
  applyLayout(layout());
}

function verifyShown() {
  renderPage();  // (also puts the page and filters in the address: a reload comes back here)
}

// Before an answer's changes are applied: the marks of the pages they touch, read (from the
// browser's store too) while the label file is still as the marks were made against.
function verifyBeforeChange(changes) {
  for (const path of Object.keys(changes)) {
    const pg = pageNamed(V.pageOf.get(path));
    if (!pg) continue;
    marksOf(pg);
    V.before.set(path, [currentLabel(path), isVerified(path)]);
  }
}

function pageNamed(page) {
  return page === undefined ? null : V.pages.find((pg) => pg.page === page) || null;
}

// The label file changed (an answer or an undo). A mark stays unless the file changed its
// image's label: then the file's label is the image's mark (a person's answer that is not
// the page's class) or none, and a mark that said otherwise is listed in a banner; its page
// must be seen again before Enter accepts it.
function verifyRefresh(answer) {
  const dropped = [], touched = new Set();
  // an undone acceptance gives its page back its marks (verifyUndone): nothing dropped there
  const undone = answer.undone && answer.undone.kind === "verify" ? answer.undone.page : null;
  for (const path of Object.keys(answer.changes)) {
    const pg = pageNamed(V.pageOf.get(path)), was = V.before.get(path);
    if (!pg || !was) continue;
    touched.add(pg);
    const now = currentLabel(path), verified = isVerified(path);
    if (was[0] === now && was[1] === verified) continue;  // only its note changed
    const marks = marksOf(pg), m = marks.get(path);
    if (verified && now !== pg.label) marks.set(path, now); else marks.delete(path);
    if (m !== undefined && m !== now && pg.page !== undone) {
      dropped.push({ page: pg.page, path, mark: m, now });
    }
  }
  V.before.clear();
  for (const pg of touched) keepMarks(pg);
  if (dropped.length) marksDropped(dropped);
  if (S.view === "verify") renderPage();
}

function marksDropped(dropped) {
  const pages = [...new Set(dropped.map((d) => d.page))];
  if (pages.includes(V.shownPage)) V.seen = new Set();  // to be seen again
  for (const page of pages) V.mustSee.add(page);
  const box = $("notice");
  box.replaceChildren(
    el("b", { textContent: `${dropped.length} mark(s) not kept: ` }),
    "the label file changed these images after they were marked; " +
    `page(s) ${pages.join(", ")} must be seen again before Enter accepts them.`,
    el("ul", {}, ...dropped.map((d) => el("li", {
      textContent: `${d.path}: marked ${d.mark}, now ${d.now} (page ${d.page})` }))));
  box.hidden = false;
}
