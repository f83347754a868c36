# syntax=docker/dockerfile:1
# drift-responder: one image for every process (ingest, consume, worker, beat, bot, agent,
# db upgrade); the command picks the role. Build: docker build -t drift-responder:local .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with drift-responder and its dependencies --
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/drift-responder \
 && /opt/drift-responder/bin/pip install --upgrade pip
COPY pyproject.toml README.md ./
COPY responder ./responder
COPY bots ./bots
RUN /opt/drift-responder/bin/pip install . \
 && /opt/drift-responder/bin/drift-responder --help >/dev/null

# -- runtime: the virtualenv, the shipped playbooks, an unprivileged user --
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="drift-responder" \
      org.opencontainers.image.description="SOAR playbook runner and chat-ops responder for container drift on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 drift \
 && useradd --system --uid 10001 --gid drift --no-create-home \
      --home-dir /var/lib/drift-responder --shell /usr/sbin/nologin drift \
 && mkdir -p /var/lib/drift-responder/artifacts \
 && chown -R 10001:10001 /var/lib/drift-responder \
 && chmod 2775 /var/lib/drift-responder/artifacts
COPY --from=build /opt/drift-responder /opt/drift-responder
COPY playbooks /opt/drift-responder/playbooks
ENV PATH=/opt/drift-responder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRIFT_DATA_DIR=/var/lib/drift-responder \
    DRIFT_ARTIFACTS_DIR=/var/lib/drift-responder/artifacts \
    DRIFT_PLAYBOOKS_DIR=/opt/drift-responder/playbooks
WORKDIR /var/lib/drift-responder
# Everything runs as this user; only the node agent overrides it (uid 0 to read the host's
# /proc, group 10001 to write evidence into the group-writable artifacts directory).
USER 10001:10001
EXPOSE 8080 3000
ENTRYPOINT ["drift-responder"]
CMD ["--help"]
