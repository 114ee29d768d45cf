"""Assembling the evidence pack of one release (see :mod:`workbench.reports.evidence`).

Layout of the zip (pages link each other by relative URLs, so it opens from disk):

- ``index.html``: what the pack is and links to everything; ``model-card.html`` (and
  ``model-card.json``); ``annex-iv.html`` (and ``index.json``): where each Annex IV and SR 11-7
  item is, or that it is missing;
- ``archive/``: the archive's own files as the run wrote them, at their paths under
  ``reports/``: run record, executed notebooks and their pages, approval and promotion
  records, attestations, the rollback and drift records of this version, ``static/``;
- ``ledger/segment.jsonl``: the ledger's lines from the first entry about the release to the
  head, and ``ledger/anchor.json``: that head (a checkpoint, as ``workbench audit anchor``
  prints it): each archived file's digest is in an entry of the segment, and the segment is
  one chain up to the anchor;
- ``environment.json``: the software versions that made the pack; ``keys/``: the project's
  attestation public key, when configured;
- ``manifest.json``: every other file's sha256; ``manifest.dsse.json``: the manifest signed
  with the project's attestation key (DSSE), when the key is at hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2

from workbench import __version__, run_record
from workbench.atomic import write_bytes, write_new
from workbench.audit import ledger
from workbench.clock import stamped_id, utc_now
from workbench.governance import approvals as gov
from workbench.governance import dsse
from workbench.governance.project_key import AttestationKeyError, signing_key
from workbench.identity import current
from workbench.project import Project
from workbench.reports.evidence import annex, card
from workbench.reports.templating import private_bytecode_cache
from workbench.run_record import RunRecord

MANIFEST = "manifest.json"
MANIFEST_SIGNATURE = "manifest.dsse.json"
MANIFEST_TYPE = "application/vnd.workbench.evidence-manifest+json"
ARCHIVE = "archive/"
PACKS_PREFIX = "evidence-"
TEMPLATES = Path(__file__).resolve().parent / "templates"
VERSIONS = ("workbench", "mlflow", "papermill", "nbconvert", "scikit-learn", "pandas", "numpy")
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                          autoescape=jinja2.select_autoescape(["html", "j2"]),
                          bytecode_cache=private_bytecode_cache())


@dataclass
class Pack:
    """The pack being assembled: path in the zip -> bytes, and each path's roles."""

    files: dict[str, bytes] = field(default_factory=dict)
    roles: dict[str, list[str]] = field(default_factory=dict)
    rendered: list[str] = field(default_factory=list)  # pages made for the pack, not archived

    def add(self, path: str, data: bytes, *roles: str) -> None:
        self.files[path] = data
        for role in roles:
            self.roles.setdefault(role, []).append(path)


@dataclass(frozen=True)
class Made:
    path: Path
    files: int
    signed: bool
    missing: int  # index items with nothing in the pack


def default_environment(project: Project, record: RunRecord) -> str:
    """The furthest environment (in promotion order) the run's version was promoted to
    through a gate, else the run's own."""
    from workbench.governance.promotion import read_moves

    config = gov.run_config(record)
    moved = {m.alias for m in read_moves(project, record.id)}
    reached = [env for env in config.environments if env in moved]
    return reached[-1] if reached else record.environment


def build(project: Project, run_id: str, environment: str | None = None,
          output: Path | None = None) -> Made:
    """Write the pack of run ``run_id``'s release (into the run's archive folder, recorded in
    the ledger, unless ``output`` names a file elsewhere)."""
    record = run_record.load(project, run_id)
    config = gov.run_config(record)
    environment = environment or default_environment(project, record)
    if environment not in config.environments:
        raise card.EvidenceError(f"--env {environment}: the run's configuration has "
                                 f"environments {sorted(config.environments)}")
    written, card_text = card.read_card(project)
    pack = Pack()
    included = _archive(project, record, pack)
    events, segment, anchor = _ledger(project, record, included)
    version = record.model_version.version if record.model_version else ""
    drift = _records(project, "drift", record, version, pack, "drift")
    _records(project, "rollbacks", record, version, pack, "rollbacks")
    approvals = [r.model_dump(mode="json", exclude={"evidence"})
                 for r in gov.read_records(project, record.id)]
    found = card.facts(project, config, record, events, approvals, drift)
    pack.add("ledger/segment.jsonl", segment, "ledger")
    pack.add("ledger/anchor.json", _json(anchor), "ledger")
    pack.add("environment.json", _json(_versions()), "environment")
    if record.stages and any(e.output("data_validation") for e in record.stages.values()):
        pack.roles.setdefault("data_checks", []).append("model-card.html#data")
    if any(e.output("load_test") for e in record.stages.values()):
        pack.roles.setdefault("load_tests", []).append("model-card.html#load-tests")
    key, public = _keys(project, record, pack)
    pack.add("model-card.json", _json({"card": written.model_dump(),
                                       "facts": found.model_dump(mode="json")}), "card")
    pack.roles["card"].insert(0, "model-card.html")
    if card_text is not None:
        pack.add(f"configs/{card.CARD_FILE}", card_text.encode())
    rows = annex.index(pack.roles, written)
    context = {"facts": found, "card": written, "environment": environment, "rows": rows,
               "made": utc_now(), "anchor": anchor, "roles": pack.roles,
               "rendered": pack.rendered, "public": public, "signed": key is not None,
               "tool": __version__}
    pack.add("model-card.html", _page("model_card.html.j2", context))
    pack.add("index.json", _json({"items": rows}))
    pack.add("annex-iv.html", _page("annex.html.j2", context))
    pack.add("index.html", _page("index.html.j2", {**context, "files": sorted(pack.files)}))
    manifest = _json({"run_id": record.id, "environment": environment, "made": utc_now(),
                      "made_by": current().model_dump(), "tool": f"workbench {__version__}",
                      "rendered_for_pack": pack.rendered,
                      "files": {path: hashlib.sha256(data).hexdigest()
                                for path, data in sorted(pack.files.items())}})
    pack.files[MANIFEST] = manifest
    if key is not None:
        pack.files[MANIFEST_SIGNATURE] = dsse.seal(manifest, key, MANIFEST_TYPE).to_bytes()
    data = _zip(pack.files)
    missing = sum(1 for row in rows if row["state"] == "missing")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(output, data, mode=0o644)
        return Made(output, len(pack.files), key is not None, missing)
    target = run_record.run_dir(project, record.id) / \
        f"{PACKS_PREFIX}{environment}-{stamped_id(2)}.zip"
    write_new(target, data, mode=0o444)
    ledger.append(project.reports, "evidence_pack", actor=current().model_dump(),
                  run_id=record.id, data={"environment": environment,
                                          "signed": key is not None}, files=[target])
    from workbench.reports.site import build_run_page

    build_run_page(project, record.id)  # the run page links the pack
    return Made(target, len(pack.files), key is not None, missing)


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def _page(template: str, context: dict[str, Any]) -> bytes:
    return _env.get_template(template).render(**context).encode()


def _archive(project: Project, record: RunRecord, pack: Pack) -> set[str]:
    """The run's archived files (and those of the runs its reused stages come from), by path
    under ``reports/``; pages a stage lacks are rendered for the pack."""
    from workbench.governance.bundle import gate_stage
    from workbench.reports.render import STATIC

    config = gov.run_config(record)
    gates = {gate_stage(config, env) for env in config.gates.policies
             if any(s.gate == env for s in config.pipeline.stages)}
    first_gate = next((s.name for s in config.pipeline.stages if s.gate), None)
    before_gate = True
    folder = run_record.run_dir(project, record.id)
    included: set[str] = set()

    def take(path: Path, *roles: str) -> None:
        name = path.relative_to(project.reports).as_posix()
        included.add(name)
        pack.add(ARCHIVE + name, path.read_bytes(), *roles)

    take(folder / "run.json", "config")
    for stage in config.pipeline.stages:
        before_gate = before_gate and stage.name != first_gate
        entry = record.stages.get(stage.name)
        notebook = run_record.notebook_path(project, record, stage.name) if entry else None
        if entry is None or notebook is None or not notebook.is_file():
            continue
        roles = ["training"] if before_gate and not stage.gate else []
        roles += ["evaluation"] if entry.output("metrics") else []
        roles += ["gates"] if stage.name in gates else []
        page = notebook.with_suffix(".html")
        take(notebook)
        if page.is_file():
            take(page, *roles)
        else:
            pack.add(ARCHIVE + page.relative_to(project.reports).as_posix(),
                     _render(notebook), *roles)
            pack.rendered.append(ARCHIVE + page.relative_to(project.reports).as_posix())
    for sub, role in (("approvals", "approvals"), ("promotions", "promotions")):
        for path in sorted((folder / sub).glob("*.json")) if (folder / sub).is_dir() else []:
            take(path, role)
    for path in sorted(folder.glob("attestation-*.json")):
        take(path, "attestations")
    for path in sorted(STATIC.iterdir()):
        if path.is_file():
            pack.add(f"{ARCHIVE}static/{path.name}", path.read_bytes())
    return included


def _render(notebook: Path) -> bytes:
    """A page for a notebook the archive has none of (rendering was off or failed)."""
    import tempfile

    from workbench.reports.render import render_notebook

    with tempfile.TemporaryDirectory(prefix="workbench-evidence-") as folder:
        target = Path(folder) / notebook.with_suffix(".html").name
        render_notebook(notebook, target, static_url="../../static")
        return target.read_bytes()


def _records(project: Project, kind: str, record: RunRecord, version: str, pack: Pack,
             role: str) -> list[dict[str, Any]]:
    """The records of ``reports/<kind>/`` about this model version."""
    folder = project.reports / kind
    model = record.model_version.name if record.model_version else ""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        versions = {str(data.get(k)) for k in ("version", "from_version", "to_version")}
        if isinstance(data, dict) and data.get("model") == model and version in versions:
            pack.add(f"{ARCHIVE}{kind}/{path.name}", path.read_bytes(), role)
            found.append(data)
    return found


def _ledger(project: Project, record: RunRecord, included: set[str]
            ) -> tuple[list[dict[str, Any]], bytes, dict[str, Any]]:
    """(alias moves and rollbacks of the version, the segment's bytes, its anchor): the
    segment runs from the first entry naming the run or one of its files to the head."""
    version = record.model_version
    first: int | None = None
    events: list[dict[str, Any]] = []
    for entry in ledger.entries(project.reports):
        files = entry.get("files") or {}
        if first is None and (entry.get("run_id") == record.id
                              or any(name in included for name in files)):
            first = int(entry.get("seq") or 0)
        data = entry.get("data") or {}
        if version and entry.get("event") in ("alias_move", "rollback") \
                and data.get("model") == version.name \
                and version.version in (str(data.get("to_version")),
                                        str(data.get("from_version"))):
            events.append({"seq": entry.get("seq"), "time": entry.get("time"),
                           "event": entry.get("event"), "run_id": entry.get("run_id"),
                           **{k: data.get(k) for k in ("alias", "environment", "from_version",
                                                       "to_version", "trigger", "reason")
                              if data.get(k) is not None}})
    anchor = ledger.checkpoint(project.reports)
    lines = io.BytesIO()
    with ledger.ledger_path(project.reports).open("rb") as handle:
        read = 0
        for line in handle:
            read += len(line)
            if read > anchor["offset"]:
                break
            entry = json.loads(line)
            if first is not None and int(entry.get("seq") or 0) >= first:
                lines.write(line)  # as stored: its hash is over these bytes' entry
    return events, lines.getvalue(), anchor


def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(),
                             "platform": platform.platform()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _keys(project: Project, record: RunRecord, pack: Pack) -> tuple[Any, str | None]:
    """The attestation signing key when at hand (None otherwise), and the public key's path
    in the pack (copied there) when one is configured."""
    config = gov.run_config(record)
    settings = config.pipeline.attestation
    public = None
    if settings.public_key and (project.root / settings.public_key).is_file():
        public = f"keys/{Path(settings.public_key).name}"
        pack.add(public, (project.root / settings.public_key).read_bytes())
    try:
        found = signing_key(project, config)
    except AttestationKeyError:
        found = None
    return (found.key if found else None), public


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def packs(project: Project, run_id: str) -> list[str]:
    """The packs archived for a run, by file name, oldest first (for the run page)."""
    folder = run_record.run_dir(project, run_id)
    return sorted(p.name for p in folder.glob(f"{PACKS_PREFIX}*.zip"))
