"""`--help`: the options a user needs first, then the tuning knobs in "advanced" groups with one short line each."""

from __future__ import annotations

import re

import pytest

from l2c.cli import COMMANDS, build_parser, main

HELP_CHARS = 100  # an advanced knob's help fits one line beside its flag, before "(default: ...)"


def _subparsers():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in choices.items():
        nested = [a for a in sub._actions if a.dest == "router_command"]
        yield from ((f"{name} {k}", p) for k, p in nested[0].choices.items()) if nested else [(name, sub)]


@pytest.mark.parametrize("name, parser", list(_subparsers()), ids=[n for n, _ in _subparsers()])
def test_advanced_knobs_have_one_short_line_each(name, parser):
    for group in parser._action_groups:
        if not group.title.startswith("advanced"):
            continue
        for action in group._group_actions:
            assert action.help and "\n" not in action.help, (name, action.dest)
            assert len(action.help) <= HELP_CHARS, f"{name} {action.option_strings}: {len(action.help)} characters"


def test_train_router_lists_the_options_a_user_needs_first(capsys):
    assert main(["train-router", "--help"]) == 0
    text = capsys.readouterr().out
    first = text.index("\nadvanced")

    def line_of(flag):
        return re.search(rf"^ +(-\w, )?{flag}\b", text, re.MULTILINE).start()

    for flag in ("--model", "--data", "--target-speedup", "--out", "--resume", "--quiet"):
        assert line_of(flag) < first, flag
    for flag in ("--lam", "--search-rounds", "--fill-budget", "--forecast-form", "--eta"):
        assert line_of(flag) > first, flag
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_command_has_help():
    for name in COMMANDS:
        assert main([name, "--help"]) == 0


def test_every_key_of_router_show_json_is_documented_and_the_old_mac_names_are_gone(capsys):
    import json
    from pathlib import Path

    from l2c.models.checkpoints import ASSETS

    doc = (Path(__file__).parent.parent / "docs" / "json-keys.md").read_text()
    documented = set(re.findall(r"`([a-z_<>]+)`", doc))
    assert (
        main(
            ["router", "show", str(ASSETS / "dit-mnist-schedule-ddim20.safetensors"), "--model", "dit-mnist", "--json"]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert not {"macs_paper", "macs_full", "macs_uncached", "macs_analytic"} & set(shown)
    kinds = [k.replace("<kind>", "") for k in documented if "<kind>" in k]
    for key in shown:
        assert key in documented or any(key.startswith(prefix) for prefix in kinds), key
