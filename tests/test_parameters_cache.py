"""papermill's reading of a parameters cell is kept by the cell's digest, so that a command over
unchanged notebooks does not import papermill."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.execution import parameters

CELL = 'alpha: float = 0.5\nname = "x"\nweird = [i for i in range(3)]  # computed\n'


def test_reading_is_cached_by_the_cell_and_recomputed_when_unreadable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = parameters.cached_papermill_reading(CELL, tmp_path)
    assert first == parameters.papermill_reading(CELL)
    stored = list((tmp_path / "papermill-reading").glob("*.json"))
    assert len(stored) == 1

    def no_papermill(source: str) -> None:
        raise AssertionError("papermill was asked again")

    monkeypatch.setattr(parameters, "papermill_reading", no_papermill)
    assert parameters.cached_papermill_reading(CELL, tmp_path) == first

    # Another cell is another entry; a damaged entry is read again, not trusted.
    monkeypatch.undo()
    other = parameters.cached_papermill_reading(CELL + "beta = 2\n", tmp_path)
    assert "beta" in other[0] and len(list((tmp_path / "papermill-reading").glob("*"))) == 2
    stored[0].write_text("{not json")
    assert parameters.cached_papermill_reading(CELL, tmp_path) == first


def test_without_a_cache_folder_nothing_is_written(tmp_path: Path) -> None:
    assert parameters.cached_papermill_reading(CELL, None) == parameters.papermill_reading(CELL)
    assert list(tmp_path.iterdir()) == []
