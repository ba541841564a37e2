"""Answers as trees of decoded values, compared as multisets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from . import SCS_TAG, SPS, SPS_PREFIX
from .intended import TEXT_VRS

Tree = dict[str, Any]  # keyword -> tuple[str, ...] (values) or list[Tree] (items)
Frozen = tuple[tuple[str, Any], ...]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def strip_padding(vr: str, text: str) -> str:
    text = text.rstrip(" \x00")
    return text if vr in TEXT_VRS else text.lstrip(" ")


def answer_tree(ds: Dataset) -> Tree:
    """A pydicom dataset as an answer tree (``{keyword: values or items}``), decoded, padding
    stripped, without its Specific Character Set: what :func:`parse_identifier` must make of
    the same bytes (a test checks it)."""
    out: Tree = {}
    for elem in ds:
        if elem.tag == SCS_TAG:
            continue
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            out[name] = [answer_tree(item) for item in elem.value or []]
            continue
        value = elem.value
        if value is None or value == "" or value == b"":
            out[name] = ()
        elif isinstance(value, (MultiValue, list, tuple)):
            out[name] = tuple(strip_padding(elem.VR, _text(v)) for v in value)
        else:
            out[name] = (strip_padding(elem.VR, _text(value)),)
    return out


def freeze(tree: Tree) -> Frozen:
    """A hashable form of an answer tree."""
    return tuple(
        sorted(
            (k, tuple(freeze(i) for i in v) if isinstance(v, list) else v) for k, v in tree.items()
        )
    )


def show(tree: Tree, prefix: str = "") -> str:
    """An answer as ``key=value | ...`` (findscu path syntax), for reports."""
    parts = []
    for key, value in sorted(tree.items()):
        path = f"{prefix}{SPS_PREFIX if key == SPS and not prefix else key}"
        if isinstance(value, list):
            if not value:
                parts.append(f"{path}=<empty sequence>")
            for i, item in enumerate(value):
                parts.append(show(item, f"{path}[{i}].") if item else f"{path}[{i}]=<empty item>")
        else:
            joined = "\\".join(value)
            parts.append(f"{path}={joined}" if value else f"{path}=<zero-length>")
    return " | ".join(parts)


@dataclass
class Response:
    """What one C-FIND brought back: the final status (None: none came) and the answers,
    decoded into trees, with each answer's Specific Character Set."""

    status: int | None
    answers: list[Tree] = field(default_factory=list)
    labels: list[tuple[str, ...]] = field(default_factory=list)
    error: str = ""

    @property
    def status_class(self) -> str:
        if self.status is None:
            return "none"
        if self.status == 0:
            return "success"
        if self.status == 0xFE00:
            return "cancel"
        if self.status in (0x0001, 0x0107, 0x0116) or self.status >> 12 == 0xB:
            return "warning"
        return "failure"

    def describe(self) -> str:
        status = "no final status" if self.status is None else f"0x{self.status:04X}"
        return f"{status} ({self.status_class}), {len(self.answers)} answers{self.error}"


def same_trees(a: Sequence[Tree], b: Sequence[Tree]) -> bool:
    return Counter(freeze(t) for t in a) == Counter(freeze(t) for t in b)
