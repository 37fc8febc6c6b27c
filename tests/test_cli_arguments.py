"""Wrong command-line arguments are one clear usage error, given before any model is loaded or any work done."""

from __future__ import annotations

import pytest

from lung_classifier.cli import main as cli_main
from lung_classifier.cli import model_flags


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model here would mean the arguments were not checked first."""
    monkeypatch.setattr(model_flags, "load", lambda args: pytest.fail("the model was loaded"))


def usage_error(capsys, run) -> str:
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.strip().splitlines()[-1]


def test_predict_on_a_folder_says_it_is_a_folder_and_names_scan(tmp_path, capsys, no_model):
    line = usage_error(capsys, lambda: cli_main(["predict", str(tmp_path)]))
    assert f"{tmp_path} is a folder" in line and "python -m lung_classifier scan" in line


@pytest.mark.parametrize("where, message", [("missing/table.csv", "does not exist"), (".", "is a folder")])
def test_scan_csv_that_cannot_be_written_is_refused_before_the_scan(tmp_path, capsys, no_model, where, message):
    line = usage_error(capsys, lambda: cli_main(["scan", str(tmp_path), "--csv", str(tmp_path / where)]))
    assert "argument --csv" in line and message in line


@pytest.mark.parametrize("flag, value, message", [("--top", "0", "at least 1"), ("--batch-size", "x", "whole number")])
def test_scan_numbers_are_checked(tmp_path, capsys, no_model, flag, value, message):
    line = usage_error(capsys, lambda: cli_main(["scan", str(tmp_path), flag, value]))
    assert f"argument {flag}" in line and message in line


@pytest.mark.parametrize("flag, value, message", [("--folds", "0", "at least 2"), ("--folds", "1", "at least 2"),
                                                  ("--repeats", "0", "at least 1"),
                                                  ("--input-size", "7", "from 32 to 1024"),
                                                  ("--input-size", "100000", "from 32 to 1024")])
def test_training_numbers_are_checked_before_resnet50_loads(tmp_path, capsys, flag, value, message):
    from training.__main__ import parse_args

    line = usage_error(capsys, lambda: parse_args(["--data", str(tmp_path), "--output", str(tmp_path / "out"),
                                                   flag, value]))
    assert f"argument {flag}" in line and message in line
