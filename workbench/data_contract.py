"""Data contracts: what a project's data must look like before a model is trained on it.

A contract is a YAML file of the project (``configs/data_contract.yaml`` by convention)::

    rows: {min: 100, max: 1000000}         # row count bounds (either may be left out)
    other_columns: allowed                 # or "refused": a column the contract does not name
    columns:
      age: {type: int, min: 0, max: 120}
      income: {type: float, min: 0, max_missing: 0.05}   # up to 5 % missing values
      segment: {type: str, allowed: [retail, business]}
      id: {type: int, unique: true, required: false}

It is checked with pandera (its ``DataFrameSchema``, lazily, so every failed check is
reported at once); :func:`check` returns one :class:`CheckResult` per check, failed ones with
the observed values and a few offending rows.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workbench.errors import FailedError, WorkbenchError

ColumnType = Literal["int", "float", "number", "str", "bool", "datetime"]
SHOWN_ROWS = 5  # offending rows shown per failed check


class ContractError(WorkbenchError, ValueError):
    """The contract file cannot be read: the message names the file and the key."""


class DataContractBreach(FailedError):
    """The data breaks its contract: the message names every failed check."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnRule(_Strict):
    type: ColumnType | None = None
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    max_missing: float = Field(default=0.0, ge=0, le=1)  # share of missing values allowed
    unique: bool = False
    required: bool = True

    @model_validator(mode="after")
    def _range(self) -> ColumnRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class RowRule(_Strict):
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)


class Contract(_Strict):
    rows: RowRule = RowRule()
    other_columns: Literal["allowed", "refused"] = "allowed"
    columns: dict[str, ColumnRule] = Field(min_length=1)


@dataclass(frozen=True)
class CheckResult:
    """One check of the contract on one data set."""

    column: str  # "" for a check of the whole table (rows, unknown columns)
    check: str  # e.g. "type int", "min 0", "allowed [a, b]", "max_missing 0.05"
    passed: bool
    observed: str = ""  # what was found, for a failed check
    failures: int = 0  # offending values
    rows: list[dict[str, Any]] = field(default_factory=list)  # a few offending rows

    def describe(self) -> str:
        where = f"column {self.column!r}" if self.column else "table"
        if self.passed:
            return f"{where}: {self.check}: ok"
        return f"{where}: {self.check}: {self.observed}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_contract(path: str | Path, root: Path | None = None) -> tuple[Contract, str]:
    """The contract in ``path`` (relative to the project root) and the sha256 of its text."""
    from workbench.config import parse_file
    from workbench.datasets import resolve_path

    file = resolve_path(str(path), root)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"{path}: cannot read the data contract ({exc})") from None
    contract = parse_file(Contract, text, str(path))
    return contract, hashlib.sha256(text.encode()).hexdigest()


def _dtype_check(kind: str) -> Any:
    import pandas.api.types as types

    return {"int": types.is_integer_dtype, "float": types.is_float_dtype,
            "number": types.is_numeric_dtype,
            "str": lambda d: types.is_object_dtype(d) or types.is_string_dtype(d)
            or isinstance(d, __import__("pandas").CategoricalDtype),
            "bool": types.is_bool_dtype, "datetime": types.is_datetime64_any_dtype}[kind]


def _shown(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values[:SHOWN_ROWS]) + (
        f" (+{len(values) - SHOWN_ROWS} more)" if len(values) > SHOWN_ROWS else "")


def _column(name: str, rule: ColumnRule, named: dict[tuple[str, str], str]) -> Any:
    """The pandera column of one contract rule; each check's label goes into ``named``."""
    import pandera.pandas as pa

    checks = []
    if rule.type is not None:
        test = _dtype_check(rule.type)
        checks.append((pa.Check(lambda s: bool(test(s.dtype)), name=f"type_{rule.type}"),
                       f"type {rule.type}"))
    if rule.min is not None:
        checks.append((pa.Check.ge(rule.min, name="min"), f"min {rule.min:g}"))
    if rule.max is not None:
        checks.append((pa.Check.le(rule.max, name="max"), f"max {rule.max:g}"))
    if rule.allowed is not None:
        checks.append((pa.Check.isin(rule.allowed, name="allowed"), f"allowed {rule.allowed}"))
    limit = rule.max_missing
    checks.append((pa.Check(lambda s: bool(s.isna().mean() <= limit), ignore_na=False,
                            name="max_missing"), f"max_missing {limit:g}"))
    for check_, label in checks:
        named[(name, str(check_.name))] = label
    named[(name, "field_uniqueness")] = "unique"
    named[(name, "column_in_dataframe")] = "required"
    return pa.Column(nullable=True, checks=[c for c, _ in checks], required=rule.required,
                     unique=rule.unique, coerce=False)


def _schema(contract: Contract) -> tuple[Any, dict[tuple[str, str], str]]:
    """The pandera schema of ``contract`` and, per (column, check name), the check as the
    contract states it."""
    import pandera.pandas as pa

    named: dict[tuple[str, str], str] = {}
    columns = {name: _column(name, rule, named) for name, rule in contract.columns.items()}
    frame_checks = []
    if contract.rows.min is not None:
        frame_checks.append(pa.Check(lambda df, n=contract.rows.min: len(df) >= n,
                                     name="rows_min"))
        named[("", "rows_min")] = f"rows >= {contract.rows.min}"
    if contract.rows.max is not None:
        frame_checks.append(pa.Check(lambda df, n=contract.rows.max: len(df) <= n,
                                     name="rows_max"))
        named[("", "rows_max")] = f"rows <= {contract.rows.max}"
    named[("", "column_in_schema")] = "no other columns"
    schema = pa.DataFrameSchema(columns, checks=frame_checks,
                                strict=contract.other_columns == "refused")
    return schema, named


def check(contract: Contract, frame: Any) -> list[CheckResult]:
    """Every check of ``contract`` on ``frame`` (a pandas DataFrame), failed ones first."""
    import pandera.errors

    schema, named = _schema(contract)
    failed: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for record in cases.to_dict("records"):
            column = record.get("column")
            column = "" if column is None or column != column else str(column)
            check_name = str(record.get("check") or "")
            if check_name == "column_in_dataframe":  # pandera names the column as the case
                column = str(record.get("failure_case"))
            key = _match(named, column, check_name)
            failed.setdefault(key, []).append((record.get("failure_case"), record.get("index")))
    results = []
    for (column, name), label in named.items():
        if (column, name) not in failed:
            continue
        cases = failed[(column, name)]
        values = [case for case, _ in cases]
        index = [i for _, i in cases if i is not None and i == i]
        rows = _rows(frame, index)
        observed = _observed(frame, column, name, label, values)
        results.append(CheckResult(column, label, False, observed, len(values), rows))
    for key in failed:
        if key not in named:  # a check pandera reports that the contract has no name for
            values = [case for case, _ in failed[key]]
            results.append(CheckResult(key[0], key[1], False, _shown(values), len(values)))
    passed = [CheckResult(column, label, True) for (column, name), label in named.items()
              if (column, name) not in failed and _applies(contract, frame, column, name)]
    return results + passed


def _match(named: dict[tuple[str, str], str], column: str, check_name: str) -> tuple[str, str]:
    """The contract's key for a failure case pandera reports as ``check_name``."""
    for key in ((column, check_name), (column, check_name.split("(")[0]), ("", check_name),
                ("", check_name.split("(")[0])):
        if key in named:
            return key
    if check_name.startswith(("greater_than_or_equal_to", "ge")):
        return (column, "min")
    if check_name.startswith(("less_than_or_equal_to", "le")):
        return (column, "max")
    if check_name.startswith("isin"):
        return (column, "allowed")
    if check_name.startswith("column_in_schema"):
        return ("", "column_in_schema")
    return (column, check_name)


def _applies(contract: Contract, frame: Any, column: str, name: str) -> bool:
    """Whether a check is worth listing as passed (not the optional columns' that are absent,
    nor "no other columns" when others are allowed)."""
    if name == "column_in_schema":
        return contract.other_columns == "refused"
    if column and column not in frame.columns:
        return False
    if name == "field_uniqueness":
        return contract.columns[column].unique
    return True


def _rows(frame: Any, index: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for label in list(dict.fromkeys(index))[:SHOWN_ROWS]:
        try:
            row = frame.loc[label]
        except (KeyError, TypeError):
            continue
        rows.append({"index": _plain(label), **{str(k): _plain(v) for k, v in row.items()}})
    return rows


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a pandas or NumPy scalar."""
    if hasattr(value, "item"):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()
    if value != value:  # NaN
        return None
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _observed(frame: Any, column: str, name: str, label: str, values: list[Any]) -> str:
    if name.startswith("rows_"):
        return f"{len(frame)} rows, expected {label}"
    if name == "max_missing":
        share = float(frame[column].isna().mean())
        return f"{share:.1%} missing, expected at most {float(label.split()[-1]):.1%}"
    if name.startswith("type_"):
        return f"dtype {frame[column].dtype}, expected {label.split()[-1]}"
    if name == "column_in_dataframe":
        return "missing from the data"
    if name == "column_in_schema":
        return f"columns not in the contract: {_shown([str(v) for v in values])}"
    if name == "field_uniqueness":
        return f"{len(values)} duplicated values: {_shown([_plain(v) for v in values])}"
    return f"{len(values)} values outside it: {_shown([_plain(v) for v in values])}"


@dataclass
class DataValidation:
    """A contract checked on named data sets (``training``, ``held-out``...)."""

    contract: str  # the contract file, as given
    digest: str  # sha256 of its text: what an approval binds to (the release bundle)
    results: dict[str, list[CheckResult]]

    @property
    def passed(self) -> bool:
        return all(r.passed for found in self.results.values() for r in found)

    def failed(self) -> list[tuple[str, CheckResult]]:
        return [(name, r) for name, found in self.results.items() for r in found
                if not r.passed]

    def table(self) -> str:
        """A Markdown table of every check on every data set, failed ones first."""
        lines = [f"**Data contract** `{self.contract}` (sha256 `{self.digest[:12]}`): "
                 + ("every check passed" if self.passed else
                    f"**{len(self.failed())} failed**"), "",
                 "| data | column | check | result | observed |", "|---|---|---|---|---|"]
        for name, found in self.results.items():
            for r in found:
                lines.append(f"| {name} | {r.column or '(table)'} | {r.check} | "
                             f"{'pass' if r.passed else '**fail**'} | "
                             f"{r.observed.replace('|', '/')} |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """What the stage outputs (role ``data_validation``): contract, digest, verdict and
        the failed checks with a few offending rows each."""
        return {"contract": self.contract, "contract_digest": self.digest,
                "passed": self.passed,
                "checks": {name: len(found) for name, found in self.results.items()},
                "failed": [{"data": name, **r.as_dict()} for name, r in self.failed()]}

    def enforce(self) -> None:
        """Fail the stage, naming every failed check, when any failed."""
        failed = self.failed()
        if failed:
            lines = "; ".join(f"{name}: {r.describe()}" for name, r in failed)
            raise DataContractBreach(
                f"the data breaks its contract {self.contract} ({len(failed)} failed "
                f"check{'s' if len(failed) > 1 else ''}): {lines}")


def validate_data(contract: str, frames: dict[str, Any]) -> DataValidation:
    """Check each named data frame against the contract file ``contract`` (a path of the
    project); nothing raises for a breach until :meth:`DataValidation.enforce`."""
    parsed, digest = load_contract(contract)
    return DataValidation(contract, digest, {name: check(parsed, frame)
                                             for name, frame in frames.items()})
