"""benchmarks/flux_residual_forecast.py: the evaluations diffusers' TaylorSeer hook computes, and the claim the results
page makes from it: with every block hooked, the hook's images are those of an order-1 forecast of the last single
block's output alone (the residual stream), the output norm and head run at the current timestep."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # FluxPipeline imports it


@pytest.fixture(scope="module")
def frf(load_benchmark):
    return load_benchmark("flux_residual_forecast")


def test_hook_evaluations_follow_the_hooks_rule(frf):
    assert frf.hook_evaluations(14, 2, 3) == (0, 1, 2, 4, 6, 8, 10, 12)
    assert frf.hook_evaluations(8, 3, 2) == (0, 1, 3, 6)


def test_the_hook_is_a_forecast_of_the_last_single_blocks_output(frf):
    fsbs = frf.fsbs
    bench = fsbs.Bench(fsbs.parse_args(["--images", "3", "--batch-size", "3"]))
    args = frf.argparse.Namespace(steps=6, router=None)
    hook, last_block, _, whole_output = frf.methods(args, bench)  # the third: l2c's evaluations
    other = frf.Forecast("other", 6, frf.hook_evaluations(6, 2, 3), lambda t: t.single_transformer_blocks[0])
    with torch.no_grad():
        runs = {}
        for name, method in (("hook", hook), ("last", last_block), ("first", other), ("output", whole_output)):
            method.attach(bench)
            try:
                runs[name] = fsbs.sample(bench, method, bench.seeds).float()
            finally:
                method.detach(bench)
        plain = fsbs.sample(bench, fsbs.FewerSteps(6), bench.seeds).float()
    assert last_block.computed == set(frf.hook_evaluations(6, 2, 3))
    # the same images up to the order of floating-point operations in the two forecasts
    torch.testing.assert_close(runs["last"], runs["hook"], rtol=1e-4, atol=1e-4)
    for name in ("first", "output"):  # forecasting another block, or the whole output, gives other images
        assert (runs[name] - runs["hook"]).abs().max() > 1e-3, name
    assert (runs["hook"] - plain).abs().max() > 1e-3  # and the hook did forecast
    assert "forward" not in vars(bench.transformer.single_transformer_blocks[-1])  # unpatched again
