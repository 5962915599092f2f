"""Grouped forecasts (CacheEngine(..., grouped=True)): sub-layers with identical plan columns forecast as one tensor
from shared flat buffers give the outputs of the per-sub-layer form, on known curves and in sampling."""

import pytest
import torch
from torch import nn

from l2c.cache import CacheEngine, CachePlan
from l2c.cache.grouped import plan_groups
from l2c.cache.layout import LAYOUTS, BlockLayout, sublayers
from l2c.cache.plan import COMPUTE, DROP, FOCA, FORECAST1, FORECAST2, REUSE
from l2c.models import create_model
from l2c.sampling.diffusion import DiffusionSpec
from l2c.sampling.guidance import guided_denoiser
from l2c.sampling.samplers import make_sampler

C, R, F1, F2, FC, D = COMPUTE, REUSE, FORECAST1, FORECAST2, FOCA, DROP


class Wave(nn.Module):
    def __init__(self, phase: float, pair: bool = False):
        super().__init__()
        self.phase, self.pair = phase, pair

    def forward(self, s):
        out = torch.sin(3.0 * s + self.phase) * (1 + self.phase) + s**2
        return (out, 2 * out) if self.pair else out


class Block(nn.Module):
    def __init__(self, phase, pair=False):
        super().__init__()
        self.attn, self.mlp = Wave(phase, pair), Wave(phase + 0.5)

    def forward(self, s):
        a = self.attn(s)
        self.outputs = (a[0] if isinstance(a, tuple) else a).clone(), self.mlp(s).clone()  # forecasts are scratch
        return s


class WaveNet(nn.Module):
    def __init__(self, blocks: int, pair: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList([Block(0.3 * b, pair and b == 1) for b in range(blocks)])

    def forward(self, s):
        x = torch.full((2, 3), float(s), dtype=torch.float64)
        for b in self.blocks:
            x = b(x)
        return torch.stack([o for b in self.blocks for o in b.outputs])


@pytest.fixture(autouse=True)
def layout():
    LAYOUTS[WaveNet] = BlockLayout(lambda m: list(m.blocks))
    yield
    del LAYOUTS[WaveNet]


POSITIONS = [1.0 - (j / 12) ** 0.7 for j in range(12)]


def run(net, plan, grouped, snapshot_at=None):
    with CacheEngine(net, plan, grouped=grouped) as engine:
        rows, groups, saved = [], 0, None
        for j in range(plan.num_steps):
            if j == snapshot_at:
                saved = engine.snapshot()
            engine.begin_step(j)
            rows.append(net(POSITIONS[j]))
            groups = max(groups, len(engine._runner.groups))
        if saved is not None:
            engine.restore(saved)
            for j in range(snapshot_at, plan.num_steps):
                engine.begin_step(j)
                rows[j] = net(POSITIONS[j])
        return torch.stack(rows), engine.peak_stored_bytes, groups


def mixed_actions():
    # columns: sub-layers 0, 2, 5 alike (FoCa), 1, 3 alike (order 2), 4 alone (order 1 / reuse), 6, 7 alike (drop)
    every3 = [j % 3 == 0 for j in range(12)]
    every2 = [j % 2 == 0 for j in range(12)]
    cols = [
        [C if c else FC for c in every3],
        [C if c else F2 for c in every2],
        [C if c else FC for c in every3],
        [C if c else F2 for c in every2],
        [C if c else (F1 if j % 4 == 1 else R) for j, c in enumerate(every3)],
        [C if c else FC for c in every3],
        [C if c else D for c in every2],
        [C if c else D for c in every2],
    ]
    return torch.tensor(cols, dtype=torch.int8).T


@pytest.mark.parametrize("form", ["newton", "taylorseer"])
@pytest.mark.parametrize("positions", [None, POSITIONS])
def test_grouped_equals_per_sublayer(form, positions):
    actions = mixed_actions()
    assert plan_groups(actions.tolist()) == [0, 1, 0, 1, None, 0, 2, 2]
    plan = CachePlan.from_actions(actions, form=form, positions=positions)
    net = WaveNet(4)
    alone, peak_alone, no_groups = run(net, plan, grouped=False)
    together, peak_together, groups = run(net, plan, grouped=True)
    # groups 0 and 1 formed (and used: their forecasts come from them); 2 drops and so stores nothing
    assert no_groups == 0 and groups == 2
    torch.testing.assert_close(together, alone, rtol=1e-13, atol=1e-13)
    assert peak_together == peak_alone  # the same buffers, laid out together
    again, _, _ = run(net, plan, grouped=True, snapshot_at=7)  # resumed from a snapshot: members on their own
    torch.testing.assert_close(again, alone, rtol=1e-13, atol=1e-13)


def test_a_tuple_output_keeps_its_group_on_its_own_histories():
    every3 = [j % 3 == 0 for j in range(12)]
    actions = torch.tensor([[C if c else F2 for c in every3]] * 6, dtype=torch.int8).T
    plan = CachePlan.from_actions(actions)
    net = WaveNet(3, pair=True)  # sub-layer 2 returns a pair: the group of all six cannot be one flat history
    alone, _, _ = run(net, plan, grouped=False)
    together, _, groups = run(net, plan, grouped=True)
    torch.testing.assert_close(together, alone, rtol=1e-13, atol=1e-13)
    assert groups == 0  # formed from the first two members at evaluation 0, split when the pair came
    with CacheEngine(net, plan, grouped=True) as engine:
        engine.begin_step(0)
        net(POSITIONS[0])
        assert engine._runner.ungrouped == {(0, 0)} and all(h.f0 is not None for h in engine._runner.histories.values())


@pytest.mark.parametrize("preset,sampler", [("DiT-tiny", "ddim"), ("U-ViT-tiny", "dpm-solver-2")])
def test_grouped_sampling_equals_per_sublayer(preset, sampler):
    torch.manual_seed(1)
    model = create_model(preset).double().eval().requires_grad_(False)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    spec = DiffusionSpec("linear", 0 if preset.startswith("DiT") else 1)
    sampler = make_sampler(sampler, 10, spec)
    E, L = sampler.num_evaluations, len(sublayers(model))
    actions = torch.full((E, L), FC, dtype=torch.int8)
    actions[::3] = C
    actions[:, 1::4] = torch.where(actions[:, 1::4] == C, C, F2)  # two groups of columns
    plan = CachePlan.from_actions(actions)

    def sample(grouped):
        z = torch.randn(
            3,
            model.in_channels,
            model.input_size,
            model.input_size,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(0),
        )
        denoise, copies = guided_denoiser(model, torch.tensor([1, 2, 3]), 1.5)
        with CacheEngine(model, plan, grouped=grouped) as engine:
            return sampler.sample(engine.wrap(denoise), torch.cat([z] * copies)), engine.peak_stored_bytes

    (a, peak_a), (b, peak_b) = sample(False), sample(True)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert peak_a == peak_b
