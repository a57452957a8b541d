"""Sink nodes: the graph's last step per session and per NM image, writing its derivatives.

Every file is copied into place atomically under the name :mod:`nmbids.contract.names` gives
it, with a JSON sidecar that records what the group level needs (acquisition type, sources,
space), so that nothing downstream re-derives a fact from a file name. The NM sink also
writes the image's :class:`~nmbids.results.NMResult` (its measure rows and QC row) into the
work directory, where the orchestrator reads it to write the session's tables.

A failed write (disk full, read-only output) does not fail the node: it is recorded in the
result as an I/O error, which the orchestrator reports as one line and exit code 74, as the
BIDS-Apps convention asks, instead of a crash file.
"""
from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined,
                                    traits)


def _put(src: str, dst: Path, meta: dict | None) -> None:
    from ..contract.names import sidecar
    from ..outputs import atomic_copy, atomic_write_json

    atomic_copy(Path(src), dst)
    if meta is not None:
        atomic_write_json(sidecar(dst), meta)


def _io_error(err: OSError) -> dict:
    return {"errno": err.errno, "strerror": err.strerror, "filename": err.filename}


class _AnatSinkInputSpec(BaseInterfaceInputSpec):
    t1w_preproc = File(exists=True, mandatory=True)
    t1w_template = File(exists=True, mandatory=True)
    affine = File(exists=True, mandatory=True)
    warp = File(exists=True, mandatory=True)
    invwarp = File(exists=True, mandatory=True)
    output_dir = traits.Str(mandatory=True)
    participant = traits.Str(mandatory=True)
    session = traits.Either(None, traits.Str(), mandatory=True)
    space = traits.Str(mandatory=True)
    t1w_source = traits.Str(mandatory=True, desc="the T1w, relative to the BIDS root")
    result_file = traits.Str(mandatory=True, desc="where the sink records what it wrote (work dir)")


class _SinkOutputSpec(TraitedSpec):
    result_file = File(exists=True)


class AnatSink(SimpleInterface):
    """A session's T1w derivatives: the bias-corrected T1w, in template space, the transforms."""

    input_spec = _AnatSinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True  # outputs may have been removed since the node last ran

    def _run_interface(self, runtime):
        from ..contract.names import SessionFiles
        from ..outputs import atomic_write_json, bids_uri

        i = self.inputs
        files = SessionFiles.of(Path(i.output_dir), i.participant, i.session, i.space)
        sources = [bids_uri(i.t1w_source)]
        xfm = {"Sources": sources, "Software": "ANTsPy", "FromSpace": "T1w", "ToSpace": i.space}
        record = {"status": "ok"}
        try:
            _put(i.t1w_preproc, files.t1w_preproc, {"Sources": sources, "SkullStripped": False,
                                                    "Description": "N4 bias-corrected T1w"})
            _put(i.t1w_template, files.t1w_template, {"Sources": sources, "SkullStripped": False,
                                                      "SpatialReference": i.space})
            _put(i.affine, files.t1w_to_template_affine, xfm)
            _put(i.warp, files.t1w_to_template_warp, xfm)
            _put(i.invwarp, files.template_to_t1w_warp, {**xfm, "FromSpace": i.space, "ToSpace": "T1w"})
        except OSError as err:
            record = {"status": "io_error", "io_error": _io_error(err)}
        atomic_write_json(Path(i.result_file), record)
        self._results["result_file"] = i.result_file
        return runtime


class _NMSinkInputSpec(BaseInterfaceInputSpec):
    nm_preproc = File(exists=True, mandatory=True)
    motion = traits.List(traits.Float(), mandatory=True)
    nm_t1w = File(exists=True, mandatory=True)
    rigid = File(exists=True, mandatory=True)
    similarity = traits.Float(mandatory=True, desc="NM -> T1w similarity")
    template_similarity = traits.Float(mandatory=True, desc="T1w -> template similarity")
    nm_template = File(exists=True, mandatory=True)
    dseg = File(exists=True, mandatory=True)
    crmap = File(exists=True, mandatory=True)
    results = File(exists=True, mandatory=True, desc="the measures node's JSON")
    mtr_native = File()
    mtr_template = File()
    mte_native = File()
    mte_template = File()
    atlas_table = File(exists=True, mandatory=True, desc="label table of the ROI image")
    output_dir = traits.Str(mandatory=True)
    participant = traits.Str(mandatory=True)
    session = traits.Either(None, traits.Str(), mandatory=True)
    space = traits.Str(mandatory=True)
    nm = traits.Dict(mandatory=True, desc="the NM image: source, prefix, acq_type, evidence, sources (BIDS URIs)")
    ref_stat = traits.Str(mandatory=True)
    result_file = traits.Str(mandatory=True, desc="where the NMResult is written (work dir)")


class NMSink(SimpleInterface):
    """One NM image's derivatives, and its result (measure rows, QC row, refusal)."""

    input_spec = _NMSinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        import pandas as pd

        from ..acquisitions import PROFILES
        from ..contract.names import NMFiles
        from ..outputs import atomic_write_tsv
        from ..qc import qc_row, slab_refusal
        from ..results import NMResult

        i = self.inputs
        nm = dict(i.nm)
        session_id = f"ses-{i.session}" if i.session else "n/a"
        files = NMFiles.of(Path(i.output_dir), i.participant, i.session, nm["prefix"], i.space)
        results = json.loads(Path(i.results).read_text())
        motion = list(i.motion)
        result = NMResult(source=nm["source"], prefix=nm["prefix"], acq_type=nm["acq_type"], status="ok",
                          n_repeats=len(motion))
        params = {"Sources": nm["sources"], "AcquisitionType": nm["acq_type"],
                  "ClassificationEvidence": nm["evidence"], "Repeats": len(motion)}
        try:
            _put(i.nm_preproc, files.nm_preproc, {**params, "Description":
                 "repeats realigned and averaged, N4 bias-corrected"})
            _put(i.nm_t1w, files.nm_t1w, {**params, "SpatialReference": "T1w"})
            _put(i.nm_template, files.nm_template, {**params, "SpatialReference": i.space})
            _put(i.rigid, files.nm_to_t1w, {
                "Sources": nm["sources"], "Software": "ANTsPy", "FromSpace": "NM", "ToSpace": "T1w",
                "Note": "ANTs convention: maps NM points to T1w points (use inverted to resample NM into T1w)"})
            _put(i.dseg, files.dseg, {"Sources": nm["sources"], "Atlas": "nmbids"})
            atomic_write_tsv(files.dseg_labels, pd.read_csv(i.atlas_table, sep="\t"))
            _put(i.crmap, files.crmap, {
                **params, "SpatialReference": i.space, "Units": "ratio", "Formula": "(I - ref(R)) / ref(R)",
                "ReferenceRegion": results["map_reference"], "ReferenceStatistic": i.ref_stat,
                "ReferenceValue": results["references"].get(results["map_reference"], {}).get("value")})
            if isdefined(i.mtr_native):
                _put(i.mtr_native, files.mtrmap, {**params, "Units": "percent", "Formula": "100 * (off - on) / off"})
                _put(i.mtr_template, files.mtrmap_template, {**params, "Units": "percent",
                                                             "SpatialReference": i.space})
                _put(i.mte_native, files.mtemap, {**params, "Units": "ratio", "Formula": "on / off",
                                                  "Description": "MT enhancement"})
                _put(i.mte_template, files.mtemap_template, {**params, "Units": "ratio", "Formula": "on / off",
                                                             "Description": "MT enhancement",
                                                             "SpatialReference": i.space})
            if len(motion) > 1:
                atomic_write_tsv(files.motion, pd.DataFrame({"repeat": range(1, len(motion) + 1),
                                                             "displacement_mm": motion}))
        except OSError as err:
            result.status, result.io_error = "io_error", _io_error(err)
        result.measures = [{"participant_id": f"sub-{i.participant}", "session_id": session_id,
                            "source": nm["source"], "acq_type": nm["acq_type"], **r} for r in results["rows"]]
        result.qc = qc_row(participant=i.participant, session_id=session_id, source=nm["source"],
                           acq_type=nm["acq_type"], motion=motion, results=results, similarity=i.similarity,
                           template_similarity=i.template_similarity)
        refusal = slab_refusal(results["coverage"], PROFILES[nm["acq_type"]])
        if refusal and result.status == "ok":
            result.status, result.error = "refused", "slab misses the nuclei"
            result.message = f"sub-{i.participant}: {nm['source']}: {refusal}"
        result.write(Path(i.result_file))
        self._results["result_file"] = i.result_file
        return runtime
