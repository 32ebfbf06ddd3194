# syntax=docker/dockerfile:1
# yektaws container image: docker build -t yektaws . ; docs/deploy.md has the run line.
#
# Two stages: the first builds a virtualenv (compilers and pip caches stay there), the second
# copies only the virtualenv onto a clean base. Both stages must use the same base image, since
# a virtualenv's interpreter is a link into its base.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/yektaws/.venv
WORKDIR /src
# The runtime dependencies exactly as locked: every file must match a hash in requirements.lock,
# and a dependency missing from it fails the build. A layer of its own, rebuilt only when the
# lock changes.
COPY requirements.lock .
RUN /opt/yektaws/.venv/bin/pip install --no-compile --require-hashes -r requirements.lock
# .dockerignore lets only the package sources through: no .env, no .git, no local databases.
# --no-deps: everything yektaws needs is already installed, at the locked versions.
COPY . .
RUN /opt/yektaws/.venv/bin/pip install --no-compile --no-deps . \
    && /opt/yektaws/.venv/bin/python -m compileall -q /opt/yektaws/.venv


FROM ${PYTHON_IMAGE}
# A fixed numeric UID/GID so that Kubernetes' runAsNonRoot can check it and volume
# permissions are predictable across rebuilds.
ARG UID=10001
RUN groupadd --system --gid "${UID}" yektaws \
    && useradd --system --uid "${UID}" --gid yektaws --no-create-home \
        --home-dir /var/lib/yektaws --shell /usr/sbin/nologin yektaws \
    && install -d -o yektaws -g yektaws -m 0750 /var/lib/yektaws
COPY --from=build /opt/yektaws/.venv /opt/yektaws/.venv

# Configuration comes from the environment at run time (docker run --env-file); nothing
# secret is baked in. HOST=0.0.0.0 because a container's loopback is unreachable from outside;
# JSON logs because log collectors read container output line by line.
ENV PATH=/opt/yektaws/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    WEBSOCKET_PORT=3500 \
    LOG_FORMAT=json

# The embedded session database (used when DATABASE_URL is unset) lives here.
WORKDIR /var/lib/yektaws
USER ${UID}:${UID}
EXPOSE 3500

# /health is liveness only; orchestrators that route traffic should probe /ready as well.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('WEBSOCKET_PORT', '3500') + '/health', timeout=2)"

# Exec form: the Python process is PID 1 and receives SIGTERM itself (no shell in between to
# swallow it), and the gateway's SIGTERM handler drains connections. The drain takes up to
# DRAIN_TIMEOUT (30 s) while docker stop waits 10 s by default: run with --stop-timeout 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["yektaws"]
CMD ["serve"]
