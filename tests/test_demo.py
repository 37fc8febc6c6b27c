"""The page's parts without a server: pictures at display size in uint8, the page's texts, uploads."""

from __future__ import annotations

import os
import secrets
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio.route_utils import delete_files_created_by_app

from demo import pictures, texts, uploads
from demo.uploads import UploadJanitor


def test_overlay_of_a_large_slice_is_uint8_at_display_size_without_a_full_size_float_copy():
    height, width = 3000, 4000
    rgb = np.zeros((height, width, 3), np.uint8)
    heatmap = np.zeros((height, width), np.float32)
    heatmap[:, width // 2:] = 1.0
    tracemalloc.start()
    try:
        picture = pictures.overlay(rgb, heatmap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert picture.dtype == np.uint8
    assert picture.shape == (768 + pictures.legend_height(1024), 2 * 1024 + pictures.GAP, 3)
    # One full-size float32 plane is 48 MB; the old float64 colour map was 288 MB.
    assert peak < 24_000_000, f"peak {peak / 1e6:.0f} MB"
    blended = picture[:, 1024 + pictures.GAP:]
    assert tuple(blended[384, 10]) == tuple((4 * pictures.JET[0].astype(int) + 5) // 10)  # cold half
    assert tuple(blended[384, -10]) == tuple((4 * pictures.JET[255].astype(int) + 5) // 10)  # hot half


def test_small_slices_are_shown_as_they_are():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    assert pictures.preview(rgb) is rgb
    picture = pictures.overlay(rgb, np.full((300, 200), 0.5, np.float32))
    assert picture.shape == (300 + pictures.legend_height(200), 2 * 200 + pictures.GAP, 3)
    np.testing.assert_array_equal(picture[:300, :200], rgb)


def test_the_heatmap_carries_its_colour_key_under_it():
    picture = pictures.overlay(np.zeros((300, 200, 3), np.uint8), np.full((300, 200), 0.5, np.float32))
    key = picture[300 + 4 + 2, 200 + pictures.GAP:]  # a row through the colour bar
    assert tuple(key[0]) == tuple(pictures.JET[0]) and tuple(key[-1]) == tuple(pictures.JET[255])
    assert (picture[300:, :200] == 255).all()  # nothing under the slice itself
    text = picture[300 + 4 + pictures.legend_height(200) // 2:, 200 + pictures.GAP:]
    assert (text < 128).any()  # "low ... influence on the label ... high", in black

    assert (picture[:, 200:200 + pictures.GAP] == 255).all()


def test_preview_keeps_the_aspect_ratio_within_1024_pixels():
    assert pictures.display_size(512, 512) == (512, 512)
    assert pictures.display_size(2048, 1000) == (1024, 500)
    assert pictures.preview(np.zeros((1000, 3000, 3), np.uint8)).shape == (341, 1024, 3)


def test_page_names_a_hub_model_with_its_repo_and_a_local_one_without_its_path():
    config = {"name": "lung-ct-resnet50", "model_version": "1.0.0"}
    assert texts.model_name(config, "local package /srv/models/x") == "lung-ct-resnet50 1.0.0"
    assert texts.model_name(config, "the embedded default model (/srv/app/m)") == "lung-ct-resnet50 1.0.0"
    assert texts.model_name(config, "Hugging Face Hub repo you/lung@abc") == (
        "lung-ct-resnet50 1.0.0 (Hugging Face Hub repo you/lung@abc)")
    for phrase in ("Alyasriy", "AL-Huseiny", "Mendeley Data", "10.17632/bhmdr45bh2", "CC BY 4.0"):
        assert phrase in texts.ATTRIBUTION


def _uploaded_file(root, name: str, folder: str | None = None) -> str:
    """A file where Gradio's upload route puts one: a folder named by the content's hash."""
    path = root / (folder or secrets.token_hex(8)) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"slice")
    return str(path)


def test_janitor_deletes_each_upload_after_its_request_and_gradios_record_stays_small(tmp_path):
    blocks = gr.Blocks()
    janitor = UploadJanitor(blocks)
    other = _uploaded_file(tmp_path, "not-an-upload.png")
    for index in range(50):
        path = _uploaded_file(tmp_path, f"slice-{index}.png")
        blocks.upload_file_set.update([path])  # as Gradio's upload route records it
        with janitor.using([path, other]):
            assert os.path.isfile(path)
        assert not os.path.exists(path), "an upload outlived its request"
    assert os.path.isfile(other), "a file the upload route never wrote was deleted"
    assert len(blocks.upload_file_set) == 0, "Gradio's record keeps every upload ever served"


def test_janitor_forgets_uploads_that_gradios_cache_cleaner_deleted(tmp_path):
    blocks = gr.Blocks()
    janitor = UploadJanitor(blocks)
    abandoned = _uploaded_file(tmp_path, "abandoned.png", "same-hash")
    blocks.upload_file_set.update([abandoned])  # uploaded, never classified
    assert os.path.isfile(abandoned)  # waiting for a request that never comes
    delete_files_created_by_app(blocks, age=None)  # Gradio's cache cleaner
    assert not os.path.exists(abandoned) and abandoned not in blocks.upload_file_set
    # The same bytes uploaded again (the same path) go right after their request: no stale count keeps them.
    again = _uploaded_file(tmp_path, "abandoned.png", "same-hash")
    assert again == abandoned
    blocks.upload_file_set.update([again])
    with janitor.using([again]):
        pass
    assert not os.path.exists(again)


# --- uploads held by the session that used them ---------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(name: str) -> SimpleNamespace:
    """What the janitor reads of a gr.Request."""
    return SimpleNamespace(session_hash=name)


def upload(blocks: gr.Blocks, root: Path, name: str, folder: str | None = None) -> str:
    """As Gradio's upload route: the bytes moved into place (os.replace: a new inode), then recorded."""
    path = root / (folder or secrets.token_hex(8)) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".staging")
    staging.write_bytes(b"slice")
    os.replace(staging, path)
    blocks.upload_file_set.update([str(path)])
    return str(path)


@pytest.fixture
def janitor_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the folder the janitor sweeps
    blocks, clock = gr.Blocks(), Clock()
    return blocks, UploadJanitor(blocks, idle_s=600, clock=clock), clock, tmp_path


def test_a_page_classifies_its_upload_twice_and_it_goes_when_the_page_closes(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    path = upload(blocks, root, "slice.png")
    page = session("page")
    for _ in range(3):  # the preview, then Classify twice
        with janitor.using([path], page):
            assert os.path.isfile(path)
    assert os.path.isfile(path), "deleted while its page is open"
    janitor.session_ended(page)
    assert not os.path.exists(path) and len(blocks.upload_file_set) == 0


def test_an_upload_unused_for_the_idle_time_goes_with_its_page_still_open(janitor_setup):
    blocks, janitor, clock, root = janitor_setup
    path = upload(blocks, root, "slice.png")
    with janitor.using([path], session("page")):
        pass
    clock.now += 599
    list(blocks.upload_file_set)  # Gradio's cache cleaner walks the record: idle holds lapse there
    assert os.path.isfile(path)
    clock.now += 2
    list(blocks.upload_file_set)
    assert not os.path.exists(path)


def test_gradios_cache_cleaner_never_deletes_a_held_upload(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    path = upload(blocks, root, "slice.png")
    with janitor.using([path], session("page")):
        pass
    delete_files_created_by_app(blocks, age=None)  # every file, whatever its age
    assert os.path.isfile(path)


def test_an_identical_upload_waiting_for_its_request_outlives_every_other_session(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    first = upload(blocks, root, "slice.png", "same-hash")
    second = upload(blocks, root, "slice.png", "same-hash")  # another client, same bytes: the same path
    assert first == second
    with janitor.using([first], session("a")):
        pass
    with janitor.using([first], session("a")):  # client a classifies again: takes no second upload
        pass
    janitor.session_ended(session("a"))
    assert os.path.isfile(second), "deleted while client b's request had not started"
    with janitor.using([second], session("b")):
        pass
    janitor.session_ended(session("b"))
    assert not os.path.exists(second)


def test_a_client_that_uploads_the_same_file_for_each_call_leaves_nothing_when_it_closes(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    client = session("gradio_client")
    for _ in range(3):
        path = upload(blocks, root, "slice.png", "same-hash")
        with janitor.using([path], client):
            pass
    janitor.session_ended(client)
    assert not os.path.exists(path)


def test_identical_uploads_held_by_two_sessions_go_only_when_neither_holds_them(janitor_setup):
    """Same bytes and name from two clients are one path: one client's end never deletes the other's file."""
    blocks, janitor, clock, root = janitor_setup
    path = upload(blocks, root, "slice.png", "same-hash")
    with janitor.using([path], session("a")):
        pass
    assert upload(blocks, root, "slice.png", "same-hash") == path  # client b, the same bytes
    with janitor.using([path], session("b")):
        pass
    janitor.session_ended(session("a"))
    assert os.path.isfile(path), "client a's page closed and took client b's upload with it"
    clock.now += 300
    with janitor.using([path], session("b")):  # b classifies again
        pass
    clock.now += 400  # a's hold would have lapsed by now, b's has not
    list(blocks.upload_file_set)
    assert os.path.isfile(path)
    janitor.session_ended(session("b"))
    assert not os.path.exists(path) and len(blocks.upload_file_set) == 0


def test_gradios_cache_cleaner_never_deletes_a_held_upload_from_a_components_record(janitor_setup):
    """Preprocessing adds the upload to the component's own record, which the cleaner ages by ctime: the janitor
    renews a held file's ctime before each pass, so only the never-used upload goes."""
    blocks, janitor, _, root = janitor_setup
    component = gr.File()
    blocks.temp_file_sets.append(component.temp_files)
    held, unused = upload(blocks, root, "held.png"), upload(blocks, root, "unused.png")
    component.temp_files.update([held, unused])
    with janitor.using([held], session("page")):
        pass
    time.sleep(1.5)  # both files' ctime is now older than the cleaner's age of 1 s
    delete_files_created_by_app(blocks, age=1)
    assert os.path.isfile(held) and not os.path.exists(unused)


def test_a_sessions_holds_past_its_byte_cap_go_oldest_first(janitor_setup, monkeypatch):
    blocks, janitor, clock, root = janitor_setup
    monkeypatch.setattr(uploads, "MAX_SESSION_BYTES", 12)  # each upload is 5 bytes: two fit
    paths = [upload(blocks, root, f"slice-{index}.png") for index in range(4)]
    for path in paths:
        clock.now += 1
        with janitor.using([path], session("page")):
            assert os.path.isfile(path)
    assert [os.path.exists(path) for path in paths] == [False, False, True, True]
    assert janitor.held_bytes() == 10


def test_all_sessions_together_stay_under_the_server_cap(janitor_setup, monkeypatch):
    blocks, janitor, clock, root = janitor_setup
    monkeypatch.setattr(uploads, "MAX_HELD_BYTES", 12)
    paths = [upload(blocks, root, f"slice-{index}.png") for index in range(4)]
    for index, path in enumerate(paths):
        clock.now += 1
        with janitor.using([path], session(f"client-{index}")):
            pass
    assert [os.path.exists(path) for path in paths] == [False, False, True, True]
    assert janitor.held_bytes() <= 12


def test_uploads_a_request_refuses_are_deleted_without_being_held(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    paths = [upload(blocks, root, f"slice-{index}.png") for index in range(3)]
    janitor.discard(paths)
    assert not any(os.path.exists(path) for path in paths) and janitor.held_bytes() == 0


def test_deleted_uploads_leave_no_empty_folder_and_stale_temporary_files_are_swept(janitor_setup):
    blocks, janitor, _, root = janitor_setup
    path = upload(blocks, root, "slice.png")
    with janitor.using([path], session("page")):
        pass
    janitor.session_ended(session("page"))
    assert not Path(path).parent.exists()
    stale, fresh, empty = root / "tmpabc123", root / "tmpdef456", root / "0123abcd"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    empty.mkdir()
    old = time.time() - uploads.LEFTOVER_AGE_S - 10
    for entry in (stale, empty):
        os.utime(entry, (old, old))
    list(blocks.upload_file_set)  # a cleaner pass
    assert not stale.exists() and not empty.exists() and fresh.exists()
