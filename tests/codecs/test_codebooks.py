"""Shipped codebooks: shape and order, fast loading, Lloyd optimality, reproduction by the build script."""

import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from octopus_diffusers.codecs import build_codebooks as build
from octopus_diffusers.codecs.base import CodecError
from octopus_diffusers.codecs.codebooks import CODEBOOK_DIR, load_codebook, shipped_head_dims
from octopus_diffusers.codecs.lloyd import grid_points, histogram_points

#: A converged codebook moves by less than this in one more Lloyd step (the build runs to 1e-10),
#: plus the resolution of the discretised problem: the float32-stored centroids shift the decision
#: thresholds by ~1e-8, which can move one grid point / histogram bin (width ~2e-6 / ~8e-6) across a cell
#: boundary; in a sparse tail cell that moves the centroid by up to about one bin width.
OPTIMALITY_TOL = 1e-9
GRID_STEP = 2.0 / build.SETTINGS["density_grid_points"]


def test_every_shipped_codebook_is_sorted_float32_of_the_right_size():
    assert shipped_head_dims() == list(build.SHIPPED_HEAD_DIMS)
    for d in shipped_head_dims():
        for family, bits_range in [("turboquant", range(1, 9)), ("octopus_dir", range(1, 9)),
                                   ("octopus_rho", range(0, 9))]:
            for b in bits_range:
                c = load_codebook(family, b, head_dim=d)
                assert c.dtype == torch.float32 and c.shape == (2 ** b,)
                assert b == 0 or bool((c[1:] > c[:-1]).all()), (family, d, b)
    for level in range(2, 7):
        for b in range(1, 7):
            c = load_codebook("polar_level", b, level=level)
            assert c.shape == (2 ** b,) and 0 < float(c[0]) and float(c[-1]) < math.pi / 2


def test_loading_is_fast_and_returns_copies():
    load_codebook("turboquant", 3, head_dim=128)
    t0 = time.perf_counter()
    for b in range(1, 9):
        load_codebook("octopus_dir", b, head_dim=64)
    assert time.perf_counter() - t0 < 0.05
    c = load_codebook("turboquant", 2, head_dim=128)
    c += 1
    assert not torch.equal(c, load_codebook("turboquant", 2, head_dim=128))


def test_known_values():
    # Large-d TurboQuant centroids (codecs.md §3) in units of 1/sqrt(d), approached at d = 256.
    c = load_codebook("turboquant", 2, head_dim=256) * 16
    np.testing.assert_allclose(c.numpy(), [-1.510, -0.4528, 0.4528, 1.510], rtol=5e-3)
    # The rho codebook at 0 bits is the mean triplet norm (d = 96 has no padded triplet):
    # sqrt(d) * rho is close to a chi variable with 3 degrees of freedom, mean sqrt(8 / pi).
    rho0 = float(load_codebook("octopus_rho", 0, head_dim=96))
    assert rho0 == pytest.approx(math.sqrt(8 / math.pi / 96), rel=0.01)
    # The xi/eta marginal is symmetric: so is its codebook.
    c = load_codebook("octopus_dir", 3, head_dim=128)
    np.testing.assert_allclose(c.numpy(), -c.flip(0).numpy(), atol=2e-3)


@pytest.mark.parametrize("d,bits", [(128, 3), (10, 5), (256, 8)])
def test_turboquant_codebooks_are_lloyd_fixed_points(d, bits):
    pts = grid_points(build.coordinate_density(d), -1.0, 1.0, build.SETTINGS["density_grid_points"])
    c = load_codebook("turboquant", bits, head_dim=d).double().numpy()
    assert np.max(np.abs(pts.step(c) - c)) < OPTIMALITY_TOL + GRID_STEP


@pytest.mark.parametrize("level,bits", [(2, 2), (4, 6)])
def test_polar_codebooks_are_lloyd_fixed_points(level, bits):
    pts = grid_points(build.polar_density(level), 0.0, math.pi / 2, build.SETTINGS["density_grid_points"])
    c = load_codebook("polar_level", bits, level=level).double().numpy()
    assert np.max(np.abs(pts.step(c) - c)) < OPTIMALITY_TOL + GRID_STEP


@pytest.mark.slow  # 5-30 s on 2 shared cores (load-dependent): rebuilds every shipped codebook
def test_build_script_reproduces_shipped_files_and_octopus_optimality(tmp_path):
    """Regenerate head_dim 6 with the real script; the shipped codebooks come back (bit-identical on
    the same platform; 1e-6 allows for another CPU's float rounding), and they are Lloyd fixed points
    of the encoder samples they were fitted to."""
    build.main(["--head-dims", "6", "--out", str(tmp_path)])
    fresh = load_file(str(tmp_path / "codebooks.safetensors"))
    shipped = load_file(str(CODEBOOK_DIR / "codebooks.safetensors"))
    assert sorted(k for k in fresh) == sorted(k for k in shipped if ".d6." in k or k.startswith("polar"))
    for key, value in fresh.items():
        torch.testing.assert_close(value, shipped[key], atol=1e-6, rtol=0, msg=key)
    dirs, rhos = build.octopus_marginal_samples(6, build.SETTINGS["mc_triplets_per_head_dim"],
                                                build.SETTINGS["mc_seed"])
    for samples, family in [(dirs, "octopus_dir"), (rhos, "octopus_rho")]:
        pts = histogram_points(samples, build.SETTINGS["histogram_bins"])
        bin_width = (samples.max() - samples.min()) / build.SETTINGS["histogram_bins"]
        for b in (1, 4, 8):
            c = load_codebook(family, b, head_dim=6).double().numpy()
            assert np.max(np.abs(pts.step(c) - c)) < OPTIMALITY_TOL + bin_width, (family, b)


def test_unshipped_head_dim_and_bad_arguments():
    with pytest.raises(CodecError) as err:
        load_codebook("turboquant", 2, head_dim=100)
    msg = str(err.value)
    assert "head_dim 100" in msg and "128" in msg and "build_codebooks --head-dims" in msg and " 100 " in msg
    with pytest.raises(CodecError, match="unknown family"):
        load_codebook("octopus", 2, head_dim=128)
    with pytest.raises(CodecError, match="1..8"):
        load_codebook("turboquant", 9, head_dim=128)
    with pytest.raises(CodecError, match="level"):
        load_codebook("polar_level", 2, level=1)
    with pytest.raises(CodecError, match="needs head_dim"):
        load_codebook("octopus_rho", 2)
