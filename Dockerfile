# musc-flow in a container: the package installed from this folder (`pip install .`, not editable),
# with its code also in /opt/prefect/musc-flow, the working directory of the Docker work pool's
# deployments (deploy/prefect.docker.yaml; docs/OPERATIONS.md, "Containers and hosts without a checkout").
#
#   CPU (the default):  docker build -t musc-flow:cpu .
#   CUDA:               docker build -t musc-flow:cu124 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
#                       PyTorch's CUDA wheels bring their CUDA libraries, so the slim base serves; the host
#                       needs the NVIDIA driver and the NVIDIA Container Toolkit, and the container the GPU
#                       (docker run --gpus all, or the work pool's container_create_kwargs: device_requests).
#   Another base image (a mirror of python:3.11-slim, or one with CUDA): --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MPLBACKEND=Agg

# torch and torchvision first, from the PyTorch index TORCH_INDEX_URL names (CPU wheels by default): a
# layer of its own, kept while only the code changes; `pip install .` then finds them installed.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"

WORKDIR /opt/prefect/musc-flow
COPY . .
# the same install as tests/test_deploy_files.py checks (a wheel of this context, `musc demo` from it)
RUN pip install . && musc --help > /dev/null
