# The dreamcatcher_pg package: `dreamcatcher merger`, `dreamcatcher demo`, ...
#
#   docker build -t dreamcatcher-pg .
#   docker run --rm -e DREAMCATCHER_DSN=postgresql://... -p 127.0.0.1:9464:9464 \
#       dreamcatcher-pg merger --metrics-port 9464
#
# In the image the metrics port listens on every interface (DREAMCATCHER_METRICS_ADDRESS=0.0.0.0;
# outside a container the default is 127.0.0.1): who reaches it is decided by the ports you publish.
# HEALTHCHECK: GET http://127.0.0.1:9464/healthz from inside the container (python3 -m
# dreamcatcher_pg.probe; no curl in slim images): healthy while a merger serving its metrics on
# port 9464 has a live merge loop. Another port or /readyz: set DREAMCATCHER_HEALTH_URL. Containers
# that run no merger (workers, one-shot commands) should disable it (docker-compose.yml does), or
# check the database's side instead: `dreamcatcher healthcheck` (docs/operations.md, Health).
#
# BASE_IMAGE: any image with python3 (3.11+) and pip on PATH (default python:3.12-slim).
# WHEELS: a directory in the build context holding pre-built wheels of the project
# and all its dependencies (`pip wheel '.[cli]' -w DIR`); when set, nothing is downloaded
# (pip --no-index). docker/build-local-images.sh uses both to build offline.
# (Few instructions on purpose: every step copies the whole tree on the vfs storage driver.)
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG WHEELS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1 \
    DREAMCATCHER_METRICS_ADDRESS=0.0.0.0 DREAMCATCHER_HEALTH_URL=http://127.0.0.1:9464/healthz

# pyproject.toml, README.md, dreamcatcher_pg/, sql/ and docker/ (the example worker of
# docker-compose.yml, and the wheels of offline builds): .dockerignore keeps out the rest
COPY . /app/
RUN set -eux; \
    if [ -n "$WHEELS" ]; then \
        pip install --no-index --find-links "/app/$WHEELS" 'dreamcatcher-pg[cli]'; \
    else \
        pip install '/app[cli]'; \
    fi; \
    rm -rf /app/docker/wheels; \
    dreamcatcher --version; \
    useradd --create-home --uid 10001 dreamcatcher

# a non-root user (the embedded PostgreSQL, used when no DSN is given, refuses to run as root)
USER dreamcatcher
WORKDIR /home/dreamcatcher
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "dreamcatcher_pg.probe"]
ENTRYPOINT ["dreamcatcher"]
CMD ["--help"]
