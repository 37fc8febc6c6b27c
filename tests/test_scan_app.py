"""The real demo server's /scan (a whole CT series), driven through gradio_client, and the tab's pictures."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import synthetic_slice
from test_app import LABELS, NOTICE, confidences, gone

from testkit.app_server import AppServer, start_app

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
    assert details["top_numbers"] == [details["slices"][i]["number"] for i in details["top"]]
    assert [s["number"] for s in details["slices"]] == [s["index"] + 1 for s in details["slices"]]


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


def test_every_upload_of_a_scan_is_deleted_when_its_client_closes(server, tmp_path):
    paths = write_scan(tmp_path / "scan", seed=600, count=6)  # bytes no other test sends
    archive = zip_of(paths, tmp_path / "deleted.zip")
    client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    client.predict([handle_file(str(archive))], api_name="/scan")
    client.predict([handle_file(str(path)) for path in paths], api_name="/scan")
    root = server.upload_root
    client.close()
    assert gone(root, archive.read_bytes()), "the zip is still on the server"
    for path in paths:  # neither the uploaded files nor anything unpacked from the zip
        assert gone(root, path.read_bytes()), path.name


def test_one_file_sent_to_scan_not_a_list_is_answered(client, library, tmp_path):
    [path] = write_scan(tmp_path / "one", seed=700, count=1)
    label, details = client.predict(handle_file(str(path)), api_name="/scan")
    assert_same_scan(label, details, library.analyze_scan([path]).as_dict())
    with pytest.raises(AppError, match="No files received"):
        client.predict([], api_name="/scan")


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

    paths = write_scan(tmp_path / "scan", seed=900, count=5)
    label, details = client.predict([handle_file(str(path)) for path in paths], api_name="/scan")
    assert_same_scan(label, details, library.analyze_scan(paths).as_dict())


def test_the_tab_plots_each_slice_and_shows_the_top_slices_beside_their_heatmaps(library, tmp_path):
    """The page's pictures without a browser: one curve point per slice and class, overlays at the slice's size."""
    from PIL import Image

    from demo import scan_view

    paths = write_scan(tmp_path / "scan", seed=19, count=6)  # slices near 112 px: a resize keeps their rendering
    reports = []

    def progress(done_total, desc=None, unit=None):  # what gr.Progress receives: a slice count
        reports.append((done_total, unit))

    result, pictures = scan_view.analyze(library, [str(path) for path in paths], explain=True, progress=progress)
    assert reports[0] == ((0, 6), "slices") and reports[-1] == ((6, 6), "slices")
    from demo.pictures import legend_height

    frame = scan_view.curve(result)
    assert list(frame.columns) == ["slice", scan_view.CLASS, scan_view.PROBABILITY]
    kept = [piece for piece in result.slices if not piece.analysis.out_of_distribution]
    assert len(frame) == len(LABELS) * len(kept) and kept  # every class; flagged slices left out
    assert frame["slice"].tolist()[::3] == [piece.number for piece in kept]
    malignant = frame[frame[scan_view.CLASS] == "Malignant"]
    assert malignant[scan_view.PROBABILITY].tolist() == pytest.approx(
        [piece.analysis.probabilities["Malignant"] for piece in kept])
    assert len(pictures) == len(result.top) > 0
    for (picture, caption), index in zip(pictures, result.top):
        assert result.slices[index].name in caption and caption.startswith(f"Slice {index + 1}: ")
        with Image.open(picture) as image:
            assert image.size == (2 * SIZE[0] + 8, SIZE[1] + legend_height(SIZE[0]))
    assert [row[2] for row in scan_view.table(result)] == [path.name for path in paths]
    assert len(scan_view.headers(LABELS)) == len(scan_view.table(result)[0])


def test_a_scan_with_no_diagnosis_shows_no_finding(library, tmp_path):
    """Flagged scan: the plot is the grey OOD score under a "not meaningful" label, the captions and the table
    name no class probability, and the gallery shows the slices without heatmaps."""
    import matplotlib
    from PIL import Image

    from demo import scan_view, texts

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"photo ({index + 1}).png")
        photo.rotate(index * 10).save(paths[-1])
    result, pictures = scan_view.analyze(library, [str(path) for path in paths], explain=True)
    assert result.out_of_distribution
    assert set(scan_view.curve(result)[scan_view.CLASS]) == {scan_view.OOD_SCORE, "threshold"}
    assert "not meaningful" in scan_view.plot(result).label
    note = scan_view.note(result)
    assert note.count("This scan") == 1 and "This scan cannot be classified: 3 of 3 slices were given no diagnosis" in note
    assert "3 of 3 slices flagged (no diagnosis)" in note  # how many, and why
    for picture, caption in pictures:
        assert "no diagnosis" in caption and not any(f"P({label})" in caption for label in LABELS)
        with Image.open(picture) as image:
            assert image.size == photo.size  # the slice alone: no heatmap
    assert all(row[4:7] == [None, None, None] for row in scan_view.table(result))
    assert texts.label_value(result).confidences is None or not texts.label_value(result).confidences
