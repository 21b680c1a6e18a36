# The dreamcatcher_pg package: `dreamcatcher merger`, `dreamcatcher demo`, ...
# BASE_IMAGE is overridable so tests can build on a locally made image.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dreamcatcher_pg ./dreamcatcher_pg
COPY sql ./sql
# WHEELS: an optional directory of pre-built wheels (offline installs); empty by default
ARG WHEELS=
RUN if [ -n "$WHEELS" ]; then pip install --no-cache-dir --no-index --find-links "$WHEELS" . ; \
    else pip install --no-cache-dir . ; fi

ENTRYPOINT ["dreamcatcher"]
CMD ["--help"]
