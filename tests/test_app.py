"""The real demo server (`python app.py`), driven through gradio_client as an API user would."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import REPO, WAIT_S, synthetic_slice
from testkit.app_server import AppServer, local_url_line, start_app
from testkit.dicom_files import ct_slice
from testkit.hostile_corpus import encode, png_claiming_size


LABELS = ["Normal", "Benign", "Malignant"]


@pytest.fixture(scope="module")
def server(tiny_package, cache_root, tmp_path_factory) -> AppServer:
    server = start_app(tiny_package, cache_root, tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client-downloads")


def new_client(server: AppServer, downloads: Path) -> Client:
    return Client(server.url, verbose=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def client(server, downloads) -> Client:
    return new_client(server, downloads)


@pytest.fixture(scope="module")
def library(tiny_package):
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


def send(path: Path):
    return handle_file(str(path))


def confidences(value: dict) -> dict[str, float]:
    """A gr.Label value as {label: confidence}."""
    return {item["label"]: item["confidence"] for item in value["confidences"]}


NOTICE = "Unlike the training data: no diagnosis"


def assert_same_prediction(value: dict, expected: dict) -> None:
    """A gr.Label value says what the library's predict() says: its decided label (or the notice), its probabilities."""
    assert value["label"] == (NOTICE if expected["out_of_distribution"] else expected["label"])
    got, probabilities = confidences(value), expected["probabilities"]
    assert set(got) == set(probabilities)
    for label in probabilities:
        assert got[label] == pytest.approx(probabilities[label], abs=1e-5), label


# --- input files ------------------------------------------------------------------------------


def animated_gif() -> bytes:
    frames = [Image.new("L", (40, 40), 0), Image.new("L", (40, 40), 255)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def truncated_jpeg() -> bytes:
    data = encode(synthetic_slice("Malignant", 3).resize((200, 200)), "JPEG", quality=95)
    return data[: len(data) // 2]


BAD_INPUTS = {  # file name -> (bytes, key phrase of the error message)
    "empty.png": (lambda: b"", "is empty (0 bytes)"),
    "notes.txt": (lambda: b"Patient notes, not an image.\n" * 20, "not an image"),
    "truncated.jpg": (truncated_jpeg, "damaged or truncated"),
    "bomb.png": (lambda: png_claiming_size(100_000, 100_000), "too large"),
    "pixel.png": (lambda: encode(Image.new("L", (1, 1)), "PNG"), "too small"),
    "animated.gif": (animated_gif, "is an animated image"),
    "no-pixels.dcm": (lambda: ct_slice(None), "without pixel data"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    paths = {}
    for index, label in enumerate(LABELS):
        paths[label] = folder / f"{label.lower()}-slice.png"
        synthetic_slice(label, 12 + index).save(paths[label])
    for name, (make, _) in BAD_INPUTS.items():
        paths[name] = folder / name
        paths[name].write_bytes(make())
    grey = np.asarray(synthetic_slice("Benign", 7), np.uint16)
    paths["16-bit.png"] = folder / "16-bit.png"
    Image.fromarray(grey * 257).save(paths["16-bit.png"])  # mode I;16
    # Grey levels back to HU through the lung window (centre -600, width 1500), stored as HU + 1024.
    hounsfield = np.asarray(synthetic_slice("Malignant", 8), np.float64) / 255.0 * 1500.0 - 1350.0
    paths["slice.dcm"] = folder / "slice.dcm"
    paths["slice.dcm"].write_bytes(ct_slice(hounsfield))
    return paths


# --- startup and API surface ------------------------------------------------------------------


def test_startup_says_where_the_model_came_from_and_the_url(server, tiny_package):
    log = server.log()
    assert f"Model: local package {tiny_package}" in log, log
    assert local_url_line(log).rstrip("/") == server.url, log


STARTS_LEAN = """
import sys
import numpy as np
from demo.startup import lean_tensorflow_import, warm_up
assert lean_tensorflow_import()
from lung_classifier import LungClassifier
classifier = LungClassifier.from_pretrained(sys.argv[1], trust_saved_model=True)
warm_up(classifier).join()
print(list(classifier.predict(np.full((64, 64), 100, np.uint8))["probabilities"]) == list(classifier.labels),
      "keras" in sys.modules, "sklearn" in sys.modules)
"""


def test_app_start_up_loads_and_warms_the_model_without_importing_keras(tiny_package):
    """app.py spares the Keras and scikit-learn imports that `import tensorflow` does (1.5 s)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", STARTS_LEAN, str(tiny_package)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "False", "False"], done.stdout  # answered; no Keras, no scikit-learn


def test_view_api_lists_the_endpoints_predict_first_with_named_outputs_and_a_real_example(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints)[:4] == ["/predict", "/analyze", "/batch", "/scan"]
    text = json.dumps(endpoints)
    assert not re.search(r"(value|parameter)_\d+", text) and "sample_file.pdf" not in text  # every part named
    assert [p["parameter_name"] for p in endpoints["/predict"]["parameters"]] == ["slice_file"]
    returns = [r["label"] for r in endpoints["/analyze"]["returns"]]
    assert returns[0].startswith("Prediction (") and returns[1:] == ["why", "Slice and Grad-CAM heatmap", "note",
                                                                     "details"]
    assert "examples/normal-case-320.jpg" in json.dumps(endpoints["/predict"]["parameters"][0]["example_input"])
    # A scan is the caller's own: a named placeholder, not one example JPEG sent as a "scan".
    assert "path/to/your-scan.zip" in json.dumps(endpoints["/scan"]["parameters"][0]["example_input"])
    assert "examples/" not in json.dumps(endpoints["/scan"]["parameters"][0]["example_input"])


def test_model_card_tab_carries_its_plots_inline(server, tiny_package):
    # The card's plots/*.png links cannot be fetched by the page: the app inlines them as data URIs.
    with urllib.request.urlopen(server.url + "/config", timeout=WAIT_S) as response:
        config = response.read().decode()
    assert "Lung CT slice classifier: tiny-test" in config
    assert "](plots/" not in config
    plots = (tiny_package / "README.md").read_text().count("](plots/")
    assert plots >= 3
    assert config.count("](data:image/png;base64,") == plots


# --- results equal the library's --------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_predict_returns_exactly_the_library_prediction(client, library, files, label):
    value = client.predict(send(files[label]), api_name="/predict")
    assert_same_prediction(value, library.predict(files[label]))


def test_analyze_returns_label_overlay_note_and_details(client, library, files):
    path = files["Malignant"]
    label, _, overlay, note, details = client.predict(send(path), api_name="/analyze")
    expected = library.analyze(path)

    assert not expected.out_of_distribution
    assert details["label"] == details["verdict"] == expected.label
    assert details["ood_score"] == pytest.approx(expected.ood_score, rel=1e-4, abs=1e-4)
    assert details["out_of_distribution"] is expected.out_of_distribution
    assert details["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert_same_prediction(label, expected.as_dict())
    assert f"**{expected.label}**" in note
    assert f"Out-of-distribution score {expected.ood_score:.2f} (flagged above {library.ood_threshold:.2f})" in note

    from demo.pictures import legend_height

    assert Path(overlay).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(overlay) as image, Image.open(path) as original:
        assert image.format == "PNG"
        assert image.size == (2 * original.width + 8, original.height + legend_height(original.width))


def test_batch_gives_one_row_per_file_and_an_error_row_for_a_non_image(client, library, files):
    paths = [files["Normal"], files["notes.txt"], files["Malignant"]]
    table = client.predict([send(path) for path in paths], api_name="/batch")
    assert table["headers"] == ["file", "prediction", *LABELS, "note"]
    rows = table["data"]
    assert [row[0] for row in rows] == [path.name for path in paths]
    for row, path in zip(rows, paths):
        if path.name == "notes.txt":
            assert row[1] == "error"
            assert "not an image" in row[-1]
            continue
        expected = library.predict(path)
        assert row[1] == expected["verdict"]
        if expected["out_of_distribution"]:  # a person's table shows no probability for a refused input
            assert row[2:5] == [None, None, None]
        else:
            assert row[2:5] == pytest.approx([expected["probabilities"][label] for label in LABELS], abs=1e-4)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["/predict", "/analyze"])
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_reason_and_the_server_keeps_working(client, server, library, files,
                                                                          name, endpoint):
    with pytest.raises(AppError) as refused:
        client.predict(send(files[name]), api_name=endpoint)
    message = str(refused.value)
    assert message.startswith("Cannot classify this file:"), message
    assert BAD_INPUTS[name][1] in message, message
    assert str(server.upload_root) not in message  # a reason for a person, not a server path

    value = client.predict(send(files["Normal"]), api_name="/predict")
    assert_same_prediction(value, library.predict(files["Normal"]))


@pytest.mark.parametrize("name", ["16-bit.png", "slice.dcm"])
def test_16_bit_png_and_dicom_are_classified(client, library, files, name):
    path = files[name]
    if name == "16-bit.png":
        with Image.open(path) as image:
            assert image.mode == "I;16"
    assert_same_prediction(client.predict(send(path), api_name="/predict"), library.predict(path))
    *_, details = client.predict(send(path), api_name="/analyze")
    expected = library.analyze(path)
    assert details["label"] == expected.as_dict()["label"] and details["verdict"] == expected.verdict
    if expected.out_of_distribution:  # every DICOM file, with this package
        assert "probabilities" not in details
    else:
        assert details["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


# --- load ---------------------------------------------------------------------------------------


def test_sixteen_concurrent_clients_are_all_answered_correctly(server, downloads, library, tmp_path):
    clients, requests = 16, 3
    jobs = []  # (client index, file, expected probabilities), every file distinct
    for client_index in range(clients):
        for request in range(requests):
            label = LABELS[(client_index + request) % 3]
            path = tmp_path / f"client{client_index:02d}-{request}-{label}.png"
            synthetic_slice(label, 100 + client_index * requests + request).save(path)
            jobs.append((client_index, path, library.predict(path)))
    barrier = threading.Barrier(clients)

    def one_client(index: int) -> list[tuple[Path, dict]]:
        client = new_client(server, downloads)
        barrier.wait(timeout=WAIT_S)
        return [(path, client.predict(send(path), api_name="/predict"))
                for client_index, path, _ in jobs if client_index == index]

    with ThreadPoolExecutor(clients) as pool:
        answers = [answer for result in pool.map(one_client, range(clients)) for answer in result]

    assert len(answers) == clients * requests
    expected = {path: probabilities for _, path, probabilities in jobs}
    for path, value in answers:
        assert_same_prediction(value, expected[path])


# --- server-side batching and shared uploads -------------------------------------------------------


def test_a_bad_upload_does_not_fail_good_requests_batched_with_it(server, downloads, library, tmp_path):
    from gradio_client.utils import Status

    blocker = tmp_path / "large-slice.png"  # ~0.7 s to decode: the others queue up behind it, then batch
    Image.fromarray(np.tile(np.asarray(synthetic_slice("Normal", 1).resize((100, 100))), (60, 60))).save(blocker)
    paths = []
    for index in range(7):
        paths.append(tmp_path / f"good-{index}.png")
        synthetic_slice("Benign", 200 + index).save(paths[-1])
    bad = tmp_path / "bad.txt"
    bad.write_text("not an image " * 10)
    clients = [new_client(server, downloads) for _ in range(9)]
    first = clients[0].submit(send(blocker), api_name="/predict")
    deadline = time.monotonic() + WAIT_S
    while first.status().code not in (Status.PROCESSING, Status.FINISHED) and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs = [client.submit(send(path), api_name="/predict") for client, path in zip(clients[1:], [bad, *paths])]
    first.result(timeout=WAIT_S)
    with pytest.raises(AppError, match="not an image"):
        jobs[0].result(timeout=WAIT_S)
    for job, path in zip(jobs[1:], paths):
        assert_same_prediction(job.result(timeout=WAIT_S), library.predict(path))


def test_concurrent_requests_with_the_same_file_all_succeed(server, downloads, library, files):
    path = files["Benign"]
    expected = library.predict(path)

    def one_client(_: int) -> list[dict]:
        client = new_client(server, downloads)
        return [client.predict(send(path), api_name=endpoint) for endpoint in ("/predict", "/analyze")]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_client, range(8)))
    for predicted, (*_, details) in answers:
        assert_same_prediction(predicted, expected)
        assert details["label"] == expected["label"]


# --- what the page and the API show ------------------------------------------------------------


def page_config(server: AppServer) -> dict:
    with urllib.request.urlopen(server.url + "/config", timeout=WAIT_S) as response:
        return json.loads(response.read())


def examples_offered(server: AppServer) -> list[str]:
    """The file names of the examples the page offers (the thumbnails' gallery)."""
    return [Path(item["image"]["path"]).name for component in page_config(server)["components"]
            if component.get("props", {}).get("elem_id") == "examples" for item in component["props"]["value"]]


def test_page_offers_one_example_per_class_with_the_dataset_attribution(server):
    config = json.dumps(page_config(server))
    shipped = sorted(path.name for path in (REPO / "examples").glob("*.jpg"))
    assert sorted(examples_offered(server)) == shipped
    assert {name.split("-")[0] for name in shipped} == {"normal", "benign", "malignant"}
    for phrase in ("IQ-OTH/NCCD", "Alyasriy", "AL-Huseiny", "10.17632/bhmdr45bh2", "CC BY 4.0"):
        assert phrase in config, phrase
    assert "These examples are **training slices**" in config  # 99% on them says nothing about new scans


def test_page_and_answers_show_no_server_path(client, server, tiny_package, files):
    # The model card is the package's own text (the tiny test package's names its training folders).
    components = [component for component in page_config(server)["components"]
                  if "classifier: tiny-test" not in str(component.get("props", {}).get("value"))]
    config = json.dumps(components)
    assert "Model: tiny-test" in config  # named, not located
    for path in (tiny_package, REPO, REPO / "examples"):
        assert str(path) not in config, f"{path} is on the page"
    *_, details = client.predict(send(files["Normal"]), api_name="/analyze")
    assert "/" not in json.dumps(details)
    table = client.predict([send(files["Normal"])], api_name="/batch")
    assert table["data"][0][0] == files["Normal"].name


def test_large_slice_overlay_is_at_most_1024_pixels_per_picture():
    """A large slice's overlay (the page's picture) is shrunk to 1024 pixels per picture. A 3000 x 1500 resize of a
    training-like slice gets no diagnosis from the package (its rendering is like no validated source), so the
    overlay is built here as the page builds it."""
    from demo import pictures

    rgb = np.asarray(synthetic_slice("Malignant", 4).convert("RGB").resize((3000, 1500)))
    heatmap = np.random.default_rng(0).random((1500, 3000)).astype(np.float32)
    image = Image.fromarray(pictures.overlay(rgb, heatmap))
    assert image.mode == "RGB"
    assert image.size == (2 * 1024 + 8, 512 + pictures.legend_height(1024))


# --- /batch limits ------------------------------------------------------------------------------


def test_batch_refuses_more_files_than_its_limit_and_keeps_none_of_them(server, client, tmp_path):
    from demo.handlers import MAX_BATCH_FILES

    path = tmp_path / "own-batch-refused.png"  # bytes no other test sends
    synthetic_slice("Normal", 950).save(path)
    with pytest.raises(AppError) as refused:
        client.predict([send(path)] * (MAX_BATCH_FILES + 1), api_name="/batch")
    assert f"at most {MAX_BATCH_FILES} per batch" in str(refused.value)
    assert "several batches" in str(refused.value)
    assert files_holding(server.upload_root, path.read_bytes()) == [], "a refused batch's uploads were kept"


def test_batch_classifies_up_to_its_pixel_limit_and_says_so_for_the_rest(client, tmp_path):
    from demo.handlers import MAX_BATCH_PIXELS

    side = 1000  # under the display size, so decoded as it is
    count = MAX_BATCH_PIXELS // side**2
    paths = []
    for index in range(count + 1):
        paths.append(tmp_path / f"slice-{index}.png")
        synthetic_slice("Normal", 300 + index).resize((side, side)).save(paths[-1])
    rows = client.predict([send(path) for path in paths], api_name="/batch")["data"]
    assert all(row[1] != "error" for row in rows[:count])
    assert rows[count][1] == "error"
    assert f"at most {MAX_BATCH_PIXELS:,} decoded pixels" in rows[count][-1]
    assert "another batch" in rows[count][-1]


# --- uploads: kept while their client's session lasts, deleted when it ends, nothing else ever ---------


def files_holding(root: Path, data: bytes) -> list[Path]:
    """Every file under `root` with exactly these bytes (empty files are Gradio's placeholders). The server deletes
    files and their emptied folders meanwhile: what vanishes during the walk is not held."""
    found = []
    for folder, _, names in os.walk(root):  # os.walk skips a folder removed under it
        for name in names:
            path = Path(folder, name)
            try:
                if path.stat().st_size == len(data) > 0 and path.read_bytes() == data:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def call_naming_a_server_path(server: AppServer, endpoint: str, path: str) -> tuple[str, str]:
    """Call an endpoint the way a hand-written API client can: naming a path on the server.

    Returns the event ("complete" or "error") and its data.
    """
    body = json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}).encode()
    request = urllib.request.Request(f"{server.url}/gradio_api/call/{endpoint}", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{server.url}/gradio_api/call/{endpoint}/{event_id}", timeout=WAIT_S) as response:
        stream = response.read().decode()
    events = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], data[-1]


def gone(root: Path, data: bytes, within: float = WAIT_S) -> bool:
    """True once no file under root holds these bytes (polled: a session's end is noticed at its heartbeat)."""
    deadline = time.monotonic() + within
    while files_holding(root, data) and time.monotonic() < deadline:
        time.sleep(0.2)
    return files_holding(root, data) == []


def test_each_upload_is_kept_for_its_client_and_deleted_when_the_client_closes(server, downloads, tmp_path):
    # Bytes no other test sends: an upload of the same bytes elsewhere would rightly keep the file.
    paths = {name: tmp_path / f"own-{name}.png" for name in ("predict", "analyze", "batch-1")}
    for index, path in enumerate(paths.values()):
        synthetic_slice("Benign", 900 + index).save(path)
    paths["bad"] = tmp_path / "own-notes.txt"
    paths["bad"].write_text("Not an image, sent by the deletion test.\n" * 7)
    paths["batch-2"] = tmp_path / "own-truncated.jpg"
    paths["batch-2"].write_bytes(truncated_jpeg()[:-100])
    root = server.upload_root
    client = new_client(server, downloads)
    for endpoint in ("predict", "analyze"):
        client.predict(send(paths[endpoint]), api_name=f"/{endpoint}")
        assert files_holding(root, paths[endpoint].read_bytes()), f"{endpoint}: gone while its client is open"
    with pytest.raises(AppError):
        client.predict(send(paths["bad"]), api_name="/predict")
    client.predict([send(paths["batch-1"]), send(paths["batch-2"])], api_name="/batch")
    client.close()  # the session ends: its uploads go
    for name, path in paths.items():
        assert gone(root, path.read_bytes()), name


def test_examples_and_outputs_named_by_a_client_are_classified_never_deleted(server, client, library):
    example = REPO / "examples" / "malignant-case-148.jpg"
    [cached] = files_holding(server.upload_root, example.read_bytes())  # copied when the page was built
    assert cached.name == example.name
    expected = library.predict(example)

    event, data = call_naming_a_server_path(server, "predict", str(cached))
    assert event == "complete", data
    assert_same_prediction(json.loads(data)[0], expected)
    # The same bytes under the same name, uploaded: Gradio stores them at the example's path.
    assert_same_prediction(client.predict(send(example), api_name="/predict"), expected)
    assert cached.is_file(), "the example was deleted"

    client.predict(send(example), api_name="/analyze")
    outputs = list(server.upload_root.rglob("slice-and-heatmap.png"))
    assert outputs, "the /analyze picture is in Gradio's cache"
    event, data = call_naming_a_server_path(server, "predict", str(outputs[0]))
    assert event == "complete", data
    assert outputs[0].is_file(), "an output was deleted"
    assert cached.is_file(), "the example was deleted"


def test_a_request_for_an_upload_already_deleted_says_to_upload_again(server):
    gone = server.upload_root / ("0" * 64) / "slice.png"
    event, data = call_naming_a_server_path(server, "predict", str(gone))
    assert event == "error"
    assert "Upload the file again" in data
    assert str(server.upload_root) not in data


def upload_only(server: AppServer, path: Path) -> str:
    """Upload a file as a client does before its request; returns the server's path for it."""
    import httpx

    with open(path, "rb") as file:
        response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": (path.name, file)}, timeout=WAIT_S)
    response.raise_for_status()
    return response.json()[0]


def test_an_identical_upload_waiting_for_its_request_outlives_the_first_request(server, library, tmp_path):
    path = tmp_path / "shared-slice.png"
    synthetic_slice("Malignant", 950).save(path)
    first, second = upload_only(server, path), upload_only(server, path)
    assert first == second  # one content-hashed file for both clients

    event, data = call_naming_a_server_path(server, "predict", first)
    assert event == "complete", data
    assert Path(second).is_file(), "deleted while the second client's request had not started"
    event, data = call_naming_a_server_path(server, "predict", second)
    assert event == "complete", data
    assert_same_prediction(json.loads(data)[0], library.predict(path))
    # Each request's session now holds it until that session ends or idles: tests/test_demo.py's janitor tests.


def test_a_photo_gets_the_notice_on_every_endpoint(client, library):
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert library.predict(photo)["out_of_distribution"]
    value = client.predict(send(photo), api_name="/predict")  # for programs: the notice, probabilities kept
    assert value["label"] == NOTICE and set(confidences(value)) == set(LABELS)
    label, why, overlay, note, details = client.predict(send(photo), api_name="/analyze")  # the page's
    assert label["label"] == NOTICE and not label.get("confidences")  # no class bar
    assert overlay is None and "not meaningful" in why and "not meaningful" in note
    # details name no class: no label, no probabilities (a refused input has no finding)
    assert details["label"] is None and details["verdict"] == NOTICE and "probabilities" not in details
    assert not any(name in json.dumps(details) for name in LABELS)
    assert details["out_of_distribution"] is True and details["ood_reason"]
    assert details["ood_threshold"] == pytest.approx(library.ood_threshold)
    [row] = client.predict([send(photo)], api_name="/batch")["data"]
    assert row[1] == NOTICE and row[2:5] == [None, None, None] and row[-1].startswith(details["ood_reason"])


def test_the_label_agrees_with_the_bars_and_the_screening_answer_stands_beside_it(client, library):
    """The page and the API show the most probable class as the label, and the screening answer with one line on
    what it means (issue 23: a label Malignant at P(Malignant) 0.04 contradicted its own bars)."""
    from demo import texts
    from lung_classifier.verdict import SCREENING_MEANING

    result = library.analyze(np.asarray(synthetic_slice("Normal", 12)))
    value = texts.label_value(result)
    assert value.label == result.label == max(result.probabilities, key=result.probabilities.get)
    assert value.confidences[0].label == result.label
    why = texts.why(result, library.config)
    assert why.startswith(f"**Screening: {result.screening}.**") and SCREENING_MEANING in why
    assert "Answered as a data" in why and "rule-out threshold" in why


def test_empty_calls_get_a_friendly_error(client):
    for endpoint, empty in (("/predict", None), ("/analyze", None), ("/batch", [])):
        with pytest.raises(AppError, match="No files? received"):
            client.predict(empty, api_name=endpoint)
