"""The fork server hands nipype workers that have ANTsPy imported already."""
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from nmbids.participant import _plugin
from nmbids.workerpool import PRELOAD, preloaded, start_fork_server


def test_workers_start_with_the_libraries_imported():
    name = start_fork_server()
    if name is None:
        pytest.skip("no fork server on this platform")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(name)) as pool:
        assert pool.submit(preloaded).result(timeout=120) == list(PRELOAD)


def test_a_fresh_interpreter_has_none_of_them():
    out = subprocess.run([sys.executable, "-c", "from nmbids.workerpool import preloaded; print(preloaded())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_multiproc_uses_the_fork_server_only_when_started():
    class Options:
        nprocs, mem, use_plugin, mp_context = 2, None, None, "forkserver"
    assert _plugin(Options)["plugin_args"]["mp_context"] == "forkserver"
    Options.mp_context = None
    assert "mp_context" not in _plugin(Options)["plugin_args"]
