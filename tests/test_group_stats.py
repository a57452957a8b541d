"""ROI statistics: recovery of a set effect, false-positive rate, covariates, predictor, robust SEs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from nmbids.group.collect import collect, cross_sectional, wide_table
from nmbids.contract.exits import NmbidsError
from nmbids.group.stats import STATS_COLUMNS, build_design, default_reference, fit_all
from nmbids.group.synthetic import SimSpec, simulate

SD_CR = 0.04  # between-participant SD of cr in the simulation


def analysis_table(tmp_path, spec):
    simulate(tmp_path / "bids", tmp_path / "out", spec)
    coll = collect(tmp_path / "bids", tmp_path / "out")
    wide = wide_table(coll.measures)
    cross = cross_sectional(wide).merge(coll.participants, on="participant_id", how="left")
    return cross, wide.outcomes


def row(df, term, roi="SN", hemi="L", measure="cr"):
    sel = df[(df["roi"] == roi) & (df["hemi"] == hemi) & (df["measure"] == measure) & (df["term"] == term)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_recovers_a_set_group_effect(tmp_path):
    cross, outcomes = analysis_table(tmp_path, SimSpec(n_per_group={"HC": 40, "SZ": 40}, effects={"SZ": 1.0},
                                                       measures=("cr", "cnr"), seed=11))
    design = build_design(cross, True, group_column="group")
    df, skipped = fit_all(cross, outcomes, design)
    assert list(df.columns) == STATS_COLUMNS and not skipped
    r = row(df, "group[SZ vs HC]")
    assert r["estimate"] > 0
    assert r["ci_low"] <= 1.0 * SD_CR <= r["ci_high"]
    assert r["p"] < 0.05 and r["n"] == 80
    assert r["effect_size"] == pytest.approx(1.0, abs=0.45)
    # Hedges' g by hand (no covariates: the raw standardized mean difference, corrected)
    y = cross["SN_L_cr"].to_numpy()
    g1, g0 = y[cross["group"] == "SZ"], y[cross["group"] == "HC"]
    sp = np.sqrt((39 * g1.var(ddof=1) + 39 * g0.var(ddof=1)) / 78)
    assert r["effect_size"] == pytest.approx((1 - 3 / (4 * 80 - 9)) * (g1.mean() - g0.mean()) / sp)
    assert r["estimate"] == pytest.approx(g1.mean() - g0.mean())
    # the FDR family: every group row, nothing else
    fam = df[df["term"] == "group[SZ vs HC]"]
    assert np.allclose(fam["p_fdr"], multipletests(fam["p"], method="fdr_bh")[1])


def test_false_positive_rate_under_the_null():
    rng = np.random.default_rng(2024)
    n_sim, n = 200, 20
    outcomes = [(f"SN_L_cr{k}", "SN", "L", f"cr{k}") for k in range(n_sim)]
    values = pd.DataFrame(rng.normal(0.2, SD_CR, (2 * n, n_sim)), columns=[o[0] for o in outcomes])
    cross = pd.concat([pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(2 * n)],
                                     "group": ["HC"] * n + ["SZ"] * n}), values], axis=1)
    design = build_design(cross, True, group_column="group")
    df, _ = fit_all(cross, outcomes, design)
    assert len(df) == n_sim
    hits = int((df["p"] < 0.05).sum())
    lo, hi = sps.binom.ppf(0.0005, n_sim, 0.05), sps.binom.ppf(0.9995, n_sim, 0.05)
    assert lo <= hits <= hi, hits
    # uniform p-values, roughly
    assert sps.kstest(df["p"], "uniform").pvalue > 0.001


def test_covariates_enter_the_model(tmp_path):
    cross, outcomes = analysis_table(tmp_path, SimSpec(n_per_group={"HC": 30, "SZ": 30}, effects={"SZ": 1.0},
                                                       age_slope=1.0, measures=("cr",), rois=("SN",), seed=5))
    design = build_design(cross, True, group_column="group", covariates=("age", "sex"))
    df, _ = fit_all(cross, outcomes, design)
    assert set(df["term"]) == {"group[SZ vs HC]", "age", "sex[M vs F]"}
    age = row(df, "age")
    assert age["estimate"] == pytest.approx(SD_CR / 10, rel=0.4) and age["p"] < 0.05  # set: +1 SD per 10 years
    assert np.isnan(age["p_fdr"])
    # the group estimate is adjusted: it equals the statsmodels fit with the same covariates
    X = pd.get_dummies(cross[["group", "sex"]], drop_first=True).astype(float)
    X["age"] = cross["age"].astype(float)
    res = sm.OLS(cross["SN_L_cr"], sm.add_constant(X)).fit()
    assert row(df, "group[SZ vs HC]")["estimate"] == pytest.approx(res.params["group_SZ"])
    assert row(df, "sex[M vs F]")["estimate"] == pytest.approx(res.params["sex_M"])
    # standardized beta for continuous terms
    beta = res.params["age"] * X["age"].std() / cross["SN_L_cr"].std()
    assert age["effect_size"] == pytest.approx(beta)


def test_continuous_predictor(tmp_path):
    cross, outcomes = analysis_table(tmp_path, SimSpec(n_per_group={"all": 60}, age_slope=1.0, measures=("cr",),
                                                       rois=("SN", "VTA"), seed=8))
    design = build_design(cross, True, predictor="age", covariates=("sex",))
    df, _ = fit_all(cross, outcomes, design)
    r = row(df, "age")
    assert r["p"] < 0.05 and r["estimate"] > 0
    assert 0.5 < r["effect_size"] < 1.0  # slope 1 SD per 10 y, age SD ~11.5 y: beta ~ 0.75
    assert np.isfinite(r["p_fdr"])
    assert np.isnan(row(df, "sex[M vs F]")["p_fdr"])
    null = df[(df["roi"] == "VTA") & (df["term"] == "age")]
    assert (null["p"] > 0.001).all()


def test_robust_standard_errors(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    cross = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(2 * n)],
                          "group": ["HC"] * n + ["SZ"] * n})
    cross["SN_L_cr"] = np.r_[rng.normal(0.2, 0.01, n), rng.normal(0.23, 0.08, n)]  # unequal variances
    outcomes = [("SN_L_cr", "SN", "L", "cr")]
    classic, _ = fit_all(cross, outcomes, build_design(cross, True, group_column="group"))
    robust, _ = fit_all(cross, outcomes, build_design(cross, True, group_column="group", robust=True))
    assert robust["estimate"].iat[0] == pytest.approx(classic["estimate"].iat[0])
    X = sm.add_constant((cross["group"] == "SZ").astype(float).rename("g"))
    ref = sm.OLS(cross["SN_L_cr"], X).fit(cov_type="HC3", use_t=True)
    assert robust["se"].iat[0] == pytest.approx(ref.bse["g"])
    assert robust["se"].iat[0] != pytest.approx(classic["se"].iat[0])
    assert robust["ci_low"].iat[0] == pytest.approx(ref.conf_int().loc["g", 0])


def test_three_groups_and_reference(tmp_path):
    cross, outcomes = analysis_table(tmp_path, SimSpec(n_per_group={"SZ": 12, "control": 12, "BD": 12},
                                                       effects={"SZ": 1.5}, measures=("cr",), rois=("SN",)))
    design = build_design(cross, True, group_column="group")
    assert design.reference == "control"
    df, _ = fit_all(cross, outcomes, design)
    assert set(df["term"]) == {"group[BD vs control]", "group[SZ vs control]"}
    design = build_design(cross, True, group_column="group", reference_group="BD")
    df, _ = fit_all(cross, outcomes, design)
    assert set(df["term"]) == {"group[SZ vs BD]", "group[control vs BD]"}


def test_default_reference():
    assert default_reference(["SZ", "HC"]) == "HC"
    assert default_reference(["patient", "Healthy Control"]) == "Healthy Control"
    assert default_reference(["b", "a"]) == "a"


def test_small_groups_and_missing_values_are_skipped_not_fatal():
    cross = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(9)],
                          "group": ["HC"] * 4 + ["SZ"] * 4 + ["BD"],
                          "SN_L_cr": [0.1, 0.2, 0.15, 0.12, 0.3, 0.25, 0.28, 0.31, 0.2],
                          "LC_L_cr": [0.1, np.nan, np.nan, np.nan, 0.2, 0.1, 0.2, 0.1, 0.2]})
    outcomes = [("SN_L_cr", "SN", "L", "cr"), ("LC_L_cr", "LC", "L", "cr")]
    df, skipped = fit_all(cross, outcomes, build_design(cross, True, group_column="group"))
    assert set(df["term"]) == {"group[SZ vs HC]"}  # BD has one value: left out of the model
    assert df["n"].iat[0] == 8
    assert "LC_L_cr" in skipped


def test_design_errors():
    cross = pd.DataFrame({"participant_id": ["sub-1", "sub-2"], "group": ["a", "b"]})
    with pytest.raises(NmbidsError, match="no column 'dx'"):
        build_design(cross, True, group_column="dx")
    with pytest.raises(NmbidsError, match="participants.tsv is missing"):
        build_design(cross, False, group_column="group")
