# The operator's image: `docker build -t pet-operator .` (or BuildKit's buildctl) at the repo root.
#
# BASE_IMAGE is any Debian-based image with Python 3.11 or newer and its venv module: the
# default is the public python image; the test harness passes one it made from Debian packages
# (mmdebstrap, no registry needed; docs/harness.md). Both stages use the same base, so the
# virtualenv's interpreter link is valid in the final one.
#
# Size (docs/image.md; `pet-harness image report`): the virtualenv keeps only what the operator
# runs: pip and setuptools, which venv puts in to install with, are uninstalled before it is copied
# (about 21 MB); the bytecode stays (a read-only filesystem cannot cache it).
#
# The result runs as uid/gid 65532 (no root, no shell needed), with tini as PID 1 so that
# SIGTERM reaches the operator (Python as PID 1 would ignore it) and SIGSTOP/SIGCONT sent to
# the operator's process work (the chaos freeze), and with a read-only root filesystem
# (bytecode compiled at build time; /tmp is the only place it writes, an emptyDir in
# deploy/operator/deployment.yaml).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# VERSION: the package's version (the build context has no .git for setuptools-scm to read: the
# harness and the release workflow pass `pet-operator --version`'s; without it, the fallback
# 0.1.0.dev0); REVISION: the git commit. Both go into the OCI labels.
ARG VERSION=0.1.0.dev0
ARG REVISION=unknown

# Wheels to install from instead of the package index: none by default (pip downloads them).
# The harness passes a folder of wheels it made on its machine as the build context `wheels`
# (buildctl --opt context:wheels=local:wheels), so that its builds need no network.
FROM scratch AS wheels

FROM ${BASE_IMAGE} AS build
ARG VERSION
# The public python image lacks tini; the harness's base has it already (then no network is
# needed for this step).
# DL3008 (pin apt versions): the package comes from the base image's own Debian release, which the
# base's digest pins; a pinned version would break the build at Debian's next point release.
# hadolint ignore=DL3008
RUN command -v tini >/dev/null || { apt-get update \
      && apt-get install -y --no-install-recommends tini \
      && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
# only what the operator's wheel is built from: pyproject.toml names README.md as the readme,
# and the package finder skips the harness and chaos folders, which are not copied
COPY pyproject.toml README.md ./
COPY operator/pet_operator ./operator/pet_operator
RUN --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && if [ -n "$(ls -A /wheels)" ]; then set -- --no-index --find-links /wheels; fi \
    && SETUPTOOLS_SCM_PRETEND_VERSION="${VERSION}" \
       /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "$@" . \
    && /opt/venv/bin/pip uninstall --yes --quiet --disable-pip-version-check pip setuptools \
    && /opt/venv/bin/python -m compileall -q /opt/venv \
    && cp "$(command -v tini)" /opt/tini

FROM ${BASE_IMAGE}
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="pet-operator" \
      org.opencontainers.image.description="Kubernetes operator for Pet and PetStore resources (Kopf)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# a name for uid 65532: Kopf's peering identity asks for the user's name (getpass.getuser), which
# fails for a uid without a passwd entry
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tini /usr/local/bin/tini
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/tini", "--", "/opt/venv/bin/python", "-m", "pet_operator"]
