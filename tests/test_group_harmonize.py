"""ComBat harmonisation removes a set site offset and keeps the group effect."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from nmbids.group import run_group
from nmbids.group.collect import collect, cross_sectional, wide_table
from nmbids.group.harmonize import combat
from nmbids.group.stats import build_design, fit_all
from nmbids.group.synthetic import SimSpec, simulate

SD_CR = 0.04


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    # site B reads 3 SD higher on every measure; the group effect is +1 SD; groups balanced across sites
    spec = SimSpec(n_per_group={"HC": 30, "SZ": 30}, effects={"SZ": 1.0}, sites={"A": 0.0, "B": 3.0},
                   measures=("cr", "cnr", "volume_mm3"), seed=21)
    simulate(root / "bids", root / "out", spec)
    coll = collect(root / "bids", root / "out")
    wide = wide_table(coll.measures)
    cross = cross_sectional(wide).merge(coll.participants, on="participant_id", how="left")
    return root, cross, wide.outcomes


def site_gap(table, col):
    return table.loc[table["site"] == "B", col].mean() - table.loc[table["site"] == "A", col].mean()


def test_combat_removes_the_site_offset(sites):
    _, cross, outcomes = sites
    design = build_design(cross, True, group_column="group", covariates=("age",), extra_categorical=["site"])
    cols = [c for c, *_ in outcomes]
    assert site_gap(cross, "SN_L_cr") == pytest.approx(3 * SD_CR, rel=0.3)
    harmonised, info = combat(cross, cols, design, "site")
    assert info["Applied"] and set(info["Features"]) == set(cols)
    assert info["Protected"] == ["group", "age"]
    h = harmonised
    raw = cross.set_index("participant_id").loc[h["participant_id"]].reset_index()
    for col in cols:
        before, after = site_gap(raw, col), site_gap(h, col)
        assert abs(after) < 0.15 * abs(before), col
        # what was removed is the set offset: 3 SD of the measure
        removed = site_gap(raw.assign(**{col: raw[col] - h[col]}), col)
        sd = {"cr": 0.04, "cnr": 0.8, "volume_mm3": 60.0}[col.split("_", 2)[2]]
        assert removed == pytest.approx(3 * sd, rel=0.25), col
    # the group effect survives (it was protected) and is now estimated without the site noise
    df, _ = fit_all(harmonised, outcomes, design)
    r = df[(df["roi"] == "SN") & (df["hemi"] == "L") & (df["measure"] == "cr") & (df["term"] == "group[SZ vs HC]")]
    assert r["ci_low"].iat[0] <= SD_CR <= r["ci_high"].iat[0] and r["p"].iat[0] < 0.05


def test_missing_values_are_harmonised_without_imputation(sites):
    _, cross, outcomes = sites
    cross = cross.copy()
    cross.loc[cross.index[:5], "LC_L_cr"] = np.nan
    design = build_design(cross, True, group_column="group", extra_categorical=["site"])
    cols = [c for c, *_ in outcomes]
    harmonised, info = combat(cross, cols, design, "site")
    assert harmonised["LC_L_cr"].isna().sum() == 5
    assert len(info["FeatureSets"]) == 2
    raw = cross.set_index("participant_id").loc[harmonised["participant_id"]].reset_index()
    assert abs(site_gap(harmonised, "LC_L_cr")) < 0.15 * abs(site_gap(raw, "LC_L_cr"))


def test_site_with_one_participant_skips_with_a_warning(sites, caplog):
    _, cross, outcomes = sites
    cross = cross.copy()
    cross.loc[cross.index[0], "site"] = "C"
    design = build_design(cross, True, group_column="group", extra_categorical=["site"])
    with caplog.at_level(logging.WARNING, logger="nmbids"):
        harmonised, info = combat(cross, [c for c, *_ in outcomes], design, "site")
    assert not info["Applied"] and "fewer than 2" in info["Reason"]
    assert "harmonisation skipped" in caplog.text
    assert np.allclose(harmonised["SN_L_cr"], cross.set_index("participant_id").loc[harmonised["participant_id"],
                                                                                     "SN_L_cr"])


def test_run_group_records_harmonisation(sites):
    root, _, _ = sites
    assert run_group(root / "bids", root / "out", group_column="group", harmonize="site", voxelwise=False) == 0
    meta = json.loads((root / "out" / "group" / "group_stats.json").read_text())
    h = meta["Harmonization"]
    assert h["Applied"] and h["BatchColumn"] == "site" and h["Protected"] == ["group"]
    assert "SN_L_cr" in h["Features"] and h["ParticipantsPerBatch"] == {"A": 30, "B": 30}
    combat_tsv = pd.read_csv(root / "out" / "group" / "group_measures_combat.tsv", sep="\t")
    assert len(combat_tsv) == 60
