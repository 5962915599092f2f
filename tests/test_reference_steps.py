"""A schedule searched on fewer steps against the images of more (train-router --reference-steps): the search's error
is measured against the uncached run at the reference step count, the run itself keeps its own step count, and the
router file and `router show` say which reference it was."""

from __future__ import annotations

import json
import math

import pytest
import torch

from l2c.cache.plan import REUSE, CachePlan
from l2c.cli import main
from l2c.jobs.generate import SampleConfig
from l2c.router.files import load_router
from l2c.sampling.diffusion import default_spec
from l2c.training.trajectory_error import TrajectoryError, per_image_mse

TINY = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "6", "--target-macs", "0.5"]
SEARCH = ["--search-rounds", "1", "--search-images", "2", "--check-images", "2"]


def test_the_error_measures_against_the_reference_step_count(random_dit):
    model, spec = random_dit, default_spec("dit")
    six, nine = (SampleConfig(sampler="ddim", steps=n).make_sampler(spec) for n in (6, 9))
    own = TrajectoryError(model, six, 1.5, 3, seed=5, resume_every=0)
    same = TrajectoryError(model, six, 1.5, 3, seed=5, resume_every=0, reference_sampler=six)
    longer = TrajectoryError(model, six, 1.5, 3, seed=5, resume_every=0, reference_sampler=nine)
    full = CachePlan.full(six.num_evaluations, 4)
    assert torch.equal(same.reference, own.reference) and own(full) == same(full) == math.log(1e-20)  # itself
    # the reference of `longer` is the 9-step sampler's uncached run of the same noise, computed here independently
    assert torch.equal(longer.reference, own.samples(None, nine))
    assert not torch.equal(longer.reference, own.reference)
    expected = per_image_mse(own.samples(None), longer.reference).clamp_min(1e-20).log().mean()
    assert longer(full) == pytest.approx(float(expected), rel=1e-12) and longer(full) > -40
    # a cached plan is still run on 6 steps: the same samples under either reference
    cached = full.actions.clone()
    cached[2:5:2] = REUSE  # at evaluations 2 and 4
    plan = CachePlan.from_actions(cached)
    assert torch.equal(longer.samples(plan), own.samples(plan))


def _recording(monkeypatch) -> list:
    """(steps of the run, steps of its reference) of every TrajectoryError the schedule job makes."""
    import l2c.jobs.train_schedule as job

    seen, original = [], job.TrajectoryError

    def recording(*args, **kwargs):
        seen.append((args[1].num_steps, kwargs["reference_sampler"].num_steps))
        return original(*args, **kwargs)

    monkeypatch.setattr(job, "TrajectoryError", recording)
    return seen


@pytest.mark.parametrize(
    "model",
    [
        ["--model", "DiT-tiny", "--random-init", "--steps", "6", "--reference-steps", "12"],
        ["--model", "flux-mnist", "--steps", "3", "--reference-steps", "6"],  # a diffusers transformer's workload
    ],
    ids=["dit", "flux"],
)
def test_train_router_searches_against_the_reference_and_records_it(tmp_path, capsys, monkeypatch, model):
    steps, reference = int(model[model.index("--steps") + 1]), int(model[-1])
    seen = _recording(monkeypatch)
    out = tmp_path / "s.safetensors"
    assert main(["train-router", *model, "--target-macs", "0.5", *SEARCH, "--out", str(out), "--quiet"]) == 0
    assert seen and set(seen) == {(steps, reference)}  # the search's error and its check
    router, meta = load_router(out)
    assert meta["steps"] == steps and meta["reference_steps"] == reference
    capsys.readouterr()
    assert main(["router", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reference_steps"] == reference
    assert main(["router", "show", str(out)]) == 0
    assert f"searched against the uncached images of {reference} steps" in capsys.readouterr().out


def test_without_reference_steps_nothing_is_recorded(tmp_path):
    out = tmp_path / "s.safetensors"
    assert main([*TINY, *SEARCH, "--out", str(out)]) == 0
    assert "reference_steps" not in load_router(out)[1]


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--reference-steps", "0"], "--reference-steps needs a value >= 1"),
        (["--reference-steps", "12", "--search-rounds", "0"], "--reference-steps needs a value >= 1 and a search"),
    ],
)
def test_bad_reference_steps_are_refused_before_any_work(tmp_path, capsys, extra, says):
    assert main([*TINY, *extra, "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s.safetensors").exists()
