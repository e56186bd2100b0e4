"use strict";
// Heatmaps: Shift+H (or the header's button) lays the proposing model's Grad-CAM heatmap over
// the image in focus (the verify view's cursor, and the enlarged view): red where its evidence
// for the class it predicts lies. The server computes them (GET /api/heatmap?path=...), in the
// background and cached per model; the page only waits for an answer, never blocks on it. The
// image in focus is asked for first, then the rest of its page in one call (one batch there).
// Nothing here writes anything: it only reads.

// focusAsked: requests for an image in focus not answered yet; the page's prefetch waits for
// them, so that a prefetch batch the server has begun never holds up the image in focus.
const HM = { on: false, pageAsked: null, focusAsked: 0 };

function toggleHeatmap() {
  HM.on = !HM.on;
  const b = $("heatmap-toggle");
  b.classList.toggle("active", HM.on);
  b.setAttribute("aria-pressed", String(HM.on));
  if (!HM.on) $("heatmap-info").textContent = "";
  HM.pageAsked = null;
  renderHeatmap();
}

function heatmapUrl(paths, prefetch) {
  return "/api/heatmap?" + paths.map((p) => "path=" + encodeURIComponent(p)).join("&") +
    (prefetch ? "&prefetch=1" : "");
}

async function fetchHeatmaps(paths, prefetch) {
  let res;
  try {
    res = await fetch(heatmapUrl(paths, prefetch));
  } catch (e) {
    throw new Error(UNREACHABLE);
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// The images in focus: [img element, path] pairs.
function heatmapTargets() {
  const out = [];
  const cur = document.querySelector("#page-grid .thumb.cursor");
  if (cur && S.view === "verify") out.push([cur.querySelector("img:not(.heatmap)"), cur.dataset.path]);
  if (!$("zoom").hidden && $("zoom-img").alt) out.push([$("zoom-img"), $("zoom-img").alt]);
  return out.filter(([img]) => img);
}

// Exactly over its image: the same box and fit (the thumbnails crop, the enlarged view fits).
function placeOverlay(over, img) {
  Object.assign(over.style, {
    position: "absolute", margin: "0", pointerEvents: "none", outline: "none",
    top: `${img.offsetTop}px`, left: `${img.offsetLeft}px`,
    width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
    objectFit: getComputedStyle(img).objectFit,
  });
}

// Idempotent: called on every change it watches, including those it makes itself.
function renderHeatmap() {
  const targets = HM.on ? heatmapTargets() : [];
  const keep = new Set();
  for (const [img, path] of targets) {
    let over = img.nextElementSibling;
    if (!(over && over.classList.contains("heatmap") && over.dataset.path === path)) {
      over = el("img", { className: "heatmap", alt: `heatmap of ${path}`, hidden: true });
      over.dataset.path = path;
      img.after(over);
      showHeatmap(over, path);
    }
    placeOverlay(over, img);
    keep.add(over);
  }
  for (const over of document.querySelectorAll("img.heatmap")) {
    if (!keep.has(over)) over.remove();
  }
  if (HM.on) askForPage();
}

async function showHeatmap(over, path) {
  $("heatmap-info").textContent = "heatmap: computing…";
  HM.focusAsked += 1;
  try {
    const body = await fetchHeatmaps([path]);
    const ans = body.heatmaps[path];
    if (!over.isConnected) return;  // the focus moved on meanwhile
    if (ans.error) throw new Error(ans.error);
    over.src = ans.png;
    over.title = `heatmap for ${ans.label} (score ${ans.score.toFixed(2)}), ${body.model}`;
    over.hidden = false;
    $("heatmap-info").textContent = `heatmap: ${ans.label} ${ans.score.toFixed(2)} ` +
      `(${body.model})`;
  } catch (e) {
    if (over.isConnected) $("heatmap-info").textContent = `no heatmap: ${e.message}`;
  } finally {
    HM.focusAsked -= 1;
    askForPage();
  }
}

// The rest of the page in one request, once per page shown, once the image in focus has its
// answer (the server computes these last, in small batches): its answers wait in the server's
// cache, so moving the cursor then shows each overlay at once.
function askForPage() {
  if (!HM.on || HM.focusAsked > 0) return;
  const thumbs = [...document.querySelectorAll("#page-grid .thumb")];
  const paths = thumbs.map((t) => t.dataset.path).filter(Boolean);
  const key = paths.join("\n");
  if (!paths.length || S.view !== "verify" || HM.pageAsked === key) return;
  HM.pageAsked = key;
  fetchHeatmaps(paths.slice(0, 64), true).catch(() => {});  // a failure shows on the image in focus
}

function heatmapInit() {
  $("heatmap-toggle").addEventListener("click", toggleHeatmap);
  const watch = new MutationObserver(renderHeatmap);
  watch.observe($("page-grid"), { childList: true, subtree: true, attributes: true,
                                  attributeFilter: ["class"] });
  watch.observe($("zoom"), { attributes: true, attributeFilter: ["hidden"] });
  watch.observe($("zoom-img"), { attributes: true, attributeFilter: ["src", "alt"] });
  for (const b of document.querySelectorAll("#views button")) {
    b.addEventListener("click", () => setTimeout(renderHeatmap));
  }
  window.addEventListener("resize", renderHeatmap);
}

document.addEventListener("DOMContentLoaded", heatmapInit);
