"""A device's correction from the p50s it reported (``hadmc_core.hal.feedback``) and the
latency model that applies it."""

from __future__ import annotations

import math

import pytest

from hadmc_core.hal import feedback as fb
from hadmc_core.hal import load_profile
from hadmc_core.hal.latency import LatencyModel

TABLE = {"conv-k3-s1-8x8|fp32": [0.5, 0.0], "model|fp32": [0.1, 2.0, 1.0]}


def test_no_pairs_no_correction() -> None:
    assert fb.correction([]) is None
    # pairs without a usable figure count as none
    assert fb.correction([(0.0, 1.0), (1.0, math.nan), (-1.0, 2.0)]) is None
    assert fb.combine({"3": None, "4": None}) is None


def test_a_constant_ratio_is_recovered_per_precision_with_its_versions() -> None:
    pairs = [fb.Pair(p, 0.4 * p, "fp32", v) for p, v in ((2.0, 11), (5.0, 12), (9.0, 13))]
    pairs.append(fb.Pair(3.0, 6.0, "int8", 14))
    c = fb.correction(pairs)
    assert c is not None
    assert c.factors == pytest.approx({"fp32": 0.4, "int8": 2.0})
    assert c.pairs == {"fp32": 3, "int8": 1} and c.versions == [11, 12, 13, 14]
    assert not c.clipped and c.source == "device table, corrected by 4 reported p50s"
    assert c.factor("fp16") == 1.0  # a precision no version informed: as the table says
    one = fb.correction([(2.0, 3.0)])
    assert one is not None and one.factors == pytest.approx({"fp32": 1.5})
    assert one.source == "device table, corrected by 1 reported p50"


def test_an_outlier_pair_does_not_dominate() -> None:
    pairs = [(2.0, 6.0), (4.0, 12.0), (3.0, 9.3), (5.0, 14.7), (3.0, 300.0)]
    c = fb.correction(pairs)
    assert c is not None and c.factor("fp32") == pytest.approx(3.0, rel=0.05)


def test_a_factor_is_bounded() -> None:
    lo, hi = fb.FACTOR_RANGE
    c = fb.correction([(1.0, 1000.0)])
    assert c is not None and c.factor("fp32") == hi and c.clipped
    c = fb.correction([(1000.0, 1.0)])
    assert c is not None and c.factor("fp32") == lo and c.clipped


def test_a_group_takes_the_largest_factor_a_device_without_pairs_counting_as_one() -> None:
    a = fb.Correction({"fp32": 0.5, "int8": 3.0}, {"fp32": 2, "int8": 1}, [1, 2])
    b = fb.Correction({"fp32": 0.8}, {"fp32": 1}, [2, 3])
    both = fb.combine({"3": a, "4": b})
    assert both is not None and both.factors == {"fp32": 0.8, "int8": 3.0}
    assert both.pairs == {"fp32": 3, "int8": 1} and both.versions == [1, 2, 3]
    assert both.per_device == {"3": {"fp32": 0.5, "int8": 3.0}, "4": {"fp32": 0.8}}
    # device 4 has no INT8 pair and counts as 1 there; it is below device 3's 3.0
    partial = fb.combine({"3": a, "5": None})
    assert partial is not None and partial.factors == {"fp32": 1.0, "int8": 3.0}


def test_the_latency_model_scales_each_precisions_share() -> None:
    prof = load_profile("x86-avx2")
    plain = LatencyModel(prof, table=TABLE)
    corr = fb.Correction({"fp32": 0.25, "int8": 2.0}, {"fp32": 2, "int8": 1}, [7, 8])
    lat = LatencyModel(prof, table=TABLE, correction=corr)
    assert lat.source == "device-table+whole-model-term+p50-correction"
    raw = plain.model_ms({"fp32": 3.0}, {"fp32": 0.5})
    assert lat.model_ms({"fp32": 3.0}, {"fp32": 0.5}) == pytest.approx(0.25 * raw)
    assert lat.model_ms({"fp32": 3.0}, {"fp32": 0.5}, corrected=False) == pytest.approx(raw)
    # a mixed model: each factor weighed by its precision's share of the layer time
    mixed = {"fp32": 1.0, "int8": 3.0}
    raw = plain.model_ms(mixed)
    assert lat.model_ms(mixed) == pytest.approx(raw * (0.25 * 1 + 2.0 * 3) / 4)
    # without a device table there is nothing to correct
    assert LatencyModel(prof, correction=corr).correction is None
    own = lat.with_table({"conv-k3-s1-8x8|fp32": [1.0, 0.0]})
    assert own.correction is None and own.source == "device-table"
