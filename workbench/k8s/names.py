"""Kubernetes naming rules: DNS-1123 names, label values and resource quantities."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # at most 63 characters
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # at most 63
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and bool(DNS_LABEL.match(name))


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(DNS_SUBDOMAIN.match(name))


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label of at most ``limit`` characters (a hash keeps cut names
    apart): lower case, anything else becomes ``-``."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = name[: limit - 7].rstrip("-") + "-" + digest
    return name


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 characters of ``[-A-Za-z0-9_.]``)."""
    value = re.sub(r"[^-A-Za-z0-9_.]+", "-", text)[:63]
    return value.strip("-_.")


_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_quantity(text: str | int | float) -> Decimal:
    """A resource quantity (``250m``, ``1Gi``, ``1e3``) as a number; ValueError if invalid."""
    text = str(text)
    match = QUANTITY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 250m, 1.5, 512Mi, 2Gi)")
    number, suffix = text[: match.start(3)] if match.group(3) else text, match.group(3) or ""
    if len(suffix) > 1 and suffix[0] in "eE":  # an exponent; a lone E is exa
        return Decimal(text)
    return Decimal(number) * Decimal(str(_SUFFIXES[suffix]))
