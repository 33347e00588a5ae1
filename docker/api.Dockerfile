# HAD-MC API: `hadmc serve`. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t hadmc-api .
# Base images are pinned to an exact release (pin the digest too in production).
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hadmc_core ./hadmc_core
COPY cloud_service ./cloud_service
COPY edge_agent ./edge_agent
# The CPU wheel of torch; every torch requirement of the project is satisfied by it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install ".[core,cloud]"

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 hadmc && useradd --uid 10001 --gid hadmc --create-home hadmc \
 && mkdir -p /data && chown hadmc:hadmc /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    HADMC_ARTIFACT_DIR=/data/artifacts \
    HADMC_SIGNING_KEY_FILE=/data/keys/manifest-signing.key \
    HADMC_DATABASE_URL=sqlite:////data/hadmc.db
USER hadmc
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["hadmc", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
