# The stage runner of `workbench run --executor kubernetes`: the project (library, configs) with
# papermill and a Python kernel. Each stage Job runs
#   python -m workbench.k8s.stage_job --input URL --output URL --parameters BASE64-JSON
# in /workspace: the notebook comes from the shared store (the exact one the run archives), the
# executed notebook goes back there; fsspec and s3fs reach s3:// stores (add gcsfs or adlfs for
# gs:// or abfs://). Secrets arrive as environment variables from a Kubernetes Secret.
#
#   docker build -f configs/docker/runner.Dockerfile -t registry.example.com/ml/workbench-runner:0.1.0 .
#
# Rebuild it when the library or configs change; the pod runs as user 10001.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true \
    WORKBENCH_PROJECT=/workspace

WORKDIR /workspace
COPY pyproject.toml README.md ./
COPY workbench ./workbench
RUN pip install ".[k8s]" "fsspec" "s3fs" \
 && useradd --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin runner
COPY configs ./configs
COPY notebooks ./notebooks
RUN chown -R 10001:0 /workspace

USER 10001
CMD ["python", "-m", "workbench.k8s.stage_job", "--help"]
