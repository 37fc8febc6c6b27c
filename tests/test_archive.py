"""`archive`: every series and image under a SOURCE scored into one table, by the local loop or by Ray Data actors.

The source is real data from ../shared (IQ-OTH/NCCD slices, the COVID-CT-MD and LIDC series, one
series as a zip) plus hostile files, scored by the tiny package. One local Ray of 2 CPUs serves the
module (Ray starts slowly on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, need_shared_data, usable_cores

from lung_classifier.archive import JournalError, ModelSpec, job, run

SHARED = REPO.parent / "shared" / "data"
IMAGES = {"Normal cases": "Normal case (1).jpg", "Bengin cases": "Bengin case (10).jpg",
          "Malignant cases": "Malignant case (1).jpg"}
HOSTILE = ("notes.txt", "truncated.jpg", "broken.zip")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """images/ (three IQ-OTH/NCCD slices and the hostile files), covid/P001/ and lidc/LIDC-IDRI-0001/ (DICOM
    folders), cap001.zip (a DICOM series zipped)."""
    iqoth = need_shared_data() / "The IQ-OTHNCCD lung cancer dataset"
    root = tmp_path_factory.mktemp("archive") / "source"
    (root / "images").mkdir(parents=True)
    for folder, name in IMAGES.items():
        shutil.copy(iqoth / folder / name, root / "images" / name)
    (root / "images" / "notes.txt").write_text("exported by hand")
    whole = (iqoth / "Normal cases" / "Normal case (2).jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(whole[:3000])
    (root / "images" / "broken.zip").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    shutil.copytree(SHARED / "covidctmd" / "P001", root / "covid" / "P001")
    shutil.copytree(SHARED / "lidc" / "LIDC-IDRI-0001", root / "lidc" / "LIDC-IDRI-0001")
    with zipfile.ZipFile(root / "cap001.zip", "w") as archive:
        for path in sorted((SHARED / "covidctmd" / "cap001").iterdir()):
            archive.write(path, f"cap001/{path.name}")
    return root


@pytest.fixture(scope="module")
def spec(tiny_package) -> ModelSpec:
    return ModelSpec(str(tiny_package), trust_saved_model=True)


@pytest.fixture(scope="module")
def local_rows(source, spec, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "results.parquet"
    summary = run(source, out, spec, "local")
    assert summary.units == summary.scored == 3 + len(HOSTILE) + 3 and summary.skipped == 0
    return sorted_rows(out)


def sorted_rows(out: Path) -> list[dict]:
    return sorted(pq.read_table(out).to_pylist(), key=lambda row: (row["unit"], row["kind"], row["number"] or 0))


def test_rows_per_series_slice_and_image_from_the_library_answers(local_rows, source):
    series = {row["unit"]: row for row in local_rows if row["kind"] == "series"}
    assert set(series) == {"covid/P001", "lidc/LIDC-IDRI-0001", "cap001.zip", "images/broken.zip"}
    slices = [row for row in local_rows if row["kind"] == "slice"]
    assert len([row for row in slices if row["unit"] == "lidc/LIDC-IDRI-0001"]) == 73
    zipped = len(list((SHARED / "covidctmd" / "cap001").iterdir()))
    assert len([row for row in slices if row["unit"] == "cap001.zip"]) == zipped
    images = {row["unit"]: row for row in local_rows if row["kind"] == "image"}
    assert set(images) == {f"images/{name}" for name in [*IMAGES.values(), *HOSTILE[:2]]}
    answered = images["images/Normal case (1).jpg"]
    assert answered["refusal"] is None and answered["verdict"] in ("Normal", "Benign", "Malignant") or \
        answered["out_of_distribution"]
    assert abs(sum(answered[f"probabilities.{label}"] for label in ("Normal", "Benign", "Malignant")) - 1) < 1e-4
    for row in local_rows:  # every row names the package that answered
        assert row["package_name"] == "tiny-test" and len(row["package_digest"]) == 64 and row["unit_digest"]
    for row in slices:  # a DICOM slice on a package without DICOM sources: flagged, with the library's reason
        assert row["out_of_distribution"] and row["label"] is None and row["ood_reason"]
    assert series["covid/P001"]["refusal"] is None and series["covid/P001"]["verdict"]


def test_a_hostile_file_is_a_row_with_its_refusal(local_rows):
    refused = {row["unit"]: row["refusal"] for row in local_rows if row["refusal"] is not None}
    assert set(refused) == {f"images/{name}" for name in HOSTILE}
    assert "zip" in refused["images/broken.zip"]
    assert all(row["verdict"] is None for row in local_rows if row["refusal"] is not None)


def test_ray_gives_the_local_rows(local_ray, local_rows, source, spec, tmp_path):
    """One worker with the local loop's threads (TensorFlow's default: one per usable core): the same rows, bit
    for bit."""
    out = tmp_path / "results.parquet"
    summary = run(source, out, spec, "ray", workers=1, worker_cpus=usable_cores())
    assert summary.scored == summary.units and summary.refused == len(HOSTILE)
    assert sorted_rows(out) == local_rows


class CrashingScorer:
    """A Ray actor that dies (as a crashing native decoder would) on any chunk holding a file named crash*.jpg."""

    def __init__(self, **options):
        from lung_classifier.archive.ray_engine import ChunkScorer

        self.scorer = ChunkScorer(**options)

    def __call__(self, batch):
        import os

        if any("/crash" in str(text) for text in batch["chunk"]):
            os._exit(1)
        return self.scorer(batch)


def test_two_workers_and_a_file_that_kills_its_worker(local_ray, local_rows, source, spec, tmp_path, monkeypatch):
    """Two 1-thread workers give the local rows but for float32 rounding (a sum split over other threads may
    round its last bit otherwise); a file whose worker dies each time is its own refused row, its chunk-mates
    scored alone, and the job goes on."""
    import sys

    from ray import cloudpickle

    from lung_classifier.archive import ray_engine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    # One retry, not 3: fewer restarts to wait for. Not 0: a chunk sent to an actor while it restarts needs a retry.
    monkeypatch.setattr(ray_engine, "MAX_RETRIES", 1)
    monkeypatch.setattr(ray_engine, "ChunkScorer", CrashingScorer)
    crashing = shutil.copytree(source, tmp_path / "source")
    (crashing / "images" / "crash.jpg").write_bytes((source / "images" / "Normal case (1).jpg").read_bytes() + b"more")
    out = tmp_path / "results.parquet"
    summary = run(crashing, out, spec, "ray", workers=2, worker_cpus=1)
    rows = sorted_rows(out)
    crashed = [row for row in rows if row["unit"] == "images/crash.jpg"]
    assert len(crashed) == 1 and "worker process died" in crashed[0]["refusal"] and crashed[0]["verdict"] is None
    assert summary.scored == summary.units
    assert sorted(row["unit"] for row in rows if row["refusal"]) == sorted(["images/crash.jpg",
                                                                            *(f"images/{name}" for name in HOSTILE)])
    rows = [row for row in rows if row["unit"] != "images/crash.jpg"]
    assert len(rows) == len(local_rows)
    for ours, theirs in zip(rows, local_rows):
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if isinstance(value, float):
                assert value == pytest.approx(theirs[key], rel=1e-6, abs=1e-6), key
            else:
                assert value == theirs[key], key


def test_a_rerun_skips_finished_units_without_loading_a_model(local_rows, source, spec, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    first = run(source, out, spec, "local")
    table = out.read_text()

    def no_model(*args, **kwargs):
        raise AssertionError("a finished unit was scored again")

    monkeypatch.setattr(job, "Scorer", no_model)
    again = run(source, out, spec, "local")
    assert (again.skipped, again.scored) == (first.units, 0)
    assert out.read_text() == table
    moved = shutil.copytree(source, tmp_path / "moved")  # the same content elsewhere, one file renamed
    (moved / "images" / "Normal case (1).jpg").rename(moved / "images" / "renamed.jpg")
    renamed = run(moved, out, spec, "local")
    assert (renamed.units, renamed.scored) == (first.units, 0)
    monkeypatch.undo()
    (moved / "images" / "new.jpg").write_bytes((source / "images" / "Normal case (1).jpg").read_bytes() + b"new")
    extended = run(moved, out, spec, "local")  # only the new file is scored
    assert (extended.units, extended.scored, extended.skipped) == (first.units + 1, 1, first.units)


def test_csv_table_and_another_package_refused(local_rows, source, spec, tmp_path):
    out = tmp_path / "results.csv"
    summary = run(source / "images", out, spec, "local")
    import csv

    with open(out, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == summary.rows == len(IMAGES) + len(HOSTILE)
    assert {"probabilities.Normal", "refusal", "verdict", "package_digest"} <= set(rows[0])
    other = ModelSpec(None)  # the embedded default model: another package digest
    with pytest.raises(JournalError, match="another package"):
        run(source / "images", out, other, "local")


def test_manifest_lists_paths(source, spec, tmp_path):
    from lung_classifier.archive.listing import list_units

    manifest = source.parent / "manifest.csv"
    manifest.write_text("path,comment\nsource/covid/P001,a folder\nsource/images/Normal case (1).jpg,one image\n")
    units = list_units(manifest)
    assert [(unit.kind, unit.name) for unit in units] == [("series", "source/covid/P001"),
                                                           ("image", "source/images/Normal case (1).jpg")]


def test_command_line(source, tiny_package, tmp_path, capsys):
    from lung_classifier.cli import main

    out = tmp_path / "results.parquet"
    arguments = ["archive", str(source / "images"), "--out", str(out), "--model", str(tiny_package),
                 "--trust-saved-model"]
    assert main(arguments) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"units: {len(IMAGES) + len(HOSTILE)} (already done: 0;")
    assert lines[2] == f"results: {out} ({len(IMAGES) + len(HOSTILE)} rows; journal {out}.parts/)"
    assert main(arguments) == 0 and "already done: 6" in capsys.readouterr().out
    assert main(["archive", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "no such folder or file" in capsys.readouterr().err
