"""Output folders are marked by the command that writes them; seeds name distinct streams; a library's log lines
during a failed load join the error's one line. (The refusals themselves are rows of tests/test_bad_input.py.)"""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
import torch

from l2c.cli import main
from l2c.cli.errors import library_output_held, one_line
from l2c.cli.folders import MARKER, check_owned, claimed
from l2c.sampling.seeds import StackedRandomGenerator


def test_a_refused_run_leaves_no_mark_and_a_run_that_wrote_keeps_it(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(ValueError):
        with claimed([out], "demo"):
            assert json.loads((out / MARKER).read_text())["command"] == "demo"
            raise ValueError("refused before writing")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too
    with pytest.raises(KeyboardInterrupt):
        with claimed([out], "demo"):
            (out / "results.json").write_text("{}")
            raise KeyboardInterrupt
    check_owned("--out", out, "demo")  # the interrupted run's folder is the demo's to resume
    with pytest.raises(ValueError, match="l2c demo, not of l2c compare"):
        check_owned("--out", out, "compare")


def test_an_empty_folder_and_a_folder_from_before_the_marker_are_accepted(tmp_path):
    check_owned("--out", tmp_path, "train-model")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    check_owned("--out", tmp_path, "train-model")
    with pytest.raises(ValueError, match="checkpoint.pt"):
        check_owned("--out", tmp_path, "demo")


def test_export_diffusers_replaces_only_its_own_export(tmp_path, capsys):
    out = tmp_path / "exported"
    argv = ["export-diffusers", "--model", "DiT-tiny", "--random-init", "--out", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # its own earlier export may be replaced
    assert (out / "l2c.json").exists() and not (out / MARKER).exists()
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_the_folders_each_command_marks(tmp_path):
    from l2c.cli import build_parser
    from l2c.cli.validate import output_folders

    args = build_parser().parse_args(["train-router", "--out", str(tmp_path / "r.safetensors")])
    assert output_folders(args) == [tmp_path / "r"]
    args = build_parser().parse_args(["compare", "--out", str(tmp_path / "c")])
    assert output_folders(args) == [tmp_path / "c"]


def test_seeds_outside_63_bits_are_refused_not_wrapped():
    with pytest.raises(ValueError, match="2\\^63"):
        StackedRandomGenerator([2**63])
    with pytest.raises(ValueError, match="-1"):
        StackedRandomGenerator([-1])
    a, b = StackedRandomGenerator([2**63 - 1]), StackedRandomGenerator([0])
    assert not torch.equal(a.randn((1, 4)), b.randn((1, 4)))


def test_library_output_is_shown_after_a_load_that_succeeds_and_folded_into_a_failure(monkeypatch):
    shown = io.StringIO()
    library = logging.getLogger("diffusers")
    monkeypatch.setattr(library, "handlers", [logging.StreamHandler(shown)])
    monkeypatch.setattr(library, "propagate", False)
    log = logging.getLogger("diffusers.models.fake")
    with pytest.warns(UserWarning, match="a library warning"):
        with library_output_held():
            log.warning("a warning worth seeing")
            warnings.warn("a library warning", UserWarning, stacklevel=1)
            assert shown.getvalue() == ""  # held while the block runs
    assert "a warning worth seeing" in shown.getvalue()
    with pytest.raises(OSError) as info:
        with library_output_held():
            log.error("An error occurred while trying to fetch x:\nno file named model.safetensors")
            raise OSError("no file named model.bin")
    assert shown.getvalue().count("\n") == 1  # nothing more was printed
    line = one_line(info.value)
    assert "\n" not in line and "model.bin" in line and "model.safetensors" in line
    assert logging.Logger.callHandlers.__name__ == "callHandlers"  # restored
