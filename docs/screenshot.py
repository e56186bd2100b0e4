"""Make docs/review-page.png: the review page on the pipeline's outputs, in headless Chromium.

Run from the repository root after `make repro` (on a fresh clone: the embedded sample), as
`make screenshot`. It starts `chimuffin review` on a free port with a throwaway undo history,
opens the verify view at 1440x900, marks the first page's exceptions on screen as the sample's
true labels say (marks stay in the browser until a page is accepted, so nothing is written to
the label file), saves the picture as a palette PNG small enough to commit, and stops the
server.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image
from playwright.sync_api import sync_playwright

from chimuffin import atomic

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}
MAX_BYTES = 150_000  # what a committed picture may weigh
SERVING = re.compile(r"serving (http://127\.0\.0\.1:\d+/)")
PAGES = Path("data/suggest/pages.parquet")
TRUTH = Path("data/raw/sample/pool_labels.csv")  # the sample stage's true pool labels
ON_SCREEN = 28  # the first four rows of seven thumbnails


def exceptions_on_screen() -> list[int]:
    """Positions on the first page whose true label is not the page's proposal."""
    page = pd.read_parquet(PAGES).query("page == page.min()").sort_values("position")
    truth = pd.read_csv(TRUTH).set_index("relative_path")["label"]
    wrong = page["path"].map(truth) != page["label"]
    return [int(p) for p in page.loc[wrong, "position"] if p < ON_SCREEN]


def start_review(state: Path) -> tuple[subprocess.Popen, str]:
    """`chimuffin review` on a free port; returns the process and the page's address."""
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("chimuffin")), "review", "--port", "0",
         "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in server.stdout:
        lines.append(line)
        if found := SERVING.search(line):
            return server, found.group(1)
    server.wait()
    raise SystemExit("screenshot: chimuffin review stopped before serving (run `make repro` "
                     "first?):\n" + "".join(lines))


def wait_for_thumbnails(page, timeout_s: float = 30) -> None:
    """Every image of the page on screen decoded (polled: the page's Content-Security-Policy
    forbids the eval behind Playwright's wait_for_function). The hidden queue's images load
    lazily, so only the page grid's count."""
    loaded = ("[...document.querySelectorAll('#page-grid img')]"
              ".every(i => i.complete && i.naturalWidth > 0)")
    for _ in range(int(timeout_s * 10)):
        if page.evaluate(loaded):
            return
        page.wait_for_timeout(100)
    raise SystemExit(f"screenshot: the thumbnails did not load within {timeout_s:.0f} s")


def capture(url: str, marks: list[int]) -> bytes:
    """The verify view with the images at `marks` marked the other class, as PNG bytes."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.locator("#page-grid > *").first.wait_for()
        wait_for_thumbnails(page)
        cursor = 0  # the cursor starts on the page's first image
        for position in marks:
            for _ in range(position - cursor):
                page.keyboard.press("ArrowRight")
            page.keyboard.press("o")
            cursor = position
        page.wait_for_timeout(300)  # the marks' redraw
        shot = page.screenshot()
        browser.close()
    return shot


def small_png(shot: bytes) -> tuple[bytes, int]:
    """A palette PNG under MAX_BYTES: 256 colours, or fewer until it fits."""
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    for colours in (256, 192, 128, 96, 64):
        out = io.BytesIO()
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
        if out.tell() <= MAX_BYTES:
            return out.getvalue(), colours
    raise SystemExit(f"screenshot: even 64 colours weigh {out.tell():,} bytes "
                     f"(limit {MAX_BYTES:,}); nothing written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/review-page.png",
                        help="where the picture goes (default: docs/review-page.png)")
    args = parser.parse_args(argv)
    for needed in (PAGES, TRUTH):
        if not needed.is_file():
            raise SystemExit(f"screenshot: {needed} is missing: run `make repro` on the "
                             "embedded sample first (from the repository root)")
    marks = exceptions_on_screen()
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_review(Path(tmp) / "review-state.json")
        try:
            shot = capture(url, marks)
        finally:
            server.terminate()
            server.wait(timeout=30)
    png, colours = small_png(shot)
    atomic.write_bytes(args.out, png)  # never a half-written picture
    print(f"screenshot: wrote {args.out} ({VIEWPORT['width']}x{VIEWPORT['height']}, "
          f"{colours} colours, {len(png):,} bytes; {len(marks)} exception(s) marked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
