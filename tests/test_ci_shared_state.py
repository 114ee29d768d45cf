"""CI definitions with shared state (issue 18): when configs/pipeline.yaml names a team archive
(``archive.url``) and a tracking URI, the generated jobs pass no ``reports/`` or MLflow store
between them, get the archive's and MLflow's credentials from the CI's secrets, and can publish
the report site; `ci init` names the secrets to set. Without both, the jobs still pass
artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Workspace
from tests.test_ci import actionlint, check_schema
from tests.test_ci_generated import write_dev_qa_project, write_minimal_project

RELEASE, TRAIN = ".github/workflows/workbench-release.yml", ".github/workflows/workbench-train.yml"
GITLAB, JENKINS = ".gitlab-ci.yml", "Jenkinsfile"
S3_SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
OPTIONAL = ["AWS_ENDPOINT_URL_S3", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
ARTIFACT_ACTIONS = ("actions/upload-artifact", "actions/download-artifact")


def shared_project(root: Path, archive: dict[str, Any] | None = None,
                   tracking_uri: str | None = "https://mlflow.example.com",
                   **pipeline: Any) -> Workspace:
    """The minimal project (dev, prod behind a gate, a train-only run) with a team archive
    and a tracking server."""
    ws = write_minimal_project(root)
    config = ws.read_yaml("pipeline.yaml")
    config["archive"] = archive if archive is not None else {"url": "s3://team/workbench"}
    if tracking_uri:
        config["mlflow"] = {"tracking_uri": tracking_uri}
    ws.write_yaml("pipeline.yaml", {**config, **pipeline})
    return ws


def generate(ws: Workspace, out: Path | None = None, **options: Any) -> dict[str, str]:
    from workbench.ci.definitions import SYSTEMS, render, shape_of
    from workbench.config import load_config

    shape = shape_of(load_config(ws.root / "configs"), ws.root, **options)
    files: dict[str, str] = {}
    for system in SYSTEMS:
        files.update(render(shape, system))
    for path, text in files.items() if out else ():
        assert out is not None
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    return files


def workbench_jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The jobs that run workbench against the archive (not `validate` alone)."""
    return {name: job for name, job in workflow["jobs"].items()
            if any(re.search(r"workbench (run|approve|resume|promote|archive)", s.get("run", ""))
                   for s in job["steps"])}


# --- the jobs ---------------------------------------------------------------------------------


def test_shared_jobs_pass_no_artifacts_and_read_the_secrets(tmp_path: Path) -> None:
    from workbench.ci.shape import workbench_distribution

    ws = shared_project(tmp_path / "p", secrets=["API_TOKEN"])
    files = generate(ws, publish_site="pages")
    assert set(files) == {RELEASE, TRAIN, GITLAB, JENKINS}
    for text in files.values():  # the embedded store is passed nowhere
        assert ".workbench/mlflow" not in text
    names = [*S3_SECRETS, *OPTIONAL, "API_TOKEN"]
    for path in (RELEASE, TRAIN):
        workflow = yaml.safe_load(files[path])
        assert "MLFLOW_TRACKING_URI" not in workflow["env"]  # the config holds the URI
        jobs = workbench_jobs(workflow)
        assert set(jobs) == ({"dev", "prod", "site"} if path == RELEASE
                             else {"train", "dev", "prod"})
        for name, job in workflow["jobs"].items():
            uses = [s.get("uses", "") for s in job["steps"]]
            assert not [u for u in uses if u.startswith(ARTIFACT_ACTIONS)], (path, name)
            env = job.get("env", {})
            if name in jobs:  # every secret, by name, from the repository secrets
                assert {k: env[k] for k in names} == {k: f"${{{{ secrets.{k} }}}}"
                                                      for k in names}, (path, name)
            else:  # the pull request jobs (test, build) get none
                assert not set(names) & set(env), (path, name)
        # the project installs workbench with its s3 extra (boto3)
        installs = {s["run"] for job in workflow["jobs"].values() for s in job["steps"]
                    if s.get("name") == "Install"}
        dist, version = workbench_distribution()
        assert installs == {f'python -m pip install "{dist}[s3]=={version}"'}

    gitlab = yaml.safe_load(files[GITLAB])
    assert gitlab[".reports"]["artifacts"] == {  # the run id still goes on (dotenv)
        "when": "always", "reports": {"junit": "reports/junit-*.xml", "dotenv": "workbench.env"}}
    passing = {name: job["artifacts"] for name, job in gitlab.items()
               if isinstance(job, dict) and "artifacts" in job and name != ".reports"}
    assert passing == {"pages": {"paths": ["public"]}}
    assert gitlab["default"]["before_script"] == [f'python -m pip install "{dist}[s3]=={version}"']

    jenkins = files[JENKINS]
    environment = jenkins[jenkins.index("    environment {"):jenkins.index("    stages {")]
    for name in [*S3_SECRETS, "API_TOKEN"]:
        assert f"        {name} = credentials('{name}')\n" in environment
    for name in OPTIONAL:  # binding a credential that does not exist fails the build
        assert f"        // {name} = credentials('{name}')  // optional:" in environment
    assert "artifacts: 'reports/summary.md, workbench.env'" in jenkins
    assert "reports/**" not in jenkins


def test_the_site_is_published_from_the_archive(tmp_path: Path) -> None:
    ws = shared_project(tmp_path / "p")
    files = generate(ws, publish_site="pages")
    site = yaml.safe_load(files[RELEASE])["jobs"]["site"]
    assert site["needs"] == "dev"  # when the run stops at its first gate: what reviewers browse
    assert "github.ref == 'refs/heads/main'" in site["if"]
    assert "github.event_name == 'push'" in site["if"] and "!cancelled()" in site["if"]
    assert site["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert site["environment"] == {"name": "github-pages",
                                   "url": "${{ steps.deploy.outputs.page_url }}"}
    build = next(s["run"] for s in site["steps"] if s.get("name") == "Build the site from the "
                 "archive")
    assert build.splitlines() == ["workbench archive pull", "workbench reports build",
                                  "rm -rf _site && mkdir _site && cp -R reports/* _site/"]
    assert [s.get("uses") for s in site["steps"][-2:]] == ["actions/upload-pages-artifact@v3",
                                                           "actions/deploy-pages@v4"]
    assert site["steps"][-2]["with"] == {"path": "_site/"}
    assert "site" not in yaml.safe_load(files[TRAIN])["jobs"]

    gitlab = yaml.safe_load(files[GITLAB])
    pages = gitlab["pages"]
    assert gitlab["stages"][-1] == pages["stage"] == "site" and pages["needs"] == ["dev"]
    assert pages["rules"] == [{"if": '$WORKBENCH_TRAIN != "true" && $CI_PIPELINE_SOURCE == '
                                     '"push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH',
                               "when": "always"}]
    assert pages["script"][:2] == ["workbench archive pull", "workbench reports build"]
    assert pages["script"][2].endswith("cp -R reports/* public/")

    jenkins = files[JENKINS]
    stages = re.findall(r"stage\('([^']+)'\)", jenkins)
    assert stages[stages.index("dev"):] == ["dev", "Site", "prod"]
    block = jenkins[jenkins.index("stage('Site')"):jenkins.index("stage('prod')")]
    assert "branch 'main'" in block and "!params.TRAIN_ONLY" in block
    assert block.index("archive pull") < block.index("reports build") < block.index(
        "publishHTML(target: [reportName: 'Report site', reportDir: 'reports'")

    # the default: no site anywhere (a note says how to publish it)
    from workbench.ci.definitions import shape_of
    from workbench.config import load_config

    unpublished = generate(ws)
    assert "site" not in yaml.safe_load(unpublished[RELEASE])["jobs"]
    assert "pages" not in yaml.safe_load(unpublished[GITLAB])
    assert "publishHTML" not in unpublished[JENKINS]
    shape = shape_of(load_config(ws.root / "configs"), ws.root)
    assert any("--publish-site pages" in note for note in shape.notes)


def test_shared_definitions_pass_actionlint_and_the_schemas(tmp_path: Path) -> None:
    """Three shared shapes: s3 with the site, gs (a key file) with the tracking URI from a
    secret, and a dev+qa project on a shared path."""
    variants = [
        (shared_project(tmp_path / "s3", secrets=["API_TOKEN"]), {"publish_site": "pages"}),
        (shared_project(tmp_path / "gs", {"url": "gs://team/archive"}, tracking_uri=None),
         {"tracking_uri_secret": True, "publish_site": "pages"}),
    ]
    dev_qa = write_dev_qa_project(tmp_path / "dev_qa")
    config = dev_qa.read_yaml("pipeline.yaml")
    dev_qa.write_yaml("pipeline.yaml", {**config, "archive": {"url": "file:///srv/archive"},
                                        "mlflow": {"tracking_uri": "http://mlflow:5000"}})
    variants.append((dev_qa, {}))
    for index, (ws, options) in enumerate(variants):
        out = tmp_path / f"out{index}"
        files = generate(ws, out, **options)
        workflows = [out / path for path in (RELEASE, TRAIN)]
        # actionlint takes seconds a file: the train workflows' jobs are the release's, but
        # for the first
        linted = actionlint(*workflows[:2 if index == 0 else 1])
        assert linted.returncode == 0 and json.loads(linted.stdout) == [], linted.stdout
        github = check_schema("vendor.github-workflows", *workflows)
        assert github.returncode == 0, github.stdout + github.stderr
        gitlab = check_schema("vendor.gitlab-ci", out / GITLAB)
        assert gitlab.returncode == 0, gitlab.stdout + gitlab.stderr
        jenkins = files[JENKINS]
        assert jenkins.count("{") == jenkins.count("}")
        assert jenkins.count("(") == jenkins.count(")") and jenkins.count("[") == \
            jenkins.count("]")
        for text in files.values():
            assert "upload-artifact" not in text and ".workbench/mlflow" not in text

    # gs: the key file's content goes to a file only the runner's user reads, outside the
    # checkout; the variable then names it; the tracking URI is a secret too
    gs = yaml.safe_load((tmp_path / "out1" / RELEASE).read_text())["jobs"]["dev"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in gs["env"]
    assert gs["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    step = next(s for s in gs["steps"] if s.get("name") == "Credential files")
    assert step["env"] == {"GOOGLE_APPLICATION_CREDENTIALS":
                           "${{ secrets.GOOGLE_APPLICATION_CREDENTIALS }}"}
    assert step["run"].startswith("umask 077\n")
    assert 'echo "GOOGLE_APPLICATION_CREDENTIALS=$RUNNER_TEMP/GOOGLE_APPLICATION_CREDENTIALS" ' \
           '>> "$GITHUB_ENV"' in step["run"]
    steps = [s.get("name") for s in gs["steps"]]
    assert steps.index("Install") < steps.index("Credential files") < steps.index(
        "Run the pipeline in dev")
    assert "GOOGLE_APPLICATION_CREDENTIALS = credentials('GOOGLE_APPLICATION_CREDENTIALS')" in \
        (tmp_path / "out1" / JENKINS).read_text()
    # a shared path: no archive credentials, only the tracking server's optional login
    path_release = yaml.safe_load((tmp_path / "out2" / RELEASE).read_text())
    referenced = set(re.findall(r"secrets\.(\w+)", json.dumps(path_release["jobs"])))
    assert referenced == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


# --- which secrets ----------------------------------------------------------------------------


def _shared(tmp_path: Path, name: str, **pipeline: Any) -> tuple[Any, list[str]]:
    from workbench.ci.shared import shared_state
    from workbench.config import load_config

    tracking_secret = pipeline.pop("tracking_uri_secret", False)
    ws = shared_project(tmp_path / name, **pipeline)
    return shared_state(load_config(ws.root / "configs"), tracking_secret)


def test_the_secrets_follow_the_url_schemes(tmp_path: Path) -> None:
    def names(shared: Any) -> dict[str, bool]:
        return {s.name: s.required for s in shared.secrets}

    s3, notes = _shared(tmp_path, "s3")
    assert names(s3) == {"AWS_ACCESS_KEY_ID": True, "AWS_SECRET_ACCESS_KEY": True,
                         "AWS_ENDPOINT_URL_S3": False, "MLFLOW_TRACKING_USERNAME": False,
                         "MLFLOW_TRACKING_PASSWORD": False}
    assert (s3.extra, s3.package, notes) == ("s3", "boto3", [])
    # the endpoint in the config: no endpoint secret
    minio, _ = _shared(tmp_path, "minio", archive={"url": "s3://team/a",
                                                   "endpoint_url": "http://minio:9000"})
    assert "AWS_ENDPOINT_URL_S3" not in names(minio)
    gs, _ = _shared(tmp_path, "gs", archive={"url": "gs://team/a"},
                    tracking_uri="databricks://token:dapi0123456789@profile")
    assert gs.tracking == "mlflow.tracking_uri (databricks://***@profile)"  # not its token
    assert [(s.name, s.file) for s in gs.secrets] == [
        ("GOOGLE_APPLICATION_CREDENTIALS", True), ("DATABRICKS_HOST", False),
        ("DATABRICKS_TOKEN", False)]
    # the tracking URI from a secret (it overrides the config's, which may be absent)
    secret, _ = _shared(tmp_path, "secret", archive={"url": "s3://team/a"}, tracking_uri=None,
                        tracking_uri_secret=True)
    assert names(secret)["MLFLOW_TRACKING_URI"] is True
    assert secret.tracking == "the MLFLOW_TRACKING_URI secret"
    # paths on the runner and a plugin's scheme: said in a note
    local, notes = _shared(tmp_path, "local", archive={"url": "file:///srv/archive"},
                           tracking_uri="sqlite:///mlflow.db")
    assert names(local) == {}
    assert any("every job must run where that path is shared" in n for n in notes)
    assert any("on the runner's disk" in n for n in notes)
    plugin, notes = _shared(tmp_path, "plugin", archive={"url": "azure://container/a"})
    assert plugin is not None and any("no credentials for azure://" in n for n in notes)
    # the pipeline's own secrets, its notifications' URLs and the attestation key; one of a
    # name
    (tmp_path / "keys").mkdir()
    everything, _ = _shared(
        tmp_path, "all", secrets=["API_TOKEN", "AWS_ACCESS_KEY_ID"],
        notifications=[{"kind": "slack", "url_secret": "SLACK_URL"}],
        attestation={"public_key": "keys/attestation.pub", "required": True})
    assert list(names(everything)) == [*S3_SECRETS, *OPTIONAL, "API_TOKEN", "SLACK_URL",
                                       "WORKBENCH_ATTESTATION_KEY"]
    key = everything.secrets[-1]
    assert key.required and key.file


def test_without_archive_and_tracking_uri_the_jobs_pass_artifacts(tmp_path: Path) -> None:
    from workbench.ci.definitions import shape_of
    from workbench.ci.shape import NotShared
    from workbench.config import load_config

    # an archive but no tracking URI: artifacts, as before, and a note saying why
    ws = shared_project(tmp_path / "archive_only", tracking_uri=None)
    config = load_config(ws.root / "configs")
    shape = shape_of(config, ws.root)
    assert shape.shared is None
    assert any("pass --tracking-uri-secret" in note for note in shape.notes)
    files = generate(ws)
    release = yaml.safe_load(files[RELEASE])
    assert release["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    for name in ("dev", "prod"):
        uploads = [s for s in release["jobs"][name]["steps"]
                   if s.get("uses") == "actions/upload-artifact@v4"]
        assert uploads and uploads[0]["with"]["path"] == "reports/\n.workbench/mlflow/\n"
    assert any(s.get("uses") == "actions/download-artifact@v4"
               for s in release["jobs"]["prod"]["steps"])
    assert yaml.safe_load(files[GITLAB])[".reports"]["artifacts"]["paths"] == [
        "reports/", ".workbench/mlflow/"]
    assert "artifacts: 'reports/**, workbench.env'" in files[JENKINS]
    for text in files.values():
        assert "AWS_" not in text and "Shared state" not in text
    # the options that need the shared state say so
    with pytest.raises(NotShared, match="needs archive.url and mlflow.tracking_uri"):
        shape_of(config, ws.root, publish_site="pages")
    plain = write_minimal_project(tmp_path / "plain")
    with pytest.raises(NotShared, match="no archive.url"):
        shape_of(load_config(plain.root / "configs"), plain.root, tracking_uri_secret=True)
    # ... and the tracking URI from a secret makes it shared
    assert shape_of(config, ws.root, tracking_uri_secret=True).shared is not None


def test_the_install_must_bring_the_archive_client(tmp_path: Path) -> None:
    from workbench.ci.definitions import shape_of
    from workbench.config import load_config

    ws = write_dev_qa_project(tmp_path / "d")
    config = ws.read_yaml("pipeline.yaml")
    ws.write_yaml("pipeline.yaml", {**config, "archive": {"url": "s3://team/a"},
                                    "mlflow": {"tracking_uri": "https://mlflow.example.com"}})

    def notes() -> list[str]:
        shape = shape_of(load_config(ws.root / "configs"), ws.root)
        assert shape.install == "python -m pip install -r requirements.txt"
        return [n for n in shape.notes if "boto3" in n]

    assert notes() == ["the install does not bring boto3, which the archive s3://team/a needs: "
                       "name workbench[s3] in requirements.txt (or pass --install)"]
    for requirement in ("workbench[s3]>=0.1", "Workbench[S3, k8s]", "boto3==1.35.40"):
        (ws.root / "requirements.txt").write_text(f"scikit-learn>=1.5\n{requirement}\n")
        assert notes() == [], requirement


# --- ci init ----------------------------------------------------------------------------------


def test_ci_init_names_the_secrets_to_set_never_their_values(tmp_path: Path) -> None:
    # nothing listens at the endpoint: `ci init` reads the configuration, not the archive
    ws = shared_project(tmp_path / "p", {"url": "s3://team/archive",
                                         "endpoint_url": "http://127.0.0.1:9"},
                        tracking_uri=None, secrets=["API_TOKEN"])
    values = {"API_TOKEN": "token-value-1234567", "AWS_SECRET_ACCESS_KEY": "aws-secret-0987654",
              "MLFLOW_TRACKING_PASSWORD": "password-value-7654321"}
    expected = {
        "github": ("Set these GitHub repository secrets (Settings > Secrets and variables > "
                   "Actions):", "  MLFLOW_TRACKING_URI: ", "empty when unset"),
        "gitlab": ("Set these GitLab CI/CD variables (Settings > CI/CD > Variables), masked:",
                   "  MLFLOW_TRACKING_URI: ", "set them if needed"),
        "jenkins": ("Set these Jenkins credentials (Manage Jenkins > Credentials), each with "
                    "its name as ID:", "  MLFLOW_TRACKING_URI (Secret text): ",
                    "uncomment their lines"),
    }
    from workbench.ci.definitions import FILES

    for system, (heading, tracking, optional) in expected.items():
        done = ws.cli("ci", "init", system, "--tracking-uri-secret", "--publish-site", "pages",
                      env=values)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        written = [line.removeprefix("wrote ") for line in lines if line.startswith("wrote ")]
        assert written == [f for f in FILES[system] if (ws.root / f).exists()] and written
        assert heading in lines
        listed = lines[lines.index(heading) + 1:]
        assert any(line.startswith(tracking) for line in listed)
        assert any(line.startswith("  API_TOKEN") for line in listed)
        assert any(optional in line for line in listed)
        assert any(line.startswith("  MLFLOW_TRACKING_PASSWORD") for line in listed)
        assert any(line.startswith("  AWS_SECRET_ACCESS_KEY") for line in listed)
        assert not any("AWS_ENDPOINT_URL_S3" in line for line in listed)  # the config has it
        text = "".join((ws.root / f).read_text() for f in written)
        for value in values.values():
            assert value not in done.stdout + done.stderr + text
        comment = "//" if system == "jenkins" else "#"
        assert f"{comment} {heading}" in text  # the same list heads the generated file
        assert f"{comment}   API_TOKEN" in text
    # options the project cannot use
    bad = ws.cli("ci", "init", "github", "--force", "--publish-site", "gh-pages")
    assert bad.returncode == 2 and "expected one of pages, none" in bad.stderr
    plain = write_minimal_project(tmp_path / "plain")
    refused = plain.cli("ci", "init", "gitlab", "--publish-site", "pages")
    assert refused.returncode == 2 and "built from the shared archive" in refused.stderr
    assert not (plain.root / GITLAB).exists()
    default = plain.cli("ci", "init", "gitlab")
    assert default.returncode == 0 and default.stdout == f"wrote {GITLAB}\n"
    # the commands the site job runs exist
    for command in ("archive pull", "reports build"):
        assert plain.cli(*command.split(), "--help").returncode == 0, command
