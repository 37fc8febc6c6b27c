"""The real demo server's /scan (a whole CT series), driven through gradio_client, and the tab's pictures."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app_server import AppServer, start_app
from conftest import synthetic_slice
from test_app import LABELS, NOTICE, confidences, files_holding

SIZE = (112, 112)
SLICES = 12


@pytest.fixture(scope="module")
def server(tiny_package, cache_root, tmp_path_factory) -> AppServer:
    server = start_app(tiny_package, cache_root, tmp_path_factory.mktemp("scan-app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("scan-downloads")))


@pytest.fixture(scope="module")
def library(tiny_package):
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


def write_scan(folder: Path, seed: int, count: int = SLICES) -> list[Path]:
    """`count` same-sized slices named as a scan export names them ("case (2)" before "case (10)")."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        path = folder / f"case ({index}).png"
        label = "Malignant" if 4 <= index <= 7 else "Normal"
        synthetic_slice(label, seed + index).resize(SIZE).save(path)
        paths.append(path)
    return paths


def zip_of(paths: list[Path], target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in paths:
            archive.write(path, f"series/{path.name}")
    return target


def assert_same_scan(label: dict, details: dict, expected: dict) -> None:
    """The API's answer is the library's analyze_scan result, slice by slice."""
    assert details["label"] == expected["label"] and details["verdict"] == label["label"]
    assert details["out_of_distribution"] is expected["out_of_distribution"]
    assert label["label"] == (NOTICE if expected["out_of_distribution"] else expected["label"])
    if expected["probabilities"] is not None:
        assert confidences(label) == pytest.approx(expected["probabilities"], abs=1e-5)
        assert details["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert [s["name"] for s in details["slices"]] == [s["name"] for s in expected["slices"]]
    for got, want in zip(details["slices"], expected["slices"]):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    assert details["top"] == expected["top"]


def test_scan_of_a_zip_and_of_the_same_files_is_the_library_result(client, library, tmp_path):
    paths = write_scan(tmp_path / "scan", seed=300)
    archive = zip_of(paths, tmp_path / "scan.zip")
    expected = library.analyze_scan(archive).as_dict()
    assert [s["name"].rsplit("/", 1)[-1] for s in expected["slices"]][:3] == ["case (1).png", "case (2).png",
                                                                            "case (3).png"]

    label, details = client.predict([handle_file(str(archive))], api_name="/scan")
    assert_same_scan(label, details, expected)
    assert len(details["slices"]) == SLICES

    shuffled = paths[::-1]  # the order of upload does not matter: the slices come back in body order
    label, details = client.predict([handle_file(str(path)) for path in shuffled], api_name="/scan")
    assert_same_scan(label, details, library.analyze_scan(paths).as_dict())
    assert [s["name"] for s in details["slices"]] == [path.name for path in paths]


def test_every_upload_of_a_scan_is_deleted_when_its_request_ends(client, server, tmp_path):
    paths = write_scan(tmp_path / "scan", seed=600, count=6)  # bytes no other test sends
    archive = zip_of(paths, tmp_path / "deleted.zip")
    client.predict([handle_file(str(archive))], api_name="/scan")
    client.predict([handle_file(str(path)) for path in paths], api_name="/scan")
    root = server.upload_root
    assert files_holding(root, archive.read_bytes()) == [], "the zip is still on the server"
    for path in paths:  # neither the uploaded files nor anything unpacked from the zip
        assert files_holding(root, path.read_bytes()) == [], path.name


def test_a_zip_without_images_is_refused_with_a_reason_and_the_server_keeps_serving(client, server, library,
                                                                                    tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("notes.txt", "Patient notes, not an image.\n" * 20)
    with pytest.raises(AppError) as refused:
        client.predict([handle_file(str(archive))], api_name="/scan")
    message = str(refused.value)
    assert "upload" in message.lower() or "send" in message.lower(), message
    assert str(server.upload_root) not in message
    assert files_holding(server.upload_root, archive.read_bytes()) == []

    paths = write_scan(tmp_path / "scan", seed=900, count=5)
    label, details = client.predict([handle_file(str(path)) for path in paths], api_name="/scan")
    assert_same_scan(label, details, library.analyze_scan(paths).as_dict())


def test_the_tab_plots_each_slice_and_shows_the_top_slices_beside_their_heatmaps(library, tmp_path):
    """The page's pictures without a browser: one curve point per slice and class, overlays at the slice's size."""
    from PIL import Image

    from demo import scan_view

    paths = write_scan(tmp_path / "scan", seed=1200, count=6)
    result, pictures = scan_view.analyze(library, [str(path) for path in paths], explain=True)
    frame = scan_view.curve(result)
    assert list(frame.columns) == ["slice", scan_view.CLASS, scan_view.PROBABILITY]
    assert len(frame) == 2 * len(paths)
    malignant = frame[frame[scan_view.CLASS] == "Malignant"]
    assert malignant[scan_view.PROBABILITY].tolist() == pytest.approx(
        [piece.analysis.probabilities["Malignant"] for piece in result.slices])
    assert len(pictures) == len(result.top) > 0
    for (picture, caption), index in zip(pictures, result.top):
        assert result.slices[index].name in caption
        with Image.open(picture) as image:
            assert image.size == (2 * SIZE[0] + 8, SIZE[1])
    assert [row[2] for row in scan_view.table(result)] == [path.name for path in paths]
    assert len(scan_view.headers(LABELS)) == len(scan_view.table(result)[0])
