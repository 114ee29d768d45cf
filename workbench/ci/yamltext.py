"""YAML text for CI definitions: keys in the order given, scripts as literal blocks, short
lists inline, and comments above chosen keys."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: each job spells out its own values

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # list items indented under their key


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _sequence(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    """Short lists of plain words inline (``[dev, qa, main]``), anything else as a block."""
    short = all(isinstance(v, str) and re.fullmatch(r"[\w./:*$-]+", v) for v in value) \
        and sum(len(v) + 2 for v in value) < 60
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=short)


_Dumper.add_representer(str, _text)
_Dumper.add_representer(list, _sequence)


def dump(data: dict[str, Any], header: str, comments: dict[str, str] | None = None) -> str:
    """``data`` as YAML under the ``header`` comment; ``comments`` maps a key (a top-level one,
    or a job under ``jobs:``) to a comment written above it."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True,
                     default_flow_style=False)
    lines: list[str] = []
    in_jobs = False
    for line in text.splitlines():
        match = re.match(r"^( {0,2})([A-Za-z0-9_.'-]+):", line)
        if match is None:
            lines.append(line)
            continue
        if match.group(1) == "":
            in_jobs = line.startswith("jobs:")
        if match.group(1) == "" or in_jobs:
            if lines and lines[-1] not in ("", "jobs:"):
                lines.append("")  # a blank line between sections and between jobs
            note = (comments or {}).get(match.group(2).strip("'"))
            if note:
                lines += [f"{match.group(1)}# {c}" for c in wrap(note, 96 - len(match.group(1)))]
        lines.append(line)
    body = "\n".join(lines).lstrip("\n")
    head = "".join(f"# {line}\n" for line in wrap(header, 96))
    return head + body + "\n"


def wrap(text: str, width: int) -> list[str]:
    """Each paragraph line of ``text`` wrapped to ``width`` (words and backquotes kept); an
    indented line's continuations are indented two spaces more."""
    return [part for line in text.splitlines()
            for part in (textwrap.wrap(line, width, break_long_words=False,
                                       break_on_hyphens=False,
                                       subsequent_indent=_indent(line)) or [""])]


def _indent(line: str) -> str:
    leading = line[:len(line) - len(line.lstrip(" "))]
    return leading + "  " if leading else ""
