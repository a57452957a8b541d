# nmbids container image: a BIDS App for neuromelanin-sensitive MRI.
#
#   docker build -t nmbids/nmbids:<version> .
#   docker run --rm --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/out:/out -v /scratch/work:/work \
#       nmbids/nmbids:<version> /data /out participant -w /work
#
# Build arguments (none is needed for the public build):
#   BASE_IMAGE          any Debian bookworm image. The default has Python 3.11 in /usr/local;
#                       a base without python3 (debian:bookworm-slim, a debootstrap minbase)
#                       gets Debian's python3 (3.11) from apt in the `base` stage below.
#   FETCH_TEMPLATEFLOW  1 (default): download MNI152NLin2009cAsym res-01 (T1w, brain mask,
#                       GM/WM/CSF probseg) from TemplateFlow at build time into the read-only
#                       TEMPLATEFLOW_HOME. 0: bake only TemplateFlow's offline skeleton; nmbids
#                       then uses the MNI152 2009a template that nilearn ships (space label
#                       MNI152NLin2009aSym). Nothing is ever downloaded at run time.
#   WITH_CIT168         1 (default): download the CIT168 subcortical atlas (Pauli et al. 2018,
#                       Sci Data 5:180063, CC BY 4.0) with nilearn's fetch_atlas_pauli_2017 at
#                       build time into /opt/cit168 (NMBIDS_CIT168_DIR), for `--atlas cit168`.
#                       0: no CIT168; `--atlas cit168` then stops with exit code 64 and the
#                       built-in ROIs (the default) work as ever. Nothing is downloaded at run time.
#   PIP_CERT            path of a CA bundle for pip/requests inside the build (for builds behind
#                       a TLS-intercepting proxy, with the bundle mounted with `-v`); unused if empty.
#   VERSION             recorded in the image labels (.ci/container.sh passes nmbids.__version__).
ARG BASE_IMAGE=python:3.11-slim-bookworm

########################################################################################
# base: the Python interpreter shared by the builder and the runtime stage (the venv built
# in `builder` links to this interpreter, so both stages must be made from the same base),
# and the unprivileged user the image runs as.
FROM ${BASE_IMAGE} AS base
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version'; \
    useradd --uid 1000 --user-group --no-log-init --no-create-home --home-dir /home/nmbids \
        --shell /usr/sbin/nologin nmbids

########################################################################################
# builder: a venv at /opt/nmbids with pinned dependencies and nmbids, TemplateFlow in
# /opt/templateflow and a home with matplotlib's font list. Slow-changing steps come first:
# an edit of the sources rebuilds only the last two steps here.
FROM base AS builder
ARG PIP_CERT=""
ARG FETCH_TEMPLATEFLOW=1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/home/nmbids/.config/matplotlib \
    MPLBACKEND=Agg
# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip); python:* images have it.
RUN set -eux; \
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/nmbids

# Dependencies, pinned. Wheels everywhere except docopt and neuroCombat (pure-Python sdists):
# no compiler is needed. The test suites of the dependencies are dropped (about 150 MB).
COPY docker/requirements.txt /tmp/requirements.txt
RUN set -eux; \
    if [ -n "${PIP_CERT}" ]; then export PIP_CERT REQUESTS_CA_BUNDLE="${PIP_CERT}"; else unset PIP_CERT; fi; \
    /opt/nmbids/bin/pip install --prefer-binary --requirement /tmp/requirements.txt; \
    find /opt/nmbids/lib -depth -type d -name tests -exec rm -rf {} +

# TemplateFlow: the offline skeleton always (so the client never tries to populate a home at
# run time), the template files only when FETCH_TEMPLATEFLOW=1. And matplotlib's font list,
# so that no run has to build it.
RUN set -eux; \
    if [ -n "${PIP_CERT}" ]; then export REQUESTS_CA_BUNDLE="${PIP_CERT}"; fi; \
    /opt/nmbids/bin/python -c "import templateflow.api"; \
    if [ "${FETCH_TEMPLATEFLOW}" = "1" ]; then \
        /opt/nmbids/bin/python -c "from templateflow import api; \
tpl = 'MNI152NLin2009cAsym'; \
files = [api.get(tpl, resolution=1, desc=None, suffix='T1w', extension='.nii.gz'), \
         api.get(tpl, resolution=1, desc='brain', suffix='mask', extension='.nii.gz'), \
         *[api.get(tpl, resolution=1, label=lab, suffix='probseg', extension='.nii.gz') \
           for lab in ('GM', 'WM', 'CSF')]]; \
print(*files, sep='\n'); \
assert all(f.stat().st_size > 0 for f in files)"; \
    else \
        echo "FETCH_TEMPLATEFLOW=0: TemplateFlow skeleton only; nmbids will use nilearn's MNI152 2009a"; \
    fi; \
    chmod -R a+rX,go-w /opt/templateflow; \
    mkdir -p /home/nmbids/.config/matplotlib; \
    /opt/nmbids/bin/python -c "import matplotlib.pyplot as plt; plt.figure()"; \
    chmod -R a+rwX /home/nmbids; \
    chmod 1777 /home/nmbids

# CIT168 (for --atlas cit168): nilearn's fetcher writes /opt/cit168/pauli_2017/
# pauli_2017_prob.nii.gz and labels.txt. The folder exists (empty) when WITH_CIT168=0.
ARG WITH_CIT168=1
RUN set -eux; \
    if [ -n "${PIP_CERT}" ]; then export REQUESTS_CA_BUNDLE="${PIP_CERT}"; fi; \
    mkdir -p /opt/cit168; \
    if [ "${WITH_CIT168}" = "1" ]; then \
        /opt/nmbids/bin/python -c "from nilearn.datasets import fetch_atlas_pauli_2017; \
print(fetch_atlas_pauli_2017(data_dir='/opt/cit168').maps)"; \
        test -s /opt/cit168/pauli_2017/pauli_2017_prob.nii.gz; \
        test -s /opt/cit168/pauli_2017/labels.txt; \
    else \
        echo "WITH_CIT168=0: no CIT168 atlas in the image; --atlas cit168 will stop with exit code 64"; \
    fi; \
    chmod -R a+rX,go-w /opt/cit168

# nmbids itself (no dependency resolution: everything is pinned above).
COPY . /src
RUN set -eux; \
    if [ -n "${PIP_CERT}" ]; then export PIP_CERT REQUESTS_CA_BUNDLE="${PIP_CERT}"; else unset PIP_CERT; fi; \
    /opt/nmbids/bin/pip install --no-deps /src; \
    /opt/nmbids/bin/pip check; \
    /opt/nmbids/bin/pip uninstall -y pip setuptools; \
    /opt/nmbids/bin/nmbids --version; \
    /opt/nmbids/bin/python -c "from nmbids.templates import get_template; t = get_template(); print('default template:', t.name, t.source)"; \
    if [ "${WITH_CIT168}" = "1" ]; then \
        NMBIDS_CIT168_DIR=/opt/cit168 /opt/nmbids/bin/python -c "from nmbids.cit168_atlas import locate; print('CIT168:', locate())"; \
    fi

########################################################################################
# runtime: the interpreter, the venv, the baked templates and CIT168; no compilers, no pip.
FROM base AS runtime
ARG VERSION=""
# Any UID may run the image (`-u $(id -u)`, Singularity): HOME is world-writable when the root
# file system is, and every cache is either baked (matplotlib's font list, TemplateFlow) or
# placed under /tmp, which must be writable (`--tmpfs /tmp` with `docker run --read-only`;
# ANTsPy writes its transforms to the temporary directory).
ENV PATH=/opt/nmbids/bin:${PATH} \
    HOME=/home/nmbids \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/home/nmbids/.config/matplotlib \
    MPLBACKEND=Agg \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NMBIDS_CIT168_DIR=/opt/cit168 \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NMBIDS_CONTAINER=docker
LABEL org.opencontainers.image.title="nmbids" \
      org.opencontainers.image.description="BIDS App for neuromelanin-sensitive MRI (GRE-MT, FSE/TSE, MTR)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# the small home first (its layer stays cached when only the sources change); copying /home/
# keeps the mode (1777) of /home/nmbids itself
COPY --from=builder --chown=nmbids:nmbids /home/ /home/
COPY --from=builder /opt /opt
USER nmbids
WORKDIR /tmp
ENTRYPOINT ["nmbids"]
