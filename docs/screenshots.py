"""Retake the README's screenshots from the running app with the embedded default model.

    .venv/bin/python docs/screenshots.py [--data DIR]

Writes docs/screenshot.png (an example slice classified), docs/refused-screenshot.png (a photo:
the notice, no class bar, no heatmap) and docs/scan-screenshot.png (the Whole scan tab on 24
IQ-OTH/NCCD slices from DIR, default ../shared/data). Needs Debian's chromium and Playwright,
as tests/test_browser.py does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from docs/: the repository's testkit is importable

from testkit.app_server import AppServer, app_command, app_env, free_port, spawn  # noqa: E402
DOCS = REPO / "docs"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCAN_SLICES = 24


def wait_for(server: AppServer, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"error: the app stopped before it answered:\n{server.log_tail()}")
        if server.answers():
            return
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

    port, temp = free_port(), Path(tempfile.mkdtemp(prefix="screenshots-gradio-"))
    app = spawn(app_command(port), port, temp / "app.log", app_env(GRADIO_TEMP_DIR=str(temp)), temp)
    url = app.url
    try:
        wait_for(app)
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
        app.stop()
        shutil.rmtree(temp, ignore_errors=True)
    print("\n".join(str(DOCS / name) for name in ("screenshot.png", "refused-screenshot.png", "scan-screenshot.png")))


if __name__ == "__main__":
    main()
