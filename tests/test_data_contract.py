"""Data contracts (no kernels): the contract file read with every problem named by file and
key path, each kind of check passing and failing with what was observed and offending rows,
and the verdict a validation stage outputs and enforces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.config import ConfigError
from workbench.data_contract import (
    Contract,
    DataContractBreach,
    check,
    load_contract,
    validate_data,
)


def _contract(**columns: dict[str, object]) -> Contract:
    return Contract.model_validate({"columns": columns})


def _failed(results: list) -> dict[tuple[str, str], str]:
    return {(r.column, r.check): r.observed for r in results if not r.passed}


FRAME = pd.DataFrame({"age": [31, 45, 27, 60], "income": [1.0, 2.5, np.nan, 4.0],
                      "segment": ["retail", "business", "retail", "retail"],
                      "id": [1, 2, 3, 4]})


def test_data_that_meets_its_contract_passes_every_check() -> None:
    contract = Contract.model_validate({
        "rows": {"min": 4, "max": 10}, "other_columns": "refused",
        "columns": {"age": {"type": "int", "min": 18, "max": 99},
                    "income": {"type": "float", "min": 0, "max_missing": 0.25},
                    "segment": {"type": "str", "allowed": ["retail", "business"]},
                    "id": {"type": "int", "unique": True}}})
    results = check(contract, FRAME)
    assert all(r.passed for r in results)
    labels = {(r.column, r.check) for r in results}
    assert {("age", "type int"), ("age", "min 18"), ("age", "max 99"),
            ("income", "max_missing 0.25"), ("segment", "allowed ['retail', 'business']"),
            ("id", "unique"), ("", "rows >= 4"), ("", "rows <= 10"),
            ("", "no other columns")} <= labels


@pytest.mark.parametrize(("rule", "label", "observed"), [
    ({"type": "float"}, "type float", "dtype int64, expected float"),
    ({"min": 30}, "min 30", "1 values outside it: 27"),
    ({"max": 50}, "max 50", "1 values outside it: 60"),
    ({"allowed": [31, 45, 60]}, "allowed [31, 45, 60]", "1 values outside it: 27"),
    ({"unique": True}, "unique", None),
])
def test_each_column_check_names_what_it_observed(rule: dict[str, object], label: str,
                                                  observed: str | None) -> None:
    frame = FRAME.assign(age=[31, 45, 27, 60] if label != "unique" else [31, 31, 27, 60])
    [result] = [r for r in check(_contract(age=rule), frame) if not r.passed]
    assert (result.column, result.check) == ("age", label)
    if observed:
        assert result.observed == observed
    else:
        assert result.observed.startswith("2 duplicated values: 31, 31")
    if label != "type float":  # a value check shows an offending row; a type has none
        assert result.rows and result.rows[0]["age"] in (27, 60, 31)


def test_missing_values_beyond_the_limit_and_missing_columns() -> None:
    failed = _failed(check(_contract(income={"max_missing": 0.1}, postcode={"type": "str"},
                                     nickname={"required": False}), FRAME))
    assert failed == {("income", "max_missing 0.1"): "25.0% missing, expected at most 10.0%",
                      ("postcode", "required"): "missing from the data"}


def test_rows_and_unknown_columns_are_table_checks() -> None:
    contract = Contract.model_validate({"rows": {"min": 10}, "other_columns": "refused",
                                        "columns": {"age": {"type": "int"}}})
    failed = _failed(check(contract, FRAME))
    assert failed[("", "rows >= 10")] == "4 rows, expected rows >= 10"
    assert failed[("", "no other columns")].startswith("columns not in the contract: ")
    assert {"'income'", "'segment'", "'id'"} <= set(
        failed[("", "no other columns")].split(": ", 1)[1].split(", "))


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "data_contract.yaml"
    path.write_text(text)
    return path


def test_a_bad_contract_names_the_file_and_each_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "columns:\n  age: {type: integer, min: 5, max: 1}\n"
                            "  income: {max_missing: 2}\nrows: {minimum: 3}\n")
    with pytest.raises(ConfigError) as raised:
        load_contract(path)
    text = str(raised.value)
    assert f"{path}: columns.age.type: Input should be 'int'" in text
    assert f"{path}: columns.income.max_missing: Input should be less than or equal to 1" \
        in text
    assert f"{path}: rows.minimum: unknown key; expected one of ['min', 'max']" in text
    duplicate = _write(tmp_path, "columns:\n  age: {type: int}\n  age: {type: float}\n")
    with pytest.raises(ConfigError, match="duplicate key 'age'"):
        load_contract(duplicate)


def test_validation_reports_every_data_set_and_enforces_with_each_failure(
        tmp_path: Path) -> None:
    path = _write(tmp_path, "columns:\n  age: {type: int, min: 18}\n  segment: "
                            "{allowed: [retail, business]}\n")
    good = validate_data(str(path), {"training": FRAME})
    assert good.passed and good.as_dict()["failed"] == []
    good.enforce()  # nothing to raise
    bad = FRAME.assign(age=[31, 12, 27, 60], segment=["retail", "b2b", "retail", "retail"])
    validation = validate_data(str(path), {"training": FRAME, "held-out": bad})
    assert not validation.passed
    summary = validation.as_dict()
    assert summary["contract_digest"] == validation.digest and len(validation.digest) == 64
    assert [(f["data"], f["column"], f["check"]) for f in summary["failed"]] == [
        ("held-out", "age", "min 18"), ("held-out", "segment", "allowed ['retail', 'business']")]
    assert summary["failed"][0]["rows"][0] == {"index": 1, "age": 12, "income": 2.5,
                                               "segment": "b2b", "id": 2}
    table = validation.table()
    assert "| held-out | age | min 18 | **fail** | 1 values outside it: 12 |" in table
    with pytest.raises(DataContractBreach) as raised:
        validation.enforce()
    assert raised.value.exit_code == 1
    assert "(2 failed checks): held-out: column 'age': min 18: 1 values outside it: 12; " \
           "held-out: column 'segment'" in str(raised.value)


def test_validate_reads_the_contract_a_stage_names(tmp_path: Path) -> None:
    from tests.conftest import Workspace

    done = Workspace(tmp_path).cli("init", str(tmp_path / "p"), "--template", "regression")
    assert done.returncode == 0, done.stderr
    ws = Workspace(tmp_path / "p")
    assert ws.cli("validate").returncode == 0
    contract = ws.root / "configs" / "data_contract.yaml"
    contract.write_text(contract.read_text().replace("age: {type: float",
                                                     "age: {type: decimal"))
    checked = ws.cli("validate")
    assert checked.returncode == 2
    assert "configs/data_contract.yaml: columns.age.type: Input should be 'int'" in checked.stderr
    contract.unlink()
    checked = ws.cli("validate")
    assert checked.returncode == 2
    assert "stages(validate_data).parameters.contract: configs/data_contract.yaml: cannot " \
           "read the data contract" in checked.stderr
