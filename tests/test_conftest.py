"""The suite's one skip point: a skip on a developer's machine, a failure in CI."""

from __future__ import annotations

import pytest

import conftest


def test_require_skips_locally_fails_in_ci_and_passes_when_met(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="chromium missing"):
        conftest.require(False, "chromium missing")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="chromium missing .CI=true"):
        conftest.require(None, "chromium missing")
    conftest.require("/usr/bin/npm", "npm missing")  # a met condition: nothing happens
