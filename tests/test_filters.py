"""--bids-filter-file as pybids and fMRIPrep mean it: "*" (Query.ANY), null (Query.NONE), lists,
regex_search, and a usage error for what is no entity."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmbids.bids import check_filters, filter_matches, load_layout, plan_participant
from nmbids.cli import main as nmbids_main
from nmbids.contract.exits import EXIT_USAGE, NmbidsError

GRE = {"MTState": True, "ScanningSequence": "GR"}
FILES = {  # name -> sidecar
    "sub-01_T1w": {},
    "sub-01_rec-norm_T1w": {},
    "sub-01_acq-NM_T1w": GRE,
    "sub-01_acq-NMhigh_run-01_T1w": GRE,
    "sub-01_acq-neuromelanin_T2starw": GRE,
}


@pytest.fixture()
def dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    for name, meta in FILES.items():
        (anat / f"{name}.nii.gz").write_bytes(b"")
        (anat / f"{name}.json").write_text(json.dumps(meta))
    return root


def _plan(root: Path, filters: dict):
    return plan_participant(load_layout(root), root, "01", filters=check_filters(filters))[0]


def _nm(plan) -> set[str]:
    return {Path(n.source).name.split(".")[0] for n in plan.nm}


def _t1w(plan) -> str:
    return Path(plan.t1w).name.split(".")[0]


def test_any_value_selects_the_files_that_have_the_entity(dataset):
    assert _nm(_plan(dataset, {"nm": {"run": "*"}})) == {"sub-01_acq-NMhigh_run-01_T1w"}
    plan = _plan(dataset, {"t1w": {"reconstruction": "*"}})
    assert _t1w(plan) == "sub-01_rec-norm_T1w"
    assert {"path": "sub-01/anat/sub-01_T1w.nii.gz", "reason": "excluded by --bids-filter-file (t1w)"} \
        in plan.ignored


def test_null_selects_the_files_without_the_entity(dataset):
    assert _nm(_plan(dataset, {"nm": {"run": None}})) == {"sub-01_acq-NM_T1w", "sub-01_acq-neuromelanin_T2starw"}
    assert _t1w(_plan(dataset, {"t1w": {"reconstruction": None}})) == "sub-01_T1w"


def test_regex_search_selects_the_matching_files_only(dataset):
    plan = _plan(dataset, {"nm": {"acquisition": "NM.*", "regex_search": True}})
    assert _nm(plan) == {"sub-01_acq-NM_T1w", "sub-01_acq-NMhigh_run-01_T1w"}
    assert any(i["path"].endswith("acq-neuromelanin_T2starw.nii.gz") and "excluded" in i["reason"]
               for i in plan.ignored)
    assert _nm(_plan(dataset, {"nm": {"acquisition": "^NM$", "regex_search": True}})) == {"sub-01_acq-NM_T1w"}
    # without regex_search the same value is a label, matched exactly
    assert _nm(_plan(dataset, {"nm": {"acquisition": "NM.*"}})) == set()
    assert _nm(_plan(dataset, {"nm": {"acquisition": "NM"}})) == {"sub-01_acq-NM_T1w"}


def test_a_list_is_any_of_its_values(dataset):
    assert _nm(_plan(dataset, {"nm": {"acquisition": ["NM", "neuromelanin"]}})) == {
        "sub-01_acq-NM_T1w", "sub-01_acq-neuromelanin_T2starw"}
    assert _nm(_plan(dataset, {"nm": {"run": [1, None], "suffix": ["T1w"]}})) == {
        "sub-01_acq-NM_T1w", "sub-01_acq-NMhigh_run-01_T1w"}
    assert _nm(_plan(dataset, {"nm": {"acquisition": ["high$", "^neuro"], "regex_search": True}})) == {
        "sub-01_acq-NMhigh_run-01_T1w", "sub-01_acq-neuromelanin_T2starw"}


def test_fmriprep_style_filter_file(dataset):
    plan = _plan(dataset, {"t1w": {"datatype": "anat", "suffix": "T1w", "acquisition": None,
                                   "reconstruction": None, "extension": "nii.gz"},
                           "nm": {"acquisition": "nm.*", "regex_search": True, "acq_type": "GREMT"}})
    assert _t1w(plan) == "sub-01_T1w"
    assert _nm(plan) == {"sub-01_acq-NM_T1w", "sub-01_acq-NMhigh_run-01_T1w"}  # ignoring case, as pybids
    assert {n.acq_type for n in plan.nm} == {"GREMT"}


QUERIES = [
    {"acquisition": "*"}, {"acquisition": None}, {"run": "*"}, {"run": None}, {"run": 1}, {"run": "01"},
    {"reconstruction": "*", "suffix": "T1w"}, {"acquisition": ["NM", None]}, {"acquisition": ["NM", "*"]},
    {"acquisition": "NM.*", "regex_search": True}, {"acquisition": "^nm$", "regex_search": True},
    {"acquisition": ["high", None], "regex_search": True}, {"suffix": "T.*w", "regex_search": True},
    {"suffix": "T2starw", "extension": "nii.gz"}, {"acquisition": []},
]


@pytest.mark.parametrize("query", QUERIES, ids=json.dumps)
def test_matches_as_pybids_get(dataset, query):
    """The same files as pybids' BIDSLayout.get() with "*" and null read as fMRIPrep reads them."""
    from bids import BIDSLayout
    from bids.layout import Query

    def pybids_value(v):
        return Query.ANY if v == "*" else Query.NONE if v is None else v

    kwargs = {k: ([pybids_value(x) for x in v] if isinstance(v, list) else pybids_value(v))
              if k != "regex_search" else v for k, v in query.items()}
    layout = BIDSLayout(dataset, validate=False)
    kwargs = {"datatype": "anat", "extension": ".nii.gz", **kwargs}
    want = {Path(f).name for f in layout.get(return_type="file", **kwargs)}
    files = load_layout(dataset).get("01")
    got = {Path(f.path).name for f in files if filter_matches(f.get_entities(), check_filters({"nm": query})["nm"])}
    assert got == want


@pytest.mark.parametrize("filters, says", [
    ({"nm": {"acq": "NM"}}, "did you mean 'acquisition'"),
    ({"t1w": {"acqusition": None}}, "did you mean 'acquisition'"),
    ({"nm": {"acquisition": "NM", "regex_search": "yes"}}, "regex_search must be true or false"),
    ({"nm": {"acquisition": "NM(", "regex_search": True}}, "is not a regular expression"),
    ({"nm": {"acquisition": {"a": 1}}}, "must be a value"),
    ({"nm": {"acq_type": "gre"}}, "acq_type must be one of"),
    ({"t1w": {"acq_type": "FSE"}}, "applies to 'nm' only"),
    ({"bold": {}}, "keys 't1w' and/or 'nm'"),
    ({"nm": ["NM"]}, "must be an object"),
])
def test_unknown_or_bad_keys_are_usage_errors(filters, says):
    with pytest.raises(NmbidsError) as err:
        check_filters(filters)
    assert err.value.code == EXIT_USAGE and says in err.value.problem


def test_bad_filter_file_stops_the_run_with_exit_64(dataset, tmp_path, capfd):
    bad = tmp_path / "filters.json"
    bad.write_text(json.dumps({"nm": {"acquisition": "NM.*", "regex_serach": True}}))
    code = nmbids_main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                        "--bids-filter-file", str(bad), "--dry-run"])
    assert code == EXIT_USAGE
    assert "regex_serach" in capfd.readouterr().err
