"""Retake the README's screenshots from the running app with the embedded default model.

    .venv/bin/python docs/screenshots.py [--data DIR]

Writes docs/screenshot.png (an example slice classified), docs/refused-screenshot.png (a photo:
the notice, no class bar, no heatmap) and docs/scan-screenshot.png (the Whole scan tab on 24
IQ-OTH/NCCD slices from DIR, default ../shared/data). Needs Debian's chromium and Playwright,
as tests/test_browser.py does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCAN_SLICES = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, app: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if app.poll() is not None:
            sys.exit("error: the app stopped before it answered")
        try:
            urllib.request.urlopen(url + "/gradio_api/info", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"error: the app did not answer within {seconds:.0f} s")


def main() -> None:
    import matplotlib
    from playwright.sync_api import expect, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    malignant = args.data / "iqothnccd" / "The IQ-OTHNCCD lung cancer dataset" / "Malignant cases"
    scan = [malignant / f"Malignant case ({number}).jpg" for number in range(100, 100 + SCAN_SLICES)]
    if not all(path.is_file() for path in scan):
        sys.exit(f"error: {malignant}: the IQ-OTH/NCCD slices are not there (see ../shared/data/README.md)")
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

    port, temp = free_port(), tempfile.mkdtemp(prefix="screenshots-gradio-")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": temp}
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, app)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)
            page.goto(url)
            run = page.get_by_role("button", name="Classify", exact=True)

            page.locator("#examples img[alt='malignant case 148']").click()
            page.locator("#preview img").wait_for()
            run.click()
            page.locator("#heatmap img").wait_for()
            page.screenshot(path=str(DOCS / "screenshot.png"), full_page=True)

            block = page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT slice:"))
            block.get_by_role("button", name="Clear", exact=True).click()
            block.locator("input[type=file]").set_input_files(str(photo))
            page.locator("#preview img").wait_for()
            run.click()
            expect(page.get_by_test_id("label-output-value")).to_have_text("Unlike the training data: no diagnosis")
            expect(page.locator("#note")).to_contain_text("not meaningful")
            page.screenshot(path=str(DOCS / "refused-screenshot.png"), full_page=True)

            page.get_by_role("tab", name="Whole scan").click()
            files = page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT scan:"))
            files.locator("input[type=file]").set_input_files([str(path) for path in scan])
            expect(files.get_by_test_id("download-link")).to_have_count(len(scan))
            page.get_by_role("button", name="Classify the scan", exact=True).click()
            page.locator("#scan-top img").first.wait_for()
            page.locator("#scan-plot").locator("canvas, svg").first.wait_for()
            time.sleep(1)  # the plot's drawing animation
            page.screenshot(path=str(DOCS / "scan-screenshot.png"), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    print("\n".join(str(DOCS / name) for name in ("screenshot.png", "refused-screenshot.png", "scan-screenshot.png")))


if __name__ == "__main__":
    main()
