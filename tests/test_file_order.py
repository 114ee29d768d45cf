"""The slow tier's file order (tests/file_order.py): longest measured files first."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from file_order import longest_files_first, measured_seconds


def items(*nodeids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(nodeid=nodeid) for nodeid in nodeids]


def test_files_go_longest_first_unknown_files_before_known_ones() -> None:
    collected = items("tests/a.py::t1", "tests/b.py::t1", "tests/a.py::t2", "tests/c.py::t1",
                      "tests/new.py::t1", "tests/b.py::t2")
    ordered = longest_files_first(collected, {"tests/a.py": 5.0, "tests/b.py": 50.0,
                                              "tests/c.py": 20.0})
    assert [i.nodeid for i in ordered] == [
        "tests/new.py::t1", "tests/b.py::t1", "tests/b.py::t2", "tests/c.py::t1",
        "tests/a.py::t1", "tests/a.py::t2"]


def test_without_a_measurement_the_collection_order_stays() -> None:
    collected = items("tests/z.py::t", "tests/a.py::t", "tests/z.py::u")
    ordered = longest_files_first(collected, {})
    assert [i.nodeid for i in ordered] == ["tests/z.py::t", "tests/z.py::u", "tests/a.py::t"]


def test_the_measurement_on_record_names_real_files_and_a_broken_one_is_ignored(
        tmp_path: Path) -> None:
    seconds = measured_seconds()
    assert seconds and all((Path(__file__).parents[1] / name).is_file() for name in seconds)
    broken = tmp_path / "durations.json"
    broken.write_text("{not json", encoding="utf-8")
    assert measured_seconds(broken) == {}
    broken.write_text(json.dumps({"seconds": {"tests/x.py": "slow", "tests/y.py": 3}}),
                      encoding="utf-8")
    assert measured_seconds(broken) == {"tests/y.py": 3.0}
