"""Compiled templates kept between commands (workbench/reports/templating.py)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from workbench.reports import templating


def test_a_second_environment_loads_the_compiled_template_instead_of_compiling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # Jinja's per-user folder under the temp folder
    monkeypatch.setattr("tempfile.tempdir", None)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "page.html").write_text("<p>{{ name }}</p>", encoding="utf-8")

    def environment() -> jinja2.Environment:
        cache = templating.private_bytecode_cache()
        assert cache is not None
        return jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path / "templates"),
                                  autoescape=True, bytecode_cache=cache)

    assert environment().get_template("page.html").render(name="<b>") == "<p>&lt;b&gt;</p>"
    cached = list(tmp_path.glob("_jinja2-cache-*/__jinja2_*.cache"))
    assert len(cached) == 1 and (cached[0].parent.stat().st_mode & 0o777) == 0o700
    compiled: list[str] = []
    real_compile = jinja2.Environment.compile
    monkeypatch.setattr(jinja2.Environment, "compile",
                        lambda self, *a, **k: compiled.append("x") or real_compile(self, *a, **k))
    assert environment().get_template("page.html").render(name="a") == "<p>a</p>"
    assert compiled == []  # loaded from the cache
    (tmp_path / "templates" / "page.html").write_text("<i>{{ name }}</i>", encoding="utf-8")
    assert environment().get_template("page.html").render(name="a") == "<i>a</i>"
    assert compiled == ["x"]  # an edited template is compiled again


def test_without_a_private_folder_templates_are_compiled_each_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> None:
        raise RuntimeError("the cache folder is owned by another user")

    monkeypatch.setattr(jinja2, "FileSystemBytecodeCache", refused)
    assert templating.private_bytecode_cache() is None
