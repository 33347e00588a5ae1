# HAD-MC job worker: `hadmc worker` (Celery). Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t hadmc-worker .
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hadmc_core ./hadmc_core
COPY cloud_service ./cloud_service
COPY edge_agent ./edge_agent
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install ".[core,cloud]"

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 hadmc && useradd --uid 10001 --gid hadmc --create-home hadmc \
 && mkdir -p /data && chown hadmc:hadmc /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    HADMC_ARTIFACT_DIR=/data/artifacts
USER hadmc
CMD ["hadmc", "worker", "--concurrency", "1"]
