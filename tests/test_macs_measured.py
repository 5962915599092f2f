"""MACs measured by the FLOP counter on one evaluation equal the counted (paper / analytic) profile on our DiT and
U-ViT, so the paper's MACs stay exact; on a diffusers FLUX they attribute each module to its sub-layer."""

import pytest
import torch

from l2c.cache.layout import describe
from l2c.cache.macs import measure_macs, profile_macs
from l2c.models import create_model


@pytest.mark.parametrize("preset", ["DiT-mnist", "U-ViT-mnist", "DiT-tiny", "U-ViT-tiny"])
def test_measured_equals_counted_on_our_models(preset):
    model = create_model(preset).eval()
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
    t, y = torch.zeros(1), torch.zeros(1, dtype=torch.long)
    measured = measure_macs(model, lambda: model(x, t, y))
    assert measured == profile_macs(preset)
    assert measured.full("analytic") > measured.full("paper")  # attention matmuls counted


def test_measured_on_flux_attributes_fused_inputs_and_attention():
    pytest.importorskip("diffusers")
    from test_layouts import _build, _flux_inputs

    model, _ = _build("flux")
    measured = measure_macs(model, lambda: model(**_flux_inputs(1.0)))
    subs = describe(model)
    fused = [i for i, s in enumerate(subs) if s.kind == "fused"]
    block = model.single_transformer_blocks[0]
    tokens = 16 + 8  # image + text tokens run through the single block
    linear_of = sum(m.in_features * m.out_features for m in (block.proj_out, block.proj_mlp))
    linear_of += sum(m.in_features * m.out_features for m in (block.attn.to_q, block.attn.to_k, block.attn.to_v))
    assert measured.sublayer_linear[fused[0]] == tokens * linear_of  # proj_out + its parallel producers
    width = block.proj_out.out_features
    assert measured.sublayer_attention[fused[0]] == 2 * tokens * tokens * width
    joint = [i for i, s in enumerate(subs) if s.kind == "joint_attn"]
    assert all(measured.sublayer_attention[i] == 2 * tokens * tokens * width for i in joint)
    assert all(measured.sublayer_attention[i] == 0 for i, s in enumerate(subs) if s.kind.startswith("mlp"))
    assert measured.always_linear > 0  # embedders, modulation, the output head
    assert measured.sublayer_outputs[joint[0]] == (16 + 8) * width  # the (image, text) pair


def _engine_peak(model, call, plan, steps):
    from l2c.cache import CacheEngine

    with torch.no_grad(), CacheEngine(model, plan) as engine:
        for j in range(steps):
            engine.begin_step(j)
            call(j)
        return engine.peak_stored_bytes


@pytest.mark.parametrize("seed", [0, 1])
def test_plan_peak_bytes_is_what_the_engine_holds(seed):
    from l2c.cache.macs import plan_peak_bytes
    from l2c.cache.plan import COMPUTE, CachePlan

    model = create_model("DiT-tiny").eval()
    profile = profile_macs("DiT-tiny")
    steps, L = 8, len(profile.sublayer_linear)
    actions = torch.randint(0, 5, (steps, L), generator=torch.Generator().manual_seed(seed)).to(torch.int8)
    actions[0] = COMPUTE
    plan = CachePlan.from_actions(actions)
    x = torch.randn(3, model.in_channels, model.input_size, model.input_size)

    def call(j):
        model(x, torch.full((3,), 900.0 - 100 * j), torch.tensor([1, 2, 3]))

    assert plan_peak_bytes(plan, profile.sublayer_outputs, batch=3) == _engine_peak(model, call, plan, steps) > 0


def test_plan_peak_bytes_on_flux_tuple_outputs():
    pytest.importorskip("diffusers")
    from test_layouts import _build, _flux_inputs

    from l2c.cache.macs import plan_peak_bytes
    from l2c.cache.schedules import taylorseer

    model, _ = _build("flux")
    measured = measure_macs(model, lambda: model(**_flux_inputs(1.0)))
    plan = taylorseer(6, len(measured.sublayer_linear), 2, 2)
    peak = _engine_peak(model, lambda j: model(**_flux_inputs(1.0 - 0.1 * j)), plan, 6)
    assert plan_peak_bytes(plan, measured.sublayer_outputs) == peak > 0
