# One image for every Runwire process; the Deployment picks the module:
#
#   docker build -t runwire:dev .
#   docker run --rm runwire:dev registry_service        # python -m registry_service
#   docker run --rm runwire:dev registry_service.migrate upgrade
#
# The base is pinned by digest (python:3.11-slim-bookworm). The digest was taken from a
# public record of that tag, not resolved on this machine (no container engine here);
# refresh it with `docker buildx imagetools inspect python:3.11-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- build: a virtual environment from the hash-locked requirements ------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first (own layer, rebuilt only when the lock changes): exact versions,
# every file checked against its hash, nothing resolved beyond the lock.
COPY requirements/runtime.lock requirements/dev.lock requirements/
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock

# The build backend (setuptools) comes from the hash-locked dev lock too, into a
# throw-away environment, so building the project downloads nothing unverified.
RUN python -c "import pathlib, re; lock = pathlib.Path('requirements/dev.lock').read_text(); \
block = re.search(r'^setuptools==.*?(?=^\S|\Z)', lock, re.M | re.S); \
pathlib.Path('/tmp/build.lock').write_text(block.group(0))" \
 && python -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --require-hashes --no-deps -r /tmp/build.lock

COPY pyproject.toml README.md ./
COPY runwire ./runwire
COPY runwire_common ./runwire_common
COPY runwire_cli ./runwire_cli
COPY runwire_client ./runwire_client
COPY registry_service ./registry_service
COPY bridge_service ./bridge_service
COPY execution_service ./execution_service
COPY gateway ./gateway
COPY clients/js/src /opt/venv/share/runwire/clients/js/src
RUN /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/runwire-*.whl

# --- runtime: the virtual environment only, as an unprivileged user ------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="runwire" \
      org.opencontainers.image.description="Runwire services: registry, bridge, execution, gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# uid/gid 10001 match runAsUser/runAsGroup in k8s/. /app is writable only for local
# `docker run` with the SQLite default; Kubernetes mounts the root filesystem read-only.
RUN groupadd --system --gid 10001 runwire \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin runwire \
 && install -d -o 10001 -g 10001 -m 0755 /app

COPY --from=build /opt/venv /opt/venv
# The JS client's modules (inside the venv, see the build stage), served by the gateway at
# /client/ for the browser console.
ENV RUNWIRE_GATEWAY_CLIENT_DIR=/opt/venv/share/runwire/clients/js/src

WORKDIR /app
USER 10001:10001

# 50051: gRPC services; 8080: gateway WebSocket and /healthz; 9090: metrics (reserved).
EXPOSE 50051 8080 9090

ENTRYPOINT ["python", "-m"]
CMD ["gateway"]
