"""The Boutiques descriptor (boutiques.json): valid for CBRAIN, in step with the CLI, and runnable.

* ``bosh validate --bids`` (the check CBRAIN's BIDS handler relies on);
* ``bosh exec simulate`` for participant and group invocations, and the command lines it
  generates are accepted by nmbids' own argument parser with the intended values;
* every flag, choice, exit code and version in the descriptor matches the code;
* ``bosh exec launch --no-container`` on a one-subject phantom (slow: runs registration), with
  the container's absolute executable path replaced by this environment's ``nmbids``.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

boutiques = pytest.importorskip("boutiques")
from boutiques import bosh  # noqa: E402

import nmbids  # noqa: E402
from nmbids.contract import exits as errors  # noqa: E402
from nmbids.parser import build_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "boutiques.json"
CONTAINER_EXE = "/opt/nmbids/bin/nmbids"


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _inputs(desc: dict) -> dict:
    return {i["id"]: i for i in desc["inputs"]}


def _simulate(desc_path: Path, invocation: dict, tmp_path: Path) -> str:
    inv = tmp_path / "invocation.json"
    inv.write_text(json.dumps(invocation))
    out = bosh(["exec", "simulate", str(desc_path), "-i", str(inv)])
    assert out.exit_code == 0
    return out.shell_command


def _nmbids_argv(shell_command: str) -> list[str]:
    """The nmbids arguments of 'mkdir -p OUT; /opt/nmbids/bin/nmbids ARGS'."""
    mkdir, _, call = shell_command.partition("; ")
    assert mkdir.startswith("mkdir -p ")
    argv = shlex.split(call)
    assert argv[0] == CONTAINER_EXE
    return argv[1:]


def test_bids_validation(descriptor):
    assert bosh(["validate", "--bids", str(DESCRIPTOR)]) is None  # raises when invalid
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["tags"]["application-type"] == ["bids"]


def test_cbrain_ids(descriptor):
    """CBRAIN's BIDS handler finds the dataset and output by these exact IDs."""
    ids = _inputs(descriptor)
    for id_ in ("bids_dir", "analysis_level", "participant_label", "session_label", "output_dir_name"):
        assert id_ in ids, id_
    assert [o["id"] for o in descriptor["output-files"]] == ["output_dir"]
    assert descriptor["output-files"][0]["path-template"] == "[OUTPUT_DIR]"
    assert descriptor["command-line"].startswith(f"mkdir -p [OUTPUT_DIR]; {CONTAINER_EXE} [BIDS_DIR] ")


def test_version_and_image(descriptor):
    assert descriptor["tool-version"] == nmbids.__version__
    assert descriptor["container-image"] == {"type": "docker", "image": f"nmbids/nmbids:{nmbids.__version__}"}


def test_error_codes_match_the_cli(descriptor):
    documented = {e["code"] for e in descriptor["error-codes"]}
    in_code = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert documented == in_code - {errors.EXIT_OK}


def test_flags_and_choices_match_the_parser(descriptor):
    """Every flag in the descriptor is an option of nmbids, with the same choices."""
    actions = {opt: a for a in build_parser()._actions for opt in a.option_strings}
    for inp in descriptor["inputs"]:
        flag = inp.get("command-line-flag")
        if flag is None:
            continue
        assert flag in actions, f"{inp['id']}: {flag} is not an nmbids option"
        action = actions[flag]
        if inp["type"] == "Flag":
            assert action.nargs == 0, f"{flag} takes a value in nmbids"
        else:
            assert action.nargs != 0, f"{flag} takes no value in nmbids"
        if inp.get("list"):
            assert action.nargs in ("+", "*"), f"{flag} is not a list in nmbids"
        if action.choices is not None:
            assert sorted(inp.get("value-choices", [])) == sorted(action.choices), flag
    # every value-key of the command line belongs to an input, and vice versa
    keys = set(re.findall(r"\[[A-Z_]+\]", descriptor["command-line"]))
    assert keys == {i["value-key"] for i in descriptor["inputs"]}


PARTICIPANT = {
    "bids_dir": "bids", "output_dir_name": "out", "analysis_level": "participant",
    "participant_label": ["01", "sub-02"], "session_label": ["1"], "work_dir": "work",
    "nprocs": 2, "omp_nthreads": 1, "mem": 4, "skip_bids_validation": True, "ref_stat": "median",
    "registration_quality": "fast", "notrack": True, "atlas_name": "cit168",
}
GROUP = {
    # bosh substitutes [OUTPUT_DIR] from output_dir_name only (CBRAIN uses either input)
    "bids_dir": "bids", "output_dir_name": "out", "analysis_level": "group",
    "group_column": "group", "covariates": ["age", "sex"], "reference_group": "control",
    "robust": True, "harmonize": "site", "n_permutations": 50, "random_seed": 3,
}


def test_simulate_participant(tmp_path):
    argv = _nmbids_argv(_simulate(DESCRIPTOR, PARTICIPANT, tmp_path))
    args = build_parser().parse_args(argv)
    assert (str(args.bids_dir), str(args.output_dir), args.analysis_level) == ("bids", "out", "participant")
    assert args.participant_label == ["01", "sub-02"] and args.session_label == ["1"]
    assert str(args.work_dir) == "work" and args.nprocs == 2 and args.omp_nthreads == 1
    assert args.mem == 4 and args.skip_bids_validation and args.ref_stat == "median"
    assert args.registration_quality == "fast" and args.notrack
    assert args.atlas == "cit168"  # the atlas by name and the label image share --atlas


def test_simulate_group(tmp_path):
    argv = _nmbids_argv(_simulate(DESCRIPTOR, GROUP, tmp_path))
    args = build_parser().parse_args(argv)
    assert (str(args.output_dir), args.analysis_level) == ("out", "group")
    assert args.group_column == "group" and args.covariates == ["age", "sex"]
    assert args.reference_group == "control" and args.robust and args.harmonize == "site"
    assert args.n_permutations == 50 and args.random_seed == 3


def test_descriptor_tests_simulate(descriptor, tmp_path):
    """The test cases shipped in the descriptor are valid invocations."""
    for case in descriptor["tests"]:
        _nmbids_argv(_simulate(DESCRIPTOR, case["invocation"], tmp_path))


def _script(name: str) -> str:
    """A console script of this environment (the venv running pytest first)."""
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"the {name} console script is not installed")
    return found


def _local_descriptor(descriptor: dict, tmp_path: Path) -> Path:
    """A copy of the descriptor that calls this environment's nmbids instead of the container's."""
    exe = _script("nmbids")
    local = dict(descriptor, **{"command-line": descriptor["command-line"].replace(CONTAINER_EXE, exe)})
    local.pop("container-image")
    path = tmp_path / "boutiques-local.json"
    path.write_text(json.dumps(local, indent=1))
    return path


@pytest.mark.slow
def test_launch_no_container(descriptor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # one small subject (the phantom of test_pipeline.py): 1.5 mm T1w, a small NM field of view
    subprocess.run([_script("nmbids-simulate"), "sim", "--n", "1", "--seed", "1", "--t1w-res", "1.5",
                    "--nm-fov", "110x120", "--repeats", "2"], check=True, capture_output=True)
    local = _local_descriptor(descriptor, tmp_path)

    def launch(invocation: dict, name: str):
        inv = tmp_path / f"{name}.json"
        inv.write_text(json.dumps(invocation))
        return bosh(["exec", "launch", "--no-container", str(local), str(inv)])

    out = launch({"bids_dir": "sim/bids", "output_dir_name": "deriv", "analysis_level": "participant",
                  "participant_label": ["01"], "work_dir": "work", "nprocs": 2,
                  "registration_quality": "fast", "notrack": True}, "participant")
    assert out.exit_code == 0, out.stdout + out.stderr
    assert not out.missing_files
    deriv = tmp_path / "deriv"
    assert (deriv / "sub-01.html").is_file()
    assert list(deriv.glob("sub-01/**/*_desc-nm_measures.tsv"))

    out = launch({"bids_dir": "sim/bids", "output_dir_name": "deriv", "analysis_level": "group",
                  "n_permutations": 20, "random_seed": 1}, "group")
    assert out.exit_code == 0, out.stdout + out.stderr
    assert (deriv / "group").is_dir()
