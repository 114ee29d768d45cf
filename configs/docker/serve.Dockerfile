# The model server of the `kubernetes` deploy target: MLflow's scoring server with workbench's
# `GET /model` (python -m workbench.deploy.model_server), and the libraries the project's
# models load with. No model is baked in: each Deployment names
# models:/<name>/<version> (stamped in its labels) and the server reads it from MLflow
# (MLFLOW_TRACKING_URI, set per environment in configs/kubernetes.yaml) when it starts.
#
#   docker build -f configs/docker/serve.Dockerfile -t registry.example.com/ml/workbench-serve:0.1.0 .
#
# The pod runs as user 10001 with a read-only root filesystem; HOME and temp files go to the
# /tmp emptyDir the manifests mount.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true

# the versions the project trains with (pyproject.toml); boto3 reads S3 artifact stores.
# workbench itself without its dependencies: the model server needs only mlflow's.
COPY pyproject.toml README.md /src/
COPY workbench /src/workbench
RUN pip install "mlflow>=3.1" "scikit-learn>=1.5" "pandas" "boto3" \
 && pip install --no-deps /src \
 && useradd --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin serve

USER 10001
EXPOSE 8080
# the Deployment gives the full command:
#   python -m workbench.deploy.model_server --model-uri models:/NAME/VERSION ...
CMD ["python", "-m", "workbench.deploy.model_server", "--help"]
