# cxr-node images. Two targets from one file:
#   docker build --target edge   -t cxr-node-edge .     # serve: the DICOM edge, no torch
#   docker build --target worker -t cxr-node-worker .   # worker: models, torch, highdicom
#   docker build -t cxr-node .                          # all-in-one (embedded queue), the default
# (Not built in CI here: this machine has no Docker engine.)

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CXR_NODE_DATA_DIR=/var/lib/cxr-node
RUN useradd --system --home /var/lib/cxr-node --create-home cxr
WORKDIR /opt/cxr-node
# requirements.lock pins every package (made by `make lock`); each target installs the part it
# needs with `-c requirements.lock`, so the images carry the versions CI tested, without the
# test tools. Both targets get the PostgreSQL driver (deploy/docker-compose.yml's ledger).
COPY pyproject.toml constraints.txt requirements.lock README.md ./
COPY cxr_node ./cxr_node
COPY workers ./workers

FROM base AS edge
RUN pip install -c requirements.lock ".[postgres]" && pip check
USER cxr
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD ["cxr-node", "check"]
CMD ["cxr-node", "serve"]

FROM base AS worker
# torch first, the CPU build the lock pins (torch==2.13.0+cpu is not on PyPI), without its
# dependencies: they come next from PyPI at the locked versions. No fallback to PyPI's torch,
# which is the multi-GB CUDA build. (A CUDA image needs its own torch line and lock.)
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "$(grep -x 'torch==.*' requirements.lock)"
RUN pip install -c requirements.lock ".[worker,postgres]" && pip check
USER cxr
CMD ["cxr-node", "worker"]

FROM worker AS all-in-one
USER root
RUN cxr-node models init-demo --data-dir /var/lib/cxr-node && chown -R cxr /var/lib/cxr-node
USER cxr
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD ["cxr-node", "check"]
CMD ["cxr-node", "serve"]
