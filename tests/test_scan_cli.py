"""`python -m lung_classifier scan`: plain, --json and --csv output, the progress bar, and exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
import zipfile

import pytest
from conftest import synthetic_slice
from test_scan_series import png

from lung_classifier.cli import main
from lung_classifier.verdict import OOD_NOTICE, SCREENING_MEANING
from testkit.dicom_files import series_slice

LABELS = ["Normal", "Benign", "Malignant"]
SCAN = [("Normal", 11), ("Malignant", 13), ("Malignant", 14), ("Normal", 12), ("Normal", 15), ("Malignant", 12)]


@pytest.fixture(scope="module")
def scan_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "scan.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for number, (label, index) in enumerate(SCAN, start=1):
            buffer = io.BytesIO()
            synthetic_slice(label, index).save(buffer, format="PNG")
            archive.writestr(f"export/slice {number}.png", buffer.getvalue())
        archive.writestr("export/notes.txt", "exported by hand")
    return path


def scan(tiny_package, *args: str) -> int:
    return main(["scan", *args, "--model", str(tiny_package), "--trust-saved-model"])


def test_json_is_one_object_with_the_library_answer(tiny_package, scan_zip, capsys):
    assert scan(tiny_package, str(scan_zip), "--json", "--top", "2") == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["verdict"] == record["label"] == "Malignant"
    assert record["malignancy_ruled_out"] is False and record["screening"] == "malignancy not ruled out"
    assert record["flagged_slices"] == sum(record["flagged_reasons"].values())
    assert [row["name"] for row in record["slices"]] == [f"slice {n}.png" for n in range(1, len(SCAN) + 1)]
    assert len(record["top"]) == 2 and all(record["slices"][i]["label"] == "Malignant" for i in record["top"])
    assert any("notes.txt" in note for note in record["notes"])
    assert err == ""  # no progress bar when stderr is not a terminal


def test_plain_output_and_csv_table(tiny_package, scan_zip, tmp_path, capsys):
    table = tmp_path / "slices.csv"
    assert scan(tiny_package, str(scan_zip), "--csv", str(table)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:3] == [f"slices: {len(SCAN)}", "verdict: Malignant", "screening: malignancy not ruled out"]
    assert re.fullmatch(rf"flagged: \d+ of {len(SCAN)} slices flagged \(no diagnosis\).*; \d+ answered slices do not "
                        "rule malignancy out", lines[3]), lines[3]
    assert lines[4] == SCREENING_MEANING
    assert lines[5].startswith("probabilities: Normal 0.")
    assert lines[6] == "top slices (drove the verdict):"
    top = [line for line in lines if line.startswith("  slice ")]
    assert len(top) == 3 and all(line.split()[1].isdigit() for line in top)
    assert any(line.startswith("note: skipped 1 file") and "notes.txt" in line for line in lines)
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["number", "index", "name", "position", "label", "p_Normal", "p_Benign", "p_Malignant",
                             "out_of_distribution", "malignancy_ruled_out", "reason"]
    assert [row["name"] for row in rows] == [f"slice {n}.png" for n in range(1, len(SCAN) + 1)]
    assert all(abs(sum(float(row[f"p_{label}"]) for label in LABELS) - 1) < 1e-4 for row in rows)


def test_a_terminal_gets_a_progress_bar(tiny_package, scan_zip, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert scan(tiny_package, str(scan_zip), "--batch-size", "4") == 0
    assert f"{len(SCAN)}/{len(SCAN)}" in terminal.getvalue()
    assert capsys.readouterr().out.startswith("slices: ")


def test_a_flagged_dicom_scan_says_so(tiny_package, tmp_path, capsys):
    paths = []
    for number in range(3):
        paths.append(tmp_path / f"IM{number}.dcm")
        paths[-1].write_bytes(series_slice((0.0, 0.0, float(number)), number + 1))
    assert scan(tiny_package, *map(str, paths)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"verdict: {OOD_NOTICE}"
    assert lines[2] == "screening: malignancy not ruled out"
    assert lines[3].startswith("flagged: 3 of 3 slices flagged (no diagnosis): 3 a DICOM slice")  # how many, and why
    assert lines[5].startswith("no diagnosis: 3 of 3 slices") and lines[6] == "top slices (the ones to look at):"
    assert " at 0.0 mm: " in out_line(lines, "IM0.dcm")
    assert not any(label in line for line in lines[5:] for label in LABELS)  # no class probability, flagged


def out_line(lines: list[str], name: str) -> str:
    return next(line for line in lines if name in line)


def test_an_upload_that_is_not_one_scan_exits_1(tiny_package, tmp_path, capsys):
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as archive:
        archive.writestr("a.dcm", series_slice())
        archive.writestr("b.png", png())
    assert scan(tiny_package, str(mixed), "--json") == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: the upload mixes 1 DICOM file(s) and 1 image(s)")


def test_a_package_without_a_scan_rule_exits_2(tiny_package, scan_zip, tmp_path, capsys):
    old = tmp_path / "old-package"
    shutil.copytree(tiny_package, old)
    config = json.loads((old / "config.json").read_text())
    del config["scan"]
    (old / "config.json").write_text(json.dumps(config))
    assert scan(old, str(scan_zip)) == 2
    assert "predates whole-scan analysis" in capsys.readouterr().err

