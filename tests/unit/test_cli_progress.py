"""Piped output (CI, `| tee log`): each stage's start, its progress and a heartbeat."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from trtflow.cli import app


def test_piped_progress_prints_a_heartbeat_while_a_stage_runs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(app, "HEARTBEAT_SECONDS", 0.0)
    progress = app.Progress(piped=True)
    progress.started("calibrate", "int8")
    assert "→ calibrate [int8]: started" in capsys.readouterr().err
    progress.progress("calibrate: 32/128 samples, ~36 s left")
    seen, deadline = "", time.monotonic() + 30
    while "… calibrate [int8]" not in seen and time.monotonic() < deadline:
        time.sleep(0.2)  # the heartbeat thread's line, with the last progress message
        seen += capsys.readouterr().err
    assert "(calibrate: 32/128 samples, ~36 s left)" in seen
    progress.finished(SimpleNamespace(cached=True, stage="calibrate", key="k" * 12,
                                      seconds=1.0), "int8")
    assert "calibrate [int8]: cached" in capsys.readouterr().err


def test_piped_progress_lines_name_the_stage_and_the_message(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(app, "PROGRESS_EVERY_SECONDS", 3600.0)
    monkeypatch.setattr(app, "HEARTBEAT_SECONDS", 3600.0)
    progress = app.Progress(piped=True)
    progress.started("validate", "fp32")
    progress.progress("validate: waiting for process 12, which is computing the same stage")
    progress.progress("validate: batch size 8")  # within the rate limit: left to the heartbeat
    err = capsys.readouterr().err
    assert "→ validate [fp32]: started" in err
    assert "… validate [fp32]: 0 s (validate: waiting for process 12" in err  # the first: at once
    assert "batch size 8" not in err
