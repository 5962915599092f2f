"""The ranked schedule search (l2c.training.ranked_search) and the search's time limit (--search-minutes): the same
moves as the exhaustive search, the same acceptance, one pass where that search made many; a search stopped by its
deadline still meets the budget, and the router file and `router show` say why it stopped."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from l2c.cache.macs import profile_macs
from l2c.cache.plan import COMPUTE, FORECAST2, CachePlan
from l2c.cli import main
from l2c.jobs.generate import SampleConfig
from l2c.router.files import load_router
from l2c.sampling.diffusion import default_spec
from l2c.training.deadline import Deadline
from l2c.training.ranked_search import apply_move, grow_ranked, keyed_moves, refine_ranked, trim_ranked
from l2c.training.schedule_search import TrajectoryError, _moves, grow_to_budget, refine, trim_to_budget


def interval_table(E, L, every, start=0):
    actions = torch.full((E, L), FORECAST2, dtype=torch.long)
    actions[start::every] = COMPUTE
    actions[0] = COMPUTE
    return actions


class Ticking:
    """A clock that advances one second per reading: a deadline of `n` seconds passes after about n readings."""

    def __init__(self):
        self.now = itertools.count()

    def __call__(self):
        return float(next(self.now))


def additive_error(E, seed=0):
    """A search error that adds one random cost per (evaluation, sub-layer) not computed: moves have independent
    effects, so the ranked and exhaustive searches can be compared exactly."""
    harm = torch.rand(E, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def error(plan):
        return float((harm * ~plan.compute).sum())

    return error


@pytest.mark.parametrize("every", [2, 3, 5])
def test_keyed_moves_are_the_exhaustive_moves_and_rebuild_from_their_keys(every):
    E, L = 16, 12
    actions = interval_table(E, L, every)
    actions[every, 0:2] = FORECAST2  # a block moved away: that row is no longer fully computed
    actions[every + 1, 0:2] = COMPUTE
    actions[:, 5][actions[:, 5] != COMPUTE] = 2  # one sub-layer forecasts at order 1 (its lower moves differ)
    exhaustive = list(_moves(actions))
    keyed = list(keyed_moves(actions))
    assert len(keyed) == len(exhaustive) > 20
    blocks = [[2 * b, 2 * b + 1] for b in range(6)]
    for (key, candidate), expected in zip(keyed, exhaustive):
        assert torch.equal(candidate, expected)
        assert torch.equal(apply_move(actions, key, blocks), expected)


def test_a_move_the_table_no_longer_allows_is_skipped():
    E, L = 12, 12
    actions = interval_table(E, L, 3)
    blocks = [[2 * b, 2 * b + 1] for b in range(6)]
    moved = apply_move(actions, ("step", 3, 4), blocks)
    assert moved is not None and bool(moved[4].eq(COMPUTE).all()) and not bool(moved[3].eq(COMPUTE).any())
    assert apply_move(moved, ("step", 3, 2), blocks) is None  # evaluation 3 computes nothing now
    shifted = apply_move(moved, ("block", 6, 0, 7), blocks)
    assert shifted is not None and apply_move(shifted, ("block", 6, 1, 7), blocks) is None  # 6 is no longer full
    assert apply_move(moved, ("step", 4, 5), blocks) is not None
    assert apply_move(apply_move(moved, ("step", 6, 5), blocks), ("step", 4, 5), blocks) is None  # 5 computes now
    assert apply_move(actions, ("action", 0, 2), blocks) is not None
    lowered = apply_move(actions, ("action", 0, 1), blocks)  # to reuse
    assert apply_move(lowered, ("action", 0, 2), blocks) is None  # reuse lowers no further


def test_ranked_moves_end_where_no_move_lowers_the_error():
    """Screened on the error itself, a ranked search that keeps no move in a round stands where no budget-neutral
    move lowers the error (a local optimum, as the exhaustive search's), and never pays in MACs."""
    E = 20
    error = additive_error(E)
    macs = profile_macs("DiT-mnist")
    start = interval_table(E, 12, 4)
    found, trace = refine_ranked(start, error, error, rounds=100, progress=False)
    assert trace.errors == sorted(trace.errors, reverse=True) and len(trace.errors) > 3
    assert trace.errors[-1] == error(CachePlan.from_actions(found))
    fraction = macs.fraction
    assert fraction(CachePlan.from_actions(found)) <= fraction(CachePlan.from_actions(start)) + 1e-12
    for candidate in _moves(found):
        assert not error(CachePlan.from_actions(candidate)) < trace.errors[-1]
    exhaustive, _ = refine(start, error, rounds=100, progress=False)
    assert error(CachePlan.from_actions(found)) <= error(CachePlan.from_actions(exhaustive)) + 1.0  # comparable


def test_ranked_moves_are_confirmed_on_the_whole_set_and_the_check_set():
    """A move that the screen likes but the whole held-out set or the check set does not is not kept."""
    E = 16
    error = additive_error(E, seed=1)
    start = interval_table(E, 12, 4)

    def screen(plan):  # likes everything the error likes, and also computing evaluation 5
        return error(plan) - 100.0 * bool(plan.compute[5].all())

    def check(plan):  # refuses any change to evaluations 8 on
        return error(plan) + 100.0 * bool(plan.actions[8:].ne(start[8:]).any())

    found, trace = refine_ranked(start, error, screen, rounds=10, progress=False, check=check)
    assert not bool(found[5].eq(COMPUTE).all()) and torch.equal(found[8:], start[8:])
    assert trace.rejected >= 1 and len(trace.errors) > 1
    assert trace.checks == sorted(trace.checks, reverse=True)


def test_ranked_trimming_removes_what_the_exhaustive_trimming_removes_when_removals_are_independent():
    macs, E = profile_macs("DiT-mnist"), 20
    interval = interval_table(E, 12, 2)
    error = additive_error(E, seed=2)
    measured = []

    def counting(plan):
        measured.append(1)
        return error(plan)

    ranked, ranked_error = trim_ranked(interval, counting, macs, 0.48, FORECAST2, progress=False)
    ranked_runs = len(measured)
    measured.clear()
    exhaustive, exhaustive_error = trim_to_budget(interval, counting, macs, 0.48, FORECAST2, progress=False)
    assert torch.equal(ranked, exhaustive) and ranked_error == exhaustive_error
    assert macs.fraction(CachePlan.from_actions(ranked)) <= 0.48
    assert ranked_runs < len(measured)  # one pass, against one per block removed


def test_ranked_growth_adds_the_evaluations_that_help_most_within_the_budget():
    """The example of test_schedules' growth test: the ranked growth adds the same evaluations, in the same order,
    and stops for the same reasons."""
    macs, E = profile_macs("DiT-mnist"), 30
    interval = interval_table(E, 12, 3)
    gain = torch.zeros(E)
    gain[[7, 11, 20]] = torch.tensor([1.0, 3.0, 2.0])

    def error(plan):
        added = plan.compute.all(1) & ~interval.eq(COMPUTE).all(1)
        return float(-(gain * added).sum() + 0.5 * (added & (gain == 0)).sum())

    def check(plan):
        return error(plan) + 5.0 * bool(plan.compute[20].all())

    base = macs.fraction(CachePlan.from_actions(interval))
    one = macs.fraction(CachePlan.from_actions(torch.where(torch.arange(E)[:, None] == 11, COMPUTE, interval)))
    for target, kwargs in ((base + 0.2, {}), (base + 1.5 * (one - base), {}), (base + 0.2, {"check": check})):
        ranked = grow_ranked(interval, error, macs, target, progress=False, **kwargs)
        exhaustive = grow_to_budget(interval, error, macs, target, progress=False, **kwargs)
        assert torch.equal(ranked[0], exhaustive[0]) and ranked[1:] == exhaustive[1:]


def test_a_deadline_stops_the_moves_with_the_table_kept_so_far():
    E = 20
    error = additive_error(E)
    start = interval_table(E, 12, 4)
    full, _ = refine_ranked(start, error, error, rounds=100, progress=False)
    deadline = Deadline(10 / 60, clock=Ticking())  # ten readings of the clock
    found, trace = refine_ranked(start, error, error, rounds=100, progress=False, deadline=deadline)
    stopped = deadline.stopped
    assert stopped is not None and stopped["limit_minutes"] == 10 / 60 and "moves" in stopped["phase"]
    assert "--search-minutes" in stopped["reason"]
    assert trace.errors[-1] == error(CachePlan.from_actions(found)) > error(CachePlan.from_actions(full))
    assert profile_macs("DiT-mnist").fraction(CachePlan.from_actions(found)) <= profile_macs("DiT-mnist").fraction(
        CachePlan.from_actions(start)
    )


@pytest.mark.parametrize("trim", [trim_ranked, trim_to_budget])
@pytest.mark.parametrize("ticks", [0, 5])
def test_a_trim_the_deadline_interrupts_still_meets_the_budget(trim, ticks):
    macs, E = profile_macs("DiT-mnist"), 20
    interval = interval_table(E, 12, 2)
    error = additive_error(E, seed=3)
    deadline = Deadline(ticks / 60, clock=Ticking())
    trimmed, value = trim(interval, error, macs, 0.40, FORECAST2, progress=False, deadline=deadline)
    assert macs.fraction(CachePlan.from_actions(trimmed)) <= 0.40
    assert value is None and deadline.stopped["phase"] == "the trimmed start"


def test_the_exhaustive_search_is_unchanged_by_a_deadline_that_does_not_pass(random_dit):
    """The deadline's checks change nothing until it passes: the exhaustive search (with its trim and check set, on
    real sampling runs) finds the same schedule, errors and check errors with and without one."""
    model, spec = random_dit, default_spec("dit")
    sampler = SampleConfig(sampler="ddim", steps=9).make_sampler(spec)
    macs = profile_macs("DiT-tiny")
    results = []
    for deadline in (None, Deadline(1e6)):
        error = TrajectoryError(model, sampler, 1.5, 1, seed=0, resume_every=2)
        check = TrajectoryError(model, sampler, 1.5, 1, seed=100, resume_every=2)
        extra = {} if deadline is None else {"deadline": deadline}
        start = interval_table(9, 4, 2)
        trimmed, value = trim_to_budget(start, error, macs, 0.6, FORECAST2, progress=False, **extra)
        found, trace = refine(trimmed, error, rounds=1, progress=False, check=check, start_error=value, **extra)
        results.append((trimmed, value, found, trace, error.evaluations))
    (t0, v0, f0, r0, n0), (t1, v1, f1, r1, n1) = results
    assert torch.equal(t0, t1) and v0 == v1 and torch.equal(f0, f1) and n0 == n1
    assert r0.errors == r1.errors and r0.checks == r1.checks and r0.rejected == r1.rejected
    assert len(r0.errors) > 1


def test_the_ranked_search_on_sampling_runs_keeps_moves_and_costs_fewer_whole_runs(random_dit):
    """On real sampling runs (tiny DiT, 9 DDIM steps): the ranked search lowers the held-out error, and measures
    fewer candidates on the whole held-out set than the exhaustive one; its screen uses the first seeds of that set."""
    model, spec = random_dit, default_spec("dit")
    sampler = SampleConfig(sampler="ddim", steps=9).make_sampler(spec)
    start = interval_table(9, 4, 3)
    error = TrajectoryError(model, sampler, 1.5, 2, seed=0, resume_every=2)
    screen = TrajectoryError(model, sampler, 1.5, 1, seed=0, resume_every=2)
    assert torch.equal(screen.z, error.z[:1])
    found, trace = refine_ranked(start, error, screen, rounds=1, progress=False)
    assert trace.errors[-1] < trace.errors[0] and trace.errors[-1] == error(CachePlan.from_actions(found))
    ranked_runs = error.evaluations
    exhaustive = TrajectoryError(model, sampler, 1.5, 2, seed=0, resume_every=2)
    refine(start, exhaustive, rounds=1, progress=False)
    assert ranked_runs < exhaustive.evaluations


@pytest.mark.parametrize("target, phase", [("0.64", "trimmed"), ("0.55", "grown"), ("0.5", "moves")])
def test_search_minutes_stops_the_search_and_the_schedule_still_meets_the_budget(tmp_path, capsys, target, phase):
    """A tiny time limit: the search stops wherever it is (the trimmed or grown start, or the moves), the schedule
    meets the budget, the router file records why, and router show reports it."""
    out = tmp_path / "s.safetensors"
    args = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "9", "--target-macs", target]
    search = ["--search-rounds", "2", "--search-images", "2", "--check-images", "2", "--search-minutes", "1e-9"]
    assert main([*args, *search, "--out", str(out)]) == 0
    assert "search stopped early: the 1e-09-minute limit (--search-minutes)" in capsys.readouterr().out
    router, meta = load_router(out)
    assert meta["met_macs"] <= float(target)
    stopped = meta["search_stopped"]
    assert stopped["limit_minutes"] == 1e-9 and stopped["after_minutes"] >= 1e-9 and phase in stopped["phase"]
    history = json.loads((tmp_path / "s" / "schedule_training.json").read_text())["history"]
    assert history["search_stopped"] == stopped and history["search_errors"] == []
    assert main(["router", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["search_stopped"] == stopped
    assert main(["router", "show", str(out)]) == 0
    assert "search stopped early after" in capsys.readouterr().out


def test_a_search_within_its_minutes_records_no_stop(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    args = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "6", "--target-macs", "0.5"]
    search = ["--search-rounds", "1", "--search-images", "2", "--check-images", "0", "--search-minutes", "60"]
    assert main([*args, *search, "--out", str(out)]) == 0
    _, meta = load_router(out)
    assert "search_stopped" not in meta and meta["training"]["search_minutes"] == 60
    assert meta["training"]["search_method"] == "ranked"
    history = json.loads((tmp_path / "s" / "schedule_training.json").read_text())["history"]
    assert history["search_stopped"] is None and 0 < history["search_minutes_spent"] < 60
    capsys.readouterr()
    assert main(["router", "show", str(out), "--json"]) == 0
    assert "search_stopped" not in json.loads(capsys.readouterr().out)


def test_search_method_flag_chooses_the_search(tmp_path, monkeypatch):
    import l2c.jobs.train_schedule as job

    called = []
    monkeypatch.setattr(job, "refine", lambda *a, **k: called.append("exhaustive") or (a[0], job.SearchTrace()))
    monkeypatch.setattr(job, "refine_ranked", lambda *a, **k: called.append("ranked") or (a[0], job.SearchTrace()))
    args = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "6", "--target-macs", "0.5"]
    search = ["--search-rounds", "1", "--search-images", "2", "--check-images", "0"]
    for method in ("exhaustive", "ranked"):
        out = tmp_path / f"{method}.safetensors"
        assert main([*args, *search, "--search-method", method, "--out", str(out)]) == 0
        assert load_router(out)[1]["training"]["search_method"] == method
    assert called == ["exhaustive", "ranked"]


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--search-minutes", "0"], "--search-minutes needs a value > 0"),
        (["--search-minutes", "nan"], "--search-minutes needs a value > 0"),
        (["--search-minutes", "5", "--search-rounds", "0"], "--search-minutes needs a value > 0 and a search"),
        (["--search-method", "greedy"], "invalid choice"),
    ],
)
def test_bad_search_limits_are_refused_before_any_work(tmp_path, capsys, extra, says):
    args = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "6", "--target-macs", "0.5"]
    assert main([*args, *extra, "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s.safetensors").exists()
