"""The endpoint's model-server fork server, the parts that need no model: where its socket
lives, and that a deploy falls back to an ordinary start when nothing answers there."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from workbench.deploy import local, server_forks
from workbench.project import Project


def test_the_socket_lives_beside_the_endpoint_or_in_a_private_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = Project(Path(tempfile.mkdtemp(prefix="wb-")))  # tmp_path may be too long already
    try:
        assert local.forks_socket(short, "dev") == short.servers / "dev.forks.sock"
    finally:
        shutil.rmtree(short.root)

    deep = Project(tmp_path / ("very-long-folder-name-" * 6))
    temp = Path(tempfile.mkdtemp(prefix="wb-"))  # short, as /tmp is
    monkeypatch.setattr(local.tempfile, "gettempdir", lambda: str(temp))
    path = local.forks_socket(deep, "production")
    assert path is not None and len(str(path).encode()) < 108
    folder = path.parent
    assert folder == temp / f"workbench-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert local.forks_socket(deep, "production") == path  # stable
    assert local.forks_socket(deep, "qa") != path

    # A folder others may write to is not trusted: no fork server then.
    folder.chmod(0o777)
    assert local.forks_socket(deep, "production") is None
    shutil.rmtree(temp)
    # And a temp folder so deep that no socket path fits: none either.
    monkeypatch.setattr(local.tempfile, "gettempdir", lambda: str(tmp_path / ("d" * 90)))
    (tmp_path / ("d" * 90)).mkdir()
    assert local.forks_socket(deep, "production") is None


def test_no_fork_server_answering_means_none(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    assert server_forks.request_fork(tmp_path / "missing.sock", ["--port", "1"], {}, log,
                                     tmp_path) is None
    # Something else listening there, answering garbage: refused, not trusted.
    path = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b'{"pid": "not a pid"}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert server_forks.request_fork(path, ["--port", "1"], {}, log, tmp_path) is None
    finally:
        thread.join(10)
        listener.close()


def test_a_forked_server_is_watched_by_its_pid() -> None:
    forked = local.Forked(os.getpid())
    assert forked.poll() is None or forked.returncode == -1  # this process is no model server
    gone = local.Forked(2 ** 22 + 7)  # beyond pid_max: no such process
    assert gone.poll() == -1 and gone.returncode == -1
