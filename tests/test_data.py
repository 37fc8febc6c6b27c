"""Tests for finding, grouping and splitting the training images (training/data.py)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lung_classifier.decoding.images import load_rgb
from benchmarks.seed_training import grouped_split
from training import data
from training.data import (
    LABELS,
    Dataset,
    canonical_label,
    group_items,
    group_summary,
    scan_folder,
)
from conftest import require

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iqothnccd"


# --- synthetic slices ---------------------------------------------------------


def slice_image(patient: int, level: float, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A grey 'slice': a patient's own smooth random pattern that drifts slowly with level.

    Slices of one patient correlate above 0.99; different patients stay below 0.5.
    """
    height, width = size
    coarse = np.random.default_rng(patient).random((8, 8)) * 200
    pattern = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC), float)
    x = np.arange(width)[None, :] / max(height, width)
    return np.clip(pattern + 12 * np.sin(6 * x + 0.3 * level) + 20, 0, 255).astype(np.uint8)


def save(array: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def make_class(folder: Path, prefix: str, patients: list[int], slices: int = 6, start: int = 1) -> int:
    """Consecutive numbered slices, patient after patient, as in IQ-OTH/NCCD."""
    number = start
    for patient in patients:
        for level in range(slices):
            save(slice_image(patient, level), folder / f"{prefix} case ({number}).jpg", quality=95)
            number += 1
    return number


@pytest.fixture()
def iqoth(tmp_path: Path) -> Path:
    """The Kaggle layout: a wrapping top folder, the "Bengin" misspelling, a stray .txt."""
    top = tmp_path / "The IQ-OTHNCCD lung cancer dataset"
    make_class(top / "Bengin cases", "Bengin", [1, 2, 3])
    make_class(top / "Malignant cases", "Malignant", [4, 5, 6])
    make_class(top / "Normal cases", "Normal", [7, 8, 9])
    (top / "IQ-OTH_NCCD lung cancer dataset.txt").write_text("description")
    return tmp_path


def groups_by_path(dataset: Dataset, groups: list[int]) -> dict[str, int]:
    return {item.path.name: group for item, group in zip(dataset.items, groups)}


# --- labels and layout --------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("Bengin cases", "Benign"),
        ("Benign cases", "Benign"),
        ("MALIGNANT CASES", "Malignant"),
        ("normal cases", "Normal"),
        ("benign", "Benign"),
        ("Normal", "Normal"),
        ("malignant case", "Malignant"),
        ("adenocarcinoma", "adenocarcinoma"),
        ("Benign nodules", "Benign nodules"),
    ],
)
def test_canonical_label(folder: str, label: str) -> None:
    assert canonical_label(folder) == label


def test_iqoth_layout_maps_to_canonical_labels(iqoth: Path) -> None:
    dataset = scan_folder(iqoth, progress=False)
    assert dataset.labels == LABELS
    assert {label: sum(item.label == label for item in dataset.items) for label in LABELS} == {
        "Normal": 18, "Benign": 18, "Malignant": 18,
    }
    assert dataset.skipped == []
    assert dataset.items[0].number == 1 and dataset.items[0].height == 64


def test_generic_class_folders_keep_their_names(tmp_path: Path) -> None:
    for name in ("squamous", "adenocarcinoma"):
        save(slice_image(1, 0), tmp_path / name / "a.png")
    dataset = scan_folder(tmp_path, progress=False)
    assert dataset.labels == ("adenocarcinoma", "squamous")
    assert dataset.items[0].number is None


def test_folder_without_class_folders_is_an_error(tmp_path: Path) -> None:
    save(slice_image(1, 0), tmp_path / "loose.png")
    with pytest.raises(ValueError, match="no class folders"):
        scan_folder(tmp_path, progress=False)
    with pytest.raises(ValueError, match="no such directory"):
        scan_folder(tmp_path / "missing", progress=False)


# --- malformed and unusual files ------------------------------------------------


def test_malformed_files_are_skipped_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "Normal cases"
    save(slice_image(1, 0), folder / "good (1).jpg")
    (folder / "empty (2).jpg").write_bytes(b"")
    good = (folder / "good (1).jpg").read_bytes()
    (folder / "truncated (3).jpg").write_bytes(good[: len(good) // 2])
    (folder / "text (4).jpg").write_text("this is not an image")
    save(np.zeros((1, 1), dtype=np.uint8), folder / "dot (5).png")
    (folder / ".DS_Store").write_bytes(b"\0\1junk")

    dataset = scan_folder(tmp_path, progress=False)

    assert [item.path.name for item in dataset.items] == ["good (1).jpg"]
    reasons = {path.name: reason for path, reason in dataset.skipped}
    assert set(reasons) == {"empty (2).jpg", "truncated (3).jpg", "text (4).jpg", "dot (5).png"}
    assert "empty" in reasons["empty (2).jpg"]
    assert "too small" in reasons["dot (5).png"]
    warnings = capsys.readouterr().err
    for name in reasons:
        assert f"skipped {folder / name}" in warnings


def test_a_decoder_crash_on_one_file_skips_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIL raises SyntaxError ("broken PNG file") for some corrupt PNG chunks.
    def flaky_load_rgb(path: Path) -> np.ndarray:
        if "bad" in path.name:
            raise SyntaxError("broken PNG file")
        return load_rgb(path)

    monkeypatch.setattr(data, "load_rgb", flaky_load_rgb)
    save(slice_image(1, 0), tmp_path / "Normal" / "good.png")
    save(slice_image(1, 1), tmp_path / "Normal" / "bad.png")
    dataset = scan_folder(tmp_path, progress=False)
    assert [item.path.name for item in dataset.items] == ["good.png"]
    assert dataset.skipped == [
        (tmp_path / "Normal" / "bad.png", "bad.png could not be decoded (SyntaxError: broken PNG file)")
    ]


def test_unusual_but_valid_images_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "Benign cases"
    grey = slice_image(1, 0, size=(40, 60))
    rgba = np.dstack([np.repeat(grey[:, :, None], 3, axis=2), np.full(grey.shape, 255, np.uint8)])
    save(rgba, folder / "rgba (1).png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen (2).png")
    Image.fromarray(grey).convert("P").save(folder / "palette (3).png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(grey).save(folder / "rotated (4).jpg", exif=exif)

    dataset = scan_folder(tmp_path, progress=False)

    assert dataset.skipped == []
    sizes = {item.path.name: (item.height, item.width) for item in dataset.items}
    assert sizes == {"rgba (1).png": (40, 60), "sixteen (2).png": (40, 60), "palette (3).png": (40, 60),
                     "rotated (4).jpg": (60, 40)}
    assert all(np.isclose(np.linalg.norm(item.fingerprint), 1.0) for item in dataset.items)


def test_progress_goes_to_stderr_and_can_be_silenced(iqoth: Path, capsys: pytest.CaptureFixture) -> None:
    scan_folder(iqoth, progress=True)
    err = capsys.readouterr().err
    assert "reading images" in err and "54/54" in err
    scan_folder(iqoth, progress=False)
    assert capsys.readouterr().err == ""


# --- duplicates and grouping ------------------------------------------------------


def test_exact_duplicates_are_found_and_share_a_group(iqoth: Path) -> None:
    folder = iqoth / "The IQ-OTHNCCD lung cancer dataset" / "Malignant cases"
    shutil.copy(folder / "Malignant case (2).jpg", folder / "Malignant case (90).jpg")
    # Different content from every other slice, so only the md5 can join it.
    save(slice_image(99, 0), folder / "Malignant case (50).jpg")
    shutil.copy(folder / "Malignant case (50).jpg", folder / "Malignant case (7).jpg")
    dataset = scan_folder(iqoth, progress=False)

    names = [[dataset.items[index].path.name for index in indices] for indices in dataset.duplicate_sets()]
    assert sorted(map(sorted, names)) == [
        ["Malignant case (2).jpg", "Malignant case (90).jpg"],
        ["Malignant case (50).jpg", "Malignant case (7).jpg"],
    ]
    group_of = groups_by_path(dataset, group_items(dataset))
    assert group_of["Malignant case (2).jpg"] == group_of["Malignant case (90).jpg"]
    assert group_of["Malignant case (50).jpg"] == group_of["Malignant case (7).jpg"]


def test_consecutive_slices_group_into_scans(iqoth: Path) -> None:
    dataset = scan_folder(iqoth, progress=False)
    groups = group_items(dataset)
    summary = group_summary(dataset, groups)
    assert {label: summary[label]["groups"] for label in LABELS} == {"Normal": 3, "Benign": 3, "Malignant": 3}
    assert summary["Benign"]["sizes"] == [6, 6, 6]
    group_of = groups_by_path(dataset, groups)
    assert len({group_of[f"Bengin case ({number}).jpg"] for number in range(1, 7)}) == 1
    assert group_of["Bengin case (6).jpg"] != group_of["Bengin case (7).jpg"]


def test_a_size_change_ends_a_scan(tmp_path: Path) -> None:
    folder = tmp_path / "Malignant cases"
    save(slice_image(1, 0, size=(64, 64)), folder / "Malignant case (1).png")
    save(slice_image(1, 1, size=(64, 64)), folder / "Malignant case (2).png")
    save(slice_image(1, 2, size=(64, 78)), folder / "Malignant case (3).png")  # same anatomy, new scan
    save(slice_image(1, 3, size=(64, 78)), folder / "Malignant case (4).png")
    dataset = scan_folder(tmp_path, progress=False)
    assert group_items(dataset) == [0, 0, 1, 1]


def test_near_duplicates_far_apart_in_numbering_share_a_group(tmp_path: Path) -> None:
    folder = tmp_path / "Normal cases"
    make_class(folder, "Normal", [1, 2], slices=3)
    save(slice_image(1, 0), folder / "Normal case (40).png")  # a re-encoded copy of slice 1
    dataset = scan_folder(tmp_path, progress=False)
    group_of = groups_by_path(dataset, group_items(dataset))
    assert group_of["Normal case (40).png"] == group_of["Normal case (1).jpg"]
    assert group_of["Normal case (40).png"] != group_of["Normal case (4).jpg"]


def similarity_stats(dataset: Dataset, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Quantiles (10/50/90%) of fingerprint similarity, the evidence behind the thresholds.

    Per class: numbered neighbours of one size, and random pairs; plus pairs from
    different classes, which are surely different patients.
    """
    rng = np.random.default_rng(seed)
    prints = np.stack([item.fingerprint for item in dataset.items])
    labels = np.array([item.label for item in dataset.items])
    first, second = rng.integers(0, len(dataset.items), size=(2, 20_000))
    random_pairs = np.einsum("ij,ij->i", prints[first], prints[second])
    stats: dict[str, dict[str, list[float]]] = {}
    for label in dataset.labels:
        neighbours = [
            data._similarity(dataset.items[a], dataset.items[b])
            for run in data._numbered_runs(dataset.items)
            if dataset.items[run[0]].label == label
            for a, b in zip(run, run[1:])
        ]
        within = (labels[first] == label) & (labels[second] == label) & (first != second)
        stats[label] = {"neighbours": _quantiles(neighbours), "random": _quantiles(random_pairs[within])}
    stats["different classes"] = {"random": _quantiles(random_pairs[labels[first] != labels[second]])}
    return stats


def _quantiles(values) -> list[float]:
    values = np.asarray(values, dtype=float)
    return [round(float(q), 3) for q in np.quantile(values, [0.1, 0.5, 0.9])] if values.size else []


def test_similarity_stats_separate_neighbours_from_other_classes(iqoth: Path) -> None:
    stats = similarity_stats(scan_folder(iqoth, progress=False))
    assert set(stats) == {*LABELS, "different classes"}
    assert stats["Benign"]["neighbours"][1] > stats["different classes"]["random"][1]


# --- split ---------------------------------------------------------------------------


@pytest.fixture()
def many_patients(tmp_path: Path) -> Path:
    for offset, (folder, prefix) in enumerate(
        [("Normal cases", "Normal"), ("Bengin cases", "Bengin"), ("Malignant cases", "Malignant")]
    ):
        patients = list(range(offset * 20, offset * 20 + 10))
        make_class(tmp_path / folder, prefix, patients, slices=3)
    source = tmp_path / "Bengin cases" / "Bengin case (1).jpg"
    shutil.copy(source, tmp_path / "Bengin cases" / "Bengin case (100).jpg")
    return tmp_path


def test_grouped_split_keeps_groups_and_duplicates_whole(many_patients: Path) -> None:
    dataset = scan_folder(many_patients, progress=False)
    groups = group_items(dataset)
    splits = grouped_split(dataset, groups, seed=3)

    for key in (groups, [item.md5 for item in dataset.items]):
        sides = defaultdict(set)
        for value, split in zip(key, splits):
            sides[value].add(split)
        assert all(len(found) == 1 for found in sides.values())
    for label in LABELS:
        assert {split for item, split in zip(dataset.items, splits) if item.label == label} == {
            "train", "val", "test",
        }
    train = sum(split == "train" for split in splits)
    assert 0.6 < train / len(splits) < 0.8


def test_grouped_split_is_deterministic_per_seed(many_patients: Path) -> None:
    dataset = scan_folder(many_patients, progress=False)
    groups = group_items(dataset)
    first = grouped_split(dataset, groups, seed=7)
    assert grouped_split(dataset, groups, seed=7) == first
    assert any(grouped_split(dataset, groups, seed=seed) != first for seed in range(8, 12))


def test_grouped_split_rejects_bad_fractions(many_patients: Path) -> None:
    dataset = scan_folder(many_patients, progress=False)
    with pytest.raises(ValueError, match="fractions"):
        grouped_split(dataset, group_items(dataset), fractions=(0.7, 0.2, 0.2))


# --- the real dataset ------------------------------------------------------------------------


def test_real_dataset() -> None:
    require(REAL_DATA.is_dir(), f"the IQ-OTH/NCCD copy is not at {REAL_DATA}")
    dataset = scan_folder(REAL_DATA, progress=False)
    counts = {label: sum(item.label == label for item in dataset.items) for label in LABELS}
    assert counts == {"Normal": 327, "Benign": 95, "Malignant": 447}
    assert dataset.skipped == []

    groups = group_items(dataset)
    group_of = {(item.label, item.number): group for item, group in zip(dataset.items, groups)}
    duplicates = dataset.duplicate_sets()
    assert len(duplicates) == 33
    assert all(len({groups[index] for index in indices}) == 1 for indices in duplicates)
    assert group_of["Malignant", 8] == group_of["Malignant", 155]  # a duplicate far apart in numbering
    assert group_of["Malignant", 199] != group_of["Malignant", 228]  # 512 to 623 wide: a new scan
    assert group_of["Malignant", 258] != group_of["Malignant", 259]  # and back to 512 wide
    summary = group_summary(dataset, groups)
    plausible = {"Normal": (15, 60), "Benign": (8, 20), "Malignant": (20, 50)}
    for label, (low, high) in plausible.items():
        assert low <= summary[label]["groups"] <= high, (label, summary[label]["groups"])

    splits = grouped_split(dataset, groups)
    sides = defaultdict(set)
    for group, split in zip(groups, splits):
        sides[group].add(split)
    assert all(len(found) == 1 for found in sides.values())
