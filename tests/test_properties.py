"""Property-based tests: configuration loading and the ledger, on inputs nobody wrote by hand."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from workbench.audit import ledger
from workbench.config import (
    CONFIG_FILES,
    FAILURE_CLASSES,
    GATES_FILE,
    ConfigError,
    Problem,
    parse_config,
)

QUICK = settings(max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

# --- configuration ------------------------------------------------------------------------------

FILES = (*CONFIG_FILES, GATES_FILE)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                         max_leaves=12)
KEYS = ["name", "stages", "notebook", "needs", "parameters", "outputs", "timeout", "retry",
        "environments", "deploy", "port", "thresholds", "min_score", "dataset", "estimator",
        "from", "startup", "kernel_died", "hang_timeout", "cell_timeout", "policies", "gate",
        "mlflow", "secrets", "quorum", "approvers", "target"]
# structures that look like configs: the keys the models know, values of any kind
config_like = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=20)


def file_texts(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, str | None]]:
    text = st.one_of(st.none(), st.text(max_size=200),
                     values.map(lambda v: yaml.safe_dump(v, sort_keys=False)))
    return st.fixed_dictionaries({name: text for name in FILES})


def check_only_config_errors(texts: dict[str, str | None]) -> None:
    try:
        parse_config(texts)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)
        assert all(p.file.startswith("configs/") for p in exc.problems)
        assert str(exc)


@QUICK
@given(file_texts(json_like))
def test_arbitrary_text_fails_only_with_config_errors(texts: dict[str, str | None]) -> None:
    check_only_config_errors(texts)


@QUICK
@given(file_texts(config_like))
def test_config_shaped_junk_fails_only_with_config_errors(texts: dict[str, str | None]) -> None:
    check_only_config_errors(texts)


NAME = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}\Z")
retry = st.dictionaries(st.sampled_from(FAILURE_CLASSES), st.integers(0, 10), max_size=3)
literal = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) \
    | st.text(max_size=10)


@st.composite
def valid_config(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any]]:
    names = draw(st.lists(NAME, min_size=1, max_size=5, unique=True))
    stages = []
    for index, name in enumerate(names):
        stage: dict[str, Any] = {
            "name": name, "notebook": f"notebooks/{name}.ipynb",
            "needs": draw(st.lists(st.sampled_from(names[:index]), unique=True, max_size=2))
            if index else [],
            "parameters": draw(st.dictionaries(NAME, literal, max_size=3)),
            "outputs": draw(st.dictionaries(NAME, st.sampled_from(
                ["str", "int", "float", "bool", "list", "dict"]), max_size=2)),
            "timeout": draw(st.floats(0.5, 1e5)),
            "retry": draw(retry),
        }
        if draw(st.booleans()):
            stage["hang_timeout"] = draw(st.floats(0.1, 1e4))
        stages.append(stage)
    pipeline = {"name": draw(st.text(min_size=1, max_size=10)), "retry": draw(retry),
                "stages": stages}
    envs = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    ports = draw(st.lists(st.integers(1024, 65535), min_size=len(envs), max_size=len(envs),
                          unique=True))
    environments = {"environments": {
        env: {"deploy": {"target": "local", "port": port},
              "thresholds": {"min_score": draw(st.floats(0, 1))}}
        for env, port in zip(envs, ports, strict=True)}}
    model = {"name": "m" + draw(st.from_regex(r"\A[A-Za-z0-9_.-]{0,8}\Z")),
             "dataset": draw(st.sampled_from(["iris", "wine", "digits"])),
             "estimator": "sklearn.linear_model.LogisticRegression"}
    texts = {"pipeline.yaml": yaml.safe_dump(pipeline), "model.yaml": yaml.safe_dump(model),
             "environments.yaml": yaml.safe_dump(environments), GATES_FILE: None}
    return texts, pipeline


@QUICK
@given(valid_config())
def test_valid_generated_configs_load(generated: tuple[dict[str, str], dict[str, Any]]) -> None:
    texts, pipeline = generated
    config = parse_config(texts)
    assert [s.name for s in config.pipeline.stages] == [s["name"] for s in pipeline["stages"]]
    for stage, raw in zip(config.pipeline.stages, pipeline["stages"], strict=True):
        policy = config.pipeline.retry_policy(stage)
        for failure in FAILURE_CLASSES:  # the stage's own count, else the pipeline's, else 0
            expected = raw["retry"].get(failure, pipeline["retry"].get(failure, 0))
            assert policy[failure] == expected
        assert stage.parameters == raw["parameters"]
    assert config.digest == parse_config(texts).digest


# --- the ledger ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
appends = st.lists(st.tuples(st.text(min_size=1, max_size=12),            # event
                             st.none() | st.text(max_size=12),            # run id
                             st.dictionaries(st.text(max_size=8), json_values, max_size=3),
                             st.none() | st.binary(max_size=64)),         # a file's content
                   min_size=1, max_size=6)


def build(reports: Path, items: list[tuple[str, str | None, dict, bytes | None]]
          ) -> list[dict[str, Any]]:
    written = []
    for index, (event, run_id, data, content) in enumerate(items):
        files = []
        if content is not None:
            path = reports / "runs" / f"f{index}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            files.append(path)
        written.append(ledger.append(reports, event, actor={"name": "p"}, run_id=run_id,
                                     data=data, files=files))
    return written


@QUICK
@given(appends)
def test_any_sequence_of_appends_verifies(items: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp)
        written = build(reports, items)
        result = ledger.verify(reports, ledger.head(reports))
        assert result.ok, result.problems
        assert result.entries == len(items)
        assert list(ledger.entries(reports)) == json.loads(json.dumps(written))
        assert [e["seq"] for e in written] == list(range(1, len(items) + 1))


@QUICK
@given(appends, st.data())
def test_any_single_byte_change_is_detected(items: list, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp)
        build(reports, items)
        path = reports / ledger.LEDGER_FILE
        raw = bytearray(path.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
        raw[at] = byte
        path.write_bytes(bytes(raw))
        assert ledger.verify(reports).problems, f"byte {at} changed to {byte} unnoticed"


@QUICK
@given(appends, st.data())
def test_any_truncation_is_detected_with_the_anchor(items: list, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp)
        build(reports, items)
        anchor = ledger.head(reports)
        path = reports / ledger.LEDGER_FILE
        raw = path.read_bytes()
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1), label="length")])
        assert ledger.verify(reports, anchor).problems


@QUICK
@given(appends, st.data())
def test_any_archived_file_change_is_detected(items: list, data: st.DataObject) -> None:
    assume(any(content for *_, content in items))
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp)
        build(reports, items)
        path = data.draw(st.sampled_from(sorted((reports / "runs").glob("*.bin"))))
        content = path.read_bytes()
        assume(content)
        at = data.draw(st.integers(0, len(content) - 1))
        path.write_bytes(content[:at] + bytes([content[at] ^ 0x01]) + content[at + 1:])
        assert any(path.name in p for p in ledger.verify(reports).problems)


@QUICK
@given(appends, st.data())
def test_a_torn_last_entry_is_refused_then_repaired(items: list, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp)
        build(reports, items)
        path = reports / ledger.LEDGER_FILE
        intact = path.read_bytes()
        head = ledger.head(reports)
        line = intact.splitlines(keepends=True)[-1]
        torn = line[:data.draw(st.integers(1, len(line) - 1), label="torn at")]
        path.write_bytes(intact + torn)  # a crash in the middle of the next append
        assert any("torn write" in p for p in ledger.verify(reports).problems)
        try:
            ledger.append(reports, "next", actor=None, run_id=None)
            raise AssertionError("an append after a torn entry must be refused")
        except ledger.LedgerError as exc:
            assert "incomplete entry" in str(exc)
        repaired = ledger.repair(reports, {"name": "p"})
        assert repaired is not None and repaired["seq"] == head["seq"] + 1
        kept = reports / next(iter(repaired["files"]))
        assert kept.read_bytes() == torn  # set aside, byte for byte
        assert path.read_bytes().startswith(intact)
        assert ledger.verify(reports, head).ok
        assert ledger.repair(reports, None) is None  # nothing more to repair
