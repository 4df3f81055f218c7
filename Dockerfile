# syntax=docker/dockerfile:1
# PlantPulse container image `plantpulse:0.1.0`: one image for every role (`plantpulse run | sim | notify | sql |
# topics ensure | ...`; the entrypoint is the `plantpulse` command, the default command `run`, the flow).
#
#   docker build -t plantpulse:0.1.0 .
#
# Two stages: `builder` compiles wheels (the C extension flows/_hmac_batch needs gcc and OpenSSL's headers);
# `runtime` installs only those wheels, has no compiler, and runs as UID 10001. Dependencies are exactly the
# pins of docker/requirements.lock (with sha256 hashes), made from pyproject.toml by `make lock`. The
# development machines have no Docker engine: tests/test_container_image.py checks this file's structure.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY docker/requirements.lock docker/requirements.lock
RUN pip wheel --require-hashes --wheel-dir /wheels -r docker/requirements.lock
COPY pyproject.toml README.md ./
COPY plantpulse plantpulse
COPY flows flows
COPY connectors connectors
COPY models models
COPY sim sim
COPY grafana grafana
COPY notify notify
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# libssl3 is the runtime half of libssl-dev (flows/_hmac_batch links libcrypto); nothing to compile here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 plantpulse \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/plantpulse --shell /usr/sbin/nologin plantpulse \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/plantpulse
# Only the builder's wheels (no index): the locked versions and the project; then prove the C extension is in.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels plantpulse \
    && python -c "import flows._hmac_batch"
COPY docker/healthcheck.py /usr/local/lib/plantpulse/healthcheck.py
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/plantpulse
WORKDIR /var/lib/plantpulse
USER 10001:10001
# Bytewax cluster (BYTEWAX_PORT), the flow's metrics and /ready (METRICS_PORT), the notifier's metrics.
EXPOSE 2101 9464 9465
# Probes the role's endpoint: the flow's /ready, the notifier's /metrics (docker/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/plantpulse/healthcheck.py"]
ENTRYPOINT ["plantpulse"]
CMD ["run"]
