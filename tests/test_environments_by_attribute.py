"""An environment's strictness is declared on its gate policy (`strict`), never read from its
name; a policy that declares nothing keeps the behaviour of earlier versions, with a warning."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, Workspace
from workbench.config import Gates
from workbench.governance.approvals import duties
from workbench.identity import Identity

REQUESTER = Identity(name="carol", source="github", os_user="runner")
OTHER = Identity(name="dave", source="github", os_user="runner2")


def _gates(environment: str, **policy: object) -> Gates:
    return Gates.model_validate({"groups": {}, "policies": {environment: {
        "approvers": ["carol", "dave"], "quorum": 1, **policy}}})


@pytest.mark.parametrize("name", ["prod", "production", "live"])
def test_a_strict_gate_refuses_self_approval_and_needs_a_comment_whatever_its_name(
        name: str) -> None:
    gates = _gates(name, strict=True)
    assert gates.is_strict(name)
    assert not gates.allows_self_approval(name)
    assert gates.requires_comment(name)
    rule = duties(gates, name, REQUESTER, None)
    assert rule.reason(REQUESTER) == "requested the release"
    assert rule.reason(OTHER) is None


@pytest.mark.parametrize("name", ["prod", "production", "qa"])
def test_a_gate_declared_not_strict_allows_both_whatever_its_name(name: str) -> None:
    gates = _gates(name, strict=False)
    assert gates.allows_self_approval(name) and not gates.requires_comment(name)
    assert duties(gates, name, REQUESTER, None).reason(REQUESTER) is None


def test_each_rule_can_be_set_apart_from_strict() -> None:
    gates = _gates("production", strict=True, allow_self_approval=True)
    assert gates.allows_self_approval("production") and gates.requires_comment("production")
    gates = _gates("staging", strict=False, require_comment=True)
    assert gates.allows_self_approval("staging") and gates.requires_comment("staging")


def test_an_undeclared_policy_behaves_as_in_earlier_versions() -> None:
    assert _gates("prod").is_strict("prod")
    assert not _gates("production").is_strict("production")


def test_the_policy_version_of_earlier_archives_is_unchanged() -> None:
    """Approvals bind to the policy's version: a policy without ``strict`` must hash as it
    did before the field existed."""
    gates = _gates("prod", valid_for="24h")
    earlier = {"approvers": ["carol", "dave"], "quorum": 1, "allow_self_approval": None,
               "valid_for": "24h", "require_comment": None}
    expected = hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()
    assert gates.version("prod") == expected
    assert _gates("prod", valid_for="24h", strict=True).version("prod") != expected


@pytest.mark.parametrize("name", ["prod", "production"])
def test_validate_warns_about_a_gate_that_declares_no_strictness(tmp_path: Path,
                                                                 name: str) -> None:
    ws = Workspace(tmp_path / "p")
    done = Workspace(tmp_path).cli("init", str(ws.root), "--template", "minimal")
    assert done.returncode == 0, done.stderr
    text = (ws.root / "configs" / "gates.yaml").read_text()
    text = text.replace("    strict: true ", "    # strict: true ").replace(
        "  prod:", f"  {name}:")
    (ws.root / "configs" / "gates.yaml").write_text(text)
    for file in ("pipeline.yaml", "environments.yaml"):
        path = ws.root / "configs" / file
        path.write_text(path.read_text().replace("prod", name).replace(
            f"{name}uction", name))
    done = ws.cli("validate")
    assert done.returncode == 0, done.stderr
    assert f"warning: configs/gates.yaml: policies.{name}: declares none of strict" \
        in done.stderr
    assert ("named prod" in done.stderr) is (name == "prod")


def test_the_shipped_policies_declare_their_strictness() -> None:
    ws = Workspace(REPO)
    done = ws.cli("validate")
    assert done.returncode == 0, done.stderr
    assert "declares none of strict" not in done.stderr


def _environments(**load_test: object) -> dict[str, object]:
    return {"environments": {
        "staging": {"deploy": {"target": "local", "port": 6001}, "load_test": load_test},
        "live": {"deploy": {"target": "local", "port": 6002}}}}


def test_the_load_test_baseline_is_declared_never_assumed_from_a_name() -> None:
    from pydantic import ValidationError

    from workbench.config import Environments

    declared = Environments.model_validate(_environments(baseline="live"))
    assert declared.environments["staging"].load_test.baseline == "live"
    assert Environments.model_validate(_environments()).environments[
        "staging"].load_test.baseline is None  # nothing declared: no comparison
    for wrong in ("prod", "staging"):  # not an environment; the environment itself
        with pytest.raises(ValidationError, match=f"staging.load_test.baseline: '{wrong}' is "
                                                  f"not another environment \\(live\\)"):
            Environments.model_validate(_environments(baseline=wrong))
    # the shipped pipeline names no baseline itself: it is qa's declaration
    assert "baseline_environment" not in (REPO / "configs" / "pipeline.yaml").read_text()
