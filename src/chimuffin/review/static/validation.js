"use strict";
// The validation view: a seeded random sample of the pool, on pages that each propose the
// model's class, answered with the verify view's keys; the answers go to validation.csv (never
// the label file), so no model ever trains on these images and their accuracy is honest. The
// server chooses the images (GET /api/validation) and writes them (POST /api/validate).

const W = { info: null, pos: 0, cursor: 0, marks: new Map(), seen: new Set(), shown: null };

function validationKeys() {
  const c = S.data.classes;
  return [
    { keys: ["ArrowLeft", "h"], shown: "← h", does: "move left", run: () => valMove(-1) },
    { keys: ["ArrowRight", "l"], shown: "→ l", does: "move right", run: () => valMove(1) },
    { keys: ["ArrowUp", "k"], shown: "↑ k", does: "move up", run: () => valMove(-valColumns()) },
    { keys: ["ArrowDown", "j"], shown: "↓ j", does: "move down", run: () => valMove(valColumns()) },
    ...c.map((cls, i) => ({ keys: [String(i + 1)], shown: String(i + 1),
                            does: `mark: ${cls}`, run: () => valMark(cls) })),
    { keys: ["o"], shown: "o", does: "mark: the other class", run: () => valMark(valOther()) },
    { keys: ["0", "Backspace"], shown: "0 ⌫", does: "unmark", run: () => valMark(null) },
    { keys: ["Enter", "a"], shown: "Enter a", once: true, run: acceptValidationPage,
      does: "answer the page: marked images get their mark, the rest the page's class" },
  ];
}

function valPage() {
  return W.info && W.info.pages.length ? W.info.pages[0] : null;
}

// a page is known by its first image: the server numbers the pages left from 0 each time
function valId(pg) {
  return pg.images[0].path;
}

function valMarks(pg) {
  if (!W.marks.has(valId(pg))) W.marks.set(valId(pg), new Map());
  return W.marks.get(valId(pg));
}

function valOther() {
  const pg = valPage();
  if (!pg) return null;
  const others = S.data.classes.filter((c) => c !== pg.label);
  const now = valMarks(pg).get(pg.images[W.cursor].path);
  return others[(others.indexOf(now) + 1) % others.length];
}

function valMark(label) {
  const pg = valPage();
  if (!pg) return;
  const marks = valMarks(pg), path = pg.images[W.cursor].path;
  if (label === null || label === pg.label || marks.get(path) === label) marks.delete(path);
  else marks.set(path, label);
  renderValidationPage();
}

function valColumns() {
  const items = $("validation-grid").children;
  let n = 0;
  while (n < items.length && items[n].offsetTop === items[0].offsetTop) n++;
  return Math.max(n, 1);
}

function valMove(step) {
  const pg = valPage();
  if (!pg) return;
  W.cursor = Math.min(Math.max(W.cursor + step, 0), pg.images.length - 1);
  valCursor();
}

function valCursor() {
  const items = $("validation-grid").children;
  for (let i = 0; i < items.length; i++) items[i].classList.toggle("cursor", i === W.cursor);
  if (items[W.cursor]) items[W.cursor].scrollIntoView({ block: "nearest" });
}

// every image of a page must have been fully on screen before Enter answers it
function valNoteSeen() {
  const box = $("validation-scroll"), r = box.getBoundingClientRect();
  if (S.view !== "validation" || !r.height) return;
  for (const t of $("validation-grid").children) {
    const b = t.getBoundingClientRect();
    if (b.top >= r.top - 1 && b.bottom <= r.bottom + 1) W.seen.add(t.dataset.path);
  }
}

function valUnseen(pg) {
  valNoteSeen();
  const i = pg.images.findIndex((im) => !W.seen.has(im.path));
  if (i < 0) return false;
  const box = $("validation-scroll"), item = $("validation-grid").children[i];
  box.scrollTop += item.getBoundingClientRect().top - box.getBoundingClientRect().top - 4;
  valNoteSeen();
  status("not answered yet: some images of this page were not on screen; they are shown " +
         "now. Look, then Enter answers.", false);
  return true;
}

async function acceptValidationPage() {
  const pg = valPage();
  if (!pg || valUnseen(pg)) return;
  const marks = valMarks(pg);
  const labels = Object.fromEntries(pg.images.map((im) => [im.path,
                                                          marks.get(im.path) || pg.label]));
  if (S.busy) return;
  S.busy = true;
  let r;
  try { r = await post("/api/validate", { labels }); } finally { S.busy = false; }
  if (!r.ok) { status(`not saved: ${r.body.error || r.status}`, true); return; }
  W.marks.delete(valId(pg));
  dropFromReviewPages(new Set(r.body.added));
  status(`${r.body.added.length} validation image(s) saved to validation.csv ` +
         `(${marks.size} corrected)`, false);
  await loadValidation();
}

// images that now validate are never verified on a review page
function dropFromReviewPages(paths) {
  const now = current();
  V.pages = V.pages.map((pg) => ({ ...pg, images: pg.images.filter((im) => !paths.has(im.path)) }))
    .filter((pg) => pg.images.length);
  applyFilter(now ? now.page : null);
}

function valThumb(pg, im, i, marks) {
  const m = marks.get(im.path);
  const div = el("div", { className: "thumb big", title: `${im.path}\nthe model: ${pg.label} ` +
                          `(${im.score.toFixed(2)})` });
  div.dataset.path = im.path;
  div.dataset.mark = m || "";
  div.classList.toggle("marked", !!m);
  if (m) div.style.borderColor = colorOf(m);
  const caption = el("span", { className: "caption", textContent: im.score.toFixed(2) });
  if (m) caption.append(el("b", { textContent: ` → ${m}` }));
  div.append(el("img", { alt: im.path, draggable: false,
                         src: "/thumb?path=" + encodeURIComponent(im.path) }), caption);
  div.addEventListener("click", () => { W.cursor = i; valMark(marks.has(im.path) ? null : valOther()); });
  return div;
}

function ci(m) {
  if (m.accuracy === null || m.accuracy === undefined) return `${m.name}: no validation accuracy`;
  const pct = (x) => (100 * x).toFixed(1);
  return `${m.name}: ${pct(m.accuracy)}%` + (m.ci95 ? ` (95% interval ${pct(m.ci95[0])}–` +
    `${pct(m.ci95[1])}, ${m.n} images)` : "");
}

function renderValidationInfo() {
  const w = W.info, c = w.counts;
  $("validation-banner").hidden = !w.ask_first;
  $("validation-counts").textContent = `${c.total} validation images: ${c.seeds} from the ` +
    `seeds' validation split, ${c.val128} in val128/, ${c.file} in ${w.file}. The random ` +
    `sample: ${w.answered} of ${w.target} answered, ${w.left} left (review.validation_size ` +
    `${w.size}, at most a quarter of the ${w.pool}-image pool).`;
  $("validation-models").replaceChildren(...w.models.map((m) => el("li", { textContent: ci(m) })));
  // the count, in every view: the nav button says how many images validate the models
  document.querySelector("#views [data-view='validation']").textContent =
    `Validation (w): ${c.total} images`;
}

function renderValidationPage() {
  const pg = valPage(), grid = $("validation-grid"), head = $("validation-head");
  if (!pg) {
    grid.replaceChildren();
    head.textContent = W.info && W.info.target ? "The validation sample is answered: every " +
      "model is now validated on it (after the next retrain)." : "No validation sample " +
      "(review.validation_size is 0).";
    return;
  }
  const marks = valMarks(pg);
  head.replaceChildren(`Validation page: ${W.info.proposer} proposes `,
    el("b", { textContent: pg.label, style: `color:${colorOf(pg.label)}` }),
    ` · ${pg.images.length} images · ${marks.size} corrected · ${W.info.pages.length} ` +
    "page(s) left");
  head.dataset.first = valId(pg);
  grid.replaceChildren(...pg.images.map((im, i) => valThumb(pg, im, i, marks)));
  if (W.shown !== valId(pg)) {
    W.shown = valId(pg);
    W.seen = new Set();
    W.cursor = 0;
    $("validation-scroll").scrollTop = 0;
  }
  valCursor();
  valNoteSeen();
}

async function loadValidation() {
  let res;
  try { res = await fetch("/api/validation"); } catch {
    status(UNREACHABLE, true);
    return false;
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { status(`validation: ${body.error || res.status}`, true); return false; }
  document.querySelector("#views [data-view='validation']").hidden = !body.enabled;
  if (!body.enabled) {  // a server without the validation view
    $("validation-head").textContent = "The validation view is off on this server.";
    return false;
  }
  W.info = body;
  renderValidationInfo();
  renderValidationPage();
  return true;
}

// Loads the sample; true when the page should open here (no validation beyond the seeds').
async function validationInit() {
  $("validation-scroll").addEventListener("scroll", valNoteSeen, { passive: true });
  $("validation-accept").addEventListener("click", acceptValidationPage);
  $("validation-keys").replaceChildren(...validationKeys().map((k) => el("tr", {},
    el("td", {}, el("kbd", { textContent: k.shown })), el("td", { textContent: k.does }))));
  return await loadValidation() && W.info.ask_first;
}

function validationShown() {
  history.replaceState(null, "", "#validation");
  loadValidation();
}
