"""Native decoders run in worker processes: whatever one does to its process costs one file, never the caller."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from testkit.hostile_corpus import JPEG_2000, compressed_dicom, gdcm_codestream, jpeg_ls_two_frames
from conftest import REPO, require
from lung_classifier.decoding import pool as pools
from lung_classifier.decoding.images import decode_here, load_rgb, read_slice
from lung_classifier.decoding.limits import ImageError
from lung_classifier.decoding.protocol import receive, send
from lung_classifier.decoding.windowing import DICOM_WINDOW

WINDOW = (-600.0, 1500.0)


@pytest.fixture(scope="module")
def noise_j2k(tmp_path_factory) -> Path:
    """The slowest accepted compressed frame: JPEG 2000 of 16-bit noise at 2048^2 (about 1.2 s of CPU)."""
    noise = np.random.default_rng(6).integers(0, 65536, (2048, 2048), dtype=np.uint16)
    path = tmp_path_factory.mktemp("noise") / "noise.dcm"
    path.write_bytes(compressed_dicom(gdcm_codestream(noise, JPEG_2000), JPEG_2000, 2048, 2048))
    return path


def test_the_aborting_jpeg_ls_file_is_refused_and_the_next_file_decodes(tmp_path):
    """482 bytes that made CharLS throw std::length_error (SIGABRT) in the server: now one clear refusal."""
    path = tmp_path / "two-frame-headers.dcm"
    path.write_bytes(jpeg_ls_two_frames(65535))
    with pytest.raises(ImageError, match="more than one frame header"):
        load_rgb(path)
    assert load_rgb(next((REPO / "examples").iterdir())).shape[2] == 3


def test_a_worker_that_aborts_mid_request_is_reported_with_its_exception():
    """The worker's own death, as the pool sees it: SIGABRT while it waits for a request's bytes."""
    worker = pools._Worker()
    try:
        send(worker.process.stdin, {"size": 100, "name": "x", "window": list(WINDOW), "cpu_s": 5})
        os.kill(worker.process.pid, signal.SIGABRT)
        with pytest.raises(pools.WorkerFailed, match="its decoder aborted"):
            worker._answer(30, "decode")
    finally:
        worker.close()


def test_a_decode_past_the_wall_limit_is_refused_and_the_worker_replaced(noise_j2k, monkeypatch):
    pool = pools.DecodePool(1)
    try:
        monkeypatch.setattr(pools, "WORKER_WALL_S", 0.001)
        with pytest.raises(ImageError, match="could not be decoded safely: it took longer than 0.001 s"):
            pool.decode(noise_j2k, noise_j2k.name, WINDOW)
        monkeypatch.undo()
        rgb, answer = pool.decode(noise_j2k, noise_j2k.name, WINDOW)
        assert rgb.shape == (1024, 1024, 3) and answer["dicom"] is True
    finally:
        pool.close()


def test_a_worker_killed_while_idle_is_replaced_without_failing_a_request(tmp_path):
    path = next((REPO / "examples").iterdir())
    pool = pools.DecodePool(1)
    try:
        first, _ = pool.decode(path, path.name, WINDOW)
        (worker,) = pool._idle
        worker.process.kill()
        worker.process.wait()
        again, _ = pool.decode(path, path.name, WINDOW)
        assert np.array_equal(first, again)
    finally:
        pool.close()


def test_the_cpu_limit_ends_a_worker_with_sigxcpu():
    """RLIMIT_CPU as the worker sets it before each file: past it the kernel ends the process."""
    spin = ("from lung_classifier.decoding.worker import limit_cpu\nlimit_cpu(0.2)\nwhile True:\n    pass\n")
    done = subprocess.run([sys.executable, "-c", spin], cwd=REPO, timeout=30)
    assert done.returncode == -signal.SIGXCPU


def test_the_worker_limits_its_address_space():
    """A worker's allocations past its limit fail inside it (MemoryError), never in the caller."""
    worker = pools._Worker()
    try:
        limits = Path(f"/proc/{worker.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        limit = int(line.split()[3])
        status = Path(f"/proc/{worker.process.pid}/status").read_text()
        size = int(next(line for line in status.splitlines() if line.startswith("VmSize")).split()[1]) * 1024
        assert 0 < limit - size <= pools.WORKER_MEMORY_BYTES
    finally:
        worker.close()


def test_decodes_from_many_threads_match_the_in_process_decoder():
    files = sorted(glob.glob(str(REPO.parent / "shared/data/covidctmd/**/*.dcm"), recursive=True))[::5]
    require(files, "COVID-CT-MD DICOM not found under ../shared/data/covidctmd")
    expected = {path: decode_here(Path(path), "x", DICOM_WINDOW).rgb for path in files}
    got: dict[str, np.ndarray] = {}

    def run(part: list[str]) -> None:
        for path in part:
            got[path] = read_slice(path).rgb

    threads = [threading.Thread(target=run, args=(files[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[path], expected[path]) for path in files)


def test_no_worker_imports_tensorflow():
    worker = pools._Worker()
    try:
        maps = Path(f"/proc/{worker.process.pid}/maps").read_text()
        assert "tensorflow" not in maps and "libtensorflow" not in maps
    finally:
        worker.close()


def test_the_protocol_carries_no_pickle_and_bounds_its_headers():
    import io

    stream = io.BytesIO()
    send(stream, {"shape": [2, 2, 3]}, b"\0" * 12)
    stream.seek(0)
    assert receive(stream) == {"shape": [2, 2, 3]} and stream.read() == b"\0" * 12
    with pytest.raises(ValueError):
        receive(io.BytesIO((1 << 30).to_bytes(4, "little")))
