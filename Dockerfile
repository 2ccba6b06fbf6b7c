# One image for the API, the Dagster webserver and the Dagster daemon.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# CPU torch first (pin it: an unpinned torch pulls CUDA wheels).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY dam_core dam_core
COPY dam_ingest_api dam_ingest_api
COPY dam_models dam_models
COPY dam_assets dam_assets
COPY dam_cli dam_cli
COPY workspace.yaml dagster.yaml dagster.prod.yaml ./
RUN pip install .
ENV DAGSTER_HOME=/opt/dagster/home
RUN mkdir -p $DAGSTER_HOME && cp dagster.prod.yaml $DAGSTER_HOME/dagster.yaml
EXPOSE 8000 3000
CMD ["dam", "api", "--host", "0.0.0.0", "--port", "8000"]
