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
