"""The output contract (nmbids/contract): names, columns, dictionaries, thresholds, exit codes,
and that no other module spells them again."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from nmbids.contract import exits, names, tables, thresholds
from nmbids.contract.names import NMFiles, SessionFiles

PACKAGE = Path(__file__).resolve().parents[1] / "nmbids"


def test_derivative_names_by_hand():
    s = SessionFiles.of(Path("/o"), "01", "A", "MNI152NLin2009cAsym")
    assert s.t1w_template == Path("/o/sub-01/ses-A/anat/sub-01_ses-A_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")
    assert s.t1w_to_template_affine.name == "sub-01_ses-A_from-T1w_to-MNI152NLin2009cAsym_mode-image_desc-affine_xfm.mat"
    assert s.measures.name == "sub-01_ses-A_desc-nm_measures.tsv" and s.measures.name.endswith(names.MEASURES_TAIL)
    assert s.qc.name.endswith(names.QC_TAIL)
    n = NMFiles.of(Path("/o"), "01", None, "sub-01_acq-NM", "X")
    assert n.crmap == Path("/o/sub-01/anat/sub-01_acq-NM_space-X_crmap.nii.gz")
    assert n.nm_to_t1w.name == "sub-01_acq-NM_from-NM_to-T1w_mode-image_xfm.mat"
    assert n.dseg_labels.name == "sub-01_acq-NM_desc-rois_dseg.tsv"
    assert names.sidecar(n.crmap).name == "sub-01_acq-NM_space-X_crmap.json"
    assert names.sidecar(n.nm_to_t1w).name == "sub-01_acq-NM_from-NM_to-T1w_mode-image_xfm.json"
    assert names.atlas_space(names.atlas_paths(Path("/o"), "MNI152NLin6Asym")[0]) == "MNI152NLin6Asym"


def test_prefixes_drop_run_and_name_mt_images_without_acq():
    ents = {"subject": "01", "session": "1", "acquisition": "NM", "run": "2", "suffix": "T1w"}
    assert names.source_prefix(ents) == "sub-01_ses-1_acq-NM"
    assert names.source_prefix({"subject": "01", "mt": "on", "suffix": "MTR"}) == "sub-01_acq-MTR"
    assert names.prefix_of_source("sub-01/ses-1/anat/sub-01_ses-1_acq-NM_rec-x_run-2_T1w.nii.gz") == \
        "sub-01_ses-1_acq-NM_rec-x"
    assert names.session_prefix("01", None) == "sub-01"
    # two images differing only by suffix: the later one folds its suffix into acq
    taken = {"sub-01_acq-NM"}
    assert names.unique_prefix("sub-01_acq-NM_T2starw.nii.gz", taken) == "sub-01_acq-NMT2starw"
    assert names.unique_prefix("sub-01_acq-NM_T2starw.nii.gz", set()) == "sub-01_acq-NM"


def test_bidsignore_folders_have_no_trailing_slash():
    # bids-validator-deno 3 ignores "group/" but honours "group"
    assert not [p for p in names.BIDSIGNORE if p.endswith("/")]
    assert {names.GROUP_DIR, names.ATLAS_DIR, names.LOGS_DIR} <= set(names.BIDSIGNORE)


def test_dictionaries_describe_every_column_and_quote_the_thresholds():
    assert set(tables.MEASURE_COLUMNS) <= set(tables.measures_dictionary("mode"))
    assert set(tables.QC_COLUMNS) <= set(tables.qc_dictionary())
    assert set(tables.QC_NUMERIC) < set(tables.QC_COLUMNS)
    flags = tables.qc_dictionary()["flags"]["Description"]
    assert f"snr < {thresholds.SNR_MIN:g}" in flags and f"> {thresholds.MOTION_MAX_MM:g} mm" in flags
    assert "mode" in tables.measures_dictionary("mode")["measure"]["Levels"]["reference_value"]


def test_qc_flags_at_the_thresholds():
    from nmbids.qc import qc_flags

    cov = {"SN_bilateral": thresholds.COVERAGE_MIN, "LC_bilateral": thresholds.COVERAGE_MIN - 0.01}
    flags = qc_flags(cov, thresholds.SNR_MIN - 1, [0.0, thresholds.MOTION_MAX_MM + 0.1],
                     thresholds.NM2T1W_SIMILARITY_MIN, float("nan"))
    assert flags == ["low_coverage_LC", "high_motion", "low_snr", "poor_t1w2template_registration"]
    assert qc_flags({}, None, [0.0], 0.9, 0.9) == []
    assert qc_flags({}, None, [0.0], 0.9, 0.9, thresholds.AXIAL_TILT_MAX_DEG) == []
    assert qc_flags({}, None, [0.0], 0.9, 0.9, thresholds.AXIAL_TILT_MAX_DEG + 1) == ["non_axial_slices"]


def test_one_error_module():
    assert not (PACKAGE / "errors.py").exists() and not (PACKAGE / "group" / "errors.py").exists()
    err = exits.NmbidsError("bad", exits.EXIT_USAGE, participant="sub-01", path="x.nii.gz")
    assert err.code == 64 and err.line() == "sub-01: x.nii.gz: bad"
    assert set(exits.EXIT_MEANINGS) >= {exits.EXIT_DATA, exits.EXIT_NO_INPUT, exits.EXIT_INTERRUPTED}


# Fragments of derivative names, of the table files and of nmbids' folders. Outside
# nmbids/contract they may appear in docstrings and comments, never in code.
NAME_FRAGMENT = re.compile(r"_(desc|space|from|to|mode)-[A-Za-z0-9<*{]|_crmap|_measures\.(tsv|json)|_qc\.(tsv|json)|_dseg|_xfm|MTRmap"
                           r"|mtemap|_timeseries|atlas-nmbids|^(logs?|figures)$")
# modules that write other things than nmbids' derivatives: the phantom writes a raw BIDS
# dataset, the templates module names TemplateFlow's files
NOT_DERIVATIVES = ("contract", "phantom", "simulate.py", "templates.py")


def _code_strings(path: Path):
    """Every string constant of a module's code (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_derivative_name_is_spelled_outside_the_contract():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in NOT_DERIVATIVES:
            continue
        for line, text in _code_strings(path):
            if NAME_FRAGMENT.search(text):
                hits.append(f"{rel}:{line}: {text!r}")
    assert not hits, "\n".join(hits)


def test_columns_and_thresholds_are_defined_once():
    defined = {"MEASURE_COLUMNS": [], "QC_COLUMNS": [], "SNR_MIN": [], "COVERAGE_MIN": [], "EXIT_DATA": []}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in defined:
                        defined[target.id].append(str(path.relative_to(PACKAGE)))
    assert all(len(where) == 1 and where[0].startswith("contract/") for where in defined.values()), defined
