"""Render a report (`lrgi-ooc report`) in headless Chromium: a screenshot, and a check that
every image of the page loaded (exit 1 naming the broken ones).

    .venv/bin/python tools/render_report.py runs/quickstart/report --screenshot /tmp/report.png

The page's inline script sets `document.body.dataset.imagesLoaded` (images with
`complete && naturalWidth > 0`) on load; the DOM dumped after load carries it as
`data-images-loaded`, compared here with the number of <img> elements of index.html.
Chromium runs with a fresh profile and no network features, so a page that needed the
network would show it as a broken image rather than fetch anything.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


class _Images(HTMLParser):
    """The src of every <img> in a document, and the data-* attributes of <body>."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")
        elif tag == "body":
            self.body = {k: v or "" for k, v in attrs}


def _parse(text: str) -> _Images:
    p = _Images()
    p.feed(text)
    return p


def find_chromium() -> str:
    """/usr/bin/chromium, installed with apt (Debian's package) when it is missing."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    print("chromium not found; installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True)
    return CHROMIUM


def _chromium(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="render-report-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def render(report_dir: Path, screenshot: Path, width: int = 1400, height: int = 4000,
           timeout: float = 120) -> list[str]:
    """Take the screenshot; return the src of every image that did not load ([] when all
    did). Raises RuntimeError when Chromium fails or the page's script did not run."""
    index = (report_dir / "index.html").resolve()
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no index.html (not a report directory)")
    exe = find_chromium()
    url = index.as_uri()
    expected = _parse(index.read_text(encoding="utf-8")).srcs
    screenshot = screenshot.resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # --virtual-time-budget lets the load event (and its handler) run before the dump
    shot = _chromium(exe, [f"--screenshot={screenshot}", f"--window-size={width},{height}",
                           "--virtual-time-budget=5000", url], timeout)
    if shot.returncode != 0 or not screenshot.is_file():
        raise RuntimeError(f"chromium --screenshot failed (exit {shot.returncode}):\n"
                           f"{shot.stderr[-2000:]}")
    dump = _chromium(exe, ["--dump-dom", "--virtual-time-budget=5000",
                           f"--window-size={width},{height}", url], timeout)
    if dump.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed (exit {dump.returncode}):\n"
                           f"{dump.stderr[-2000:]}")
    dom = _parse(dump.stdout)
    loaded = dom.body.get("data-images-loaded")
    if loaded is None or not re.fullmatch(r"\d+", loaded):
        raise RuntimeError("the page's image-count script did not run (no data-images-loaded "
                           "on <body> in the dumped DOM)")
    broken = dom.body.get("data-images-broken", "").split()
    if int(loaded) != len(expected) and not broken:
        broken = [f"({len(expected) - int(loaded)} of {len(expected)} images)"]
    return broken


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", type=Path, help="directory written by `lrgi-ooc report`")
    ap.add_argument("--screenshot", type=Path, required=True, metavar="OUT.png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args(argv)
    try:
        broken = render(args.report_dir, args.screenshot, args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"render_report: error: {e}", file=sys.stderr)
        return 2
    n = len(_parse((args.report_dir / "index.html").read_text(encoding="utf-8")).srcs)
    if broken:
        print(f"render_report: {len(broken)} of {n} images did not load: {' '.join(broken)}",
              file=sys.stderr)
        return 1
    print(f"all {n} images loaded; screenshot written to {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
