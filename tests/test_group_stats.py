"""ROI statistics: recovery of a set effect, false-positive rate, covariates, predictor, robust SEs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from nmbids.group.collect import collect, cross_sectional, cross_sectional_image_qc, wide_table
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


def _long(rows):
    cols = ["participant_id", "session_id", "source", "acq_type", "roi", "hemi", "measure", "value"]
    return pd.DataFrame(rows, columns=cols)


def test_image_covariate_takes_the_qc_of_the_images_each_outcome_comes_from():
    """SN from GRE-MT and LC from FSE in one session: each outcome gets its own image's SNR; with two
    sessions, the session its value came from; two GRE-MT runs averaged: their mean SNR."""
    gre1, gre2, fse = "sub-1/anat/a_run-1_NM.nii.gz", "sub-1/anat/a_run-2_NM.nii.gz", "sub-1/anat/f_NM.nii.gz"
    late = "sub-2/ses-2/anat/b_NM.nii.gz"
    long = _long([
        ("sub-1", "n/a", gre1, "GREMT", "SN", "L", "cr", 0.20), ("sub-1", "n/a", gre2, "GREMT", "SN", "L", "cr", 0.22),
        ("sub-1", "n/a", fse, "FSE", "SN", "L", "cr", 0.10), ("sub-1", "n/a", fse, "FSE", "LC", "L", "cr", 0.15),
        # sub-2: SN only in its second session
        ("sub-2", "ses-1", "sub-2/ses-1/anat/b_NM.nii.gz", "GREMT", "SN", "L", "cr", np.nan),
        ("sub-2", "ses-2", late, "GREMT", "SN", "L", "cr", 0.30)])
    qc = pd.DataFrame({"participant_id": ["sub-1"] * 3 + ["sub-2"] * 2, "session_id": ["n/a"] * 3 + ["ses-1", "ses-2"],
                       "source": [gre1, gre2, fse, "sub-2/ses-1/anat/b_NM.nii.gz", late],
                       "snr": [10.0, 14.0, 30.0, 50.0, 18.0]})
    wide = wide_table(long, qc=qc, image_qc=("snr",))
    cross = cross_sectional(wide)
    snr = cross_sectional_image_qc(wide)["snr"].set_index("participant_id")
    assert cross.set_index("participant_id").loc["sub-1", "SN_L_cr"] == pytest.approx(0.21)  # GRE-MT preferred
    assert snr.loc["sub-1", "SN_L_cr"] == pytest.approx(12.0)  # mean of the two GRE-MT runs, not the FSE's 30
    assert snr.loc["sub-1", "LC_L_cr"] == pytest.approx(30.0)  # the FSE image
    assert snr.loc["sub-2", "SN_L_cr"] == pytest.approx(18.0)  # session 2, where the value is
    assert np.isnan(snr.loc["sub-2", "LC_L_cr"])
    # without image covariates the table is the same
    plain = wide_table(long)
    pd.testing.assert_frame_equal(plain.table, wide.table)


def test_image_covariate_recovers_a_set_snr_slope(tmp_path):
    """CR made to rise by 0.004 per unit of the QC table's snr: --covariates snr estimates it, and the
    group estimate is adjusted for it; a participants.tsv column of the same name wins."""
    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 30, "SZ": 30}, effects={"SZ": 1.0},
                                                         measures=("cr",), rois=("SN",), seed=8))
    coll = collect(tmp_path / "bids", tmp_path / "out")
    qc = coll.qc.copy()
    rng = np.random.default_rng(1)
    qc["snr"] = rng.uniform(8, 40, len(qc))
    snr_of = qc.set_index(["participant_id", "source"])["snr"]
    m = coll.measures.copy()
    key = list(zip(m["participant_id"].astype(str), m["source"].astype(str)))
    m["value"] = m["value"] + 0.004 * (snr_of.reindex(key).to_numpy() - 20)
    wide = wide_table(m, qc=qc, image_qc=("snr",))
    cross = cross_sectional(wide).merge(coll.participants, on="participant_id", how="left")
    design = build_design(cross, True, group_column="group", covariates=("snr",),
                          participants_columns=list(coll.participants.columns))
    assert design.image == ["snr"]
    df, _ = fit_all(cross, wide.outcomes, design, image_values=cross_sectional_image_qc(wide))
    est = row(df, "snr")
    assert est["estimate"] == pytest.approx(0.004, abs=3 * est["se"]) and est["p"] < 1e-4
    unadjusted, _ = fit_all(cross, wide.outcomes, build_design(cross, True, group_column="group"))
    assert row(df, "group[SZ vs HC]")["se"] < row(unadjusted, "group[SZ vs HC]")["se"]  # the SNR variance is taken out
    # a participants.tsv column named snr is the user's
    assert build_design(cross.assign(snr="1"), True, covariates=("snr",),
                        participants_columns=["participant_id", "snr"]).image == []
