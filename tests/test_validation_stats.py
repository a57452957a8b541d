"""The statistics of benchmarks/validate.py (pure functions; fast)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from validation import report  # noqa: E402
from validation import stats as st  # noqa: E402


def test_recovery_of_a_known_line():
    true = np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    est = 0.8 * true + 0.01
    r = st.recovery(est, true)
    assert r["slope"] == pytest.approx(0.8) and r["intercept"] == pytest.approx(0.01)
    assert r["r"] == pytest.approx(1.0)
    assert r["bias"] == pytest.approx(np.mean(est - true))
    assert r["n"] == 5 and r["n_missing"] == 0


def test_recovery_drops_missing_and_refuses_too_few():
    r = st.recovery([0.1, np.nan, 0.3, 0.2], [0.1, 0.2, 0.3, 0.25])
    assert r["n"] == 3 and r["n_missing"] == 1
    assert r["bias"] == pytest.approx((0 + 0 - 0.05) / 3)
    r2 = st.recovery([0.1, 0.2], [0.1, 0.2])
    assert np.isnan(r2["slope"]) and np.isnan(r2["r"]) and r2["bias"] == 0
    assert np.isnan(st.recovery([np.nan], [0.1])["bias"])


def test_min_detectable_d_matches_textbook_values():
    # Cohen (1988): d = 0.5 needs 64 per group for 80 % power at alpha 0.05 (two-sided)
    assert st.min_detectable_d(64) == pytest.approx(0.5, abs=0.01)
    assert st.min_detectable_d(20) == pytest.approx(0.906, abs=0.01)
    assert st.min_detectable_d(50) < st.min_detectable_d(20)


def test_attenuation_by_reliability():
    assert st.true_d_needed(0.5, 0.25) == pytest.approx(1.0)
    assert st.true_d_needed(0.5, 1.0) == pytest.approx(0.5)
    assert np.isnan(st.true_d_needed(0.5, 0.0)) and np.isnan(st.true_d_needed(0.5, np.nan))


def test_centroid_uses_the_affine():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 2, 3] = mask[3, 2, 3] = True
    aff = np.diag([2.0, 1.0, 0.5, 1.0])
    aff[:3, 3] = [-10, 0, 5]
    assert st.centroid_mm(mask, aff) == pytest.approx([-6.0, 2.0, 6.5])
    assert np.isnan(st.centroid_mm(np.zeros((2, 2, 2), bool), aff)).all()


def test_shifted_rigid_moves_every_point_by_delta():
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    params = np.r_[rot.ravel(), [1.0, 2.0, 3.0]]
    new = st.shifted_rigid(params, [0.0, 0.0, 2.0])
    assert np.allclose(new[:9], params[:9]) and np.allclose(new[9:], [1, 2, 5])
    assert np.allclose(params[9:], [1, 2, 3])  # input untouched
    with pytest.raises(ValueError):
        st.shifted_rigid(np.zeros(6), [0, 0, 1])
    for d in st.shift_directions().values():
        assert np.linalg.norm(d) == pytest.approx(1.0)


def test_recommend_keeps_default_within_tolerance_and_switches_beyond():
    s = {"mode": {"r": 0.95, "icc": 0.90, "bias": -0.03}, "median": {"r": 0.955, "icc": 0.90, "bias": -0.01}}
    assert st.recommend(s, "mode")["best"] == "mode"  # 0.0025 better: noise
    s["median"]["icc"] = 0.96
    rec = st.recommend(s, "mode")
    assert rec["best"] == "median" and not rec["keep_default"]
    assert rec["score"]["median"] == pytest.approx((0.955 + 0.96) / 2)
    # among near-ties the smallest |bias| wins; NaN scores are ignored
    s = {"a": {"r": 0.9, "bias": 0.05}, "b": {"r": 0.905, "bias": 0.0}, "c": {"r": np.nan}, "d": {"r": 0.5}}
    assert st.recommend(s, "d")["best"] == "b"
    rec = st.recommend({"x": {"r": np.nan}}, "x")
    assert rec["best"] == "x" and rec["keep_default"] and rec["none_good"]
    # no choice tracks the truth: keep the default rather than crown the least bad
    rec = st.recommend({"a": {"r": -0.3}, "b": {"r": 0.2}}, "a")
    assert rec["best"] == "a" and rec["none_good"]


def test_sd_total_adds_age_variance():
    assert st.sd_total(0.02, 0.0, (20, 70)) == pytest.approx(0.02)
    assert st.sd_total(0.0, 0.001, (20, 70)) == pytest.approx(0.05 / 12 ** 0.5)
    assert st.sd_total(0.02, 0.001, (20, 70)) == pytest.approx(0.0247, abs=1e-4)


def test_icc_of_pivots_sessions():
    rng = np.random.default_rng(0)
    subj = rng.normal(0.2, 0.03, 10)
    rows = [dict(sub=f"s{i}", ses=ses, value=subj[i] + rng.normal(0, 0.003))
            for i in range(10) for ses in ("ses-1", "ses-2")]
    icc, n = report.icc_of(pd.DataFrame(rows))
    assert n == 10 and icc > 0.95
    rows = [dict(sub=f"s{i}", ses=ses, value=rng.normal(0.2, 0.03)) for i in range(10) for ses in ("ses-1", "ses-2")]
    assert report.icc_of(pd.DataFrame(rows))[0] < 0.7


def test_misreg_table_changes_are_against_shift_zero():
    rows = []
    for shift, add in ((0.0, 0.0), (1.0, -0.01), (2.0, -0.03)):
        for hemi in ("L", "R"):
            rows.append(dict(sub="sub-01", ses="n/a", acq_type="GREMT", roi="SN", hemi=hemi, shift_mm=shift,
                             direction="x", value=0.2 + add + (0.01 if hemi == "L" else 0), true_cr=0.2))
    t = report.misreg_table(pd.DataFrame(rows)).set_index("shift_mm")
    assert t.loc[0.0, "mean_abs_change"] == 0
    assert t.loc[1.0, "mean_change"] == pytest.approx(-0.01)
    assert t.loc[2.0, "mean_abs_change"] == pytest.approx(0.03)


def test_recommend_never_prefers_a_choice_that_leaves_values_missing():
    s = {"threshold": {"r": 0.92, "icc": 0.42, "n_missing": 0},
         "max_per_slice": {"r": 0.79, "icc": 0.77, "n_missing": 4}}  # better score on half the subjects
    rec = st.recommend(s, "threshold")
    assert rec["best"] == "threshold" and rec["keep_default"]
    s["max_per_slice"]["n_missing"] = 0
    assert st.recommend(s, "threshold")["best"] == "max_per_slice"


def test_bias_table_field_error_in_percent_and_icc_per_field():
    subs, sess = ["sub-01", "sub-02", "sub-03"], ["ses-1", "ses-2"]
    err = {"100 mm": [0.001, -0.001, 0.002, 0.0, -0.002, 0.0]}  # per (sub, ses) in order
    val = [0.20, 0.21, 0.25, 0.25, 0.30, 0.29]
    rows = [dict(sub=s, ses=e, roi="SN", field=f, field_error=err[f][k], value=val[k])
            for f in err for k, (s, e) in enumerate((s, e) for s in subs for e in sess)]
    pairs = pd.DataFrame([dict(cohort="icc", acq_type="GREMT", measure="cr", hemi="bilateral", roi="SN",
                               sub=s, ses=e, true=t) for s, t in zip(subs, (0.2, 0.25, 0.3)) for e in sess])
    t = report.bias_table(pd.DataFrame(rows), pairs).iloc[0]
    e = np.array(err["100 mm"]) * 100
    assert t.field == "100 mm" and t.n == 6
    assert t.error_sd_pct == pytest.approx(np.std(e, ddof=1))  # 0.1414 %
    assert t.error_rms_pct == pytest.approx(np.sqrt(np.mean(e ** 2)))
    assert t.icc == pytest.approx(report.st_icc(np.array(val).reshape(3, 2)))
    assert t.r == pytest.approx(np.corrcoef(val, [0.2, 0.2, 0.25, 0.25, 0.3, 0.3])[0, 1])


def test_icc_confidence_interval_matches_published_values():
    # Shrout & Fleiss (1979), table 2: 6 targets x 4 judges, ICC(2,1) = 0.29; the
    # McGraw & Wong interval is [0.02, 0.76] (pingouin's intraclass_corr gives the same)
    sf = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    lo, hi = st.icc_2_1_ci(sf)
    assert (round(lo, 2), round(hi, 2)) == (0.02, 0.76)
    two = np.array([[0.2, 0.21], [0.25, 0.25], [0.3, 0.29], [0.22, 0.2], [0.27, 0.28]])
    lo, hi = st.icc_2_1_ci(two)
    assert round(lo, 2) == 0.65 and lo < report.st_icc(two) < hi <= 1.0
    assert np.isnan(st.icc_2_1_ci(two[:2])[0])
