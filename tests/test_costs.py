"""The measured cost model: per sub-layer time, the rest of the evaluation, and one element-wise pass, as a profile
whose fractions are predicted time."""

import torch

from l2c.cache.costs import element_pass_seconds, measure_time_profile, profile_from_record
from l2c.cache.macs import profile_macs
from l2c.cache.plan import CachePlan
from l2c.models import create_model


def test_time_profile_parts_and_predictions():
    model = create_model("DiT-tiny").eval()
    macs = profile_macs("DiT-tiny")
    x = torch.randn(8, model.in_channels, model.input_size, model.input_size)
    t, y = torch.full((8,), 500.0), torch.arange(8) % 10
    profile, record = measure_time_profile(model, lambda: model(x, t, y), macs.sublayer_outputs, 8, repeats=3)
    L = len(macs.sublayer_linear)
    assert len(record["sublayer_s"]) == L and all(s > 0 for s in record["sublayer_s"])
    assert record["always_s"] >= 0 and sum(record["sublayer_s"]) <= record["evaluation_s"] * 1.5
    assert profile.fraction(CachePlan.full(4, L)) == 1.0
    skip_all = torch.ones(4, L, dtype=torch.bool)
    skip_all[1:] = False
    reuse = profile.fraction(CachePlan(skip_all))  # evaluation 0, then only what every evaluation computes
    expected = (profile.full() + 3 * profile.always_linear) / (4 * profile.full())
    assert abs(reuse - expected) < 1e-12 and reuse < 1
    again = profile_from_record(record, macs.sublayer_outputs)
    assert again.fraction(CachePlan(skip_all)) == reuse


def test_element_pass_time_is_positive_and_per_element():
    assert 0 < element_pass_seconds(1 << 16, torch.float32, "cpu") < 1e-6
