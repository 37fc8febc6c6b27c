"""The demo page in a real browser: Playwright driving Debian's chromium against `python app.py`.

Playwright's own browser download does not work here, so the tests use /usr/bin/chromium
(`apt-get install chromium`); without it they skip, except in CI (CI=true), where they fail.
No test waits for a fixed time: each waits for what it needs to see.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, WAIT_S, require, synthetic_slice
from testkit.app_server import AppServer, start_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-quic", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
README_SCREENSHOT = REPO / "docs" / "screenshot.png"
TIMEOUT_MS = int(WAIT_S * 1000)


# Before the session fixtures build anything; CI installs chromium (see .ci/run).
require(CHROMIUM.exists(), f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tiny_package, cache_root, tmp_path_factory) -> AppServer:
    server = start_app(tiny_package, cache_root, tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)  # a loaded CI machine can take more than expect's 5 s to answer
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    failed_before = request.session.testsfailed
    page.goto(server.url)
    page.get_by_role("button", name="Classify", exact=True).wait_for()
    yield page
    if request.session.testsfailed > failed_before:  # keep what the page and the server looked like
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
        (ARTIFACTS / "browser-app.log").write_text(server.log())
    context.close()


def file_block(page):
    """The "One slice" tab's gr.File, found by its label."""
    return page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT slice:"))


def upload(page, path: Path) -> None:
    """Put a file into the "One slice" tab's file input, as a drop or a file dialog would."""
    block = file_block(page)
    clear = block.get_by_role("button", name="Clear", exact=True)
    if clear.count():  # a file is there already: remove it, as a person would, to show the drop zone
        clear.click()
    block.locator("input[type=file]").set_input_files(str(path))
    # Once uploaded, the file shows as a row labelled with its name, with a link to the server's copy.
    row = block.locator("tr").filter(has=page.locator(f'[aria-label="{path.name}"]'))
    row.get_by_test_id("download-link").wait_for()


def error_toast(page):
    """Gradio shows a gr.Error as a toast: role=status, data-testid toast-body, message in toast-text."""
    return page.locator("[data-testid='toast-body'].error [data-testid='toast-text']")


def picture(page, elem_id: str):
    """The <img> of a gr.Image, once loaded; returns (locator, natural width, natural height)."""
    image = page.locator(f"#{elem_id} img")
    image.wait_for()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    width, height = image.evaluate("image => [image.naturalWidth, image.naturalHeight]")
    return image, width, height


def test_page_shows_the_upload_at_once_classifies_it_and_explains_errors(page, server, tiny_package, tmp_path):
    from playwright.sync_api import expect

    from lung_classifier import LungClassifier

    expect(page.get_by_text("not a medical device")).to_be_visible()
    expect(page.get_by_role("tab", name="Model card")).to_be_visible()

    slice_path = tmp_path / "malignant-slice.png"
    synthetic_slice("Malignant", 12).save(slice_path)
    expected = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True).analyze(slice_path)
    shown = "Unlike the training data: no diagnosis" if expected.out_of_distribution else expected.label

    upload(page, slice_path)
    _, width, height = picture(page, "preview")  # before "Classify": the decoded slice, at its size
    with Image.open(slice_path) as image:
        assert (width, height) == image.size
    expect(page.get_by_test_id("label-output-value")).to_have_count(0)
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.get_by_test_id("label-output-value")).to_have_text(shown)
    from demo.pictures import legend_height

    heatmap, width, height = picture(page, "heatmap")
    with Image.open(slice_path) as image:
        assert (width, height) == (2 * image.width + 8, image.height + legend_height(image.width))
    assert "regions that drove the label" in heatmap.get_attribute("alt")  # alt text
    expect(page.locator("#note")).to_contain_text("Out-of-distribution score")
    expect(page.locator("#note")).to_contain_text("flagged above")  # the score with its threshold
    expect(page.locator("#upload-lifetime")).to_contain_text("kept on the server while this page is open")

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser-slice.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if not README_SCREENSHOT.exists():
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, README_SCREENSHOT)

    # Classify pressed twice on one upload: answered twice (each answer is a new overlay file), no error.
    first = heatmap.get_attribute("src")
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#heatmap img")).not_to_have_attribute("src", first)
    expect(page.get_by_test_id("label-output-value")).to_have_text(shown)
    expect(error_toast(page)).to_have_count(0)
    assert list(server.upload_root.rglob(slice_path.name)), "the upload went while its page is open"

    notes = tmp_path / "notes.txt"
    notes.write_text("Patient notes, not an image.\n" * 20)
    upload(page, notes)  # refused at once, by the preview
    expect(error_toast(page)).to_contain_text(re.compile(r"Cannot classify this file: notes\.txt is not an image"))
    expect(error_toast(page)).to_contain_text(re.compile("export|upload", re.I))  # what to send, said once
    expect(page.locator("#preview img")).to_have_count(0)
    # The viewport (the toast is fixed to it), with the toast's slide-in animation finished.
    page.screenshot(path=str(ARTIFACTS / "browser-error.png"), animations="disabled")
    upload(page, slice_path)  # the next request closes the earlier error's toast: no stale error over a result
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.get_by_test_id("label-output-value")).to_have_text(shown)
    expect(error_toast(page)).to_have_count(0)

    page.get_by_role("tab", name="Model card").click()
    expect(page.get_by_role("heading", name=re.compile("Lung CT slice classifier: tiny-test"))).to_be_visible()
    plot = page.get_by_role("img", name="ROC curves")  # the card's plots/ images, inlined by the app
    plot.scroll_into_view_if_needed()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=plot.element_handle())


def test_an_example_is_shown_at_once_and_classified_with_its_attribution(page, server, tiny_package):
    from playwright.sync_api import expect

    from lung_classifier import LungClassifier

    expect(page.get_by_text("CC BY 4.0")).to_be_visible()
    expect(page.get_by_text("doi:10.17632/bhmdr45bh2")).to_be_visible()
    example = REPO / "examples" / "malignant-case-148.jpg"
    expected = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True).analyze(example)
    shown = "Unlike the training data: no diagnosis" if expected.out_of_distribution else expected.label

    thumbnail = page.locator("#examples img[alt='malignant case 148']")  # a thumbnail, its caption as alt text
    for attempt in range(2):  # the example still works after its first requests (it is never deleted)
        thumbnail.click()
        _, width, height = picture(page, "preview")
        with Image.open(example) as image:
            assert (width, height) == image.size
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_test_id("label-output-value")).to_have_text(shown)
        expect(error_toast(page)).to_have_count(0)
        if attempt == 0:
            file_block(page).get_by_role("button", name="Clear", exact=True).click()
            expect(page.locator("#preview img")).to_have_count(0)


def test_whole_scan_tab_shows_the_verdict_the_curve_and_the_top_slices(page, server, tiny_package, tmp_path):
    from playwright.sync_api import expect

    from lung_classifier import LungClassifier

    paths = []
    for index in range(1, 7):
        paths.append(tmp_path / f"case ({index}).png")
        synthetic_slice("Malignant" if index in (3, 4) else "Normal", 500 + index).resize((112, 112)).save(paths[-1])
    expected = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True).analyze_scan(paths)

    page.get_by_role("tab", name="Whole scan").click()
    block = page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT scan:"))
    block.locator("input[type=file]").set_input_files([str(path) for path in paths])
    expect(block.get_by_test_id("download-link")).to_have_count(len(paths))
    page.get_by_role("button", name="Classify the scan", exact=True).click()
    expect(page.locator("#scan-note")).to_contain_text(f"{len(paths)} slices" if not expected.out_of_distribution
                                                       else "Unlike the training data: no diagnosis")
    expect(page.locator("#scan-top img")).to_have_count(len(expected.top))
    expect(page.locator("#scan-plot").locator("canvas, svg").first).to_be_visible()  # the curve, drawn
    expect(error_toast(page)).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-scan.png"), full_page=True)
    captions = page.locator("#scan-top").inner_text()
    numbers = [int(n) for n in re.findall(r"Slice (\d+):", captions)]
    assert numbers == [expected.slices[i].number for i in expected.top]
    page.context.close()  # the page's session ends: its uploads go
    deadline = time.monotonic() + WAIT_S
    while any(server.upload_root.rglob("case (*).png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(list(server.upload_root.rglob(path.name)) for path in paths), "an upload outlived its page"


def test_whole_scan_verdict_goes_when_the_upload_is_cleared_or_replaced(page, tmp_path):
    """No verdict stands beside files it was not given: clearing the upload, or choosing other files, wipes it."""
    from playwright.sync_api import expect

    first, second = [], []
    for index in range(1, 5):
        first.append(tmp_path / f"first ({index}).png")
        synthetic_slice("Normal", 600 + index).resize((112, 112)).save(first[-1])
        second.append(tmp_path / f"second ({index}).png")
        synthetic_slice("Malignant", 700 + index).resize((112, 112)).save(second[-1])
    page.get_by_role("tab", name="Whole scan").click()
    block = page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT scan:"))
    verdict = page.locator("#scan-label [data-testid='label-output-value']")
    blank = re.compile(r"^\s*$")

    def classify(paths: list[Path]) -> None:
        block.locator("input[type=file]").set_input_files([str(path) for path in paths])
        expect(block.get_by_test_id("download-link")).to_have_count(len(paths))
        page.get_by_role("button", name="Classify the scan", exact=True).click()
        expect(verdict).to_have_count(1)
        expect(page.locator("#scan-note")).not_to_have_text(blank)
        expect(page.locator("#scan-top img").first).to_be_visible()

    def assert_wiped() -> None:
        expect(verdict).to_have_count(0)
        expect(page.locator("#scan-note")).to_have_text(blank)
        expect(page.locator("#scan-why")).to_have_text(blank)
        expect(page.locator("#scan-top img")).to_have_count(0)

    classify(first)
    block.get_by_role("button", name="Clear", exact=True).click()
    assert_wiped()
    classify(first)
    block.locator("input[type=file]").set_input_files([str(path) for path in second])  # other files, no Clear
    assert_wiped()
    expect(error_toast(page)).to_have_count(0)


CLASS_PERCENTAGE = re.compile(r"(Normal|Benign|Malignant)\s*\d+(\.\d+)?\s*%")
"""A class name with a percentage, as the label's bars show one (inner_text puts them on separate lines)."""


def test_a_refused_photo_shows_no_finding_and_its_details_agree_with_the_label(page, server, tiny_package):
    """The flagged photo: no class percentage anywhere on the page, no heatmap, details that name no class."""
    import matplotlib
    from playwright.sync_api import expect

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    run = page.get_by_role("button", name="Classify", exact=True)
    expect(run).to_be_disabled()  # nothing to classify yet: no empty click to refuse
    upload(page, photo)
    expect(run).to_be_enabled()
    run.click()
    notice = "Unlike the training data: no diagnosis"
    expect(page.get_by_test_id("label-output-value")).to_have_text(notice)
    expect(page.locator("#label-why")).to_contain_text("not meaningful")
    expect(page.locator("#note")).to_contain_text("not meaningful")
    expect(page.locator("#heatmap img")).to_have_count(0)
    page.get_by_text("Details (JSON)").click()
    details = page.locator(".json-holder, [data-testid='json']").first
    expect(details).to_contain_text("verdict")
    text = page.locator("body").inner_text()
    assert not CLASS_PERCENTAGE.search(text), CLASS_PERCENTAGE.search(text)
    shown = details.inner_text()
    assert notice in shown and not any(label in shown for label in ("Normal", "Benign", "Malignant")), shown
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-refused.png"), full_page=True)


def test_slice_numbers_match_across_page_cli_and_api(page, server, tiny_package, tmp_path):
    """One zip: the page's gallery captions, the CLI's text and the API's `top_numbers` name the same slices."""
    import subprocess
    import sys
    import zipfile

    from gradio_client import Client, handle_file
    from playwright.sync_api import expect

    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for index in range(1, 9):
            image = tmp_path / f"case ({index}).png"
            synthetic_slice("Malignant" if index in (5, 6) else "Normal", 700 + index).resize((112, 112)).save(image)
            zipped.write(image, f"scan/{image.name}")

    page.get_by_role("tab", name="Whole scan").click()
    block = page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text="CT scan:"))
    block.locator("input[type=file]").set_input_files(str(archive))
    page.get_by_role("button", name="Classify the scan", exact=True).click()
    expect(page.locator("#scan-top img").first).to_be_visible()
    on_page = [int(n) for n in re.findall(r"Slice (\d+):", page.locator("#scan-top").inner_text())]

    client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    _, details = client.predict(handle_file(str(archive)), api_name="/scan")
    client.close()
    cli = subprocess.run([sys.executable, "-m", "lung_classifier", "scan", str(archive), "--model", str(tiny_package),
                          "--trust-saved-model"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr
    in_cli = [int(n) for n in re.findall(r"^  slice (\d+) ", cli.stdout, flags=re.M)]
    assert on_page and on_page == in_cli == details["top_numbers"]
    assert details["top_numbers"] == [details["slices"][i]["number"] for i in details["top"]]
