"""The page's parts without a server: pictures at display size in uint8, the page's texts, uploads."""

from __future__ import annotations

import os
import secrets
import tracemalloc

import gradio as gr
import numpy as np
from gradio.route_utils import delete_files_created_by_app

from demo import rendering, texts
from demo.uploads import UploadJanitor


def test_overlay_of_a_large_slice_is_uint8_at_display_size_without_a_full_size_float_copy():
    height, width = 3000, 4000
    rgb = np.zeros((height, width, 3), np.uint8)
    heatmap = np.zeros((height, width), np.float32)
    heatmap[:, width // 2:] = 1.0
    tracemalloc.start()
    try:
        picture = rendering.overlay(rgb, heatmap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert picture.dtype == np.uint8
    assert picture.shape == (768, 2 * 1024 + rendering.GAP, 3)
    # One full-size float32 plane is 48 MB; the old float64 colour map was 288 MB.
    assert peak < 24_000_000, f"peak {peak / 1e6:.0f} MB"
    blended = picture[:, 1024 + rendering.GAP:]
    assert tuple(blended[384, 10]) == tuple((4 * rendering.JET[0].astype(int) + 5) // 10)  # cold half
    assert tuple(blended[384, -10]) == tuple((4 * rendering.JET[255].astype(int) + 5) // 10)  # hot half


def test_small_slices_are_shown_as_they_are():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    assert rendering.preview(rgb) is rgb
    picture = rendering.overlay(rgb, np.full((300, 200), 0.5, np.float32))
    assert picture.shape == (300, 2 * 200 + rendering.GAP, 3)
    np.testing.assert_array_equal(picture[:, :200], rgb)
    assert (picture[:, 200:200 + rendering.GAP] == 255).all()


def test_preview_keeps_the_aspect_ratio_within_1024_pixels():
    assert rendering.display_size(512, 512) == (512, 512)
    assert rendering.display_size(2048, 1000) == (1024, 500)
    assert rendering.preview(np.zeros((1000, 3000, 3), np.uint8)).shape == (341, 1024, 3)


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
    with janitor.using([abandoned], take=False):  # the page's preview only looks
        pass
    assert os.path.isfile(abandoned)
    delete_files_created_by_app(blocks, age=None)  # Gradio's cache cleaner
    assert not os.path.exists(abandoned) and abandoned not in blocks.upload_file_set
    # The same bytes uploaded again (the same path) go right after their request: no stale count keeps them.
    again = _uploaded_file(tmp_path, "abandoned.png", "same-hash")
    assert again == abandoned
    blocks.upload_file_set.update([again])
    with janitor.using([again]):
        pass
    assert not os.path.exists(again)
