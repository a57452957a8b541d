"""Group level end to end: collection, failed participants, outputs, errors, reports."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nmbids.group import EXIT_DATA, EXIT_NO_INPUT, EXIT_USAGE, run_group
from nmbids.group.collect import MEASURE_COLUMNS, QC_COLUMNS, collect, natural_key
from nmbids.group.synthetic import SimSpec, simulate

STATS_COLUMNS = ["roi", "hemi", "measure", "term", "estimate", "se", "ci_low", "ci_high", "p", "p_fdr",
                 "effect_size", "n"]


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def add_failures(bids: Path, out: Path) -> None:
    """Participants the group level must list and skip, never crash on."""
    parts = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    extra = pd.DataFrame([
        # listed, no outputs at all; a label with markup to check escaping
        {"participant_id": "sub-<b>x</b>", "group": "HC", "age": "30", "sex": "F"},
        # listed, participant level crashed (log only)
        {"participant_id": "sub-crash", "group": "SZ", "age": "31", "sex": "M"},
        # listed, table malformed
        {"participant_id": "sub-broken", "group": "SZ", "age": "32", "sex": "M"},
        # listed, every value n/a
        {"participant_id": "sub-empty", "group": "HC", "age": "33", "sex": "F"},
        # listed, but missing the covariate -> left out of the models only
        {"participant_id": "sub-noage", "group": "HC", "age": "n/a", "sex": "F"},
    ])
    pd.concat([parts, extra]).to_csv(bids / "participants.tsv", sep="\t", index=False)
    (out / "sub-crash" / "log" / "run1").mkdir(parents=True)
    (out / "sub-crash" / "log" / "run1" / "crash-1.txt").write_text("boom")
    anat = out / "sub-broken" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-broken_desc-nm_measures.tsv").write_text("\t".join(MEASURE_COLUMNS) + "\nsub-broken\tn/a\tonly\n")
    src = out / "sub-001" / "ses-1" / "anat" / "sub-001_ses-1_desc-nm_measures.tsv"
    for name in ("sub-empty", "sub-noage"):
        t = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False)
        t["participant_id"] = name
        t["source"] = t["source"].str.replace("sub-001", name)
        if name == "sub-empty":
            t["value"] = "n/a"
        d = out / name / "ses-1" / "anat"
        d.mkdir(parents=True)
        t.to_csv(d / f"{name}_ses-1_desc-nm_measures.tsv", sep="\t", index=False)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    bids, out = root / "bids", root / "out"
    spec = SimSpec(n_per_group={"HC": 10, "SZ": 10}, effects={"SZ": 1.5}, sessions=("1", "2"),
                   session_change=1.0, seed=3)
    parts = simulate(bids, out, spec)
    add_failures(bids, out)
    rc = run_group(bids, out, covariates=("age", "sex"), voxelwise=False)
    return {"rc": rc, "bids": bids, "out": out, "group": out / "group", "parts": parts, "spec": spec}


def test_run_succeeds_and_writes_every_table_with_a_dictionary(full_run):
    assert full_run["rc"] == 0
    g = full_run["group"]
    for name in ("group_measures", "group_measures_wide", "group_qc", "group_stats", "group_change",
                 "group_participants", "group_qc_outliers"):
        tsv = g / f"{name}.tsv"
        assert tsv.is_file(), name
        meta = json.loads((g / f"{name}.json").read_text())
        header = tsv.read_text().splitlines()[0].split("\t")
        assert all(c in meta and meta[c].get("Description") for c in header), name
    assert (g / "group_report.html").is_file() and (g / "group_qc.html").is_file()
    assert not [p for p in g.rglob("*") if p.name.startswith(".tmp-")], "temporary files left behind"


def test_group_stats_columns_exactly(full_run):
    header = (full_run["group"] / "group_stats.tsv").read_text().splitlines()[0].split("\t")
    assert header == STATS_COLUMNS


def test_long_table_collects_every_row_and_joins_participants(full_run):
    long = read_tsv(full_run["group"] / "group_measures.tsv")
    assert list(long.columns[: len(MEASURE_COLUMNS)]) == MEASURE_COLUMNS
    assert {"group", "age", "sex"} <= set(long.columns)
    ok = long[long["participant_id"].isin(full_run["parts"]["participant_id"])]
    spec = full_run["spec"]
    per_session = len(spec.rois) * len(spec.hemis) * len(spec.measures)
    assert len(ok) == len(full_run["parts"]) * 2 * per_session
    # participants.tsv values joined on the right rows
    ages = dict(zip(full_run["parts"]["participant_id"], full_run["parts"]["age"]))
    sub = ok.drop_duplicates("participant_id")
    assert np.allclose(sub["age"].astype(float), sub["participant_id"].map(ages))
    # values identical to the participant's file
    f = full_run["out"] / "sub-003" / "ses-2" / "anat" / "sub-003_ses-2_desc-nm_measures.tsv"
    mine = read_tsv(f)
    got = ok[(ok["participant_id"] == "sub-003") & (ok["session_id"] == "ses-2")]
    assert np.allclose(got["value"].to_numpy(), mine["value"].to_numpy())


def test_wide_table_one_row_per_participant_session(full_run):
    wide = read_tsv(full_run["group"] / "group_measures_wide.tsv")
    assert not wide.duplicated(["participant_id", "session_id"]).any()
    assert {"SN_L_cr", "SN_R_cr", "LC_bilateral_volume_mm3", "group", "age"} <= set(wide.columns)
    assert len(wide[wide["participant_id"].isin(full_run["parts"]["participant_id"])]) == 2 * len(full_run["parts"])
    long = read_tsv(full_run["group"] / "group_measures.tsv")
    row = long[(long["participant_id"] == "sub-005") & (long["session_id"] == "ses-1") & (long["roi"] == "SN")
               & (long["hemi"] == "L") & (long["measure"] == "cr")]
    w = wide[(wide["participant_id"] == "sub-005") & (wide["session_id"] == "ses-1")]
    assert w["SN_L_cr"].iat[0] == pytest.approx(row["value"].iat[0])


def test_qc_table_collected(full_run):
    qc = read_tsv(full_run["group"] / "group_qc.tsv")
    assert list(qc.columns) == QC_COLUMNS
    assert len(qc) == 2 * len(full_run["parts"])


def test_failed_participants_listed_and_skipped(full_run):
    st = read_tsv(full_run["group"] / "group_participants.tsv").set_index("participant_id")
    for pid, words in [("sub-<b>x</b>", "no outputs"), ("sub-crash", "no measures table"),
                       ("sub-broken", "malformed"), ("sub-empty", "no finite")]:
        assert st.loc[pid, "has_measures"] == "no"
        assert words in st.loc[pid, "reason"], (pid, st.loc[pid, "reason"])
        assert st.loc[pid, "in_stats"] == "no"
    assert st.loc["sub-noage", "has_measures"] == "yes"
    assert st.loc["sub-noage", "in_stats"] == "no"
    assert "age" in st.loc["sub-noage", "reason"]
    assert (st.loc[full_run["parts"]["participant_id"], "in_stats"] == "yes").all()
    stats = read_tsv(full_run["group"] / "group_stats.tsv")
    assert (stats["n"] == len(full_run["parts"])).all()


def test_session_change(full_run):
    ch = read_tsv(full_run["group"] / "group_change.tsv")
    row = ch[(ch["roi"] == "SN") & (ch["hemi"] == "L") & (ch["measure"] == "cr")].iloc[0]
    assert (row["session_from"], row["session_to"]) == ("ses-1", "ses-2")
    assert row["n"] == len(full_run["parts"])
    assert row["mean_change"] == pytest.approx(0.04, abs=0.02)  # set: +1 SD (0.04)
    assert row["p"] < 0.05
    null = ch[ch["measure"] == "cnr"]
    assert (null["p_fdr"] > 0.01).mean() > 0.8


def test_reports_offline_escaped_and_linked(full_run):
    g = full_run["group"]
    report = (g / "group_report.html").read_text()
    qc = (g / "group_qc.html").read_text()
    for page in (report, qc):
        assert "<script" not in page.lower()
        assert not re.search(r"(src|href)=\"(https?:)?//", page), "no remote resources"
        for src in re.findall(r'src="([^"]+)"', page):
            assert (g / src).is_file(), src
    assert "<b>x</b>" not in report and "&lt;b&gt;x&lt;/b&gt;" in report
    assert 'href="../sub-001.html"' in qc
    assert "sub-crash" in report and "no measures table" in report
    # the same stylesheet in both pages
    css = re.search(r"<style>(.*?)</style>", report, re.S).group(1)
    assert css == re.search(r"<style>(.*?)</style>", qc, re.S).group(1)
    figs = {p.name for p in (g / "figures").iterdir()}
    assert "group_distribution_cr.png" in figs and "group_forest_cr.svg" in figs


def test_collect_filters_participants_and_sessions(full_run):
    coll = collect(full_run["bids"], full_run["out"], participant_label=["sub-001", "002"], session_label=["2"])
    assert coll.included == ["sub-001", "sub-002"]
    assert set(coll.measures["session_id"]) == {"ses-2"}
    assert sorted(coll.sessions) == ["sub-001", "sub-002"]


def test_natural_session_order():
    assert sorted(["ses-10", "ses-2", "ses-1"], key=natural_key) == ["ses-1", "ses-2", "ses-10"]


# ---------------------------------------------------------------------------
# errors: one line, documented exit code, nothing written
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    simulate(root / "bids", root / "out", SimSpec(n_per_group={"HC": 4, "SZ": 4}, measures=("cr",), rois=("SN",)))
    return root


@pytest.mark.parametrize("kwargs, code, words", [
    ({"group_column": "diagnosis"}, EXIT_DATA, "participants.tsv has no column 'diagnosis' (columns: group, age, sex;"),
    ({"covariates": ("age", "iq")}, EXIT_DATA, "no column 'iq'"),
    ({"harmonize": "scanner"}, EXIT_DATA, "no column 'scanner'"),
    ({"reference_group": "XX"}, EXIT_DATA, "reference group 'XX'"),
    ({"predictor": "sex"}, EXIT_DATA, "not numeric"),
    ({"group_column": "group", "predictor": "age"}, EXIT_USAGE, "not both"),
    ({"n_permutations": 0}, EXIT_USAGE, "at least 1"),
])
def test_bad_options_give_clear_errors(small, caplog, kwargs, code, words):
    caplog.set_level(logging.INFO, logger="nmbids")
    rc = run_group(small / "bids", small / "out", voxelwise=False, **kwargs)
    assert rc == code
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert not (small / "out" / "group" / "group_stats.tsv").exists()


def test_missing_participants_tsv_with_named_column(tmp_path, caplog):
    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 3, "SZ": 3}, measures=("cr",)))
    (tmp_path / "bids" / "participants.tsv").unlink()
    assert run_group(tmp_path / "bids", tmp_path / "out", group_column="group", voxelwise=False) == EXIT_NO_INPUT
    assert "participants.tsv is missing" in caplog.text


def test_no_outputs_is_required_input_missing(tmp_path, caplog):
    (tmp_path / "bids").mkdir()
    (tmp_path / "out" / "sub-01").mkdir(parents=True)
    assert run_group(tmp_path / "bids", tmp_path / "out") == EXIT_NO_INPUT
    assert "no readable measures table" in caplog.text


def test_single_group_level_is_bad_data(tmp_path, caplog):
    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 4}, measures=("cr",)))
    assert run_group(tmp_path / "bids", tmp_path / "out", group_column="group",
                     voxelwise=False) == EXIT_DATA
    assert "at least two groups" in caplog.text


def test_chunked_reading_gives_the_same_table(full_run, monkeypatch):
    from nmbids.group import collect as collect_mod

    whole = collect(full_run["bids"], full_run["out"]).measures
    monkeypatch.setattr(collect_mod, "CHUNK_ROWS", 50)
    chunked = collect(full_run["bids"], full_run["out"]).measures
    pd.testing.assert_frame_equal(whole.astype(object), chunked.astype(object))
