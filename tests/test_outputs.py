"""Outputs shared by concurrent participant jobs (SLURM array tasks) are written atomically."""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

from nmbids.outputs import write_dataset_description


def _writer(out: str, bids: str, seconds: float) -> None:
    path = Path(out) / "dataset_description.json"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        path.unlink(missing_ok=True)  # so that every call writes, as jobs starting together do
        write_dataset_description(Path(out), Path(bids))


def test_dataset_description_never_seen_half_written(tmp_path):
    """Three processes rewrite the file while this one reads it: every read is complete JSON."""
    out, bids = tmp_path / "out", tmp_path / "bids"
    out.mkdir()
    ctx = mp.get_context("fork")
    writers = [ctx.Process(target=_writer, args=(str(out), str(bids), 2.0)) for _ in range(3)]
    for w in writers:
        w.start()
    reads = 0
    path = out / "dataset_description.json"
    while any(w.is_alive() for w in writers):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        assert json.loads(text)["DatasetType"] == "derivative", repr(text[:80])
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 100
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json"]  # no temp files
