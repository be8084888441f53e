# The profilestream image: the flow (`python -m bytewax.run ...` or `profilestream run`) and
# `profilestream serve`, as deploy/k8s runs them. CPU torch by default; a CUDA build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Installs exactly what `make test` installs (constraints.txt), runs as a non-root user.
# Checked without a container engine by tests/integration/test_deploy.py (hadolint, and the
# install steps must match the Makefile's); deploy/README.md ("Image") says how to build it.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY dataflow ./dataflow
COPY operators ./operators
RUN python -m venv /opt/profilestream \
 && /opt/profilestream/bin/python -m pip install --upgrade pip \
 && /opt/profilestream/bin/python -m pip install --extra-index-url "${TORCH_INDEX}" \
        -c constraints.txt .

FROM python:${PYTHON}-slim
RUN groupadd --gid 10001 profilestream \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin profilestream
COPY --from=build /opt/profilestream /opt/profilestream
ENV PATH=/opt/profilestream/bin:$PATH PYTHONUNBUFFERED=1 PYTHONUTF8=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080 9108 3030
ENTRYPOINT ["profilestream"]
CMD ["--help"]
