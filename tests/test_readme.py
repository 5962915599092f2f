"""The README's Python example runs as written (with a router trained here in a few iterations)."""

from __future__ import annotations

import re
from pathlib import Path

from l2c.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_api_runs(tmp_path, monkeypatch):
    block = re.search(r"## Python API\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    args = ["--model", "dit-mnist", "--steps", "20", "--out", "router.safetensors", "--iterations", "2"]
    assert main(["train-router", *args, "--lam", "0.001", "--batch-size", "2"]) == 0
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert tuple(scope["images"].shape) == (16, 1, 28, 28)
