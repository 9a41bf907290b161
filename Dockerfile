# syntax=docker/dockerfile:1
# medfcn runtime image: the `medfcn` CLI (train, infer, export, evaluate, data, info) on CUDA, with the
# bundles of the repository, including the shipped weights (bundles/hippocampus/models/model.pt).
#
#   git archive --format=tar HEAD | docker build -t medfcn:0.1.0 -
#   mkdir -p out && chmod 777 out    # or: chown 10001:10001 out (the image's user must write there)
#   docker run --rm --gpus all -v "$PWD/scans:/data:ro" -v "$PWD/out:/output" medfcn:0.1.0 \
#       infer --bundle /opt/medfcn/bundles/hippocampus --input /data --output /output
#
# `git archive` sends exactly the committed files (`docker build .` also works from a clean clone; in a
# working tree it would also send weights trained there). Without a GPU, drop `--gpus all`.
#
# How this file was reviewed: no Docker engine runs on the machines that build medfcn (development and
# CI), so the image is never built there. Instead CI lints this file with hadolint, and
# tests/export/test_dockerfile.py checks that every command it RUNs or uses as ENTRYPOINT/CMD is one the
# test suite runs too (`medfcn --version`, `medfcn --help`, `medfcn info`), that every COPY source
# exists and passes .dockerignore, that docker/constraints.txt agrees with pyproject.toml and with the
# torch in the base image, and it replays the image (COPY after .dockerignore, owners, USER) in a
# temporary root where the documented `infer` command above runs as uid 10001.
# Build it on a machine with Docker (and the NVIDIA Container Toolkit to use a GPU).

# The official PyTorch runtime image: CUDA 12.8 + cuDNN 9 user-space libraries and torch 2.9.1 already
# installed (MONAI 1.6 needs torch >= 2.8). Pinned by tag; for a bit-for-bit rebuild also pin the
# digest that `docker buildx imagetools inspect pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime` prints.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/medfcn

# Only what the package needs (see .dockerignore): the source, its metadata, the bundles' configs and
# shipped weights (models/model.pt). Owned by root and read-only to the runtime user: no command writes
# into a bundle it only reads (infer, evaluate --output /output/..., info).
COPY pyproject.toml README.md ./
COPY docker/constraints.txt docker/constraints.txt
COPY medfcn medfcn
COPY bundles bundles

# A regular (non-editable) install with every direct dependency pinned by the constraints file; torch
# is pinned to the base image's build, so pip keeps it. `medfcn --version` fails the build if the
# entry point is broken.
RUN pip install --no-cache-dir --constraint docker/constraints.txt ".[onnx]" \
    && medfcn --version

# An unprivileged user that owns only the output volume (and its home); scans are mounted read-only at
# /data. To train or export inside the container, mount a writable copy of a bundle.
RUN useradd --no-log-init --create-home --uid 10001 --user-group medfcn \
    && mkdir -p /data /output \
    && chown medfcn:medfcn /output

# Numeric ids so that the runtime (and Kubernetes' runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /output
VOLUME ["/data", "/output"]

# A CLI, not a service: no HEALTHCHECK and no exposed port. `docker run IMAGE` prints the help;
# `docker run IMAGE info` lists devices and versions; any other medfcn subcommand works the same way.
ENTRYPOINT ["medfcn"]
CMD ["--help"]
