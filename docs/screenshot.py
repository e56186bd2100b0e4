"""Make docs/review-page.png: the review page on the pipeline's outputs, in headless Chromium.

Run from the repository root after `make repro` (on a fresh clone: the embedded sample), as
`make screenshot`. It starts `chimuffin review` on a free port with a throwaway undo history,
opens the verify view at 1440x900, marks two images as exceptions (marks stay in the browser
until a page is accepted, so nothing is written to the label file), saves the picture as a
palette PNG small enough to commit, and stops the server.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from chimuffin import atomic

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}
MAX_BYTES = 150_000  # what a committed picture may weigh
SERVING = re.compile(r"serving (http://127\.0\.0\.1:\d+/)")


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


def capture(url: str) -> bytes:
    """The verify view with two exceptions marked, as PNG bytes."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.locator("#page-grid > *").first.wait_for()
        page.wait_for_function(
            "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        for key in ("ArrowRight", "ArrowRight", "o", "ArrowRight", "ArrowRight", "ArrowRight",
                    "u"):  # the third image: the other class; the sixth: undefined
            page.keyboard.press(key)
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
    if not Path("data/suggest/pages.parquet").is_file():
        raise SystemExit("screenshot: data/suggest/pages.parquet is missing: run `make repro` "
                         "first (from the repository root)")
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_review(Path(tmp) / "review-state.json")
        try:
            shot = capture(url)
        finally:
            server.terminate()
            server.wait(timeout=30)
    png, colours = small_png(shot)
    atomic.write_bytes(args.out, png)  # never a half-written picture
    print(f"screenshot: wrote {args.out} ({VIEWPORT['width']}x{VIEWPORT['height']}, "
          f"{colours} colours, {len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
