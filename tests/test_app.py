"""The real demo server (`python app.py`), driven through gradio_client as an API user would."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import UPLOAD_GRACE_S, AppServer, local_url_line, start_app
from conftest import synthetic_slice


LABELS = ["Normal", "Benign", "Malignant"]
SENT: list[Path] = []  # every file uploaded to the server in this module, to check none is kept


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
    SENT.append(path)
    return handle_file(str(path))


def confidences(value: dict) -> dict[str, float]:
    """A gr.Label value as {label: confidence}."""
    return {item["label"]: item["confidence"] for item in value["confidences"]}


def assert_same_prediction(value: dict, expected: dict[str, float]) -> None:
    assert value["label"] == max(expected, key=expected.get)
    got = confidences(value)
    assert set(got) == set(expected)
    for label in expected:
        assert got[label] == pytest.approx(expected[label], abs=1e-5), label


# --- input files ------------------------------------------------------------------------------


def encode(pil: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR (CRC fixed up) claims a huge image: a decompression bomb."""
    data = bytearray(encode(Image.new("L", (40, 40)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def dicom_bytes(stored: np.ndarray | None) -> bytes:
    """A minimal CT DICOM file: uint16 stored values, HU = stored - 1024; no pixel data if None."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    if stored is not None:
        dataset.Rows, dataset.Columns = stored.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope = 1
        dataset.RescaleIntercept = -1024
        dataset.PixelData = stored.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


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
    "animated.gif": (animated_gif, "animated image with 2 frames"),
    "no-pixels.dcm": (lambda: dicom_bytes(None), "without pixel data"),
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
    paths["slice.dcm"].write_bytes(dicom_bytes(np.round(hounsfield + 1024.0)))
    return paths


# --- startup and API surface ------------------------------------------------------------------


def test_startup_says_where_the_model_came_from_and_the_url(server, tiny_package):
    deadline = time.monotonic() + 10  # the URL line is printed just after the server starts answering
    while local_url_line(server.log()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log()
    assert f"Model: local package {tiny_package}" in log, log
    assert local_url_line(log).rstrip("/") == server.url, log


def test_view_api_lists_the_three_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/analyze", "/batch"} <= set(endpoints)


def test_model_card_tab_carries_its_plots_inline(server):
    # The card's plots/*.png links cannot be fetched by the page: the app inlines them as data URIs.
    with urllib.request.urlopen(server.url + "/config", timeout=10) as response:
        config = response.read().decode()
    assert "Lung CT slice classifier: tiny-test" in config
    assert "](plots/" not in config
    assert config.count("](data:image/png;base64,") == 4


# --- results equal the library's --------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_predict_returns_exactly_the_library_prediction(client, library, files, label):
    value = client.predict(send(files[label]), api_name="/predict")
    assert_same_prediction(value, library.predict(files[label]))


def test_analyze_returns_label_overlay_note_and_details(client, library, files):
    path = files["Malignant"]
    label, overlay, note, details = client.predict(send(path), api_name="/analyze")
    expected = library.analyze(path)

    assert details["label"] == expected.label
    assert details["ood_score"] == pytest.approx(expected.ood_score, rel=1e-4, abs=1e-4)
    assert details["out_of_distribution"] is expected.out_of_distribution
    assert details["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    if expected.out_of_distribution:
        assert label["label"].startswith("Unlike the training data") and not label.get("confidences")
        assert "does not look like" in note
    else:
        assert_same_prediction(label, expected.probabilities)
        assert f"**{expected.label}**" in note
    assert "Out-of-distribution score" in note

    assert Path(overlay).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(overlay) as image, Image.open(path) as original:
        assert image.format == "PNG"
        assert image.size == (2 * original.width + 8, original.height)


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
        assert row[1] == max(expected, key=expected.get)
        assert row[2:5] == pytest.approx([expected[label] for label in LABELS], abs=1e-4)


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
    assert details["label"] == expected.label
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
        barrier.wait(timeout=60)
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
    deadline = time.monotonic() + 30
    while first.status().code not in (Status.PROCESSING, Status.FINISHED) and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs = [client.submit(send(path), api_name="/predict") for client, path in zip(clients[1:], [bad, *paths])]
    first.result(timeout=60)
    with pytest.raises(AppError, match="not an image"):
        jobs[0].result(timeout=60)
    for job, path in zip(jobs[1:], paths):
        assert_same_prediction(job.result(timeout=60), library.predict(path))


def test_concurrent_requests_with_the_same_file_all_succeed(server, downloads, library, files):
    path = files["Benign"]
    expected = library.predict(path)

    def one_client(_: int) -> list[dict]:
        client = new_client(server, downloads)
        return [client.predict(send(path), api_name=endpoint) for endpoint in ("/predict", "/analyze")]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_client, range(8)))
    for predicted, (_, _, _, details) in answers:
        assert_same_prediction(predicted, expected)
        assert details["label"] == max(expected, key=expected.get)


# --- privacy: uploads are not kept (keep this test last: it checks every upload of the module) -------


def test_uploaded_files_are_deleted_after_their_request(client, server, files):
    client.predict(send(files["Benign"]), api_name="/predict")
    client.predict(send(files["Benign"]), api_name="/analyze")
    client.predict([send(files["Normal"]), send(files["notes.txt"])], api_name="/batch")
    time.sleep(UPLOAD_GRACE_S + 2.0)  # uploads outlive their last request by the grace period

    left = [path for path in server.upload_root.rglob("*") if path.is_file()]
    digests = {hashlib.md5(path.read_bytes()).hexdigest(): path for path in left if path.stat().st_size}
    sent = set(SENT)
    assert len(sent) > 20, "the other tests of this module uploaded files too"
    for upload in sent:
        data = upload.read_bytes()
        kept = [path for path in left if path.name == upload.name]
        if data:
            kept += [digests[hashlib.md5(data).hexdigest()]] if hashlib.md5(data).hexdigest() in digests else []
        assert not kept, f"upload {upload.name} is still on the server: {sorted(set(kept))}"
    # What may remain: /analyze's output overlays (until Gradio's cache cleaner runs), and the empty
    # placeholder files gr.File(type="filepath") creates for each upload (a Gradio quirk, no data).
    for path in left:
        if path.stat().st_size:
            assert path.name == "image.png" and path.read_bytes()[:4] == b"\x89PNG", path
