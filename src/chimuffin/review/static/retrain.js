"use strict";
// Background retraining (chimuffin.retrain): the page polls GET /api/retrain, shows which
// model proposes the current page and how often each model's proposals were wrong, shows a
// failed run with its log's tail, and swaps in a finished model's pages for the images not
// verified yet. The page on screen and every page with marks not yet accepted stay (the server still
// accepts them by number), before the new pages: the person keeps the place and the marks.
// Shift+R (or the button) asks for a run now.

const R = { version: 0, current: 0, models: [], failedShown: null, timer: null };
const POLL_MS = 2000;

function ago(t) {
  if (!t) return "";
  const min = Math.max(0, (Date.now() / 1000 - t) / 60);
  return min < 1 ? "under a minute ago" : `${Math.round(min)} min ago`;
}

// a model: the person's labels in its training set (unknown: no training manifest read),
// when it finished, its validation accuracy with the 95% (Wilson) interval
function modelText(i) {
  const m = R.models[i];
  if (!m) return "";
  const labels = m.labels === null ? "labels unknown" : `${m.labels} labels`;
  const val = m.val_accuracy === null ? ", no validation accuracy"
    : `, validation ${m.val_accuracy.toFixed(3)}` + (m.val_ci ? ` (95% CI ` +
      `${m.val_ci[0].toFixed(3)}-${m.val_ci[1].toFixed(3)}, n ${m.val_n})` : "");
  return `${m.name} (${labels}${m.finished ? ", " + ago(m.finished) : ""}${val})`;
}

// a running run: its stage, epoch and the time left its train stage printed
function runText(run) {
  const s = run.step;
  return `retraining on ${run.labels || "…"} labels since ${ago(run.started)}` +
    (s ? ` · ${s.text}${s.left ? `, about ${s.left} left` : ""}` : "");
}

// what the page head says about the page on screen
function proposedBy(pg) {
  return pg && pg.model !== undefined && R.models.length ? ` · proposed by ${modelText(pg.model)}`
    : "";
}

function renderRetrain(st) {
  R.models = st.models.list;
  const run = st.running, last = (st.runs || [])[st.runs ? st.runs.length - 1 : 0];
  const wrong = R.models.map((m) => `${m.name}: ${m.wrong} wrong of ${m.verified}`).join("; ");
  let bg = "background retraining off";
  if (st.enabled) {
    bg = run ? runText(run) + (st.queued ? " (another queued)" : "")
      : `model: ${modelText(st.models.current)}` + (st.every ? `; retrains every ${st.every}` +
        ` new decisions (${st.labels_of_model} at the last)` : "");
  }
  if (st.stopped) bg = `background retraining stopped: ${st.stopped}`;
  $("retrain").disabled = !st.enabled || Boolean(st.stopped);
  const models = R.models.map((_, i) => modelText(i)).join("; ");
  $("retrain-info").textContent = `${bg} · models: ${models} · proposals wrong so far: ${wrong}`;
  const box = $("retrain-failed");
  if (last && last.ok === false) {
    box.hidden = false;
    $("retrain-error").textContent = `background run ${last.name || ""} failed (nothing ` +
      `changed): ${last.error}` + (last.log ? ` · log: ${last.log}` : "");
    $("retrain-log").textContent = last.log_tail;
  } else {
    box.hidden = true;
  }
}

async function pollRetrain() {
  let st;
  try {
    const res = await fetch("/api/retrain");
    if (!res.ok) return;
    st = await res.json();
  } catch {  // the server is gone: said at once, not at the next action
    $("retrain-info").textContent = "server stopped";
    if (!S.serverDown) {  // (an action that met it first has said so, and what it did not save)
      S.serverDown = true;
      status(`server stopped: ${UNREACHABLE}`, true);
    }
    return;
  }
  if (S.serverDown) {
    S.serverDown = false;
    status("the review server answers again", false);
  }
  renderRetrain(st);
  if (st.models.version > R.version) await swapIn(st.models.version);
}

async function swapIn(version) {
  const res = await fetch("/api/state");
  if (!res.ok) return;
  const fresh = await res.json();
  R.version = version;
  const newModel = fresh.models.current !== R.current;
  R.current = fresh.models.current;
  R.models = fresh.models.list;
  S.data.evidence = fresh.evidence;
  S.data.pages = fresh.pages;
  for (const [path, d] of Object.entries(fresh.decisions)) S.decisions.set(path, d);
  const now = current();
  const store = readStore();
  // kept: the page on screen and pages with marks not yet accepted (and not verified)
  const kept = V.pages.filter((pg) => !pageVerified(pg) && ((now && pg.page === now.page) ||
    (V.marks.get(pg.page) || new Map()).size > 0 || pg.page in store));
  const keptPaths = new Set(kept.flatMap((pg) => pg.images.map((im) => im.path)));
  const fresher = fresh.pages.list.map((pg) => ({ ...pg,
    images: pg.images.filter((im) => !keptPaths.has(im.path)) }))
    .filter((pg) => pg.images.length);
  V.pages = [...kept, ...fresher];
  for (const pg of fresher) for (const im of pg.images) V.pageOf.set(im.path, pg.page);
  applyFilter(now ? now.page : null);
  if (!newModel) return;
  status(`new proposals from ${modelText(fresh.models.current)}: ${fresher.length} page(s)` +
    (kept.length ? `; the page on screen and pages with marks stay (${kept.length})` : ""),
    false);
}

async function requestRetrain() {
  const a = await post("/api/retrain", {});
  if (!a.ok) {
    status(`retrain: ${a.body.error}`, true);
    return;
  }
  status(`background retrain: ${a.body.message}`, false);
  renderRetrain(a.body);
}

function retrainInit() {
  R.version = S.data.models.version;
  R.current = S.data.models.current;
  R.models = S.data.models.list;
  $("retrain").addEventListener("click", requestRetrain);
  pollRetrain();
  R.timer = setInterval(pollRetrain, POLL_MS);
}
