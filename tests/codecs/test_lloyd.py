"""Lloyd-Max: known Gaussian quantizers (Max 1960), fixed-point optimality, samples path."""

import numpy as np
import pytest

from octopus_diffusers.codecs.lloyd import (
    decision_thresholds, grid_points, histogram_points, lloyd_max, lloyd_max_density, lloyd_max_samples)


def gauss(t):
    return np.exp(-0.5 * t * t)


@pytest.mark.parametrize("bits,expected_positive,mse", [
    (1, [0.7979], 0.3634),
    (2, [0.4528, 1.510], 0.1175),
    (3, [0.2451, 0.7560, 1.3439, 2.1519], 0.03455),
])
def test_gaussian_matches_max_1960(bits, expected_positive, mse):
    pts = grid_points(gauss, -8, 8, 1 << 18)
    c = lloyd_max(pts, 2 ** bits)
    assert np.all(np.diff(c) > 0)
    np.testing.assert_allclose(c[2 ** (bits - 1):], expected_positive, atol=5e-4)
    np.testing.assert_allclose(c[: 2 ** (bits - 1)], -np.array(expected_positive)[::-1], atol=5e-4)
    assert pts.distortion(c) == pytest.approx(mse, rel=2e-3)


def test_converged_codebook_is_a_fixed_point():
    pts = grid_points(lambda t: (1 - t * t) ** 3, -1, 1, 1 << 16)
    c = lloyd_max(pts, 16, tol=1e-12)
    assert np.max(np.abs(pts.step(c) - c)) < 1e-11
    # A perturbed codebook is not a fixed point and is worse: the test can fail.
    assert np.max(np.abs(pts.step(c + 1e-3) - (c + 1e-3))) > 1e-4
    assert pts.distortion(c + 1e-3) > pts.distortion(c)


def test_samples_path_on_uniform_data():
    x = np.random.default_rng(0).uniform(0.0, 1.0, 2_000_000)
    c = lloyd_max_samples(x, 4)
    np.testing.assert_allclose(c, [0.125, 0.375, 0.625, 0.875], atol=2e-3)


def test_histogram_bins_keep_exact_means():
    x = np.array([0.0, 0.1, 0.1, 0.3, 1.0])
    pts = histogram_points(x, n_bins=2)  # bins [0, 0.5) and [0.5, 1]
    np.testing.assert_allclose(pts.points, [0.125, 1.0])
    np.testing.assert_allclose(pts.weights, [4, 1])


def test_one_level_is_the_mean_and_thresholds_are_midpoints():
    c = lloyd_max_density(lambda t: np.ones_like(t), 2.0, 4.0, 1, n_grid=1000)
    np.testing.assert_allclose(c, [3.0])
    np.testing.assert_allclose(decision_thresholds(np.array([0.0, 1.0, 3.0])), [0.5, 2.0])


def test_bad_input():
    with pytest.raises(ValueError, match="levels"):
        lloyd_max_density(gauss, -1, 1, 0)
    with pytest.raises(ValueError, match="finite"):
        lloyd_max_samples(np.array([1.0, np.nan]), 2)
