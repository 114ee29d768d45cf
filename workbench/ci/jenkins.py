"""A declarative Jenkinsfile for a project: install, build, test, the first environment, then
each gated environment behind an ``input`` step whose submitter is recorded as the approver.

With shared state (:mod:`workbench.ci.shared`) the credentials are bound from Jenkins
credentials of the same names, the build archives no ``reports/`` (the shared archive holds
it), and the report site can be published with the HTML Publisher plugin."""

from __future__ import annotations

from workbench.ci.shape import DEFAULT_BRANCH, Promotion, Shape
from workbench.ci.shared import instructions
from workbench.ci.steps import COPY_CONFIG, SITE_COMMANDS, SITE_TITLE, security_script
from workbench.ci.yamltext import wrap

PATH = "Jenkinsfile"
VENV = ". .venv/bin/activate && "


def render(shape: Shape) -> dict[str, str]:
    return {PATH: jenkinsfile(shape)}


def quote(text: str) -> str:
    """A Groovy single-quoted string (no interpolation: the shell expands ``$VARS``)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _stage(name: str, body: list[str]) -> list[str]:
    return [f"stage({quote(name)}) {{", *(f"    {line}" for line in body), "}"]


def _steps(*commands: str) -> list[str]:
    return ["steps {", *(f"    sh {quote(c)}" for c in commands), "}"]


def jenkinsfile(shape: Shape) -> str:
    training = shape.train_until is not None
    not_training = ["when { expression { !params.TRAIN_ONLY } }"] if training else []
    stages: list[str] = []
    stages += _stage("Install", _steps("python3 -m venv .venv", VENV + shape.install))
    if shape.lint:
        stages += _stage("Lint", [*not_training, *_steps(VENV + "ruff check .")])
    if shape.images:
        image = '"${IMAGE_REGISTRY:-workbench}/%s:$GIT_COMMIT"'
        commands = [f"docker build -f {dockerfile} -t {image % name} ."
                    for name, dockerfile in shape.images]
        pushes = "; ".join(f"docker push {image % name}" for name, _ in shape.images)
        commands.append(f'if [ -n "$IMAGE_REGISTRY" ]; then {pushes}; fi')
        stages += _stage("Images", [*not_training, *_steps(*commands)])
    if shape.unit_tests:
        stages += _stage("Unit tests", [*not_training, *_steps(
            VENV + 'python -m pytest -m "not slow" tests')])
    stages += _stage("Validate", _steps(*([COPY_CONFIG] if training else []),
                                        '"$WORKBENCH" validate'))
    stages += _stage("Security scan", [*not_training, *_steps(
        VENV + " && ".join(security_script(shape).splitlines()))])
    if training:
        stages += _stage("Train", [
            "when { expression { params.TRAIN_ONLY } }",
            *_steps(f'"$WORKBENCH" run --env {shape.base} --until {shape.train_until} '
                    f"--junit reports/junit-train.xml --summary reports/summary.md")])
    run = (f'"$WORKBENCH" run --env {shape.base} --junit reports/junit-{shape.base}.xml '
           f"--summary reports/summary.md")
    ok = "code != 0 && code != 3" if shape.promotions else "code != 0"
    stages += _stage(shape.base, [*not_training, "steps {", "    script {",
        f"        def code = sh(returnStatus: true, script: {quote(run)})",
        f"        if ({ok}) {{",
        '            error("workbench run failed with exit code ${code}")',
        "        }",
        "        env.RUN_ID = readFile('workbench.env').readLines().find { "
        "it.startsWith('WORKBENCH_RUN_ID=') }.split('=', 2)[1]",
        "    }", "}"])
    if shape.site:
        stages += _site_stage(training)
    for promotion in shape.promotions:
        stages += _gated_stage(shape, promotion, training)
    header = _header(shape, training)
    parameters = []
    if training:
        parameters.append(
            f"booleanParam(name: 'TRAIN_ONLY', defaultValue: false, description: "
            f"{quote('Only train: ' + ', '.join(shape.train_stages))})")
        parameters.append("string(name: 'MODEL_CONFIG', defaultValue: 'configs/model.yaml', "
                          "description: 'Model config file for this run')")
    lines = [*header, "pipeline {", "    agent any", "    options {",
             "        disableConcurrentBuilds()", "        timestamps()", "    }"]
    if parameters:
        lines += ["    parameters {", *(f"        {p}" for p in parameters), "    }"]
    # with shared state the archive keeps reports/: the build keeps its summary and run id
    kept = "reports/summary.md, workbench.env" if shape.shared else "reports/**, workbench.env"
    lines += ["    environment {", '        WORKBENCH = "${WORKSPACE}/.venv/bin/workbench"',
              "        WORKBENCH_DOTENV = 'workbench.env'", *_credentials(shape), "    }",
              "    stages {", *(f"        {line}" for line in stages), "    }", "    post {",
              "        always {",
              "            junit allowEmptyResults: true, testResults: 'reports/junit-*.xml'",
              "            archiveArtifacts allowEmptyArchive: true, "
              f"artifacts: '{kept}'",
              "        }", "    }", "}"]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _header(shape: Shape, training: bool) -> list[str]:
    chain = " -> ".join((shape.base, *(p.environment for p in shape.promotions)))
    gated = ", ".join(p.environment for p in shape.promotions)
    text = [f"Generated by `workbench ci init jenkins` from this project's pipeline "
            f"{shape.pipeline!r} (stages: {', '.join(shape.stages)}; environments: {chain}). "
            f"After changing configs/, regenerate it: `workbench ci init jenkins --force`.",
            f"A declarative pipeline: install, build, test, {shape.base}"
            + (f", then {gated} behind `input` (the submitter is recorded as the approver; "
               f"Jenkins vouches for them through the build's API)." if gated else ".")]
    if training:
        text.append(f"TRAIN_ONLY runs {', '.join(shape.train_stages)} "
                    f"(`--until {shape.train_until}`).")
    if shape.site:
        text.append(f"The report site ({SITE_TITLE}, HTML Publisher plugin) is built from the "
                    f"whole archive after {shape.base} on {DEFAULT_BRANCH}. Jenkins' default "
                    f"Content-Security-Policy blocks the site's scripts (the tables still "
                    f"show; filtering and sorting need a relaxed policy or a resource root "
                    f"URL).")
    text.append("Exit codes: 0 success, 1 failed, 2 usage or config error, "
                "3 awaiting approval.")
    if shape.shared:
        text += instructions(shape.shared, "jenkins")
    return [f"// {line}" for line in wrap("\n".join(text), 95)]


def _credentials(shape: Shape) -> list[str]:
    """``environment {}`` lines binding each secret from the Jenkins credential of its name (a
    Secret file's variable holds the file's path); optional ones commented out (binding a
    credential that does not exist fails the build)."""
    if shape.shared is None:
        return []
    lines = [f"        {s.name} = credentials({quote(s.name)})" for s in shape.shared.required]
    lines += [f"        // {s.name} = credentials({quote(s.name)})  // optional: {s.purpose}"
              for s in shape.shared.optional]
    return lines


def _site_stage(training: bool) -> list[str]:
    """The report site from the whole shared archive, published on the build's page."""
    branch = f"branch {quote(DEFAULT_BRANCH)}"
    when = (["when {", "    allOf {", "        expression { !params.TRAIN_ONLY }",
             f"        {branch}", "    }", "}"] if training else [f"when {{ {branch} }}"])
    publish = (f"publishHTML(target: [reportName: {quote(SITE_TITLE)}, reportDir: 'reports', "
               "reportFiles: 'index.html', keepAll: false, alwaysLinkToLastBuild: true, "
               "allowMissing: false])")
    steps = _steps(*(f'"$WORKBENCH" {command}' for command in SITE_COMMANDS))
    return _stage("Site", [*when, *steps[:-1], f"    {publish}", steps[-1]])


def _gated_stage(shape: Shape, promotion: Promotion, training: bool) -> list[str]:
    env = promotion.environment
    last = promotion == shape.promotions[-1]
    branches = ([] if last else [env]) + [DEFAULT_BRANCH]
    branch = (f"branch {quote(branches[0])}" if len(branches) == 1 else
              "anyOf { " + "; ".join(f"branch {quote(b)}" for b in dict.fromkeys(branches))
              + " }")
    when = ["when {", "    beforeInput true"]
    if training:
        when += ["    allOf {", "        expression { !params.TRAIN_ONLY }",
                 f"        {branch}", "    }"]
    else:
        when.append(f"    {branch}")
    when.append("}")
    message = (f"Release to {env}?" if last else f"Promote this release to {env}?")
    if promotion.quorum > 1:
        message += (f" ({env} needs {promotion.quorum} approvers: another build approves "
                    f"again)")
    comment = ("string(name: 'COMMENT', defaultValue: '', description: "
               f"{quote(f'Why (required for {env})')})" if promotion.requires_comment else
               "string(name: 'COMMENT', defaultValue: 'approved in Jenkins', "
               "description: 'Why')")
    if last:
        go_on = (f'"$WORKBENCH" resume "$RUN_ID" --junit reports/junit-{env}.xml '
                 f"--summary reports/summary.md")
    else:
        go_on = (f'"$WORKBENCH" promote "$RUN_ID" --to {env} --junit reports/junit-{env}.xml '
                 f"--summary reports/summary.md")
    approve = f'"$WORKBENCH" approve "$RUN_ID" --env {env} --comment "$COMMENT"'
    return _stage(env, [
        *when,
        "input {", f"    message {quote(message)}", "    ok 'Approve'",
        "    submitterParameter 'APPROVER'", "    parameters {", f"        {comment}", "    }",
        "}",
        "steps {",
        f"    // gate {promotion.gate}. Jenkins vouches for the approver: workbench asks this",
        "    // build's API who approved its input step (credentials: a Jenkins user and API "
        "token).",
        "    withCredentials([usernamePassword(credentialsId: 'workbench-jenkins-api',",
        "                                      usernameVariable: 'JENKINS_USER_ID',",
        "                                      passwordVariable: 'JENKINS_API_TOKEN')]) {",
        '        withEnv(["BUILD_USER_ID=${APPROVER}"]) {',
        f"            sh {quote(approve)}",
        "        }",
        "    }",
        f"    sh {quote(go_on)}",
        "}"])
