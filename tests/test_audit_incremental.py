"""Incremental verification from a checkpoint (``workbench audit verify --since``): the bytes
before it are checked by one digest, the entries after it and the files they name in full; the
files of earlier entries are trusted (a full verify still re-hashes them)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clean_environment
from workbench.audit import coverage, ledger


def add_run(reports: Path, run: str) -> list[dict[str, Any]]:
    """One run folder with two notebooks, each recorded by a ledger entry."""
    folder = reports / "runs" / run
    folder.mkdir(parents=True, exist_ok=True)
    recorded = []
    for stage in ("train", "evaluate"):
        path = folder / f"{stage}.ipynb"
        path.write_text(json.dumps({"run": run, "stage": stage}))
        recorded.append(ledger.append(reports, "stage_executed", actor={"name": "ci"},
                                      run_id=run, data={"stage": stage}, files=[path]))
    return recorded


def archive_with_checkpoint(reports: Path) -> dict[str, Any]:
    """Runs 0 and 1 (seq 1-4), the checkpoint there, then run 2 (seq 5-6)."""
    add_run(reports, "run0")
    add_run(reports, "run1")
    checkpoint = ledger.checkpoint(reports)
    add_run(reports, "run2")
    return checkpoint


def _lines(reports: Path) -> list[bytes]:
    return (reports / ledger.LEDGER_FILE).read_bytes().splitlines(keepends=True)


def _write(reports: Path, lines: list[bytes]) -> None:
    (reports / ledger.LEDGER_FILE).write_bytes(b"".join(lines))


def test_the_checkpoint_is_the_head_plus_the_prefix_it_ends(tmp_path: Path) -> None:
    assert ledger.checkpoint(tmp_path) == {
        "seq": 0, "hash": ledger.GENESIS, "ledger": ledger.LEDGER_FILE, "offset": 0,
        "prefix_sha256": hashlib.sha256(b"").hexdigest()}
    add_run(tmp_path, "run0")
    raw = (tmp_path / ledger.LEDGER_FILE).read_bytes()
    checkpoint = ledger.checkpoint(tmp_path)
    assert checkpoint == {**ledger.head(tmp_path), "offset": len(raw),
                          "prefix_sha256": hashlib.sha256(raw).hexdigest()}
    assert set(ledger.head(tmp_path)) == {"seq", "hash", "ledger"}  # unchanged for its callers


def test_after_appends_only_the_new_entries_and_their_files_are_checked(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    result = ledger.verify(tmp_path, since=checkpoint)
    assert result.ok, result.problems
    assert (result.since, result.entries, result.files, result.runs) == (4, 2, 2, {"run2"})
    assert result.bytes == sum(p.stat().st_size for p in (tmp_path / "runs/run2").iterdir())
    full = ledger.verify(tmp_path, anchor=checkpoint)  # a checkpoint is also a plain anchor
    assert full.ok and (full.entries, full.files) == (6, 6)
    nothing_new = ledger.verify(tmp_path, since=ledger.checkpoint(tmp_path))
    assert nothing_new.ok and (nothing_new.since, nothing_new.entries) == (6, 0)
    from_empty = ledger.verify(tmp_path, since=ledger.checkpoint(tmp_path / "none"))
    assert from_empty.ok and (from_empty.entries, from_empty.files) == (6, 6)


def test_an_edit_before_the_checkpoint_is_caught_by_the_prefix_digest(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    lines = _lines(tmp_path)
    lines[1] = lines[1].replace(b'"name":"ci"', b'"name":"cj"')  # same length: offsets hold
    _write(tmp_path, lines)
    result = ledger.verify(tmp_path, since=checkpoint)
    assert result.problems == [
        f"ledger.jsonl: the {checkpoint['offset']} bytes up to the checkpoint (seq 4) do not "
        f"match its prefix_sha256: an entry up to seq 4 was edited, removed or rewritten",
        "ledger.jsonl line 2 (seq 2): content does not match its hash (edited)"]
    assert (result.entries, result.files) == (2, 2)  # the new entries are still checked


def test_a_rewritten_history_before_the_checkpoint_is_named(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    (tmp_path / ledger.LEDGER_FILE).unlink()  # every hash recomputed: a valid chain of its own
    for run in ("run0", "run1", "run2"):
        for stage in ("train", "evaluate"):
            ledger.append(tmp_path, "stage_executed", actor={"name": "mallory"}, run_id=run,
                          files=[tmp_path / "runs" / run / f"{stage}.ipynb"])
    found = ledger.verify(tmp_path, since=checkpoint).problems
    assert found[0].startswith("ledger.jsonl: the ") and "(seq 4) do not match" in found[0]
    assert any(p.startswith("checkpoint: entry seq 4 has hash") and
               p.endswith("(the ledger was rewritten)") for p in found)


def test_an_edit_after_the_checkpoint_is_named_by_line_and_seq(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    lines = _lines(tmp_path)
    lines[4] = lines[4].replace(b'"name":"ci"', b'"name":"mallory"')
    _write(tmp_path, lines)
    assert ledger.verify(tmp_path, since=checkpoint).problems == [
        "ledger.jsonl line 5 (seq 5): content does not match its hash (edited)"]
    _write(tmp_path, [*lines[:4], lines[5]])  # seq 5 removed
    assert ledger.verify(tmp_path, since=checkpoint).problems == [
        "ledger.jsonl line 5 (seq 6): expected seq 5 (an entry was removed, inserted or "
        "reordered)"]
    _write(tmp_path, [*_lines(tmp_path), b'{"seq": 7, "ha'])
    assert "ledger.jsonl line 6: incomplete entry (torn write)" in \
        ledger.verify(tmp_path, since=checkpoint).problems


def test_a_truncation_below_the_checkpoint_is_caught(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    lines = _lines(tmp_path)
    _write(tmp_path, lines[:3])
    size = len(b"".join(lines[:3]))
    assert ledger.verify(tmp_path, since=checkpoint).problems == [
        f"ledger.jsonl has {size} bytes, fewer than the {checkpoint['offset']} it had at the "
        f"checkpoint (seq 4): truncated",
        "checkpoint: the ledger ends at seq 3 but the checkpoint is at seq 4 (truncated)"]
    (tmp_path / ledger.LEDGER_FILE).unlink()
    assert ledger.verify(tmp_path, since=checkpoint).problems == [
        f"ledger.jsonl is missing; the checkpoint expects seq 4 ({checkpoint['offset']} "
        f"bytes): truncated"]


def test_a_truncation_after_the_checkpoint_needs_a_later_anchor(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    later = ledger.checkpoint(tmp_path)
    _write(tmp_path, _lines(tmp_path)[:5])
    assert ledger.verify(tmp_path, since=checkpoint).ok  # seq 5 on its own is a valid history
    assert ledger.verify(tmp_path, anchor=later, since=checkpoint).problems == [
        "anchor: the ledger ends at seq 5 but the anchor is at seq 6 (truncated)"]
    with pytest.raises(ledger.AnchorError, match="before the checkpoint"):
        ledger.verify(tmp_path, anchor=ledger.head(tmp_path), since=later)


def test_only_files_of_new_entries_are_rehashed(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    (tmp_path / "runs/run0/train.ipynb").write_text("{}")  # named only by seq 1, before it
    (tmp_path / "runs/run2/train.ipynb").write_text("{}")  # named by seq 5, after it
    assert ledger.verify(tmp_path, since=checkpoint).problems == [
        "reports/runs/run2/train.ipynb (seq 5): content changed since it was recorded"]
    # The trade-off: files of entries before the checkpoint are trusted; a full verify
    # re-hashes them.
    assert "reports/runs/run0/train.ipynb (seq 1): content changed since it was recorded" in \
        ledger.verify(tmp_path).problems


def test_an_anchor_without_offset_cannot_be_verified_from(tmp_path: Path) -> None:
    add_run(tmp_path, "run0")
    old = ledger.head(tmp_path)
    assert ledger.verify(tmp_path, anchor=old).ok  # still fine for a full verify
    with pytest.raises(ledger.AnchorError, match="`workbench audit anchor` of this version"):
        ledger.verify(tmp_path, since=old)
    with pytest.raises(ledger.AnchorError, match="prefix_sha256"):
        ledger.verify(tmp_path, since={**old, "offset": "12", "prefix_sha256": "x"})


def test_a_checkpoint_naming_another_entry_is_a_problem(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    forged = {**checkpoint, "seq": 3}  # the digest holds, the entry at the offset is seq 4
    found = ledger.verify(tmp_path, since=forged).problems
    assert found[0].startswith(f"checkpoint: the entry ending at offset {checkpoint['offset']} "
                               f"is seq 4")
    assert "ledger.jsonl line 5 (seq 5): expected seq 4" in found[1]


def test_coverage_checks_only_the_folders_of_runs_with_new_entries(tmp_path: Path) -> None:
    checkpoint = archive_with_checkpoint(tmp_path)
    late = tmp_path / "runs/run1/late.ipynb"  # run1 started before the checkpoint
    late.write_text("{}")
    ledger.append(tmp_path, "stage_executed", actor=None, run_id="run1", files=[late])
    (tmp_path / "runs/run0/stray.html").write_text("x")  # a run with no new entry
    (tmp_path / "runs/run2/stray.html").write_text("x")
    (tmp_path / "rollbacks").mkdir()
    (tmp_path / "rollbacks/0001.json").write_text("{}")
    result = ledger.verify(tmp_path, since=checkpoint)
    assert result.ok and result.runs == {"run1", "run2"}
    partial = ledger.index(tmp_path, result.runs)
    full = ledger.index(tmp_path)
    for run in ("run1", "run2"):
        assert partial.of_run(run) == full.of_run(run)
    assert partial.recorded("runs/run1/train.ipynb") == full.recorded("runs/run1/train.ipynb")
    assert coverage.check(tmp_path, partial, result.runs).problems == [
        "reports/rollbacks/0001.json: in no ledger entry (a record written by hand, or one the "
        "ledger lost)",
        "reports/runs/run2/stray.html: in no ledger entry (nothing the run recorded wrote it)"]
    assert "reports/runs/run0/stray.html: in no ledger entry (nothing the run recorded wrote " \
        "it)" in coverage.check(tmp_path, full).problems  # a full verify scans every run


def test_audit_cli_verify_since(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "pipeline.yaml").write_text("name: x\n")
    reports = root / "reports"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workbench", "--project", str(root),
                               "audit", *args], capture_output=True, text=True, timeout=120,
                              env=clean_environment())

    add_run(reports, "run0")
    add_run(reports, "run1")
    saved = tmp_path / "checkpoint.json"
    anchored = cli("anchor", "--output", str(saved))
    assert anchored.returncode == 0, anchored.stderr
    assert json.loads(anchored.stdout) == json.loads(saved.read_text()) \
        == ledger.checkpoint(reports)
    add_run(reports, "run2")
    ok = cli("verify", "--since", str(saved))
    assert ok.returncode == 0, ok.stderr
    assert "ledger verified from seq 4: 2 new entries, 2 files" in ok.stdout
    assert "ledger verified: 6 entries, 6 files" in cli("verify").stdout
    later = tmp_path / "later.json"
    later.write_text(json.dumps(ledger.checkpoint(reports)))
    both = cli("verify", "--since", str(saved), "--anchor", str(later))
    assert both.returncode == 0 and both.stdout.rstrip().endswith("; anchored at seq 6")
    swapped = cli("verify", "--since", str(later), "--anchor", str(saved))
    assert swapped.returncode == 2 and f"--anchor {saved}: at seq 4, before the --since " \
        f"checkpoint (seq 6)" in swapped.stderr

    (reports / "runs/run0/train.ipynb").write_text("{}")  # before the checkpoint: trusted
    (reports / "runs/run2/evaluate.ipynb").write_text("{}")
    bad = cli("verify", "--since", str(saved))
    assert bad.returncode == 1
    assert "FAIL reports/runs/run2/evaluate.ipynb (seq 6): content changed" in bad.stderr
    assert "run0" not in bad.stderr
    assert "ledger FAILED (1 problems) from seq 4: 2 new entries" in bad.stdout

    old = tmp_path / "old.json"
    old.write_text(json.dumps(ledger.head(reports)))
    for broken, says in ((old, "of this version"), (tmp_path / "none.json", "not a readable"),
                         (tmp_path / "list.json", "expected a JSON object")):
        if broken.name == "list.json":
            broken.write_text("[1]")
        refused = cli("verify", "--since", str(broken))
        assert refused.returncode == 2, refused.stderr
        assert f"--since {broken}" in refused.stderr and says in refused.stderr


@pytest.mark.parametrize("chosen", [{"run1", "rün-4"}, {"run0", "run1", "run2", "run3", "rün-4"}])
def test_the_index_restricted_to_runs_holds_all_they_need(tmp_path: Path, chosen: set[str]
                                                           ) -> None:
    for run in ("run0", "run1", "run2", "run3", "rün-4", "run10"):
        add_run(tmp_path, run)
    page = tmp_path / "runs/run2/train.html"
    page.write_text("<html/>")
    ledger.append(tmp_path, "stage_rendered", actor=None, run_id="run2", files=[page])
    record = tmp_path / "rollbacks/0001.json"
    record.parent.mkdir()
    record.write_text("{}")
    ledger.append(tmp_path, "rollback", actor=None, run_id=None, files=[record])
    ledger.append(tmp_path, "note", actor=None, run_id="run10", data={"about": "run1"},
                  files=[tmp_path / "runs/run1/train.ipynb"])  # another run's entry names it
    partial, full = ledger.index(tmp_path, chosen), ledger.index(tmp_path)
    for run in chosen:
        assert partial.of_run(run) == full.of_run(run)
    relevant = {name: seen for name, seen in full.files.items()
                if name.startswith("rollbacks/") or ledger._run_of(name) in chosen}
    assert {n: s for n, s in partial.files.items() if n in relevant} == relevant
    assert partial.recorded("runs/run1/train.ipynb") == full.recorded("runs/run1/train.ipynb")
    assert partial.first("run2", "stage_rendered") is not None  # the first page ever
    assert "run10" not in chosen and partial.of_run("run10") == [full.of_run("run10")[-1]]
