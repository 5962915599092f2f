"""The search's starts: evaluations computed back to back at the start (warm-up), the choice among starts by
held-out error, and `--action auto` choosing the forecast order by measurement."""

from __future__ import annotations

import json

import pytest
import torch

from l2c.cache.plan import FORECAST1, FORECAST2
from l2c.cli import main
from l2c.jobs.train_schedule import _choose_start
from l2c.router.budget import router_plan
from l2c.router.files import load_router
from l2c.training.deadline import Deadline
from l2c.training.trajectory import ScheduleTrainConfig, warmup_rows


@pytest.mark.parametrize("E, count, warm", [(28, 12, 3), (28, 16, 3), (50, 12, 2), (20, 8, 4), (28, 9, 2)])
def test_warmup_rows_compute_the_first_back_to_back_and_spread_the_rest(E, count, warm):
    rows = warmup_rows(E, count, warm)
    assert len(rows) == count == len(set(rows)) and rows == sorted(rows) and rows[-1] < E
    assert rows[:warm] == list(range(warm))
    gaps = [b - a for a, b in zip(rows[warm - 1 :], [*rows[warm:], E])]  # the last gap runs to the end
    assert max(gaps) - min(gaps) <= 1  # evenly spread after the warm-up, the last gap as long as the others


def test_warmup_rows_refuse_what_leaves_nothing_to_spread():
    assert warmup_rows(9, 4, 3) is None  # one evaluation left after the warm-up
    assert warmup_rows(10, 11, 2) is None  # more evaluations than there are


def test_the_start_with_the_lowest_held_out_error_is_chosen():
    a, b, c = (torch.zeros(4, 2, dtype=torch.long).index_fill_(0, torch.tensor([1, 2, 3]), k) for k in (1, 2, 3))
    errors = {1: 3.0, 2: 1.0, 3: 2.0}  # a plan's marker (its action after evaluation 0) -> its error
    measured = []

    def error(plan):
        k = int(plan.actions[1, 0])
        measured.append(k)
        return errors[k]

    starts = {"interval": (a, 2.5), "spread": (b, None), "warm": (c, None)}
    name, found = _choose_start(starts, error, "newton", Deadline(None))
    assert name == "spread" and found == {"interval": 2.5, "spread": 1.0, "warm": 2.0}
    assert measured == [2, 3]  # a start measured already is not measured again
    # with no time left, the first start (an interval's), unmeasured
    late = Deadline(1e-9)
    while not late.passed("x"):
        pass
    name, found = _choose_start({"interval": (a, None), "spread": (b, None)}, error, "newton", late)
    assert name == "interval" and found == {"interval": None, "spread": None}


def test_auto_needs_a_search():
    with pytest.raises(ValueError, match="needs --search-rounds >= 1"):
        ScheduleTrainConfig(action="auto", search_rounds=0)
    with pytest.raises(ValueError, match="or 'auto'"):
        ScheduleTrainConfig(action="forecast3")


def test_train_router_auto_picks_the_order_with_the_lower_held_out_error(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    args = ["train-router", "--model", "flux-mnist", "--steps", "8", "--target-macs", "0.5", "--search-rounds", "1"]
    args += ["--search-images", "2", "--check-images", "0", "--fill-budget", "off", "-q", "--out", str(out)]
    assert main(args) == 0  # flux-mnist's default --action is auto
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("forecast order: "))
    history = json.loads((tmp_path / "r" / "schedule_training.json").read_text())["history"]
    errors = history["order_errors"]
    chosen = min(errors, key=errors.get)
    assert set(errors) == {"forecast1", "forecast2"} and line.startswith(f"forecast order: {chosen} (")
    _, meta = load_router(out)
    assert meta["training"]["action"] == chosen
    # the starts are built with the chosen order and the moves only lower a sub-layer's order: a schedule searched
    # at order 1 forecasts no cell at order 2
    actions = router_plan(*load_router(out)).actions
    if chosen == "forecast1":
        assert not bool((actions == FORECAST2).any()) and bool((actions == FORECAST1).any())
    else:
        assert bool((actions == FORECAST2).any())


def test_auto_without_a_search_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    args = ["train-router", "--model", "flux-mnist", "--steps", "4", "--target-macs", "0.5", "--search-rounds", "0"]
    assert main([*args, "--action", "auto", "--out", str(out)]) == 2
    assert "needs --search-rounds >= 1" in capsys.readouterr().err and not out.exists()
