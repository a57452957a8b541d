"""``init_participant_wf``: the nipype graph of one participant.

One flat workflow per participant: per session, a T1w bias-correction node and one T1w →
template node shared by every NM acquisition of the session, and a node that resamples the
T1w into the template (a derivative only); per NM acquisition, prepare → coregister →
quantify. Coregistration needs only the bias-corrected T1w, so it runs while the template
registration is still going; the resampled T1w is made while the NM is measured. Nodes are
named so that their folders in the work directory are predictable (``node_dir``): the
orchestrator reads results from there, whether or not other nodes failed.
"""
from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from ..acquisitions import PROFILES
from ..interfaces.processing import (AnatToTemplate, BiasCorrectT1w, CoregNM, PrepareNM, QuantifyNM,
                                     WarpT1wToTemplate)


def _tag(session: str | None) -> str:
    return f"ses_{session}" if session else "nosession"


def node_names(session: str | None, index: int | None = None) -> dict:
    tag = _tag(session)
    if index is None:
        return {"anat": f"anat_{tag}", "t1w": f"t1w_{tag}", "t1w_template": f"t1wtpl_{tag}"}
    return {step: f"{step}_{tag}_{index}" for step in ("prepare", "coreg", "quantify")}


def workflow_name(participant: str) -> str:
    return f"sub_{participant}_wf"


def node_dir(work_dir: Path, participant: str, node: str) -> Path:
    return Path(work_dir) / workflow_name(participant) / node


def init_participant_wf(participant: str, plans, *, work_dir: Path, template: str, atlas: Path,
                        atlas_table: Path, ref_stat: str = "mode", quality: str = "default"):
    """Build the workflow for the sessions in ``plans`` that have a T1w and NM inputs."""
    wf = pe.Workflow(name=workflow_name(participant), base_dir=str(work_dir))
    for plan in plans:
        if not plan.t1w or not plan.nm:
            continue
        t1w = pe.Node(BiasCorrectT1w(t1w=plan.t1w), name=node_names(plan.session)["t1w"])
        anat = pe.Node(AnatToTemplate(template=template, quality=quality), name=node_names(plan.session)["anat"])
        warped = pe.Node(WarpT1wToTemplate(template=template), name=node_names(plan.session)["t1w_template"])
        wf.connect([(t1w, anat, [("t1w_preproc", "t1w")]),
                    (t1w, warped, [("t1w_preproc", "t1w")]),
                    (anat, warped, [("affine", "affine"), ("warp", "warp")])])
        for index, nm in enumerate(plan.nm):
            names = node_names(plan.session, index)
            prep = pe.Node(PrepareNM(in_files=nm.files), name=names["prepare"])
            if nm.mt_off:
                prep.inputs.mt_off = nm.mt_off
            coreg = pe.Node(CoregNM(), name=names["coreg"])
            quant = pe.Node(QuantifyNM(atlas=str(atlas), atlas_table=str(atlas_table), template=template,
                                       acq_type=nm.acq_type, ref_stat=ref_stat,
                                       profile=repr(PROFILES[nm.acq_type])), name=names["quantify"])
            wf.connect([
                (prep, coreg, [("nm_preproc", "nm")]),
                (t1w, coreg, [("t1w_preproc", "t1w")]),
                (prep, quant, [("nm_preproc", "nm")]),
                (coreg, quant, [("rigid", "rigid")]),
                (anat, quant, [("affine", "affine"), ("warp", "warp"), ("invwarp", "invwarp")]),
            ])
            if nm.mt_off:
                wf.connect(prep, "mt_off_preproc", quant, "mt_off")
    return wf
