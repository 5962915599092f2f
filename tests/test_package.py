"""The package a user installs: its version, its metadata, and the bundled assets in what is built."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

import l2c
from l2c.cli import main, package_version

ROOT = Path(__file__).parent.parent


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version(capsys):
    assert package_version() == l2c.__version__
    try:
        main(["--version"])
    except SystemExit as e:  # argparse's version action exits 0 after printing
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"l2c {l2c.__version__}"


def test_metadata_is_complete():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["authors"] and project["keywords"] and project["urls"]["Homepage"].startswith("https://")
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])
    assert "version" in project["dynamic"]  # from l2c.__version__: one place to bump
    # no requirement may ask for a torch that the pinned CPU build does not satisfy
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert [r for r in requirements if re.match(r"torch\b", r)] == ["torch>=2.3"]


def _covered(patterns: list[str], package: Path) -> set[str]:
    return {p for pattern in patterns for p in glob.glob(pattern, root_dir=package, recursive=True)}


def test_package_data_covers_every_bundled_asset_nested_folders_included(tmp_path):
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["l2c"]
    package = ROOT / "l2c"
    assets = [str(p.relative_to(package)) for p in (package / "assets").rglob("*") if p.is_file()]
    assert assets and set(assets) <= _covered(patterns, package)
    nested = tmp_path / "assets" / "flux-mnist" / "transformer" / "config.json"  # a model folder inside assets/
    nested.parent.mkdir(parents=True)
    nested.write_text("{}")
    assert "assets/flux-mnist/transformer/config.json" in _covered(patterns, tmp_path)
