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
