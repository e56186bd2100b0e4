"use strict";
// The final model (retrain/final.py): the last background model, finished on every label by
// the finishing recipe as a DVC experiment on a copy of the repository. Shift+F (or the button)
// starts it; it is offered once every pool image is verified. While it runs the page shows its
// stage and epoch; then its validation accuracy with the 95% interval and the commands that
// keep it, or the error and its log: a failed run changed nothing.

const FIN = { timer: null, offered: false };
const FINAL_POLL_MS = 2000;

function pct(x) {
  return x.toFixed(4);
}

function finalLine(run) {
  if (run.ok === null) {
    return `final model: ${run.step.text}` + (run.start ? ` · from ${run.start}` : "") +
      (run.labels ? ` · ${run.labels} labels` : "");
  }
  if (run.ok) {
    const v = run.val;
    return `final model ${run.name}: validation accuracy ${pct(v.accuracy)} ` +
      `(95% CI ${pct(v.ci95[0])}-${pct(v.ci95[1])}, ${v.n} images)`;
  }
  return `final model ${run.name || ""} failed (nothing changed): ${run.error}`;
}

function renderFinal(st) {
  const run = st.run;
  const running = Boolean(run && run.ok === null);
  const button = $("final");
  button.disabled = !st.enabled || running;
  button.classList.toggle("offer", FIN.offered && !running && !(run && run.ok));
  let info = run ? finalLine(run) : "";
  if (!run && FIN.offered) info = "every pool image is verified: train the final model (Shift+F)";
  if (!st.enabled) info = `final model: ${st.why}`;
  $("final-info").textContent = info;
  const box = $("final-box");
  box.hidden = !run || running;
  if (box.hidden) return;
  box.classList.toggle("failed", !run.ok);
  $("final-result").textContent = finalLine(run);
  const keep = run.ok ? ["To keep it:", ...run.commands] : [];
  if (run.ok && run.labels_changed) {
    keep.push("(the label file changed after this run read it: `dvc exp apply` puts back " +
      "the labels it trained on)");
  }
  $("final-keep").textContent = keep.join("\n");
  $("final-log").textContent = run.ok ? "" : `log: ${run.log}\n${run.log_tail}`;
}

async function pollFinal() {
  let st;
  try {
    const res = await fetch("/api/final");
    if (!res.ok) return;
    st = await res.json();
  } catch {
    return;  // the server is down: the page's writes say so
  }
  renderFinal(st);
  clearTimeout(FIN.timer);
  if (st.run && st.run.ok === null) FIN.timer = setTimeout(pollFinal, FINAL_POLL_MS);
}

async function requestFinal() {
  const a = await post("/api/final", {});
  if (!a.ok) {
    status(`final model: ${a.body.error}`, true);
    return;
  }
  status(`final model: ${a.body.message}`, false);
  renderFinal(a.body);
  pollFinal();
}

// offered once the progress line says no pool image is left on any page
function watchPool() {
  const box = $("progress");
  const check = () => {
    const d = box.dataset;
    const done = d.left === "0" && d.pagesLeft === "0" && Number(d.verified) > 0;
    if (done !== FIN.offered) {
      FIN.offered = done;
      pollFinal();
    }
  };
  new MutationObserver(check).observe(box, { attributes: true });
  check();
}

function finalInit() {
  $("final").addEventListener("click", requestFinal);
  watchPool();
  pollFinal();
}
