"""GitHub Actions workflows for a project: the release (build, test, the first environment on
every push, then each gated environment behind a GitHub environment with required reviewers)
and, when the pipeline has stages before its first side effect, training on demand.

Without shared state the jobs hand ``reports/`` and the embedded MLflow store to each other as
artifacts; with it (:mod:`workbench.ci.shared`) they pass nothing, get the archive's and
MLflow's credentials from repository secrets, and the report site can go to GitHub Pages."""

from __future__ import annotations

from typing import Any

from workbench.ci.shape import DEFAULT_BRANCH, PYTHON_VERSION, Promotion, Shape
from workbench.ci.shared import instructions
from workbench.ci.steps import COPY_CONFIG, SITE_COMMANDS, security_script, site_copy
from workbench.ci.yamltext import dump

RELEASE = ".github/workflows/workbench-release.yml"
TRAIN = ".github/workflows/workbench-train.yml"
ARTIFACT_PATHS = "reports/\n.workbench/mlflow/\n"
FIXED_JOBS = {"build", "test", "train", "site"}
SITE_JOB = "site"
PAGES_FOLDER = "_site"  # what the site job uploads to GitHub Pages
# GitHub's expression for the job's own token (not a secret in this file)
JOB_TOKEN = "${{ github.token }}"  # nosec B105


def render(shape: Shape) -> dict[str, str]:
    """Workflow files (path in the repository -> text)."""
    files = {RELEASE: release(shape)}
    if shape.train_until is not None:
        files[TRAIN] = train(shape)
    return files


def job_id(environment: str) -> str:
    """The job of an environment: its name, unless a fixed job has it."""
    return f"deploy_{environment}" if environment in FIXED_JOBS else environment


def _setup(shape: Shape) -> list[dict[str, Any]]:
    python: dict[str, Any] = {"python-version": "${{ env.PYTHON_VERSION }}"}
    if shape.dependency_file:  # setup-python's pip cache is keyed on it (and needs one)
        python["cache"] = "pip"
        python["cache-dependency-path"] = shape.dependency_file
    return [{"uses": "actions/checkout@v4"},
            {"uses": "actions/setup-python@v5", "with": python},
            {"name": "Install", "run": shape.install}]


def _upload(job: str) -> list[dict[str, Any]]:
    return [{"name": "Upload reports", "if": "always()", "uses": "actions/upload-artifact@v4",
             "with": {"name": f"workbench-{job}", "include-hidden-files": True,
                      "path": ARTIFACT_PATHS}}]


def _download(job: str) -> list[dict[str, Any]]:
    return [{"uses": "actions/download-artifact@v4",
             "with": {"name": f"workbench-{job}", "path": "."}}]


# --- shared state: secrets instead of artifacts ---------------------------------------------


def _secret(name: str) -> str:
    return f"${{{{ secrets.{name} }}}}"


def _secrets_env(shape: Shape) -> dict[str, str]:
    """The job environment a workbench job gets from the repository secrets (a key file's
    variable is set by :func:`_credential_files` instead)."""
    if shape.shared is None:
        return {}
    return {s.name: _secret(s.name) for s in shape.shared.secrets if not s.file}


def _credential_files(shape: Shape) -> list[dict[str, Any]]:
    """A step writing each key-file secret to a file only the runner's user reads, outside
    the checkout; the variable then holds the file's path (for the later steps)."""
    files = [s.name for s in shape.shared.secrets if s.file] if shape.shared else []
    if not files:
        return []
    lines = ["umask 077"]
    for name in files:
        lines += [f'if [ -n "${name}" ]; then',
                  f'  printf \'%s\\n\' "${name}" > "$RUNNER_TEMP/{name}"',
                  f'  echo "{name}=$RUNNER_TEMP/{name}" >> "$GITHUB_ENV"',
                  "fi"]
    return [{"name": "Credential files", "env": {name: _secret(name) for name in files},
             "run": "\n".join(lines) + "\n"}]


def _workbench_steps(shape: Shape) -> list[dict[str, Any]]:
    """The setup of a job that runs workbench commands."""
    return [*_setup(shape), *_credential_files(shape)]


def _passing(shape: Shape, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``steps`` (an artifact upload or download) without shared state; none with it."""
    return [] if shape.shared else steps


def _tolerating_gate(command: str, shape: Shape, where: str) -> str:
    """``command`` as a step script that succeeds when the run stops at the first gate."""
    gate = shape.first_gate
    if gate is None:
        return command
    return (f"set +e\n{command}\ncode=$?\n"
            f"# 3 means the run reached the {gate.environment} gate ({gate.gate}): {where} is "
            f"done and waits for approval.\n"
            f'if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then exit "$code"; fi\n')


def _workflow(shape: Shape, name: str, on: dict[str, Any], jobs: dict[str, Any],
              extra: dict[str, Any]) -> dict[str, Any]:
    # with shared state each workbench job gets MLflow's settings with its other secrets
    tracking = {} if shape.shared else {"MLFLOW_TRACKING_URI": _secret("MLFLOW_TRACKING_URI")}
    return {
        "name": name,
        "on": on,
        "permissions": {"contents": "read", "id-token": "write"},
        **extra,
        "env": {"PYTHON_VERSION": PYTHON_VERSION, **tracking},
        "jobs": jobs,
    }


def _header(shape: Shape, what: str) -> str:
    chain = " -> ".join((shape.base, *(p.environment for p in shape.promotions)))
    lines = [f"Generated by `workbench ci init github` from this project's pipeline "
             f"{shape.pipeline!r} (stages: {', '.join(shape.stages)}; environments: {chain}). "
             f"After changing configs/, regenerate it: `workbench ci init github --force`.",
             what]
    if shape.promotions:
        lines.append("id-token: write is the job's OIDC token, by which GitHub vouches for who "
                     "requests a release; the gated jobs also read the run's environment "
                     "approvals (actions: read), which GitHub vouches for.")
    lines.append("Exit codes: 0 success, 1 failed, 2 usage or config error, "
                 "3 awaiting approval.")
    if shape.shared:
        lines += instructions(shape.shared, "github")
    return "\n".join(lines)


# --- the release workflow -------------------------------------------------------------------


def release(shape: Shape) -> str:
    jobs: dict[str, Any] = {}
    comments: dict[str, str] = {}
    first = "test"
    build = build_job(shape)
    if build is not None:
        jobs["build"] = build
        first = "build"
        comments["build"] = "Build: " + ", ".join(
            (["lint (ruff)"] if shape.lint else [])
            + ([f"images {', '.join(n for n, _ in shape.images)} tagged with the commit"]
               if shape.images else []))
    jobs["test"] = test_job(shape, needs=first if build is not None else None)
    base = job_id(shape.base)
    jobs[base] = run_job(shape, base, needs="test", condition="github.event_name == 'push'",
                         title=f"Run the pipeline in {shape.base}",
                         command=f"workbench run --env {shape.base} "
                                 f"--junit reports/junit-{shape.base}.xml "
                                 f"--summary reports/summary.md")
    comments[base] = _base_comment(shape)
    previous = base
    for index, promotion in enumerate(shape.promotions):
        job = job_id(promotion.environment)
        jobs[job] = gated_job(shape, promotion, source=base, previous=previous,
                              condition=_branch_condition(shape, promotion),
                              waits=index == 0)
        comments[job] = _gated_comment(shape, promotion)
        previous = job
    if shape.site:
        jobs[SITE_JOB] = site_job(shape, base)
        comments[SITE_JOB] = (f"site: the report site, built from the whole archive, on GitHub "
                              f"Pages after {shape.base} on {DEFAULT_BRANCH} (whatever its "
                              f"outcome)" + (f": what the reviewers of the "
                                             f"{shape.promotions[0].environment} gate browse" if
                                             shape.promotions else "") + ".")
    branches = list(dict.fromkeys(
        [shape.base, *(p.environment for p in shape.promotions[:-1]), DEFAULT_BRANCH]))
    what = (f"The release: {'build, ' if build is not None else ''}test, then {shape.base} on "
            f"every push" + (f"; {', '.join(p.environment for p in shape.promotions)} behind "
                             f"their GitHub environments with required reviewers (Settings > "
                             f"Environments), each approval recorded with workbench"
                             if shape.promotions else "") + ".")
    if shape.site:
        what += (f" The report site goes to GitHub Pages after {shape.base} on "
                 f"{DEFAULT_BRANCH} (Settings > Pages > Source: GitHub Actions); later "
                 f"promotions show at its next publish (the next push, or re-run the site "
                 f"job).")
    workflow = _workflow(shape, "workbench release",
                         {"push": {"branches": branches}, "pull_request": None}, jobs,
                         {"concurrency": {"group": "workbench-release-${{ github.ref }}",
                                          "cancel-in-progress": False}})
    return dump(workflow, _header(shape, what), comments)


def _base_comment(shape: Shape) -> str:
    gate = shape.first_gate
    if gate is None:
        return f"{shape.base}: the whole pipeline ({', '.join(shape.stages)})."
    return f"{shape.base}: every stage up to the {gate.environment} gate ({gate.gate})."


def _gated_comment(shape: Shape, promotion: Promotion) -> str:
    later = shape.promotion_after(promotion.environment)
    what = (f"until the {later.environment} gate" if later
            else "the rest of the pipeline")
    quorum = (f"; configs/gates.yaml asks {promotion.quorum} distinct approvers for "
              f"{promotion.environment}" if promotion.quorum > 1 else "")
    return (f"{promotion.environment}: behind GitHub environment {promotion.environment} and "
            f"gate {promotion.gate}, then {what}{quorum}.")


def _branch_condition(shape: Shape, promotion: Promotion) -> str:
    refs = ([] if promotion == shape.promotions[-1] else [promotion.environment]) \
        + [DEFAULT_BRANCH]
    return " || ".join(f"github.ref == 'refs/heads/{ref}'" for ref in dict.fromkeys(refs))


def build_job(shape: Shape) -> dict[str, Any] | None:
    steps: list[dict[str, Any]] = []
    if shape.lint:
        steps.append({"name": "Lint", "run": "ruff check ."})
    job: dict[str, Any] = {"runs-on": "ubuntu-latest"}
    if shape.images:
        job["permissions"] = {"contents": "read", "packages": "write"}
        job["env"] = {"GH_TOKEN": JOB_TOKEN}
        lines = ['image="ghcr.io/$(echo "$GITHUB_REPOSITORY" | tr "[:upper:]" "[:lower:]")"']
        for name, dockerfile in shape.images:
            lines.append(f'docker build -f {dockerfile} -t "$image/{name}:$GITHUB_SHA" .')
        lines.append('if [ "$GITHUB_EVENT_NAME" = push ]; then')
        lines.append('  echo "$GH_TOKEN" | docker login ghcr.io -u "$GITHUB_ACTOR" '
                     '--password-stdin')
        lines += [f'  docker push "$image/{name}:$GITHUB_SHA"' for name, _ in shape.images]
        lines.append("fi")
        steps.append({"name": "Build images", "run": "\n".join(lines) + "\n"})
    if not steps:
        return None
    # an images-only build needs no Python
    job["steps"] = [*(_setup(shape) if shape.lint else [{"uses": "actions/checkout@v4"}]),
                    *steps]
    return job


def test_job(shape: Shape, needs: str | None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    if shape.unit_tests:
        steps.append({"name": "Unit tests", "run": 'python -m pytest -m "not slow" tests'})
    steps.append({"name": "Validate configuration", "run": "workbench validate"})
    steps.append({"name": "Security scan", "run": security_script(shape)})
    job: dict[str, Any] = {"runs-on": "ubuntu-latest"}
    if needs:
        job["needs"] = needs
    job["steps"] = [*_setup(shape), *steps]
    return job


def run_job(shape: Shape, job: str, needs: str, condition: str | None, title: str,
            command: str, download: str | None = None, env: dict[str, str] | None = None
            ) -> dict[str, Any]:
    spec: dict[str, Any] = {"needs": needs}
    if condition:
        spec["if"] = condition
    spec["runs-on"] = "ubuntu-latest"
    spec["outputs"] = {"run_id": "${{ steps.run.outputs.run_id }}",
                       "status": "${{ steps.run.outputs.status }}"}
    env = {**(env or {}), **_secrets_env(shape)}
    if env:
        spec["env"] = env
    steps = _workbench_steps(shape)
    if download:
        steps += _passing(shape, _download(download))
    steps.append({"name": title, "id": "run",
                  "run": _tolerating_gate(command, shape, shape.base)})
    steps += _passing(shape, _upload(job))
    spec["steps"] = steps
    return spec


def gated_job(shape: Shape, promotion: Promotion, source: str, previous: str, condition: str,
              waits: bool) -> dict[str, Any]:
    """The job of a gated environment: GitHub's required reviewers approve the job, the job
    records their approvals with `workbench approve` (GitHub vouches for them through the run's
    approvals API and the OIDC token), then promotes (or, for the last, resumes) the run."""
    env = promotion.environment
    job = job_id(env)
    if waits:  # the first gated job: only when the run stopped at its gate
        condition = (f"needs.{source}.outputs.status == 'awaiting_approval' && "
                     f"({condition})")
    last = promotion == shape.promotions[-1]
    if last:
        step = {"name": f"Deploy to {env}",
                "run": f'workbench resume "$RUN_ID" --junit reports/junit-{env}.xml '
                       f"--summary reports/summary.md"}
    else:
        step = {"name": f"Promote to {env}",
                "run": f'workbench promote "$RUN_ID" --to {env} '
                       f"--junit reports/junit-{env}.xml --summary reports/summary.md"}
    record = (
        'gh api "$ENVIRONMENT_APPROVALS" \\\n'
        f"  --jq '.[] | select(any(.environments[]; .name == \"{env}\")) | "
        f"[.user.login, .comment] | @tsv' |\n"
        "while IFS=$'\\t' read -r login comment; do\n"
        f'  GITHUB_ACTOR="$login" workbench approve "$RUN_ID" --env {env} \\\n'
        f'    --comment "${{comment:-approved in GitHub environment {env}}}"\n'
        "done\n")
    return {
        "needs": source if previous == source else [source, previous],
        "if": condition,
        "runs-on": "ubuntu-latest",
        "environment": env,
        "permissions": {"actions": "read", "contents": "read", "id-token": "write"},
        "env": {"RUN_ID": f"${{{{ needs.{source}.outputs.run_id }}}}",
                "GH_TOKEN": JOB_TOKEN,
                "ENVIRONMENT_APPROVALS": "repos/${{ github.repository }}/actions/runs/"
                                         "${{ github.run_id }}/approvals",
                **_secrets_env(shape)},
        "steps": [*_workbench_steps(shape), *_passing(shape, _download(previous)),
                  {"name": "Record the environment's approvals", "run": record},
                  step, *_passing(shape, _upload(job))],
    }


def site_job(shape: Shape, after: str) -> dict[str, Any]:
    """The report site, built from the whole shared archive, deployed to GitHub Pages after
    the job ``after`` on the default branch (whatever that job's outcome, unless skipped)."""
    return {
        "needs": after,
        "if": f"github.event_name == 'push' && github.ref == 'refs/heads/{DEFAULT_BRANCH}' "
              f"&& !cancelled() && needs.{after}.result != 'skipped'",
        "runs-on": "ubuntu-latest",
        "permissions": {"contents": "read", "pages": "write", "id-token": "write"},
        "environment": {"name": "github-pages", "url": "${{ steps.deploy.outputs.page_url }}"},
        "env": _secrets_env(shape),
        "steps": [*_workbench_steps(shape),
                  {"name": "Build the site from the archive",
                   "run": "".join(f"workbench {c}\n" for c in SITE_COMMANDS)
                          + site_copy(PAGES_FOLDER) + "\n"},
                  {"uses": "actions/upload-pages-artifact@v3",
                   "with": {"path": f"{PAGES_FOLDER}/"}},
                  {"id": "deploy", "uses": "actions/deploy-pages@v4"}],
    }


# --- training on demand ---------------------------------------------------------------------

NOTIFY = """if [ -z "$NOTIFY_URL" ]; then echo "no WORKBENCH_NOTIFY_URL: not notifying"; exit 0; fi
python - <<'PY'
import json, os, urllib.request
summary = "reports/summary.md"
text = open(summary, encoding="utf-8").read() if os.path.exists(summary) else "no summary"
body = json.dumps({"text": text}).encode()
request = urllib.request.Request(os.environ["NOTIFY_URL"], data=body,
                                 headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(request, timeout=10)
except (OSError, ValueError) as exc:  # a failed notification never fails the training
    print(f"notification failed: {exc}")
PY
"""


def train(shape: Shape) -> str:
    if shape.train_until is None:
        raise ValueError("the pipeline has no train-only run: its first stage has a side effect")
    stages = ", ".join(shape.train_stages)
    targets = [shape.base, *(p.environment for p in shape.promotions)]
    inputs: dict[str, Any] = {"config": {
        "description": "Model config file (replaces configs/model.yaml for this run)",
        "required": True, "default": "configs/model.yaml"}}
    if shape.promotions:
        inputs["environment"] = {
            "description": f"Target environment ({shape.base}: train only; later ones continue "
                           f"the release, each behind its approval)",
            "required": True, "default": shape.base, "type": "choice", "options": targets}
    jobs: dict[str, Any] = {"train": {
        "runs-on": "ubuntu-latest",
        "outputs": {"run_id": "${{ steps.train.outputs.run_id }}",
                    "status": "${{ steps.train.outputs.status }}"},
        "env": {"MODEL_CONFIG": "${{ inputs.config }}",
                "NOTIFY_URL": "${{ secrets.WORKBENCH_NOTIFY_URL }}", **_secrets_env(shape)},
        "steps": [*_workbench_steps(shape),
                  {"name": "Validate the config", "run": f"{COPY_CONFIG}\nworkbench validate\n"},
                  {"name": f"Train ({stages})", "id": "train",
                   "run": f"workbench run --env {shape.base} --until {shape.train_until} "
                          f"--junit reports/junit-train.xml --summary reports/summary.md"},
                  {"name": "Notify", "if": "always()", "run": NOTIFY},
                  *_passing(shape, _upload("train"))]}}
    comments = {"train": f"train: the stages before the first side effect ({stages}; "
                         f"`--until {shape.train_until}`), then a notification."}
    if shape.promotions and shape.first_side_effect:
        base = job_id(shape.base)
        jobs[base] = run_job(
            shape, base, needs="train",
            condition=f"inputs.environment != '{shape.base}'",
            title=f"Continue the trained run in {shape.base}",
            command=f'workbench run --env {shape.base} --from {shape.first_side_effect} '
                    f'--base "$TRAINED_RUN" --junit reports/junit-{shape.base}.xml '
                    f"--summary reports/summary.md",
            download="train", env={"TRAINED_RUN": "${{ needs.train.outputs.run_id }}"})
        comments[base] = (f"{shape.base}: a new run from {shape.first_side_effect} on, reusing "
                          f"the trained stages, up to the {shape.promotions[0].environment} "
                          f"gate.")
        previous = base
        for index, promotion in enumerate(shape.promotions):
            job = job_id(promotion.environment)
            wanted = [p.environment for p in shape.promotions[index:]]
            condition = " || ".join(f"inputs.environment == '{t}'" for t in wanted)
            jobs[job] = gated_job(shape, promotion, source=base, previous=previous,
                                  condition=condition, waits=index == 0)
            comments[job] = _gated_comment(shape, promotion)
            previous = job
    what = (f"Train a model on demand (Actions > Run workflow): validate the config, run "
            f"{stages}, notify" + (", then continue the release up to the chosen environment."
                                   if shape.promotions else "."))
    workflow = _workflow(shape, "workbench train", {"workflow_dispatch": {"inputs": inputs}},
                         jobs, {})
    return dump(workflow, _header(shape, what), comments)
