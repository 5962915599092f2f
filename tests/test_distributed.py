"""Large sample sets in resumable parts, and torchrun runs that must equal one process (gloo on the CPU)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import l2c.jobs.sample_sets as sample_sets
from l2c.cli import main
from l2c.jobs.generate import SampleConfig, generate, to_uint8
from l2c.models import create_model
from l2c.router.files import load_router
from l2c.router.router import Router
from l2c.sampling.diffusion import default_spec


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("DiT-tiny").eval().requires_grad_(False)


def test_sample_to_npz_matches_generate_and_resumes(tmp_path, tiny, monkeypatch):
    spec, cfg = default_spec("dit"), SampleConfig(steps=4, batch_size=3)
    seeds, classes = list(range(10)), [i % 10 for i in range(10)]
    expected = to_uint8(generate(tiny, spec, seeds, classes, cfg, progress=False))
    real, calls = sample_sets.generate, []

    def dies_on_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sample_sets, "generate", dies_on_third_batch)
    out = tmp_path / "s.npz"
    with pytest.raises(KeyboardInterrupt):
        sample_sets.sample_to_npz(tiny, spec, seeds, classes, cfg, out)
    assert not out.exists() and len(list((tmp_path / "s.npz.parts").glob("*.npy"))) == 2
    calls.clear()
    monkeypatch.setattr(sample_sets, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    sample_sets.sample_to_npz(tiny, spec, seeds, classes, cfg, out)
    assert len(calls) == 2  # only the two missing batches (of four) were made
    data = np.load(out)
    assert np.array_equal(data["arr_0"], expected) and data["seeds"].tolist() == seeds
    assert not (tmp_path / "s.npz.parts").exists()


def test_parts_of_another_run_are_refused(tmp_path, tiny):
    spec = default_spec("dit")
    seeds, classes = list(range(4)), [0, 1, 2, 3]
    (tmp_path / "s.npz.parts").mkdir()
    (tmp_path / "s.npz.parts" / "settings.json").write_text('{"model": "something else"}')
    with pytest.raises(ValueError, match="different sampling run"):
        sample_sets.sample_to_npz(tiny, spec, seeds, classes, SampleConfig(steps=4), tmp_path / "s.npz")


def _torchrun(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "l2c", *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_sampling_equals_one_process(tmp_path):
    common = ["sample", "--model", "DiT-tiny", "--random-init", "--steps", "4", "--seeds", "0-9", "--batch-size", "3"]
    _torchrun([*common, "--npz", "two.npz", "--out", "two.png"], tmp_path)
    assert main([*common, "--npz", str(tmp_path / "one.npz"), "--out", str(tmp_path / "one.png")]) == 0
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert np.array_equal(two["arr_0"], one["arr_0"]) and np.array_equal(two["labels"], one["labels"])


def test_torchrun_router_training_equals_one_process_with_the_whole_batch(tmp_path):
    # Each process draws its own cache step (official DDP behaviour); DDIM-2 has one cache step, so the two runs
    # must agree exactly: two processes at batch 4 average the gradients that one process at batch 8 computes.
    common = ["train-router", "--model", "DiT-tiny", "--random-init", "--data", "generated", "--generated-images", "16"]
    common += ["--steps", "2", "--iterations", "5", "--lam", "0.01", "--lr", "0.1"]
    _torchrun([*common, "--batch-size", "4", "--out", "two.safetensors"], tmp_path)
    assert main([*common, "--batch-size", "8", "--out", str(tmp_path / "one.safetensors")]) == 0
    two, meta = load_router(tmp_path / "two.safetensors")
    one, _ = load_router(tmp_path / "one.safetensors")
    assert meta["processes"] == 2
    assert torch.allclose(two.logits, one.logits, atol=1e-4), (two.logits - one.logits).abs().max()
    init = Router(2, 4, one.cache_steps, generator=torch.Generator().manual_seed(0)).logits
    assert (one.logits - init).abs().max() > 0.1  # training moved the router: the agreement is not trivial


def test_torchrun_schedule_search_equals_one_process(tmp_path):
    # The held-out seeds are split across the processes and their errors gathered in image order: every choice of
    # the search, hence the schedule, is that of one process.
    common = ["train-router", "--model", "DiT-tiny", "--random-init", "--steps", "6", "--target-macs", "0.5"]
    common += ["--search-rounds", "1", "--search-images", "5", "--check-images", "3"]
    _torchrun([*common, "--out", "two.safetensors"], tmp_path)
    assert main([*common, "--out", str(tmp_path / "one.safetensors")]) == 0
    two, two_meta = load_router(tmp_path / "two.safetensors")
    one, one_meta = load_router(tmp_path / "one.safetensors")
    assert torch.equal(two.logits, one.logits)
    assert two_meta["actions"] == one_meta["actions"]
    history = __import__("json").loads((tmp_path / "one" / "schedule_training.json").read_text())["history"]
    other = __import__("json").loads((tmp_path / "two" / "schedule_training.json").read_text())["history"]
    assert history["search_errors"] == other["search_errors"] and len(history["search_errors"]) > 0
