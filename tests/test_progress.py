"""Progress output: a bar on a terminal, a line per tenth (and per minute) in a log or pipe, nothing under --quiet."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import l2c.utils.progress as progress_module
from l2c.utils.progress import LogProgress, progress_bar, quiet


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


def test_a_log_gets_at_most_a_line_per_tenth_and_a_closing_line(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)  # only the 10 % rule left
    for _ in progress_bar(range(1000), desc="work"):
        pass
    lines = _lines(capsys.readouterr().err)
    assert 10 <= len(lines) <= 11, lines
    assert all(line.startswith("work: ") for line in lines) and "1000/1000" in lines[-1]


def test_a_log_line_waits_for_the_minute(capsys):
    # the default: a loop that ends within the minute prints only its closing line
    with progress_bar(total=50, desc="quick", unit="img") as bar:
        for _ in range(50):
            bar.update(1)
            bar.set_postfix(loss="0.1")
    lines = _lines(capsys.readouterr().err)
    assert lines == [lines[0]] and "50/50 img (100%)" in lines[0] and "loss=0.1" in lines[0]


def test_a_log_line_per_minute_without_a_total(monkeypatch, capsys):
    clock = iter(range(0, 10_000, 30))  # each call to the clock is 30 s later
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = LogProgress(desc="open-ended")
    for _ in range(10):
        bar.update(1)  # 30 s apart: a line every other update
    assert len(_lines(capsys.readouterr().err)) == 5


def test_transient_bars_and_errors_leave_no_closing_line(capsys):
    with progress_bar(total=3, desc="inner", leave=False) as bar:
        bar.update(3)
    with pytest.raises(RuntimeError):
        with progress_bar(total=3, desc="failed") as bar:
            bar.update(1)
            raise RuntimeError
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(3), desc="bar")
    assert type(bar).__name__ == "tqdm"
    list(bar)
    assert "bar:" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_quiet_and_disable_print_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    with quiet():
        assert list(progress_bar(range(5), desc="hushed")) == [0, 1, 2, 3, 4]
    with progress_bar(total=5, desc="off", disable=True) as bar:
        bar.update(5)
        bar.set_postfix(loss=1)
    assert capsys.readouterr().err == ""
    assert not progress_module._quiet  # restored after the block


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "l2c", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )


ROUTER = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "4", "--data", "generated"]
ROUTER += ["--generated-images", "8", "--batch-size", "2", "--lam", "0.001", "--iterations", "30"]


def test_a_command_writing_to_a_pipe_prints_few_progress_lines_and_none_when_quiet(tmp_path):
    run = _run_cli([*ROUTER, "--out", str(tmp_path / "r.safetensors")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr and "it/s" not in run.stderr  # no bar redraws in a pipe
    lines = [line for line in run.stderr.splitlines() if line.startswith("train-router:")]
    assert 1 <= len(lines) <= 11, run.stderr
    run = _run_cli([*ROUTER, "--out", str(tmp_path / "q.safetensors"), "--quiet"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert not [line for line in run.stderr.splitlines() if line.startswith("train-router:")], run.stderr
    assert "\r" not in run.stderr


def test_every_loop_in_the_package_reports_through_the_helper():
    # a bare tqdm would write every redraw into a log again
    package = Path(progress_module.__file__).parent.parent
    users = [p for p in package.rglob("*.py") if "tqdm" in p.read_text() and p.name != "progress.py"]
    assert users == []
