"""Screenshot a page of the Prefect or MLflow UI in headless chromium, once it shows the
text you expect (a run's state, a model version), for docs and issue notes.

    python scripts/screenshot.py http://127.0.0.1:4200/runs/flow-run/ID out.png \
        --expect Completed --expect compile-on-new-version

Exits 1 naming the text that never appeared (the page is still saved, to look at).
Uses Debian's `chromium` through Playwright (no browser download).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def shoot(url: str, out: Path, expect: list[str], width: int, height: int,
          timeout_s: float, click: list[str] | None = None) -> list[str]:
    """Save a full-page PNG of `url`; returns the expected texts that did not appear."""
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (make chromium-installed)")
    missing = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)  # UIs poll: never idle
            for text in expect:
                try:
                    page.get_by_text(text).first.wait_for(timeout=timeout_s * 1000)
                except PlaywrightTimeout:
                    missing.append(text)
            for selector in click or []:  # e.g. close a side panel; best effort
                try:
                    page.locator(selector).first.click(timeout=3000)
                except PlaywrightTimeout:
                    print(f"note: nothing to click for {selector!r}")
            page.wait_for_timeout(1000)  # charts and fonts settle
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=128).save(out, optimize=True)  # a quarter of the PNG's size
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect", action="append", default=[],
                        help="text the page must show before the shot (repeatable)")
    parser.add_argument("--click", action="append", default=[],
                        help="Playwright selector to click before the shot, e.g. "
                        "'role=button[name=\"Close\"]' (repeatable)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per wait")
    args = parser.parse_args()
    missing = shoot(args.url, args.out, args.expect, args.width, args.height, args.timeout,
                    args.click)
    print(f"saved {args.out}")
    if missing:
        print(f"error: {args.url} never showed {missing!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
