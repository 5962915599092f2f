"""Block shortcuts (l2c.cache.shortcuts): a FLUX block none of whose sub-layers the plan computes runs as its gated
residual adds, bit-identical to the hooked block for every action, guidance slot and forecast form; its norms and
skipped children do not run; any other forward source, a wrapped norm, or a new shape runs the block hooked; the
measured cost model counts each block's glue (what its shortcut skips) apart from its sub-layers."""

import time

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from test_layouts import _build  # noqa: E402

import l2c.cache.shortcuts as shortcuts_module  # noqa: E402
from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.costs import measure_time_profile, profile_from_record  # noqa: E402
from l2c.cache.layout import describe  # noqa: E402
from l2c.cache.plan import COMPUTE, DROP, FOCA, FORECAST1, FORECAST2, REUSE, CachePlan  # noqa: E402
from l2c.cache.shortcuts import SHORTCUTS, Shortcut, shortcut_for  # noqa: E402

TIMES = [1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2, 0.1]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _flux():
    return _build("flux")[0]  # diffusers' tiny test config, random non-zero weights everywhere


def _inputs(t, slot=0, batch=2):
    # Two guidance calls per evaluation with different prompts, as FluxPipeline's true CFG makes.
    return dict(
        hidden_states=_randn(batch, 16, 4),
        encoder_hidden_states=_randn(batch, 8, 32, seed=1 + 10 * slot),
        pooled_projections=_randn(batch, 32, seed=2 + 10 * slot),
        img_ids=_randn(16, 3, seed=3),
        txt_ids=_randn(8, 3, seed=4),
        timestep=torch.full((batch,), t),
    )


def _run(model, plan, grouped=False, calls=2, batches=None):
    outs = []
    with torch.no_grad(), CacheEngine(model, plan, grouped=grouped) as engine:
        for j, t in enumerate(TIMES):
            engine.begin_step(j)
            batch = 2 if batches is None else batches[j]
            outs += [model(**_inputs(t, slot, batch), return_dict=False)[0] for slot in range(calls)]
    return outs


def _hooked(monkeypatch):
    monkeypatch.setattr(shortcuts_module, "shortcut_for", lambda block, branches: None)


def _count_layernorms(monkeypatch, model):
    """Calls of the LayerNorms inside the blocks (the class forward: the dispatchers and shortcuts never run it)."""
    inside = {id(m) for group in (model.transformer_blocks, model.single_transformer_blocks) for m in group.modules()}
    counts = {"n": 0}
    original = nn.LayerNorm.forward

    def counted(self, x):
        counts["n"] += id(self) in inside
        return original(self, x)

    monkeypatch.setattr(nn.LayerNorm, "forward", counted)
    return counts


def _random_plan(L, seed, actions=(COMPUTE, REUSE, FORECAST1, FORECAST2, DROP), form="newton"):
    g = torch.Generator().manual_seed(seed)
    choice = torch.tensor(actions, dtype=torch.int8)
    plan = choice[torch.randint(0, len(actions), (len(TIMES), L), generator=g)]
    plan[0] = plan[1] = COMPUTE
    plan[4, :] = REUSE  # an evaluation where every block takes its shortcut
    return CachePlan.from_actions(plan, form=form)


@pytest.mark.parametrize(
    "seed, form, grouped, actions",
    [
        (0, "newton", False, (COMPUTE, REUSE, FORECAST1, FORECAST2, DROP)),
        (1, "taylorseer", True, (COMPUTE, REUSE, FORECAST1, FORECAST2)),
        (2, "newton", False, (COMPUTE, FOCA, REUSE)),
    ],
)
def test_shortcut_outputs_are_bit_identical_to_the_hooked_blocks(monkeypatch, seed, form, grouped, actions):
    model = _flux()
    plan = _random_plan(len(describe(model)), seed, actions, form)
    fast = _run(model, plan, grouped)
    _hooked(monkeypatch)
    slow = _run(model, plan, grouped)
    assert len(fast) == 2 * len(TIMES)
    for j, (a, b) in enumerate(zip(fast, slow)):
        assert torch.equal(a, b), (seed, j)
    assert not torch.equal(fast[-1], _run(model, CachePlan.full(len(TIMES), len(describe(model))))[-1])


def test_a_skipped_block_runs_none_of_its_norms_and_a_partly_computed_one_runs_hooked(monkeypatch):
    model = _flux()
    L = len(describe(model))  # double blocks: attn, ff, ff_context (0-5); single blocks: proj_out (6, 7)
    counts = _count_layernorms(monkeypatch, model)
    _run(model, CachePlan.full(len(TIMES), L), calls=1)
    per_evaluation = counts["n"] / len(TIMES)
    assert per_evaluation == 2 * 4 + 2 * 1  # double: norm1, norm1_context, norm2, norm2_context; single: norm

    reuse = torch.full((len(TIMES), L), REUSE, dtype=torch.int8)
    reuse[0] = COMPUTE
    counts["n"] = 0
    _run(model, CachePlan.from_actions(reuse), calls=1)
    assert counts["n"] == per_evaluation  # evaluation 0 only: every later block is a shortcut

    reuse[1:, 0] = COMPUTE  # the first double block computes its attention at every evaluation: it runs hooked
    counts["n"] = 0
    _run(model, CachePlan.from_actions(reuse), calls=1)
    # Hooked with ff / ff_context skipped, it still runs norm1 and norm1_context (their gates and modulations);
    # norm2 / norm2_context are the skipped feed-forwards' inputs and stand in.
    assert counts["n"] == per_evaluation + 2 * (len(TIMES) - 1)


def test_other_forwards_a_wrapped_norm_or_a_new_shape_run_the_block_hooked(monkeypatch):
    model = _flux()
    L = len(describe(model))
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    assert shortcut_for(double, ("attn", "ff", "ff_context")) is SHORTCUTS["FluxTransformerBlock"]
    assert shortcut_for(single, ("proj_out",)) is SHORTCUTS["FluxSingleTransformerBlock"]
    assert shortcut_for(double, ("attn", "ff")) is None  # a variant without one of its children

    entry = SHORTCUTS["FluxSingleTransformerBlock"]
    changed = Shortcut(entry.branches, entry.norms, {**entry.digests, "FluxSingleTransformerBlock": "0" * 16}, None)
    monkeypatch.setitem(SHORTCUTS, "FluxSingleTransformerBlock", changed)
    assert shortcut_for(single, ("proj_out",)) is None  # another diffusers version's forward: no shortcut
    monkeypatch.setitem(SHORTCUTS, "FluxSingleTransformerBlock", entry)

    reuse = torch.full((len(TIMES), L), REUSE, dtype=torch.int8)
    reuse[0] = COMPUTE
    plan = CachePlan.from_actions(reuse)
    counts = _count_layernorms(monkeypatch, model)
    single.norm.forward = single.norm.forward  # another tool's instance wrapper on the norm the shortcut reads
    try:
        _run(model, plan, calls=1)
    finally:
        del single.norm.forward
    assert counts["n"] == 10 + (len(TIMES) - 1)  # that block's norm ran at every evaluation

    # The batch changes at evaluation 3: every block runs hooked once (its sub-layers compute afresh), then shortcuts.
    batches = [2, 2, 2, 1, 1, 1, 1, 1]
    fast = _run(model, plan, calls=1, batches=batches)
    _hooked(monkeypatch)
    slow = _run(model, plan, calls=1, batches=batches)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def _slowed(monkeypatch, norm, seconds):
    """The norm's class forward, `seconds` slower on this instance (an instance wrapper would hide it from hooks)."""
    original = type(norm).forward

    def slow(self, *args, **kwargs):
        if self is norm:
            time.sleep(seconds)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(norm), "forward", slow)


def test_the_cost_model_counts_each_blocks_glue_apart_from_its_sublayers(monkeypatch):
    """A block's norms are skipped with all of its sub-layers (the shortcut): their time is the block's glue, paid
    at an evaluation that computes any of the block's sub-layers, not part of any sub-layer's cost."""
    model = _flux()
    subs = describe(model)
    x = _inputs(1.0)

    def record():
        return measure_time_profile(model, lambda: model(**x), [1.0] * len(subs), 2, repeats=3)[1]

    base = record()
    members = [m for m, _ in base["block_glue_s"]]
    assert members == [[0, 1, 2], [3, 4, 5], [6], [7]]  # two double blocks, two single blocks
    _slowed(monkeypatch, model.transformer_blocks[1].norm1, 0.2)  # far above timing noise on a busy CPU
    _slowed(monkeypatch, model.single_transformer_blocks[0].norm, 0.2)
    slowed = record()
    gained = [a[1] - b[1] for a, b in zip(slowed["block_glue_s"], base["block_glue_s"])]
    assert gained[1] > 0.15 and gained[2] > 0.15 and abs(gained[0]) < 0.1 and abs(gained[3]) < 0.1
    assert max(a - b for a, b in zip(slowed["sublayer_s"], base["sublayer_s"])) < 0.1

    profile = profile_from_record(slowed, [1.0] * len(subs))
    row = [True] * len(subs)
    skip_double = [i not in (3, 4, 5) for i in range(len(subs))]
    partly = [i != 4 for i in range(len(subs))]
    glue = slowed["block_glue_s"][1][1] / 2  # per image
    assert profile.per_evaluation(row) - profile.per_evaluation(skip_double) > glue  # sub-layers and glue saved
    saved_partly = profile.per_evaluation(row) - profile.per_evaluation(partly)
    assert abs(saved_partly - slowed["sublayer_s"][4] / 2) < 1e-12  # one of three skipped: the block is entered
