"""What the load-test and monitor notebooks set up before they measure, as one call each: the
project's configuration, the environment's endpoint and version, the profile or policy, and
the scoring request built from the held-out rows."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.config import Config, LoadProfile, MonitorPolicy, Slo, load_config
from workbench.errors import WorkbenchError
from workbench.project import Project, find_project

if TYPE_CHECKING:
    from workbench.operations.drift_check import DriftReport
    from workbench.records import RollbackRecord


class SetupError(WorkbenchError, RuntimeError):
    """Nothing is deployed where the notebook was asked to measure."""


@dataclass
class LoadTestSetup:
    """Everything a load test of one endpoint needs."""

    project: Project
    config: Config
    tracking_uri: str
    environment: str
    endpoint: str
    model_name: str
    version: str  # the version the endpoint serves (checked)
    profile: LoadProfile
    objectives: Slo
    body: bytes  # one scoring request: ``profile.rows`` held-out rows
    baseline_environment: str  # compared under the same load; "" for no comparison

    def describe(self) -> str:
        return (f"{self.model_name} v{self.version} at {self.endpoint}; load "
                f"{self.profile.model_dump()}")

    def baseline(self, environment: str) -> AbstractContextManager[tuple[str, str] | None]:
        """A temporary server of the version ``environment`` serves, for the same load:
        ``(url, version)``, or None when it serves none (a first release)."""
        from workbench.operations.baseline import baseline_server

        return baseline_server(self.project, self.config, environment, self.model_name,
                               self.tracking_uri)


@dataclass
class MonitorSetup:
    """Everything a post-deploy watch of one environment needs."""

    project: Project
    config: Config
    environment: str
    model_name: str
    url: str
    version: str  # the version that must be serving
    policy: MonitorPolicy
    body: bytes  # the prediction each probe makes

    def describe(self) -> str:
        return (f"watching {self.url} (v{self.version}) for {self.policy.window}, every "
                f"{self.policy.interval}")

    def roll_back(self, reason: str, observed: Any, run_id: str | None,
                  drift: DriftReport | None = None) -> RollbackRecord:
        """Roll the environment back to the version approved for it before (as the identity
        running this notebook), recording what was observed against the policy (and, with
        ``drift``, each feature's drift figures against the drift policy)."""
        from workbench.identity import current
        from workbench.operations.rollback import rollback

        threshold = self.policy.model_dump()
        if drift is not None:
            observed = {**observed, "drift": drift.record.features}
            threshold = {**threshold, "drift": drift.policy}
        return rollback(self.project, self.config, self.environment, current(),
                        trigger="monitor", reason=reason, observed=observed,
                        threshold=threshold, run_id=run_id)

    def check_drift(self) -> DriftReport | None:
        """What the served version's endpoint logged so far against the version's training
        baseline, recorded in ``reports/drift/``; None when the environment logs no requests
        or none were logged yet (the reason is printed)."""
        if self.config.environments[self.environment].inference_log is None:
            return None
        from workbench.identity import current
        from workbench.operations.drift_check import DriftError, check_drift

        try:
            return check_drift(self.project, self.config, self.environment, current(),
                               version=self.version)
        except DriftError as exc:
            print(f"no drift check: {exc}")
            return None


def _held_out(dataset: str, test_size: float, random_state: int, rows: int, target: str,
              task: str) -> Any:
    from workbench.datasets import load_split

    _, X_test, _, _ = load_split(dataset, test_size, random_state, target=target, task=task)
    return X_test.head(rows)


def load_test_setup(environment: str, *, endpoint: str = "", model_name: str, version: str = "",
                    load_profile: dict[str, Any] | None = None,
                    slo: dict[str, Any] | None = None, dataset: str, test_size: float,
                    random_state: int, target: str = "target", task: str = "",
                    baseline_environment: str = "") -> LoadTestSetup:
    """Connect to the project's MLflow store; find ``environment``'s endpoint (``endpoint``
    empty: the one running) and check it serves ``version`` (empty: whatever it serves);
    take the environment's ``load_test`` profile and ``slo`` unless given, and the
    environment to compare with (``baseline_environment`` empty: the profile's ``baseline``,
    which configs/environments.yaml declares; none declared: no comparison)."""
    from workbench.deploy import serving
    from workbench.deploy.local import served_model
    from workbench.deploy.smoke import request_body
    from workbench.registry.store import connect

    store = connect()
    project = find_project()
    config = load_config(project.configs)
    profile = LoadProfile(**load_profile) if load_profile else \
        config.environments[environment].load_test
    objectives = Slo(**slo) if slo else config.environments[environment].slo
    if not endpoint:
        running = serving(project, config, environment)
        if running is None:
            raise SetupError(f"nothing is deployed to {environment}; run the deploy stage first")
        endpoint = running.url
    served = str(served_model(endpoint)["version"])
    if version and served != str(version):
        raise SetupError(f"{endpoint} serves v{served}, expected v{version}")
    body = request_body(_held_out(dataset, test_size, random_state, profile.rows, target, task))
    baseline = baseline_environment or profile.baseline or ""
    if baseline and baseline not in config.environments:
        raise SetupError(f"baseline environment {baseline!r} is not one of "
                         f"{', '.join(config.environments)}")
    return LoadTestSetup(project, config, store.tracking_uri, environment, endpoint,
                         model_name, served, profile, objectives, body, baseline)


def monitor_setup(environment: str, *, model_name: str, version: str = "",
                  policy: dict[str, Any] | None = None, dataset: str, test_size: float,
                  random_state: int, rows: int = 3, target: str = "target",
                  task: str = "") -> MonitorSetup:
    """Connect to the project's MLflow store; find what serves ``environment`` and the version
    that must be serving (empty: the one its alias names); take its ``monitor`` policy unless
    given."""
    from workbench.deploy import serving
    from workbench.deploy.smoke import request_body
    from workbench.registry.models import version_by_alias
    from workbench.registry.store import connect

    connect()
    project = find_project()
    config = load_config(project.configs)
    watch = MonitorPolicy(**policy) if policy else config.environments[environment].monitor
    version = version or version_by_alias(model_name, environment)
    running = serving(project, config, environment)
    if running is None:
        raise SetupError(f"nothing is deployed to {environment}")
    body = request_body(_held_out(dataset, test_size, random_state, rows, target, task))
    return MonitorSetup(project, config, environment, model_name, running.url, str(version),
                        watch, body)
