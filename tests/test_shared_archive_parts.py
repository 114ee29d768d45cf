"""The shared archive's parts on a ``file://`` store (no servers): caches that pull what
others appended, a lost race retried, concurrent appenders leaving one chain, a fork, a
replaced file and a conflicting run record refused, the store verified in place."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from workbench.audit import ledger, remote, remote_verify
from workbench.audit.object_store import STORES, StoreError, open_store, redacted
from workbench.audit.store_file import FileStore


def _cache(tmp_path: Path, name: str, store: Path) -> remote.RemoteArchive:
    reports = tmp_path / name / "reports"
    reports.mkdir(parents=True)
    return remote.attach(reports, store.as_uri())


def _record(archive: remote.RemoteArchive, name: str, text: str, event: str = "noted",
            run_id: str | None = None) -> dict[str, Any]:
    path = archive.reports / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return ledger.append(archive.reports, event, actor=None, run_id=run_id, files=[path])


def test_a_second_cache_pulls_entries_files_and_run_records(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store)
    run = first.reports / "runs" / "r1" / "run.json"
    run.parent.mkdir(parents=True)
    run.write_text('{"id": "r1", "state": "awaiting"}\n')
    _record(first, "runs/r1/train.ipynb", "notebook one", run_id="r1")
    _record(first, "approvals/0001.json", "approval")

    pulled = remote.pull(second)

    assert [e["seq"] for e in pulled] == [1, 2]
    assert (second.reports / "ledger.jsonl").read_bytes() == \
        (first.reports / "ledger.jsonl").read_bytes()
    assert (second.reports / "runs/r1/train.ipynb").read_text() == "notebook one"
    assert (second.reports / "approvals/0001.json").read_text() == "approval"
    assert json.loads((second.reports / "runs/r1/run.json").read_text())["state"] == "awaiting"
    assert ledger.verify(second.reports).ok
    assert remote.pull(second) == []  # nothing new: one listing, nothing fetched
    # the second cache appends on top of the first's entries
    entry = _record(second, "notes/b.txt", "from b")
    assert entry["seq"] == 3 and entry["prev"] == pulled[-1]["hash"]
    assert remote.pull(first)[0]["hash"] == entry["hash"]


def test_a_lost_race_pulls_the_winner_and_reseals_on_it(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    first, second = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store)
    winner = _record(first, "one.txt", "1")
    # the second cache's first listing misses the winner (as if both sealed seq 1 at once)
    real_list, stale = second.store.list, [True]

    def list_once_stale(prefix: str, start_after: str = "") -> Any:
        if prefix == remote.LEDGER_PREFIX and stale:
            stale.clear()
            return iter([])
        return real_list(prefix, start_after)

    monkeypatch.setattr(second.store, "list", list_once_stale)
    entry = _record(second, "two.txt", "2")

    assert second.races_lost == 1
    assert entry["seq"] == 2 and entry["prev"] == winner["hash"]
    assert [e["seq"] for e in ledger.entries(second.reports)] == [1, 2]
    assert remote_verify.verify(second).ok


def _appender(reports: str, count: int, who: int) -> None:
    for number in range(count):
        ledger.append(Path(reports), "load", actor={"name": f"p{who}"}, run_id=None,
                      data={"n": number})


def test_eight_processes_appending_at_once_leave_one_chain(tmp_path: Path) -> None:
    store = tmp_path / "store"
    caches = [_cache(tmp_path, f"c{n}", store) for n in range(8)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_appender, args=(str(c.reports), 25, n))
               for n, c in enumerate(caches)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    result = remote_verify.verify(caches[0])
    assert result.ok, result.problems
    assert result.entries == 200
    stored = [json.loads(FileStore(store.as_uri()).get(k)[0])  # type: ignore[index]
              for k in FileStore(store.as_uri()).list(remote.LEDGER_PREFIX)]
    per_writer = {n: sum(1 for e in stored if e["actor"]["name"] == f"p{n}") for n in range(8)}
    assert per_writer == dict.fromkeys(range(8), 25)
    for cache in caches:  # every cache, once pulled, is the same chain
        remote.pull(cache)
        assert ledger.verify(cache.reports).entries == 200


def test_a_cache_written_without_the_store_is_refused_not_forked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shared = _cache(tmp_path, "a", store)
    _record(shared, "one.txt", "1")
    lone = tmp_path / "lone" / "reports"
    lone.mkdir(parents=True)
    (lone / "x.txt").write_text("x")
    ledger.append(lone, "local", actor=None, run_id=None, files=[lone / "x.txt"])
    other = remote.attach(lone, store.as_uri())
    with pytest.raises(remote.RemoteError, match="written without the shared archive"):
        remote.pull(other)
    assert len(list(FileStore(store.as_uri()).list(remote.LEDGER_PREFIX))) == 1


def test_adopt_moves_a_local_archive_into_an_empty_store(tmp_path: Path) -> None:
    lone = tmp_path / "lone" / "reports"
    lone.mkdir(parents=True)
    (lone / "x.txt").write_text("x")
    ledger.append(lone, "local", actor=None, run_id=None, files=[lone / "x.txt"])
    archive = remote.attach(lone, (tmp_path / "store").as_uri())
    assert remote.adopt(archive) == 1
    assert remote_verify.verify(archive).ok
    with pytest.raises(remote.RemoteError, match="already holds a ledger"):
        remote.adopt(archive)
    assert _record(archive, "y.txt", "y")["seq"] == 2


def test_a_file_archived_twice_with_other_content_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store)
    _record(first, "runs/r/x.ipynb", "original")
    (second.reports / "runs/r").mkdir(parents=True)
    # the second cache never pulled, so its own x.ipynb differs: the store keeps the first
    second.in_sync = (0, ledger.GENESIS)
    (second.reports / "runs/r/x.ipynb").write_text("other")
    with pytest.raises(remote.RemoteError, match="never replaced"):
        remote.push_files(second, {"runs/r/x.ipynb": ledger.file_sha256(
            second.reports / "runs/r/x.ipynb")})
    assert FileStore(store.as_uri()).get("files/runs/r/x.ipynb")[0] == b"original"  # type: ignore[index]


def test_two_machines_driving_one_run_get_a_conflict(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store)
    record = first.reports / "runs/r1/run.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"state": "awaiting"}\n')
    _record(first, "runs/r1/a.txt", "a", run_id="r1")
    remote.pull(second)
    (second.reports / "runs/r1/run.json").write_text('{"state": "resumed by b"}\n')
    _record(second, "runs/r1/b.txt", "b", run_id="r1")  # b read it last: its write counts
    record.write_text('{"state": "resumed by a"}\n')  # a writes over what it read earlier
    with pytest.raises(remote.RemoteError, match="changed by another machine"):
        remote.push_state(first, "r1")
    with pytest.raises(remote.RemoteError, match="changed both here"):
        remote.pull(first)  # never silently drops a's change either
    record.unlink()  # a moves its copy aside: reading again takes b's state
    remote.pull(first)
    assert json.loads(record.read_text())["state"] == "resumed by b"


def test_verify_in_the_store_names_an_edited_entry_and_a_changed_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = _cache(tmp_path, "a", store)
    _record(archive, "one.txt", "1")
    _record(archive, "two.txt", "2")
    assert remote_verify.verify(archive).files == 2
    (store / "files/two.txt").write_text("tampered")
    entry = json.loads((store / "ledger/000000000001.json").read_text())
    entry["actor"] = {"name": "mallory"}
    (store / "ledger/000000000001.json").write_text(json.dumps(entry) + "\n")
    problems = remote_verify.verify(archive).problems
    assert any("000000000001.json" in p and "edited" in p for p in problems), problems
    assert any("files/two.txt" in p and "content changed" in p for p in problems), problems
    since = {"seq": 1, "hash": entry["hash"]}
    incremental = remote_verify.verify(archive, since=since)
    assert incremental.entries == 1 and incremental.since == 1


def test_store_errors_name_the_url_without_credentials(tmp_path: Path) -> None:
    assert redacted("s3://AKIA:secret@bucket/p?token=x") == "s3://***@bucket/p"
    with pytest.raises(StoreError, match=r"gs://.*no archive store for gs://"):
        open_store("gs://bucket/p")
    assert "s3" in STORES and "file" in STORES
    blocked = tmp_path / "readonly"
    blocked.write_text("a file, not a folder")
    with pytest.raises(StoreError, match="readonly"):
        FileStore((blocked / "sub").as_uri()).put_new("k", b"v")


def test_store_credentials_are_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.audit.redact import Secrets

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")  # too short to tell from text
    secrets = Secrets.from_environment([])
    assert secrets.values == {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    assert secrets.redact_text("key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") == \
        "key=[REDACTED:AWS_SECRET_ACCESS_KEY]"


def test_a_torn_cache_line_is_cut_and_pulled_again(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = _cache(tmp_path, "a", store)
    _record(archive, "one.txt", "1")
    second = _record(archive, "two.txt", "2")
    path = archive.reports / "ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:40])  # the crash came between store and cache
    archive.in_sync = None
    assert ledger.ends_torn(archive.reports)
    repaired = ledger.repair(archive.reports, None)
    assert repaired is not None and repaired["seq"] == 3  # after the store's seq 2
    assert repaired["prev"] == second["hash"]
    assert [e["seq"] for e in ledger.entries(archive.reports)] == [1, 2, 3]
    assert remote_verify.verify(archive).ok


def test_archive_commands_adopt_pull_and_report(tmp_path: Path) -> None:
    """``workbench archive push|pull|status`` on a project (a file:// store, no kernels)."""
    import subprocess
    import sys

    import yaml
    from conftest import MINI_ENVIRONMENTS, MINI_MODEL

    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "environments.yaml").write_text(yaml.safe_dump(MINI_ENVIRONMENTS))
    (root / "configs" / "model.yaml").write_text(yaml.safe_dump(MINI_MODEL))
    (root / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(
        {"name": "p", "stages": [{"name": "a", "notebook": "notebooks/a.ipynb"}]}))
    reports = root / "reports"
    reports.mkdir()
    (reports / "x.txt").write_text("kept before the team archive existed")
    ledger.append(reports, "local", actor=None, run_id=None, files=[reports / "x.txt"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workbench", "--project", str(root),
                               "archive", *args], capture_output=True, text=True, timeout=120)

    refused = cli("status")
    assert refused.returncode == 2 and "no shared archive" in refused.stderr
    store = tmp_path / "store"
    config = yaml.safe_load((root / "configs" / "pipeline.yaml").read_text())
    config["archive"] = {"url": store.as_uri()}
    (root / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(config))
    pushed = cli("push")
    assert pushed.returncode == 0 and "adopted 1 ledger entries" in pushed.stdout
    assert (store / "files" / "x.txt").read_text() == "kept before the team archive existed"
    status = cli("status")
    assert "store: 1 ledger entries" in status.stdout and "seq 1" in status.stdout
    (reports / "ledger.jsonl").unlink()  # a fresh checkout's empty cache
    (reports / "x.txt").unlink()
    pulled = cli("pull")
    assert pulled.returncode == 0 and "pulled 1 entries" in pulled.stdout
    assert (reports / "x.txt").read_text() == "kept before the team archive existed"


def test_a_record_not_yet_written_to_the_store_is_kept_when_pulling(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store)
    record = first.reports / "runs/r1/run.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"status": "running"}\n')
    _record(first, "runs/r1/a.txt", "a", run_id="r1")
    record.write_text('{"status": "running", "stage": 2}\n')  # its push failed: store down
    _record(second, "notes/b.txt", "b", run_id="r1")  # another machine appends about r1
    remote.pull(first)
    assert json.loads(record.read_text()) == {"status": "running", "stage": 2}  # kept
    remote.pull(second)
    (second.reports / "runs/r1/run.json").write_text('{"status": "failed"}\n')
    remote.push_state(second, "r1")  # now the store's copy changed too
    _record(second, "notes/c.txt", "c", run_id="r1")
    with pytest.raises(remote.RemoteError, match="changed both here"):
        remote.pull(first)
