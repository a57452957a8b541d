"""Methods boilerplate with references, written to ``logs/CITATION.md`` and shown
verbatim in every participant report (both come from :func:`methods_boilerplate`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..acquisitions import MTR_TOP_VOLUME_MM3, NEIGHBOUR_BOX, NM_N4_SPLINE_MM, PROFILES, SIMEX, TOP_VOLUME_MM3
from ..cit168_atlas import CITATION as CIT168_CITATION, THRESHOLD as CIT168_THRESHOLD
from ..contract import names
from ..measures import SHARED_NOISE_RATIO, SIMEX_DRAWS, SIMEX_LEVELS
from ..outputs import atomic_write_text

# Reference texts, cited in the paragraphs below as {key}.
_REFS = {
    "bids": "Gorgolewski KJ, Auer T, Calhoun VD, et al. The brain imaging data structure, a format "
            "for organizing and describing outputs of neuroimaging experiments. Sci Data. 2016;3:160044. "
            "doi:10.1038/sdata.2016.44",
    "bidsapps": "Gorgolewski KJ, Alfaro-Almagro F, Auer T, et al. BIDS apps: Improving ease of use, "
                "accessibility, and reproducibility of neuroimaging data analysis methods. "
                "PLoS Comput Biol. 2017;13(3):e1005209. doi:10.1371/journal.pcbi.1005209",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
              "extensible neuroimaging data processing framework in Python. Front Neuroinform. "
              "2011;5:13. doi:10.3389/fninf.2011.00013",
    "antsx": "Tustison NJ, Cook PA, Holbrook AJ, et al. The ANTsX ecosystem for quantitative "
             "biological and medical imaging. Sci Rep. 2021;11:9068. doi:10.1038/s41598-021-87564-6",
    "nilearn": "Abraham A, Pedregosa F, Eickenberg M, et al. Machine learning for neuroimaging with "
               "scikit-learn. Front Neuroinform. 2014;8:14. doi:10.3389/fninf.2014.00014",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. "
          "IEEE Trans Med Imaging. 2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "syn": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
           "with cross-correlation: evaluating automated labeling of elderly and neurodegenerative "
           "brain. Med Image Anal. 2008;12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "fonov2009": "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
                 "age-appropriate brain templates from birth to adulthood. NeuroImage. "
                 "2009;47(Suppl 1):S102. doi:10.1016/S1053-8119(09)70884-5",
    "fonov2011": "Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for "
                 "pediatric studies. NeuroImage. 2011;54(1):313-327. "
                 "doi:10.1016/j.neuroimage.2010.07.033",
    "templateflow": "Ciric R, Thompson WH, Lorenz R, et al. TemplateFlow: FAIR-sharing of "
                    "multi-scale, multi-species brain models. Nat Methods. 2022;19:1568-1571. "
                    "doi:10.1038/s41592-022-01681-2",
    "cassidy2019": "Cassidy CM, Zucca FA, Girgis RR, et al. Neuromelanin-sensitive MRI as a "
                   "noninvasive proxy measure of dopamine function in the human brain. "
                   "Proc Natl Acad Sci USA. 2019;116(11):5108-5117. doi:10.1073/pnas.1807983116",
    "sasaki2006": "Sasaki M, Shibata E, Tohyama K, et al. Neuromelanin magnetic resonance imaging of "
                  "locus ceruleus and substantia nigra in Parkinson's disease. Neuroreport. "
                  "2006;17(11):1215-1218.",
    "tona2017": "Tona KD, Keuken MC, de Rover M, et al. In vivo visualization of the locus coeruleus "
                "in humans: quantifying the test-retest reliability. Brain Struct Funct. "
                "2017;222(9):4203-4217. doi:10.1007/s00429-017-1464-5",
    "wengler2020": "Wengler K, He X, Abi-Dargham A, Horga G. Reproducibility assessment of "
                   "neuromelanin-sensitive magnetic resonance imaging protocols for region-of-interest "
                   "and voxelwise analyses. NeuroImage. 2020;208:116457. "
                   "doi:10.1016/j.neuroimage.2019.116457",
    "scott1992": "Scott DW. Multivariate Density Estimation: Theory, Practice, and Visualization. "
                 "New York: Wiley; 1992.",
    "pauli2018": CIT168_CITATION,
    "cook1994": "Cook JR, Stefanski LA. Simulation-extrapolation estimation in parametric measurement "
                "error models. J Am Stat Assoc. 1994;89(428):1314-1328. doi:10.1080/01621459.1994.10476871",
}

# What the methods text says about the regions, per atlas (``atlas.atlas_name``); nothing for
# an unknown atlas (a report of a run from before the atlas was recorded).
_ATLASES = {
    "builtin": (" The SN, VTA and LC regions were nmbids' built-in search regions, placed in template "
                "space from published coordinates; the NM-rich voxels within them were found from the "
                "data (below)."),
    "cit168": (" SN and VTA were taken from the CIT168 probabilistic atlas of subcortical nuclei "
               "{pauli2018}: SN as the substantia nigra pars compacta, VTA as the ventral tegmental area "
               "together with the parabrachial pigmented nucleus, each where its probability, "
               "trilinearly resampled to the template, was at least {cit168_threshold:g} (a voxel reaching "
               "both going to the larger), split into left and right at the midsagittal plane; LC and the "
               "reference regions were nmbids' built-in regions, placed in template space from published "
               "coordinates."),
    "user": " The regions were taken from a user-supplied label image in template space.",
}

# The acquisition types as the paragraphs below abbreviate them.
_ACQ_ABBREVIATIONS = {"GREMT": "GRE-MT", "FSE": "FSE", "MTR": "MTR"}

_TEMPLATES = {
    "MNI152NLin2009cAsym": ("the ICBM 152 Nonlinear Asymmetrical template version 2009c "
                            "{fonov2009}{fonov2011}, distributed by TemplateFlow {templateflow}"),
    "MNI152NLin2009aSym": ("the ICBM 152 Nonlinear Symmetric template version 2009a "
                           "{fonov2009}{fonov2011}, as shipped with Nilearn {nilearn}"),
}

_PARAGRAPHS = (
    "Neuromelanin-sensitive MRI (NM-MRI) data were processed with nmbids {version} {nmbids}, "
    "a BIDS App {bids}{bidsapps} built on Nipype {nipype}, ANTsPy (ANTsX) {antsx} and "
    "Nilearn {nilearn}.",

    "Anatomical data. The T1-weighted (T1w) image was corrected for intensity non-uniformity "
    "with N4 {n4} and registered to {template} (space label {template_name}) with an affine "
    "followed by a symmetric diffeomorphic (SyN) registration {syn}. Images identified as "
    "NM-MRI were never used as the anatomical reference.",

    "NM-MRI. Each NM-MRI acquisition was classified from its BIDS metadata (MTState, "
    "ScanningSequence, SequenceVariant, EchoTrainLength and related fields, or failing those its "
    "acq- label) as a gradient echo with magnetization-transfer preparation (GRE-MT), a "
    "T1-weighted fast spin echo (FSE) or an MT-on/MT-off pair (MTR). Repeated acquisitions "
    "were realigned and averaged, and the average corrected with N4 {n4} (one fitting level, "
    "B-spline control points every {nm_n4_spline_mm:g} mm). The NM slab was "
    "registered to the T1w image with a rigid transform; template-space regions of interest "
    "(substantia nigra, SN; ventral tegmental area, VTA; locus coeruleus, LC) and reference "
    "regions (crus cerebri, CC; pontine tegmentum, PT) were brought into the native NM space by "
    "composing the inverse T1w-to-template transform with the inverse NM-to-T1w transform.{atlas}",

    "Measures. The contrast ratio CR = (I - ref(R)) / ref(R) was computed with the reference "
    "region R being the crus cerebri for SN and VTA and the pontine tegmentum for LC "
    "{cassidy2019}{sasaki2006}; ref(R) is the mode of a Gaussian kernel density estimate "
    "(Scott's bandwidth {scott1992}), the median or the mean of R. The CR of SN and VTA is the "
    "mean CR of the voxels that make up a fixed volume per side ({top_volumes} mm3), and the "
    "LC CR the mean over slices of the CR of 3 voxels per slice; in both cases the voxels are "
    "chosen by the mean intensity of their 8 in-plane neighbours, the voxel itself left out, "
    "so that the choice is independent of the noise of the values averaged (choosing the "
    "brightest voxels biases CR upwards by an amount that grows as the signal-to-noise ratio "
    "falls). For {box_rois}, which runs through the slices, the voxels were chosen by the mean "
    "of their 26 neighbours in the 3 x 3 x 3 box (the 8 in-plane ones and the 9 in each adjacent "
    "slice), unless adjacent slices shared their noise (a noise sd estimated from the slices on "
    "either side below {shared_noise_ratio} times the in-plane one). On images whose adjacent voxels share their noise (zero-filled reconstructions, "
    "found where the noise sd estimated from the 8 nearest neighbours is below {shared_noise_ratio} times the "
    "one from the 16 beyond them), the SN voxels were chosen by those 16 and the noise was "
    "estimated from them. For {simex_rois} that estimate was then taken to no noise by "
    "simulation-extrapolation (SIMEX) {cook1994}, because a choice made on noisier neighbours "
    "misses more of the nucleus: the CR was measured again after adding Gaussian noise of "
    "{simex_levels} times the image's noise variance ({simex_draws} draws each; noise sd "
    "estimated in the reference region from each voxel's difference to its in-plane neighbours), "
    "and a line in the added variance was extended to minus the image's own. Contrast-to-noise ratio, "
    "supra-threshold volume (voxels above ref(R) + k sd(R)), the LC maximum-intensity contrast "
    "per slice summarised over rostral, middle and caudal thirds {tona2017}, the fraction of "
    "each region covered by the slab and, for MT pairs, the magnetization-transfer ratio "
    "MTR = 100 (M_off - M_on) / M_off were also computed. The MTR of each nucleus was measured "
    "where the nucleus is rather than over its whole search region, whose mean mixes the nucleus "
    "with the tissue around it and compresses differences between subjects: within the region's "
    "tissue (fluid, whose in-plane neighbours have less than half the reference regions' MTR, "
    "left out), the least-squares line of the "
    "neighbour-mean MTR against the neighbour-mean MT-off signal, along which mixtures of white "
    "matter, grey matter and CSF lie, was fitted, and the MTR averaged over the voxels that make "
    "up a fixed volume per side ({mtr_volumes} mm3) and deviate most from that line on the side "
    "that deviates more; the choice is made by each voxel's 8 in-plane neighbours, the voxel "
    "itself left out, and does not assume whether the nucleus's MTR is below or above that of "
    "its surroundings. Voxelwise CR maps were written in "
    "template space {wengler2020}. The method, space and reference statistic behind every value are "
    "recorded in the measures table (the participant's measures TSV) and its JSON data dictionary; "
    "please report them with the results.",

    "Quality control. A visual report was generated for each participant (slab coverage, "
    "NM-to-T1w and T1w-to-template registration, regions of interest, reference-region "
    "histograms) together with automatic warnings for low region coverage, motion between "
    "repeats, low signal-to-noise ratio, poor NM-to-T1w registration and implausible "
    "contrast ratios.",

    "Copyright waiver. The above boilerplate text was automatically generated by nmbids with "
    "the express intention that users should copy and paste this text into their manuscripts "
    "unchanged. It is released under the CC0 license.",
)


@dataclass(frozen=True)
class Boilerplate:
    """Methods paragraphs with numbered citations, and the numbered references."""

    paragraphs: tuple[str, ...]
    references: tuple[str, ...]

    def markdown(self) -> str:
        refs = "\n".join(f"{i}. {text}" for i, text in enumerate(self.references, 1))
        body = "\n\n".join(self.paragraphs)
        return f"# Methods\n\n{body}\n\n## References\n\n{refs}\n"


def methods_boilerplate(template_name: str, version: str, atlas: str | None = None) -> Boilerplate:
    """Build the methods text for ``template_name``, nmbids ``version`` and the run's ``atlas``
    (``builtin``, ``cit168``, ``user``; None: the regions' origin is not stated)."""
    refs = dict(_REFS)
    refs["nmbids"] = f"nmbids developers. nmbids: a BIDS App for neuromelanin-sensitive MRI, version {version}."
    order: list[str] = []
    template = _TEMPLATES.get(template_name, "the {template_name} template")

    class _Cite(dict):
        """Numbers references in order of first citation while formatting."""

        def __missing__(self, key: str) -> str:
            if key == "template":
                return template.format_map(self)
            if key == "atlas":
                return _ATLASES.get(atlas or "", "").format_map(self)
            if key not in refs:
                raise KeyError(key)
            if key not in order:
                order.append(key)
            return f"[{order.index(key) + 1}]"

    cite = _Cite(version=version, template_name=template_name, nm_n4_spline_mm=NM_N4_SPLINE_MM,
                 cit168_threshold=CIT168_THRESHOLD,
                 simex_levels=", ".join(f"{z:g}" for z in SIMEX_LEVELS), simex_draws=SIMEX_DRAWS,
                 shared_noise_ratio=f"{SHARED_NOISE_RATIO:g}",
                 simex_rois=" and ".join(f"the {roi} of {_ACQ_ABBREVIATIONS[acq]} acquisitions"
                                         for acq, p in PROFILES.items()
                                         for roi, method in p.cr_method.items() if method.startswith(SIMEX)),
                 box_rois=" and ".join(f"the {roi} of {_ACQ_ABBREVIATIONS[acq]} acquisitions"
                                       for acq, p in PROFILES.items()
                                       for roi, method in p.cr_method.items() if method.startswith(NEIGHBOUR_BOX)),
                 top_volumes=", ".join(f"{roi} {v:g}" for roi, v in TOP_VOLUME_MM3.items()),
                 mtr_volumes=", ".join(f"{roi} {v:g}" for roi, v in MTR_TOP_VOLUME_MM3.items()))
    paragraphs = [text.format_map(cite) for text in _PARAGRAPHS]
    return Boilerplate(tuple(paragraphs), tuple(refs[k] for k in order))


def write_citation(output_dir: Path, template_name: str, version: str, atlas: str | None = None) -> Path:
    """Write ``OUTPUT_DIR/logs/CITATION.md`` (atomically) and return its path."""
    path = names.citation(output_dir)
    return atomic_write_text(path, methods_boilerplate(template_name, version, atlas).markdown())
