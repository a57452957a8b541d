"""``--use-plugin``: a nipype plugin YAML is checked before any work and handed to nipype."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nmbids.cli import main as nmbids_main
from nmbids.contract.exits import NmbidsError
from nmbids.plugin import plugin_settings as _plugin, read_plugin_file


def _options(path=None, nprocs=2, mem=None):
    return SimpleNamespace(use_plugin=path, nprocs=nprocs, mem=mem)


def test_multiproc_file_gets_nprocs_unless_it_says(tmp_path):
    f = tmp_path / "plugin.yml"
    f.write_text("plugin: MultiProc\nplugin_args: {maxtasksperchild: 1}\n")
    assert _plugin(_options(f, nprocs=3, mem=5)) == {
        "plugin": "MultiProc",
        "plugin_args": {"maxtasksperchild": 1, "n_procs": 3, "raise_insufficient": False, "memory_gb": 5}}
    f.write_text("plugin: MultiProc\nplugin_args: {n_procs: 1}\n")
    assert _plugin(_options(f, nprocs=3))["plugin_args"]["n_procs"] == 1


def test_slurm_file_passed_through(tmp_path):
    f = tmp_path / "plugin.yml"
    f.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --cpus-per-task=2 --mem=4G\n  max_tries: 3\n")
    assert _plugin(_options(f)) == {"plugin": "SLURM",
                                    "plugin_args": {"sbatch_args": "--cpus-per-task=2 --mem=4G", "max_tries": 3}}


def test_without_file_nprocs_decides():
    assert _plugin(_options(None, nprocs=1)) == {"plugin": "Linear"}
    assert _plugin(_options(None, nprocs=2))["plugin"] == "MultiProc"


@pytest.mark.parametrize("text, words", [
    ("plugin: [MultiProc\n", "not valid YAML at line"),
    ("- MultiProc\n", "expected a mapping"),
    ("plugin: Multiproc\n", "unknown nipype plugin 'Multiproc'"),
    ("plugin_args: {n_procs: 2}\n", "unknown nipype plugin None"),
    ("plugin: SLURM\nplugin_args: --mem=4G\n", "'plugin_args' must be a mapping"),
    ("plugin: SLURM\nplugin-args: {}\n", "unknown key(s) plugin-args"),
    (None, "cannot read the file"),
])
def test_bad_plugin_files_are_usage_errors(tmp_path, text, words):
    f = tmp_path / "plugin.yml"
    if text is not None:
        f.write_text(text)
    with pytest.raises(NmbidsError) as exc:
        read_plugin_file(f)
    assert exc.value.code == 64
    assert words in exc.value.line() and str(f) in exc.value.line()


@pytest.mark.parametrize("text", ["plugin: [MultiProc\n", "plugin: NoSuchScheduler\n"])
def test_cli_exits_64_with_one_line(tmp_path, text):
    """Before validation or discovery: the dataset here is empty and would fail otherwise."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    f = tmp_path / "plugin.yml"
    f.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "nmbids.cli", "bids", "out", "participant",
                           "-w", "work", "--use-plugin", "plugin.yml"],  # relative to the caller
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 64, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--use-plugin" in lines[0] and str(f) in lines[0], proc.stderr
    assert "cannot read" not in lines[0]


@pytest.mark.slow
def test_multiproc_yaml_runs_a_phantom(tmp_path, monkeypatch):
    """One small phantom subject through ``--use-plugin`` with MultiProc: nipype gets the file's
    settings and the participant's measures are written."""
    from nipype.pipeline.engine import Workflow

    from nmbids import phantom as sim

    sim.simulate_dataset(tmp_path, n_subjects=1, seed=3, t1w_res=1.5, nm_fov=(110.0, 120.0), repeats=2)
    f = tmp_path / "plugin.yml"
    f.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n  maxtasksperchild: 1\n")
    seen = []
    original = Workflow.run

    def spy(self, plugin=None, plugin_args=None, **kwargs):
        seen.append((plugin, dict(plugin_args or {})))
        return original(self, plugin=plugin, plugin_args=plugin_args, **kwargs)

    monkeypatch.setattr(Workflow, "run", spy)
    out = tmp_path / "out"
    code = nmbids_main([str(tmp_path / "bids"), str(out), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation", "--registration-quality", "fast", "--use-plugin", str(f)])
    assert code == 0
    assert seen == [("MultiProc", {"n_procs": 2, "maxtasksperchild": 1, "raise_insufficient": False})]
    assert (out / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv").is_file()


def test_ants_is_imported_before_forking_workers_only():
    """MultiProc/Linear graphs get ANTsPy imported in the scheduling process (its forked
    workers then skip the import); batch plugins, whose jobs are other processes, do not."""
    import subprocess
    import sys

    code = ("import sys\nfrom nmbids.plugin import preload_step_modules\n"
            "preload_step_modules({'plugin': 'SLURM'}); print('ants' in sys.modules)\n"
            "preload_step_modules({'plugin': 'MultiProc', 'plugin_args': {}}); print('ants' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
