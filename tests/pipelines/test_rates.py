"""Rate matching: every codec's chosen setting lands at the target true rate (checked against the codec's own
``bits_per_scalar``), ties go to the lower rate and then the lower distortion, unreachable targets are refused."""

import pytest

from octopus_diffusers import get_codec
from octopus_diffusers.pipelines.rates import RATE_TOLERANCE, match_rate


@pytest.mark.parametrize("codec", ["octopus", "turboquant", "uniform"])
@pytest.mark.parametrize("target", [3.0, 4.0, 5.0])
def test_demo_codecs_land_exactly_on_the_demo_rates(codec, target):
    setting = match_rate(codec, 16, target)
    assert setting is not None and setting.rate == target
    built = get_codec(codec, 16, setting.bits, **setting.options)
    assert built.bits_per_scalar == pytest.approx(target)


def test_settings_differ_from_the_nominal_ones():
    """At head_dim 16 "2 bits" means 4.0 true bits for OCTOPUS and 3.0 for TurboQuant: at a matched rate of
    4.0 OCTOPUS needs its own allocation and TurboQuant 3 nominal bits."""
    assert get_codec("octopus", 16, 2).bits_per_scalar == 4.0 and get_codec("turboquant", 16, 2).bits_per_scalar == 3.0
    octopus, turboquant = match_rate("octopus", 16, 4.0), match_rate("turboquant", 16, 4.0)
    assert "allocation" in octopus.options and sum(octopus.options["allocation"]) == 8
    assert turboquant.bits == 3 and turboquant.label == "3b"


def test_fractional_turboquant_and_grouped_uniform_at_head_dim_64():
    assert match_rate("turboquant", 64, 2.5).bits == pytest.approx(2.25)  # 2.25 code bits + 16-bit norm / 64
    uniform = match_rate("uniform", 64, 2.5)
    assert uniform.options == {"axis": "token", "group_size": 64} and uniform.label == "2b-g64"


def test_out_of_reach_targets_and_fixed_width_codecs_give_none():
    assert match_rate("uniform", 16, 2.0) is None  # at least 1 bit + 32 bits of scale/zero per 16 scalars
    assert match_rate("none", 16, 16.0) is None and match_rate("fp8", 16, 8.0) is None
    setting = match_rate("octopus", 64, 2.5)
    assert abs(setting.rate - 2.5) <= RATE_TOLERANCE


def test_equal_distance_prefers_the_lower_rate():
    """3.5 lies halfway between uniform's 3.0 and 4.0 at head_dim 16 (outside the tolerance, so refused);
    with a looser tolerance the lower rate is taken, never the one that buys quality with extra bits."""
    assert match_rate("uniform", 16, 3.5) is None
    assert match_rate("uniform", 16, 3.5, tolerance=0.5).rate == 3.0
