"""Metrics: closed forms, ADM semantics, agreement with torchmetrics' FID on the same features."""

import numpy as np
import pytest
import torch

from l2c.metrics import class_accuracy, feature_statistics, frechet_distance, inception_score, paired_metrics
from l2c.metrics.scores import manifold_radii, precision_recall


def test_fid_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = feature_statistics(rng.normal(size=(500, 8)))
    for method in ("eig", "scipy"):
        assert abs(frechet_distance(mu, sigma, mu, sigma, method)) < 1e-8


def test_fid_diagonal_gaussians_closed_form():
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    expected = ((m1 - m2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    for method in ("eig", "scipy"):
        assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2), method) == pytest.approx(expected, rel=1e-10)


def test_fid_methods_agree_on_random_spd():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    s = feature_statistics(a) + feature_statistics(b)
    assert frechet_distance(*s, method="eig") == pytest.approx(frechet_distance(*s, method="scipy"), rel=1e-6)


def test_fid_agrees_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return x

    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 6)).astype(np.float32)
    b = (rng.normal(size=(400, 6)) * 1.3 + 0.2).astype(np.float32)
    fid = FrechetInceptionDistance(feature=Identity(), normalize=True)
    fid.update(torch.from_numpy(a), real=True)
    fid.update(torch.from_numpy(b), real=False)
    ours = frechet_distance(*feature_statistics(b), *feature_statistics(a))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-4)


def test_feature_statistics_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_inception_score_uniform_and_one_hot():
    assert inception_score(np.zeros((100, 10))) == pytest.approx(1.0)
    one_hot = np.full((100, 10), -1e4)
    one_hot[np.arange(100), np.arange(100) % 10] = 0
    assert inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)


def test_inception_score_contiguous_splits():
    # First 50 rows all class 0, next 50 all class 1: each split of 50 has one class -> IS 1; one split of 100 -> 2.
    logits = np.full((100, 2), -1e4)
    logits[:50, 0] = 0
    logits[50:, 1] = 0
    assert inception_score(logits, split_size=50) == pytest.approx(1.0)
    assert inception_score(logits, split_size=100) == pytest.approx(2.0)


def test_precision_recall_hand_built():
    # Reference: 4 points on a line at 0, 1, 2, 3 -> 3rd-NN squared radii: 0->9, 1->4, 2->4, 3->9.
    ref = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert manifold_radii(ref).tolist() == [9.0, 4.0, 4.0, 9.0]
    # Samples: 5 is inside (distance² 4 to point 3, whose radius is 9); 100, 101, 102 are outside: precision 1/4.
    samples = np.array([[5.0], [100.0], [101.0], [102.0]])
    p, r = precision_recall(ref, samples)
    assert p == 0.25
    # Sample radii: 5 -> 97² (to 102), 100/101/102 -> 95², 2², 2²... a ref point is inside if within any sample's
    # radius: 5's radius is 9409, so every reference point (distance² <= 25) is covered: recall 1.
    assert r == 1.0


def test_precision_recall_identical_far_and_ties():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 4))
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 1000.0) == (0.0, 0.0)
    # Ties count (<=): a sample exactly on a radius boundary is inside.
    ref = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert precision_recall(ref, np.array([[6.0], [6.0], [6.0], [6.0]]))[0] == 1.0  # (6-3)² = 9 = radius of 3


def test_precision_recall_block_size_independent():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(120, 5)), rng.normal(size=(90, 5)) + 0.5
    assert precision_recall(a, b, block=7) == precision_recall(a, b, block=10000)


def test_accuracy_and_paired_metrics():
    assert class_accuracy(np.eye(3), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    a = np.zeros((2, 4, 4, 1), np.uint8)
    b = a.copy()
    assert paired_metrics(a, b)["psnr_db"] == float("inf")
    b[0, 0, 0, 0] = 255
    m = paired_metrics(a, b)
    assert m["mean_abs_diff"] == pytest.approx(255 / 32)
    assert m["psnr_db"] == pytest.approx(10 * np.log10(32))  # MSE = 255²/32
