# syntax=docker/dockerfile:1
#
# Images of the Elido -> Klaviyo forwarder and of its edge sidecar (docs/operator.md, "Deploying").
#
#   docker build --target forwarder -t elido-forwarder .   (the default target)
#   docker build --target sidecar   -t elido-sidecar .
#
# Both run as an unprivileged user with a read-only root filesystem: everything they write
# goes to the declared volumes (the SQLite database or the sidecar's spool, and /tmp).
# Linted by hadolint in tests/deploy/; no image is built by the test suite (no Docker engine).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the package and its runtime dependencies, no compilers left behind
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/forwarder && python -m venv /opt/sidecar
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY elido_common ./elido_common
COPY server ./server
COPY client ./client
COPY ingest_sidecar ./ingest_sidecar
# Extras: `server` is the forwarder (gRPC, Vault, store, Klaviyo client, tracing);
# `sidecar` only what the edge needs. A non-editable install: the image needs no source tree.
RUN /opt/forwarder/bin/pip install ".[server]" \
 && /opt/sidecar/bin/pip install ".[sidecar]" \
 # Bytecode compiled now, because the root filesystem is read-only at run time.
 && /opt/forwarder/bin/python -m compileall -q /opt/forwarder \
 && /opt/sidecar/bin/python -m compileall -q /opt/sidecar

# ---- sidecar: beside an edge proxy; spool on a volume, loopback HTTP input
FROM ${PYTHON_IMAGE} AS sidecar
RUN groupadd --system --gid 10001 elido \
 && useradd --system --uid 10001 --gid elido --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin elido \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/elido-sidecar
COPY --from=build /opt/sidecar /opt/sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ELIDO_SIDECAR_SPOOL_DIRECTORY=/var/lib/elido-sidecar/spool
VOLUME ["/var/lib/elido-sidecar", "/tmp"]
USER 10001:10001
EXPOSE 8788
# The sidecar's own /healthz on its loopback HTTP port (no curl in a slim image).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; p=os.environ.get('ELIDO_SIDECAR_HTTP_PORT','8788'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["elido-sidecar"]

# ---- forwarder (default target): gRPC on 50051, Prometheus on 9464
FROM ${PYTHON_IMAGE} AS forwarder
RUN groupadd --system --gid 10001 elido \
 && useradd --system --uid 10001 --gid elido --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin elido \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/elido-forwarder
COPY --from=build /opt/forwarder /opt/forwarder
ENV PATH=/opt/forwarder/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FORWARDER_LISTEN=0.0.0.0:50051 \
    FORWARDER_METRICS_LISTEN=0.0.0.0:9464 \
    FORWARDER_DATA_DIR=/var/lib/elido-forwarder \
    FORWARDER_LOG_FORMAT=json
VOLUME ["/var/lib/elido-forwarder", "/tmp"]
USER 10001:10001
EXPOSE 50051 9464
# grpc.health.v1.Health/Check needs no bearer token; `elido-fwd health` exits non-zero unless
# the answer is SERVING (TLS deployments set ELIDO_FORWARDER_CA in the container's environment).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["elido-fwd", "--target", "127.0.0.1:50051", "health"]
ENTRYPOINT ["elido-forwarder"]
