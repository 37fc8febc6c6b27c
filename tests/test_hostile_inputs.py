"""The hostile corpus (testkit/hostile_corpus.py, 200+ files generated here) through the library and the app.

Every file gets a result or a clear ImageError, never another exception, a hang or a dead
server; the running app keeps its peak memory under 2.5 GiB while 16 clients send it all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import REPO, synthetic_slice

from benchmarks.readings import peak_rss
from lung_classifier.decoding.images import load_rgb
from lung_classifier.decoding.limits import MAX_SIDE, MIN_SIDE, ImageError
from testkit.app_server import decode_workers, start_app
from testkit.hostile_corpus import (HEAVY, JPEG_2000, HostileFile, compressed_dicom, hostile_zips, j2k_codestream,
                                    jpeg_ls_two_frames, send_corpus, write_corpus)

PEAK_RSS_LIMIT = 2.5 * 2**30
KINDS = ["truncated-", "bitflip-", "bomb-", "deflate", "rle", "animated", "cmyk", "palette", "16bit", "exif-",
         "empty", "notes.txt", "page.html", "drawing.svg", "report.pdf", "slices.zip", "no-pixels.dcm",
         "tag-RescaleSlope-1_2", "tag-RescaleSlope-1e30", "jpeg-progressive", "repeated-scans", "pages", "frames",
         "rgba-40mp", "header-elements", "one-byte-runs", "valid-jll", "valid-jls", "valid-j2k", "larger-than-header",
         "no-end-marker", "wrong-bit-depth", "jls-second-frame", "jls-two-images", "j2k-precincts-2x2",
         "j2k-code-blocks", "jll-cut-end-marker-put-back", "jll-bytes-changed"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[HostileFile]:
    return write_corpus(tmp_path_factory.mktemp("hostile"))


def outcome_problem(item: HostileFile, decode) -> str | None:
    """Decode one file; what is wrong with the outcome, or None."""
    try:
        rgb = decode(item.path)
    except ImageError as exc:
        message = str(exc)
        if len(message) < 15 or "Traceback" in message:
            return f"{item.name}: unclear ImageError {message!r}"
        return f"{item.name}: refused ({message}) but should decode ({item.why})" if item.expect == "ok" else None
    except Exception as exc:  # noqa: BLE001 - any other exception is the failure this test looks for
        return f"{item.name}: {type(exc).__name__}: {exc} ({item.why})"
    if item.expect == "error":
        return f"{item.name}: decoded but should be refused ({item.why})"
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return f"{item.name}: decoded to {rgb.dtype} {rgb.shape}"
    if not (MIN_SIDE <= min(rgb.shape[:2]) and max(rgb.shape[:2]) <= MAX_SIDE):
        return f"{item.name}: decoded to {rgb.shape[1]}x{rgb.shape[0]}, outside {MIN_SIDE}..{MAX_SIDE}"
    return None


def test_corpus_has_200_files_of_every_kind(corpus):
    assert len(corpus) >= 200
    names = [item.name for item in corpus]
    for kind in KINDS:
        assert any(kind in name for name in names), kind
    assert set(HEAVY) <= set(names)
    assert {item.expect for item in corpus} == {"ok", "error", "any"}


def test_load_rgb_gives_a_result_or_a_clear_image_error_for_every_file(corpus):
    problems = [problem for item in corpus for problem in (
        outcome_problem(item, load_rgb),
        outcome_problem(item, lambda path: load_rgb(path.read_bytes())),
    ) if problem]
    assert not problems, "\n".join(problems)


def test_analyze_batch_gives_a_result_or_a_clear_image_error_for_every_file(corpus, tiny_package):
    from lung_classifier import LungClassifier

    classifier = LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)

    def analyze(path: Path) -> np.ndarray:
        (result,) = classifier.analyze_batch([path], explain=True)
        assert result.label in classifier.labels and result.heatmap is not None
        return load_rgb(path)

    problems = [problem for item in corpus if (problem := outcome_problem(item, analyze))]
    assert not problems, "\n".join(problems)
    # Good files still share one batch with each other.
    good = [item.path for item in corpus if item.expect == "ok"][:16]
    assert len(classifier.analyze_batch(good)) == len(good)


# --- through the running app ---------------------------------------------------------------------------


def normal_request_is_answered_correctly(url: str, tmp_path: Path, library) -> None:
    path = tmp_path / "normal-slice.png"
    synthetic_slice("Malignant", 4).save(path)
    value = Client(url, verbose=False, download_files=False).predict(handle_file(str(path)), api_name="/predict")
    expected = library.analyze(path)
    assert value["label"] == expected.verdict
    got = {item["label"]: item["confidence"] for item in value["confidences"]}
    for label, probability in expected.probabilities.items():
        assert got[label] == pytest.approx(probability, abs=1e-5), label


@pytest.fixture(scope="module")
def library(tiny_package):
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


def test_the_file_that_aborted_the_server_is_refused_and_the_next_slice_is_answered(
        tiny_package, cache_root, library, tmp_path):
    """The 482-byte JPEG-LS whose second frame header made CharLS abort the whole server (issue 24), then the
    JPEG 2000 precinct bomb, sent to the running app: each refused; then a normal slice is answered, also after
    the server's decode workers were killed from outside."""
    server = start_app(tiny_package, cache_root, tmp_path / "app")
    try:
        client = Client(server.url, verbose=False, download_files=False)
        hostile = {"jls-second-frame-65535.dcm": (jpeg_ls_two_frames(65535), "more than one frame header"),
                   "j2k-precincts-2x2.dcm": (compressed_dicom(j2k_codestream(2048, 2048, precincts=1), JPEG_2000,
                                                              2048, 2048), "1,405,848 precincts")}
        for name, (data, reason) in hostile.items():
            (tmp_path / name).write_bytes(data)
            for endpoint in ("/predict", "/analyze"):
                with pytest.raises(AppError, match=f"Cannot classify this file: .*{reason}"):
                    client.predict(handle_file(str(tmp_path / name)), api_name=endpoint)
        assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
        normal_request_is_answered_correctly(server.url, tmp_path, library)
        workers = decode_workers(server.process.pid)
        assert workers, "the server decodes in no worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        normal_request_is_answered_correctly(server.url, tmp_path, library)
        assert server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.slow  # about 600 requests: a minute on an idle 2-core machine
def test_every_file_through_predict_analyze_and_batch_gets_a_result_or_a_clear_error(
        corpus, tiny_package, cache_root, library, tmp_path):
    server = start_app(tiny_package, cache_root, tmp_path / "app")
    try:
        summary = send_corpus(server.url, [item.path for item in corpus], clients=4)
        assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
        assert not summary["problems"], "\n".join(summary["problems"]) + f"\n\nserver log:\n{server.log()[-3000:]}"
        assert summary["requests"] >= 2 * len(corpus)  # every file to /predict and /analyze, and batches
        assert summary["results"] > 0 and summary["refusals"] > 0
        normal_request_is_answered_correctly(server.url, tmp_path, library)
    finally:
        server.stop()


@pytest.mark.slow
def test_peak_server_memory_under_16_hostile_clients_stays_under_2_5_gib(
        tiny_package, cache_root, library, tmp_path):
    """The real decode path under the corpus, heavy files sent by all 16 clients at once (a separate process);
    the server's peak and its live decode workers' peaks together."""
    server = start_app(tiny_package, cache_root, tmp_path / "app")
    try:
        sender = subprocess.run(
            [sys.executable, "-m", "testkit.hostile_corpus", "--url", server.url,
             "--dir", str(tmp_path / "corpus"), "--clients", "16", "--zips"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1800)
        assert sender.returncode == 0, sender.stderr[-3000:]
        summary = json.loads(sender.stdout.strip().splitlines()[-1])
        peak = peak_rss(server.process.pid)
        workers = sum(peak_rss(pid) for pid in decode_workers(server.process.pid))  # the live ones' peaks
        print(f"peak RSS: server {peak / 2**30:.2f} GiB, its decode workers {workers / 2**30:.2f} GiB")
        peak += workers
        assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
        assert not summary["problems"], "\n".join(summary["problems"][:50])
        assert summary["requests"] >= 16 * (2 * len(HEAVY) + len(hostile_zips()))
        assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB (limit {PEAK_RSS_LIMIT / 2**30:.1f} GiB)"
        normal_request_is_answered_correctly(server.url, tmp_path, library)
    finally:
        server.stop()
