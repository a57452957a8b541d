"""Reading helpers shared by the participant and group reports (tables as written,
label table rows, file-name entities). Writing goes through ``nmbids.outputs``."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract.names import PREFIX_ENTITIES

NA = "n/a"


class FigureUnavailable(ValueError):
    """The derivative holds nothing to draw (a CR map with no value inside the brainstem when
    the slab misses it): the report shows the reason as a note; it is not a failure."""


@dataclass(frozen=True)
class Label:
    """One row of the atlas label table (``atlas/tpl-*_atlas-nmbids_dseg.tsv``)."""

    index: int
    name: str
    roi: str
    hemi: str
    kind: str  # "target", "reference" or "n/a" when the table is missing


@dataclass
class Table:
    """A TSV exactly as written: header and rows of strings, nothing parsed."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    dictionary: dict[str, Any] = field(default_factory=dict)  # the JSON sidecar, if any

    def records(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, row)) for row in self.rows]


def read_tsv(path: Path) -> Table:
    """Read a BIDS TSV as strings (no type conversion, no quoting rules)."""
    lines = [ln.rstrip("\r\n") for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return Table(Path(path), [], [])
    header = lines[0].split("\t")
    rows = []
    for ln in lines[1:]:
        cells = ln.split("\t")
        cells += [""] * (len(header) - len(cells))  # pad short rows for display
        rows.append(cells)
    sidecar = Path(str(path)[: -len(".tsv")] + ".json") if str(path).endswith(".tsv") else None
    dictionary = read_json(sidecar) if sidecar is not None and sidecar.is_file() else {}
    return Table(Path(path), header, rows, dictionary if isinstance(dictionary, dict) else {})


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of an entity string (used for figure names)."""
    return _SAFE.sub("", str(text).replace("/", "-")) or "x"


# entities that may follow a prefix only in another source's derivatives
_PREFIX_KEYS = {short for _, short in PREFIX_ENTITIES} | {"run"}


def belongs_to_prefix(filename: str, prefix: str) -> bool:
    """True when ``filename`` is a derivative of exactly ``prefix``.

    ``sub-01_acq-NM_run-2_desc-x`` is not a file of ``sub-01_acq-NM``: after the
    prefix, no further sub/ses/acq/rec/run entity may follow.
    """
    if not filename.startswith(prefix + "_"):
        return False
    rest = filename[len(prefix) + 1:]
    return not any(tok.split("-", 1)[0] in _PREFIX_KEYS and "-" in tok for tok in rest.split("_"))
