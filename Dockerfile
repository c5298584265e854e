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
COPY pyproject.toml constraints.txt README.md ./
COPY cxr_node ./cxr_node
COPY workers ./workers

FROM base AS edge
RUN pip install .
USER cxr
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD ["cxr-node", "check"]
CMD ["cxr-node", "serve"]

FROM base AS worker
# CPU build by default; for CUDA install the matching torch wheel instead.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" || \
    pip install "torch==2.13.0"
RUN pip install -c constraints.txt ".[worker]"
USER cxr
CMD ["cxr-node", "worker"]

FROM worker AS all-in-one
USER root
RUN cxr-node models init-demo --data-dir /var/lib/cxr-node && chown -R cxr /var/lib/cxr-node
USER cxr
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD ["cxr-node", "check"]
CMD ["cxr-node", "serve"]
