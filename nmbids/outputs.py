"""Writing outputs atomically, and the derivatives' dataset description and .bidsignore
(the names are :mod:`nmbids.contract.names`')."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from . import __version__
from .contract.names import BIDSIGNORE, CITATION, LOGS_DIR

TMP_PREFIX = ".tmp-"  # temporary files of atomic writes: hidden, never a final name


def _umask_mode() -> int:
    # mkstemp creates files readable by their owner only; outputs are shared on clusters
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The temporary name ends with the destination's name, so that writers that look at
    the extension (nibabel's ``.nii.gz``, matplotlib's ``.svg``) behave. On failure the
    temporary file is removed and ``path`` is untouched. An ``OSError`` about the file being
    written (disk full, read-only file system, no permission) names ``path``, never the
    temporary file, so that the user reads which output could not be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix="-" + path.name)
    except OSError as err:
        raise _naming(err, path) from err
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and (err.filename is None or str(tmp) in (err.filename, err.filename2)):
            raise _naming(err, path) from err
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same OSError subclass), about ``path``."""
    return OSError(err.errno, err.strerror, str(path)) if err.errno else err


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary files a killed job left behind (``kill -9`` skips every cleanup).

    Only for a folder no other job writes into at the same time (one participant's).
    """
    for tmp in Path(folder).rglob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_tsv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy a file into place atomically (temporary copy, then rename)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _container_type() -> str | None:
    """Singularity/Apptainer run our Docker image but set their own variables."""
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return "singularity"
    return os.environ.get("NMBIDS_CONTAINER") or None


def bids_uri(rel_path: str) -> str:
    return f"bids:raw:{rel_path}"


def write_dataset_description(output_dir: Path, bids_dir: Path) -> None:
    """``dataset_description.json`` and ``.bidsignore`` of the derivatives (idempotent)."""
    output_dir = Path(output_dir)
    desc = {
        "Name": "nmbids derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "nmbids",
            "Version": __version__,
            "CodeURL": "https://github.com/nmbids/nmbids",
            **({"Container": {"Type": _container_type()}} if _container_type() else {}),
        }],
        "SourceDatasets": [{"URL": f"file://{Path(bids_dir).resolve()}"}],
        "DatasetLinks": {"raw": str(Path(bids_dir).resolve())},
        "HowToAcknowledge": f"Cite nmbids and the references in {LOGS_DIR}/{CITATION}.",
    }
    path = output_dir / "dataset_description.json"
    try:  # several participant jobs may write it at once: each write is a whole file (rename)
        current = json.loads(path.read_text()).get("GeneratedBy")
    except (OSError, ValueError, AttributeError):  # missing (or removed meanwhile), or not JSON
        current = None
    if current != desc["GeneratedBy"]:
        atomic_write_json(path, desc)
    ignore, text = output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n"
    try:
        current = ignore.read_text()
    except OSError:
        current = None
    if current != text:  # missing, or written by an older nmbids that listed fewer patterns
        atomic_write_text(ignore, text)
