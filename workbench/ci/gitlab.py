"""A GitLab CI pipeline for a project: build and test, the first environment on every push,
each gated environment as a manual job on a protected environment, and training on demand
(``WORKBENCH_TRAIN=true``) when the pipeline has stages before its first side effect.

Without shared state the jobs hand ``reports/`` and the embedded MLflow store to each other as
artifacts; with it (:mod:`workbench.ci.shared`) they pass only the run id (the dotenv report),
read the credentials from the project's CI/CD variables (GitLab gives every job all of them),
and the report site can go to GitLab Pages."""

from __future__ import annotations

from typing import Any

from workbench.ci.shape import PYTHON_VERSION, Promotion, Shape
from workbench.ci.shared import instructions
from workbench.ci.steps import COPY_CONFIG, SITE_COMMANDS, security_script, site_copy
from workbench.ci.yamltext import dump

PATH = ".gitlab-ci.yml"
FIXED = {"build", "test", "lint", "images", "security", "train", "default", "variables",
         "stages", "include", "workflow", "pages", "site"}
SITE_STAGE = "site"
PAGES = "pages"  # the job GitLab deploys to Pages (from public/)
NOT_TRAINING = '$WORKBENCH_TRAIN != "true"'
TRAINING = '$WORKBENCH_TRAIN == "true"'
NOTIFY = ('if [ -n "$WORKBENCH_NOTIFY_URL" ] && [ -f reports/summary.md ]; then python -c '
          '"import json,sys; print(json.dumps({\\"text\\": open(\\"reports/summary.md\\")'
          '.read()}))" | curl -fsS -m 10 -H "Content-Type: application/json" -d @- '
          '"$WORKBENCH_NOTIFY_URL" || echo "notification failed"; fi')


def render(shape: Shape) -> dict[str, str]:
    return {PATH: pipeline(shape)}


def job_id(environment: str) -> str:
    """An environment's job and stage: its name, unless a fixed job or keyword has it."""
    return f"deploy-{environment}" if environment in FIXED else environment


def _rules(condition: str, manual: bool = False) -> list[dict[str, Any]]:
    rule: dict[str, Any] = {"if": condition}
    if manual:
        rule.update({"when": "manual", "allow_failure": False})
    return [rule]


def _run(command: str, shape: Shape) -> str:
    return f"{command} || [ $? -eq 3 ]" if shape.promotions else command


def pipeline(shape: Shape) -> str:
    jobs: dict[str, Any] = {}
    comments: dict[str, str] = {}
    stages: list[str] = []
    if shape.lint or shape.images:
        stages.append("build")
    stages += ["test", job_id(shape.base), *(job_id(p.environment) for p in shape.promotions)]
    training = shape.train_until is not None
    variables: dict[str, str] = {"PIP_CACHE_DIR": "$CI_PROJECT_DIR/.cache/pip",
                                 "WORKBENCH_DOTENV": "workbench.env"}
    if training:
        variables["MODEL_CONFIG"] = "configs/model.yaml"
        if shape.promotions:
            variables["TARGET_ENV"] = shape.base
    top: dict[str, Any] = {
        "stages": stages,
        "variables": variables,
        "default": {"image": f"python:{PYTHON_VERSION}",
                    "cache": {"key": "pip", "paths": [".cache/pip"]},
                    "before_script": [shape.install]},
        ".reports": {"artifacts": {"when": "always",
                                   **({} if shape.shared else
                                      {"paths": ["reports/", ".workbench/mlflow/"]}),
                                   "reports": {"junit": "reports/junit-*.xml",
                                               "dotenv": "workbench.env"}}},
    }
    if shape.lint:
        jobs["lint"] = {"stage": "build", "rules": _rules(NOT_TRAINING),
                        "script": ["ruff check ."]}
    if shape.images:
        script = ['image="${CI_REGISTRY_IMAGE:-workbench}"']
        script += [f'docker build -f {dockerfile} -t "$image/{name}:$CI_COMMIT_SHA" .'
                   for name, dockerfile in shape.images]
        pushes = "; ".join(f'docker push "$image/{name}:$CI_COMMIT_SHA"'
                           for name, _ in shape.images)
        script.append('if [ -n "$CI_REGISTRY" ] && [ "$CI_PIPELINE_SOURCE" = push ]; then '
                      'echo "$CI_REGISTRY_PASSWORD" | docker login -u "$CI_REGISTRY_USER" '
                      f'--password-stdin "$CI_REGISTRY"; {pushes}; fi')
        jobs["images"] = {"stage": "build", "image": "docker:27",
                          "services": ["docker:27-dind"],
                          "variables": {"DOCKER_TLS_CERTDIR": "/certs"}, "before_script": [],
                          "rules": _rules(NOT_TRAINING), "script": script}
        comments["images"] = ("The images the Kubernetes target and executor run, tagged with "
                              "the commit (pushed to the project's registry on push).")
    tests = (['python -m pytest -m "not slow" tests'] if shape.unit_tests else [])
    jobs["test"] = {"stage": "test", "rules": _rules(NOT_TRAINING),
                    "script": [*tests, "workbench validate"]}
    jobs["security"] = {"stage": "test", "rules": _rules(NOT_TRAINING),
                        "script": security_script(shape).splitlines()}
    base = job_id(shape.base)
    jobs[base] = {"stage": base, "extends": ".reports",
                  "rules": _rules(f'{NOT_TRAINING} && $CI_PIPELINE_SOURCE == "push"'),
                  "script": [_run(f"workbench run --env {shape.base} "
                                  f"--junit reports/junit-{shape.base}.xml "
                                  f"--summary reports/summary.md", shape)]}
    gate = shape.first_gate
    comments[base] = (f"{shape.base}: every stage up to the {gate.environment} gate ({gate.gate}); "
                      f"exit 3 (stopped there) counts as success." if gate else
                      f"{shape.base}: the whole pipeline.")
    previous = base
    for index, promotion in enumerate(shape.promotions):
        job = job_id(promotion.environment)
        last = index == len(shape.promotions) - 1
        branches = (["$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"] if last else
                    [f'$CI_COMMIT_BRANCH == "{promotion.environment}"',
                     "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"])
        condition = NOT_TRAINING + " && " + (branches[0] if last else
                                             "(" + " || ".join(branches) + ")")
        jobs[job] = gated_job(shape, promotion, job, previous, condition)
        comments[job] = _comment(shape, promotion)
        previous = job
    if shape.site:
        stages.append(SITE_STAGE)
        jobs[PAGES] = pages_job(shape, base)
        comments[PAGES] = (f"pages: the report site, built from the whole archive, on GitLab "
                           f"Pages after {shape.base} on the default branch (whatever its "
                           f"outcome)" + (f": what the runners of the "
                                          f"{shape.promotions[0].environment} job browse first"
                                          if shape.promotions else "") + ".")
    if training:
        _train_jobs(shape, jobs, comments)
    gated = ", ".join(p.environment for p in shape.promotions)
    released = [s for s in stages if s != SITE_STAGE]
    what = (f"The release pipeline: {', '.join(released[:len(released) - len(shape.promotions)])} "
            f"on every push" + (f"; {gated} are manual jobs on protected environments "
                                f"(Settings > CI/CD > Protected environments decide who may "
                                f"run them)" if gated else "") + ".")
    if training:
        what += ("\nTrain on demand from Build > Pipelines > Run pipeline with "
                 "WORKBENCH_TRAIN=true (and MODEL_CONFIG"
                 + (", TARGET_ENV" if shape.promotions else "") + ").")
    if shape.site:
        what += (f"\nThe report site goes to GitLab Pages after {shape.base} on the default "
                 f"branch; later promotions show at its next publish (the next push, or "
                 f"retry the pages job).")
    chain = " -> ".join((shape.base, *(p.environment for p in shape.promotions)))
    header = (f"Generated by `workbench ci init gitlab` from this project's pipeline "
              f"{shape.pipeline!r} (stages: {', '.join(shape.stages)}; environments: "
              f"{chain}). After changing configs/, regenerate it: `workbench ci init gitlab "
              f"--force`.\n{what}\nExit codes: 0 success, 1 failed, 2 usage or config error, "
              f"3 awaiting approval.")
    if shape.shared:
        header += "\n" + "\n".join(instructions(shape.shared, "gitlab"))
    return dump({**top, **jobs}, header, comments)


def pages_job(shape: Shape, after: str) -> dict[str, Any]:
    """GitLab Pages: the site built from the whole shared archive, published from public/
    (without reports/' hidden files), after the job ``after`` on the default branch."""
    return {"stage": SITE_STAGE, "needs": [after],
            "rules": [{"if": f'{NOT_TRAINING} && $CI_PIPELINE_SOURCE == "push" && '
                             f"$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "always"}],
            "script": [*(f"workbench {c}" for c in SITE_COMMANDS),
                       site_copy("public")],
            "artifacts": {"paths": ["public"]}}


def _comment(shape: Shape, promotion: Promotion) -> str:
    later = shape.promotion_after(promotion.environment)
    quorum = (f" configs/gates.yaml asks {promotion.quorum} distinct approvers: until "
              f"{promotion.quorum} people have run this job, it exits 3."
              if promotion.quorum > 1 else "")
    return (f"{promotion.environment}: whoever runs this manual job approves "
            f"({promotion.gate}; GitLab vouches for GITLAB_USER_LOGIN with the ID token), then "
            + (f"the run goes on until the {later.environment} gate." if later
               else "the run goes on to its end.") + quorum)


def gated_job(shape: Shape, promotion: Promotion, name: str, previous: str, condition: str
              ) -> dict[str, Any]:
    """A manual job on the environment's protected environment: its runner approves."""
    env = promotion.environment
    last = promotion == shape.promotions[-1]
    job = job_id(env)
    comment = f'--comment "approved by running the {name} job of pipeline $CI_PIPELINE_ID"'
    script = [f'workbench approve "$WORKBENCH_RUN_ID" --env {env} {comment}']
    if last:
        script.append(f'workbench resume "$WORKBENCH_RUN_ID" --junit reports/junit-{env}.xml '
                      f"--summary reports/summary.md")
    else:
        script.append(f'workbench promote "$WORKBENCH_RUN_ID" --to {env} '
                      f"--junit reports/junit-{env}.xml --summary reports/summary.md")
    return {"stage": job, "extends": ".reports", "needs": [previous],
            "environment": {"name": env}, "resource_group": env,
            "rules": _rules(condition, manual=True),
            "id_tokens": {"WORKBENCH_ID_TOKEN": {"aud": "workbench"}},
            "script": script}


def _train_jobs(shape: Shape, jobs: dict[str, Any], comments: dict[str, str]) -> None:
    base = job_id(shape.base)
    stages = ", ".join(shape.train_stages)
    jobs["train"] = {"stage": base, "extends": ".reports", "rules": _rules(TRAINING),
                     "script": [COPY_CONFIG, "workbench validate",
                                f"workbench run --env {shape.base} --until {shape.train_until} "
                                f"--junit reports/junit-train.xml --summary reports/summary.md"],
                     "after_script": [NOTIFY]}
    comments["train"] = (f"train: the stages before the first side effect ({stages}; "
                         f"`--until {shape.train_until}`), then a notification "
                         f"(WORKBENCH_NOTIFY_URL).")
    if not (shape.promotions and shape.first_side_effect):
        return
    continued = f"train-{shape.base}"
    jobs[continued] = {
        "stage": base, "extends": ".reports", "needs": ["train"],
        "rules": _rules(f'{TRAINING} && $TARGET_ENV != "{shape.base}"'),
        "script": [_run(f"workbench run --env {shape.base} --from {shape.first_side_effect} "
                        f'--base "$WORKBENCH_RUN_ID" --junit reports/junit-{shape.base}.xml '
                        f"--summary reports/summary.md", shape)]}
    comments[continued] = (f"{continued}: a new run from {shape.first_side_effect} on, reusing "
                           f"the trained stages, up to the "
                           f"{shape.promotions[0].environment} gate.")
    previous = continued
    for index, promotion in enumerate(shape.promotions):
        wanted = "|".join(p.environment for p in shape.promotions[index:])
        job = f"train-{promotion.environment}"
        jobs[job] = gated_job(shape, promotion, job, previous,
                              f"{TRAINING} && $TARGET_ENV =~ /^({wanted})$/")
        comments[job] = _comment(shape, promotion)
        previous = job
