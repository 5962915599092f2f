import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def official_routers_dir():
    d = os.environ.get("L2C_OFFICIAL_ROUTERS")
    return d if d and os.path.isdir(d) else None


@pytest.fixture
def random_dit():
    """A DiT-tiny in float64 with every weight drawn from N(0, 0.2): its initialisation zeroes the output layers, and a
    model that predicts nothing makes every schedule and every step count sample the same images."""
    from l2c.models import create_model

    torch.manual_seed(0)
    model = create_model("DiT-tiny").double().eval().requires_grad_(False)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def load_benchmark():
    """load_benchmark("name"): benchmarks/name.py imported as the module `name` for one test file, forgotten after it
    (registered while it runs: dataclasses look their module up while a class is built)."""
    import importlib.util
    import sys
    from pathlib import Path

    loaded = []

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
