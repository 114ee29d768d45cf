"""Where each item a regulator or a model-risk reviewer asks for is in the pack, or that it
is missing: EU AI Act Annex IV (technical documentation, with Art. 12 record-keeping) and the
elements of the Federal Reserve's SR 11-7 (model risk management).

Each item lists what can answer it: pack files (by role, see :data:`ROLES`) and fields of
``configs/model_card.yaml``. An item is *present* when at least one of them is in the pack,
*partial* when some of what it names is missing, and *missing* when none is; the index says
which card field to write or what to add. It is a finding aid, not legal advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.reports.evidence.card import CardFile

# pack roles -> a description (the pack fills each with its files)
ROLES = {
    "card": "the model card (model-card.html)",
    "training": "the executed notebooks of the stages before the first gate",
    "evaluation": "the executed notebooks that output metrics",
    "gates": "the executed approval notebooks (the review and the diff shown)",
    "approvals": "the approval records",
    "promotions": "the alias-move records",
    "rollbacks": "the rollback records of this version",
    "drift": "the drift records of this version",
    "attestations": "the signed attestations",
    "ledger": "the ledger segment and its anchor",
    "config": "the configuration snapshot (run.json)",
    "environment": "the software versions (environment.json)",
    "load_tests": "the load-test results (in the model card)",
    "data_checks": "the data-contract results (in the model card)",
}


@dataclass(frozen=True)
class Item:
    framework: str  # "EU AI Act Annex IV" | "SR 11-7"
    ref: str
    title: str
    roles: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


ANNEX_IV = "EU AI Act Annex IV"
SR_11_7 = "SR 11-7"

ITEMS = (
    Item(ANNEX_IV, "1(a)", "Intended purpose, provider, version", ("card",),
         ("intended_use", "owners")),
    Item(ANNEX_IV, "1(c)", "Versions of relevant software", ("environment",)),
    Item(ANNEX_IV, "1(h)", "Instructions for use", (), ("instructions_for_use",)),
    Item(ANNEX_IV, "2(a)", "Methods and steps of development", ("training",)),
    Item(ANNEX_IV, "2(b)", "Design specifications, key choices and assumptions", ("config",),
         ("design_choices",)),
    Item(ANNEX_IV, "2(c)", "System architecture (the pipeline and its stages)", ("config",)),
    Item(ANNEX_IV, "2(d)", "Data requirements: training data, provenance, checks",
         ("data_checks", "training")),
    Item(ANNEX_IV, "2(e)", "Human oversight measures", ("approvals", "gates"),
         ("human_oversight",)),
    Item(ANNEX_IV, "2(f)", "Pre-determined changes", (), ("predetermined_changes",)),
    Item(ANNEX_IV, "2(g)", "Validation and testing: data, metrics, signed test reports",
         ("evaluation", "load_tests", "approvals")),
    Item(ANNEX_IV, "2(h)", "Cybersecurity measures", ("attestations",), ("cybersecurity",)),
    Item(ANNEX_IV, "3", "Capabilities and limitations, accuracy, foreseeable risks",
         ("card", "evaluation"), ("limitations", "out_of_scope")),
    Item(ANNEX_IV, "4", "Appropriateness of the performance metrics", ("evaluation",),
         ("metrics_rationale",)),
    Item(ANNEX_IV, "5", "Risk management system", ("rollbacks", "drift"), ("risks",)),
    Item(ANNEX_IV, "6", "Relevant changes through the lifecycle", ("gates", "promotions")),
    Item(ANNEX_IV, "7", "Harmonised standards applied", (), ("standards",)),
    Item(ANNEX_IV, "8", "EU declaration of conformity", (), ("declaration_of_conformity",)),
    Item(ANNEX_IV, "9", "Post-market monitoring plan", ("drift", "rollbacks"),
         ("post_market_monitoring",)),
    Item(ANNEX_IV, "Art. 12", "Record-keeping: automatically recorded events",
         ("ledger", "attestations")),
    Item(SR_11_7, "Development", "Model development, implementation and use: purpose, "
         "design, data", ("card", "training", "data_checks"), ("intended_use",)),
    Item(SR_11_7, "Soundness", "Conceptual soundness: design choices and their rationale",
         ("config",), ("design_choices",)),
    Item(SR_11_7, "Validation", "Validation: outcomes analysis and benchmarking against the "
         "champion", ("evaluation", "gates")),
    Item(SR_11_7, "Monitoring", "Ongoing monitoring: drift, performance, rollbacks",
         ("drift", "rollbacks"), ("post_market_monitoring",)),
    Item(SR_11_7, "Limitations", "Limitations and assumptions", (), ("limitations",)),
    Item(SR_11_7, "Governance", "Governance: approvals, roles, separation of duties",
         ("approvals", "promotions"), ("owners",)),
    Item(SR_11_7, "Documentation", "Documentation and inventory: what was released, by whom, "
         "verifiably", ("ledger", "attestations", "card")),
)


def index(files: dict[str, list[str]], card: CardFile) -> list[dict[str, Any]]:
    """Each item with where it is (pack paths and card fields) and what is missing.
    ``files``: role -> the pack paths that fill it."""
    rows = []
    for item in ITEMS:
        found = [path for role in item.roles for path in files.get(role, [])]
        written = [f"model card: {name}" for name in item.fields if getattr(card, name)]
        missing = [ROLES[role] for role in item.roles if not files.get(role)]
        missing += [f"configs/model_card.yaml: {name}" for name in item.fields
                    if not getattr(card, name)]
        state = "missing" if not found and not written else "partial" if missing else "present"
        rows.append({"framework": item.framework, "ref": item.ref, "title": item.title,
                     "state": state, "where": [*written, *found], "missing": missing})
    return rows
