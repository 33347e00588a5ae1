# HAD-MC edge agent (torch-free). Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t hadmc-agent .
# `hadmc-agent` with the `edge` extra only (no torch); state in the /var/lib/hadmc volume.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hadmc_core ./hadmc_core
COPY cloud_service ./cloud_service
COPY edge_agent ./edge_agent
RUN pip install ".[edge]"

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 hadmc && useradd --uid 10001 --gid hadmc --create-home hadmc \
 && mkdir -p /var/lib/hadmc && chown hadmc:hadmc /var/lib/hadmc
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER hadmc
WORKDIR /var/lib/hadmc
CMD ["python", "-m", "edge_agent"]
