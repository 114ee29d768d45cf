"""Evidence pack parts without kernels: the Annex IV / SR 11-7 index rule by rule, the model
card file's errors, and zips that `evidence verify` refuses to read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from workbench.project import Project
from workbench.reports.evidence import annex, card, check


def test_an_item_is_present_partial_or_missing() -> None:
    empty = annex.index({}, card.CardFile())
    assert {row["state"] for row in empty} == {"missing"}
    rows = {row["ref"]: row for row in annex.index(
        {"card": ["model-card.html"], "ledger": ["ledger/segment.jsonl"]},
        card.CardFile(intended_use="triage", owners=[]))}
    assert rows["1(a)"]["state"] == "partial"  # intended use written, owners not
    assert rows["1(a)"]["where"] == ["model card: intended_use", "model-card.html"]
    assert rows["1(a)"]["missing"] == ["configs/model_card.yaml: owners"]
    assert rows["8"] == {**rows["8"], "state": "missing",
                         "missing": ["configs/model_card.yaml: declaration_of_conformity"]}
    assert rows["Art. 12"]["state"] == "partial"
    assert rows["Art. 12"]["missing"] == ["the signed attestations"]


def test_a_bad_card_file_is_named_with_its_keys(tmp_path: Path) -> None:
    project = Project(tmp_path)
    (tmp_path / "configs").mkdir()
    assert card.read_card(project) == (card.CardFile(), None)
    (tmp_path / "configs" / card.CARD_FILE).write_text("intended_us: typo\n")
    with pytest.raises(card.EvidenceError) as found:
        card.read_card(project)
    assert "configs/model_card.yaml: intended_us: Extra inputs are not permitted" in \
        str(found.value)
    assert "intended_use" in str(found.value)


def test_verify_refuses_unsafe_names_and_non_zips(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as z:
        z.writestr("../outside.txt", b"x")
        z.writestr("/etc/passwd", b"x")
        z.writestr("manifest.json", b"{}")
    found = check.verify(unsafe)
    assert "../outside.txt: not a plain relative path: refused" in found.problems
    assert "/etc/passwd: not a plain relative path: refused" in found.problems
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    assert check.verify(junk).problems[0].startswith(f"{junk}: not a readable zip")
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as z:
        z.writestr("index.html", b"<html>")
    assert check.verify(bare).problems == ["manifest.json: missing or not a manifest"]
