"""JUnit XML for CI test panels: one test case per stage, gates included."""

from __future__ import annotations

# Only writes XML, never parses any.
import xml.etree.ElementTree as ET  # nosec B405
from pathlib import Path

from workbench.atomic import write_text
from workbench.config import parse_config
from workbench.run_record import RunRecord

SKIPPED_REASONS = {
    "awaiting_approval": "awaiting approval",
    "pending": "not run yet",
    "not_selected": "not selected in this partial run",
}


def to_xml(record: RunRecord) -> str:
    """The run as a JUnit ``testsuites`` document."""
    suite = ET.Element("testsuite", name=f"{record.pipeline}.{record.environment}",
                       timestamp=record.created, hostname="workbench")
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    total = 0.0
    gates = {s.name for s in parse_config(dict(record.config)).pipeline.stages if s.gate}
    for name, stage in record.stages.items():
        kind = "gate" if name in gates else "stage"
        case = ET.SubElement(suite, "testcase", classname=f"{record.pipeline}.{kind}",
                             name=name, time=f"{stage.duration_s or 0:.3f}")
        counts["tests"] += 1
        total += stage.duration_s or 0
        if stage.status in ("failed", "skipped"):
            counts["failures"] += 1
            failure = ET.SubElement(case, "failure", message=stage.error or stage.status,
                                    type=stage.status)
            failure.text = stage.error or ""
        elif stage.status in SKIPPED_REASONS:
            counts["skipped"] += 1
            message = SKIPPED_REASONS[stage.status]
            if stage.status == "awaiting_approval" and stage.gate:
                message += (f" for {stage.gate['environment']}: "
                            f"{len(stage.gate['approved_by'])} of {stage.gate['quorum']}, "
                            f"bundle {stage.gate['bundle_digest'][:12]}")
            ET.SubElement(case, "skipped", message=message)
        out = [f"status: {stage.status}"]
        if stage.reused_from:
            out.append(f"reused from run {stage.reused_from}")
        if stage.notebook:
            out.append(f"notebook: reports/runs/{stage.reused_from or record.id}/"
                       f"{stage.notebook}")
        ET.SubElement(case, "system-out").text = "\n".join(out)
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("errors", "0")
    suite.set("time", f"{total:.3f}")
    root = ET.Element("testsuites", name=f"workbench run {record.id}")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write(record: RunRecord, path: Path) -> None:
    write_text(path, to_xml(record))
