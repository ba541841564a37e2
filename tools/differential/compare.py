"""Comparing the two servers' answers to a query, and explaining each difference."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import SPS, SPS_PREFIX
from .answers import Response, Tree, freeze, same_trees, show
from .intended import (
    CHARS,
    EMPTY_SQ,
    EXPANSION,
    FORMS,
    LABEL,
    LIST_VM1,
    MULTI_ITEM,
    NIGHT,
    NOT_MATCHED,
    OUTSIDE,
    PARTIAL_TIME,
    PN_GROUPS,
    PROTOCOL_CODES,
    REFUSED,
    SCPFS_LITERAL,
    SCPFS_MATCHED,
    SCPFS_ONLY_EXPANSION,
    SCPFS_SINGLE_VALUED,
    TABLE_KEYS,
    TEXT_VRS,
    WILDCARD,
    WLM_MATCHED,
)
from .models import (
    alternatives_of,
    datetime_verdict,
    reference_verdict,
    scpfs_verdict,
    span,
    tm_end,
    tm_start,
)
from .queries import (
    Constraint,
    KeyPath,
    Query,
    constraints,
    item_values,
    neutralized,
    query_charset,
    requested,
    sps_item_is_empty,
)
from .servers import label_problem
from .store import WlFile

#: Differences that are neither in :data:`INTENDED` nor the harness's: likely wlmserver bugs.
INVALID_CS = "invalid CS value answered"
#: Kinds of difference that look like wlmserver bugs (each its own xfail test). Empty: the two
#: found by the first runs (a date and a time of different forms combined into one range; a CS
#: value in lower case answered instead of refused) are fixed.
SUSPECTED: dict[str, str] = {}

Check = Callable[[Tree, "str | None"], bool]
"""A verdict on one answer (its tree and its character set)."""


@dataclass(frozen=True)
class Flag:
    """Matching keys on which wlmscpfs and wlmserver may intend to differ, with how each
    matches them: ``stages[0]`` is wlmscpfs's way, each further stage changes one respect
    (named by its kind) and the last is wlmserver's documented way."""

    constraints: tuple[Constraint, ...]
    stages: tuple[tuple[str, Check], ...]

    @property
    def paths(self) -> list[KeyPath]:
        return [c.path for c in self.constraints]


def in_table(path: KeyPath) -> bool:
    """Whether a key is in Table K.6-1 (a key inside one of its sequences counts as in)."""
    return (path[:2] if path[0] == SPS and len(path) > 1 else path[:1]) in TABLE_KEYS


def _on(path: KeyPath, test: Callable[[Sequence[str], str | None], bool]) -> Check:
    return lambda tree, cs: _matches_in(tree, path, lambda v: test(v, cs))


def _always(tree: Tree, cs: str | None) -> bool:
    return True


SPS_DATE = (SPS, "ScheduledProcedureStepStartDate")
SPS_TIME = (SPS, "ScheduledProcedureStepStartTime")


def flags(query: Query) -> list[Flag]:
    """The matching keys of a query on which wlmscpfs and wlmserver may intend to differ."""
    out = []
    qcs = query_charset(query)
    by_path = {c.path: c for c in constraints(query)}
    for c in by_path.values():
        if c.vr in ("DA", "TM", "DT"):
            continue
        reference = _on(c.path, lambda v, cs, c=c: reference_verdict(c, v))  # type: ignore[misc]
        if c.path not in WLM_MATCHED:
            continue  # a return key only, for both
        if c.path not in SCPFS_MATCHED:
            out.append(Flag((c,), (("", _always), (NOT_MATCHED, reference))))
        elif (
            (c.path in SCPFS_LITERAL and ("*" in c.value or "?" in c.value))
            or (c.vr in TEXT_VRS and (not c.value.isascii() or "?" in c.value))
            or c.vr == "PN"
            or (c.path in SCPFS_SINGLE_VALUED and "\\" in c.value)
        ):
            literal = c.path in SCPFS_LITERAL
            stages: tuple[tuple[str, Check], ...] = (
                ("", _on(c.path, lambda v, cs, c=c: scpfs_verdict(c, v, qcs, cs))),  # type: ignore[misc]
                (
                    CHARS,
                    _on(
                        c.path,
                        lambda v, cs, c=c, lit=literal: reference_verdict(  # type: ignore[misc]
                            c, v, groups=False, wildcards=not lit
                        ),
                    ),
                ),
                (
                    WILDCARD,
                    _on(c.path, lambda v, cs, c=c: reference_verdict(c, v, groups=False)),  # type: ignore[misc]
                ),
                (PN_GROUPS, reference),
            )
            out.append(Flag((c,), stages))
    d, t = by_path.get(SPS_DATE), by_path.get(SPS_TIME)
    if t is not None:
        d_span, t_span = None if d is None else span(d.value), span(t.value)

        def when(precision: bool, night: bool, standard_forms: bool) -> Check:
            def check(tree: Tree, cs: str | None) -> bool:
                items = tree.get(SPS)
                item = items[0] if isinstance(items, list) and items else {}
                days = item.get(SPS_DATE[1]) or (() if d_span else ("",))  # date not asked
                times = item.get(SPS_TIME[1]) or ()
                return any(
                    datetime_verdict(
                        d_span,
                        t_span,
                        day,
                        time_,
                        precision=precision,
                        night=night,
                        standard_forms=standard_forms,
                    )
                    for day in days
                    for time_ in times
                )

            return check

        pair = (t,) if d is None else (d, t)
        out.append(
            Flag(
                pair,
                (
                    ("", when(False, False, False)),
                    (PARTIAL_TIME, when(True, False, False)),
                    (NIGHT, when(True, True, False)),
                    (FORMS, when(True, True, True)),
                ),
            )
        )
    return out


def list_on_single_valued(query: Query) -> bool:
    """Whether the query holds a backslash list on a key wlmscpfs refuses lists on."""
    return any(
        c.path in SCPFS_SINGLE_VALUED and "\\" in c.value and not _invalid_cs(c)
        for c in constraints(query)
    )


def _invalid_cs(c: Constraint) -> bool:
    return c.vr == "CS" and re.fullmatch(r"[A-Z0-9 _*?\\]*", c.value) is None


def refusal_reasons(query: Query) -> list[str]:
    """Why wlmserver refuses a query (the REFUSED row): on its matching keys, date ranges that
    end before they start (a time range may: it crosses midnight), a date range and a time
    range that make a date-time range ending before it starts, ``-`` alone, wildcards in
    UIDs. The values of return keys are not looked at."""
    reasons = []
    matched = [c for c in constraints(query) if c.path in WLM_MATCHED]
    by_path = {c.path: c for c in matched}
    d, t = by_path.get(SPS_DATE), by_path.get(SPS_TIME)
    d_span = None if d is None or "\\" in d.value else span(d.value)
    t_span = None if t is None or "\\" in t.value else span(t.value)
    if d_span is not None and t_span is not None and d_span.form == t_span.form == "R":
        assert d_span.lo and d_span.hi and t_span.lo and t_span.hi
        if d_span.lo + tm_start(t_span.lo) > d_span.hi + tm_end(t_span.hi, precision=True):
            reasons.append("date-time range ends before it starts")
    for c in matched:
        where = ".".join(c.path)
        for alternative in alternatives_of(c.vr, c.value):
            if c.vr == "UI" and ("*" in alternative or "?" in alternative):
                reasons.append(f"wildcard in UID {where}")
            if c.vr in ("DA", "TM", "DT") and alternative == "-":
                reasons.append(f"'-' alone in {where}")
            s = span(alternative) if c.vr in ("DA", "DT") else None
            if s is not None and s.lo is not None and s.hi is not None and s.lo > s.hi:
                reasons.append(f"reversed range in {where}")
    return reasons


def _lookup(tree: Tree, path: KeyPath) -> list[tuple[str, ...]]:
    """The values at ``path`` in an answer: one tuple per reached item (empty if absent)."""
    if len(path) == 1:
        value = tree.get(path[0])
        return [value] if isinstance(value, tuple) else [()]
    items = tree.get(path[0])
    if not isinstance(items, list):
        return [()]
    return [v for item in items for v in _lookup(item, path[1:])] or [()]


def _matches_in(tree: Tree, path: KeyPath, test: Callable[[Sequence[str]], bool]) -> bool:
    """Whether an answer matches at ``path`` (through sequences: if any item matches)."""
    return any(test(values) for values in _lookup(tree, path))


def _prune(tree: Tree, path: KeyPath, test: Callable[[Sequence[str]], bool]) -> Tree:
    """Keep, in the sequences along ``path`` below the SPS item, only the items that match."""
    if len(path) == 1:
        return tree
    out = dict(tree)
    items = tree.get(path[0])
    if isinstance(items, list):
        kept = [_prune(i, path[1:], test) for i in items]
        if path[0] != SPS:  # the SPS item is the entry itself, never pruned
            kept = [i for i in kept if _matches_in(i, path[1:], test)]
        out[path[0]] = kept
    return out


@dataclass
class Model:
    """What the generator wrote, for what wlmscpfs's answers do not say: attributes it does
    not return, and whether an entry has a sequence it was asked for."""

    by_uid: dict[str, WlFile]

    def top_values(self, uid: str, keyword: str) -> tuple[str, ...]:
        wl = self.by_uid.get(uid)
        return tuple(item_values(wl.top, keyword)) if wl is not None else ()

    def lacks(self, tree: Tree, keyword: str, item: Tree | None = None) -> bool | None:
        """Whether the entry of an answer lacks a sequence (at the top, or in its SPS item,
        found by the SPS ID the answer holds); None when unknown."""
        wl = self.by_uid.get(_uid(tree))
        if wl is None:
            return None
        if item is None:
            return not wl.top.get(keyword)
        step_id = item.get("ScheduledProcedureStepID") or ()
        steps = [s for s in wl.steps if step_id and s.get("ScheduledProcedureStepID") == step_id[0]]
        return not steps[0].get(keyword) if len(steps) == 1 else None


def _uid(tree: Tree) -> str:
    values = tree.get("StudyInstanceUID")
    return values[0] if isinstance(values, tuple) and values else ""


def _all_empty(item: Tree) -> bool:
    return all(v == () or v == [] for v in item.values())


def _as_wlmserver_sequences(
    tree: Tree, keywords: Sequence[str], whole: Sequence[str], lacks: Callable[[str], bool | None]
) -> set[str]:
    """Requested sequences of an answer of wlmscpfs as wlmserver returns them: one the entry
    lacks empty (wlmscpfs leaves it out, or returns the query's item, values and all: EMPTY_SQ);
    one requested whole (no keys in its item) with each item as the entry has it, not with the
    zero-length keys of wlmscpfs's expansion list (EXPANSION)."""
    kinds = set()
    for keyword in keywords:
        value = tree.get(keyword)
        lacking = lacks(keyword)
        if lacking is None:  # unknown entry: what wlmscpfs returns for a lacking sequence
            lacking = value is None or (
                isinstance(value, list) and len(value) == 1 and _all_empty(value[0])
            )
        if lacking:
            if value != []:
                tree[keyword] = []
                kinds.add(EMPTY_SQ)
        elif keyword in whole and isinstance(value, list):
            trimmed = [{k: v for k, v in item.items() if v != ()} for item in value]
            if trimmed != value:
                tree[keyword] = trimmed
                kinds.add(EXPANSION)
    return kinds


def as_wlmserver_answers(
    query: Query, trees: Sequence[Tree], model: Model
) -> tuple[list[Tree], set[str]]:
    """wlmscpfs's answers turned into what wlmserver intends to answer, by the intended
    differences in what is returned (not in what matches); returns them and the kinds that
    changed anything."""
    kinds: set[str] = set()
    wanted = requested(query)
    outside = [p[0] for p in wanted if len(p) == 1 and not in_table(p)]
    sequences = [p for p, is_sequence in wanted.items() if is_sequence and p != (SPS,)]
    whole = [p for p in sequences if not any(len(q) > len(p) and q[: len(p)] == p for q in wanted)]
    top = [p[0] for p in sequences if len(p) == 1]
    top_whole = [p[0] for p in whole if len(p) == 1]
    in_sps = [p[1] for p in sequences if len(p) == 2 and p[0] == SPS]
    sps_whole = [p[1] for p in whole if len(p) == 2 and p[0] == SPS]
    if sps_item_is_empty(query):  # expanded: the SPS keys of Table K.6-1 (wlmserver)
        in_sps = sps_whole = [PROTOCOL_CODES]
    out = []
    for tree in trees:
        t = dict(tree)
        for keyword in outside:
            if keyword not in t:
                t[keyword] = model.top_values(_uid(t), keyword)
                kinds.add(OUTSIDE)
        kinds |= _as_wlmserver_sequences(
            t,
            top,
            top_whole,
            lambda k, t=t: model.lacks(t, k),  # type: ignore[misc]
        )
        if isinstance(t.get(SPS), list):
            items = []
            for item in t[SPS]:
                item = dict(item)
                if sps_item_is_empty(query):
                    for keyword in SCPFS_ONLY_EXPANSION:
                        if item.pop(keyword, None) is not None:
                            kinds.add(EXPANSION)
                kinds |= _as_wlmserver_sequences(
                    item,
                    in_sps,
                    sps_whole,
                    lambda k, t=t, item=item: model.lacks(t, k, item),  # type: ignore[misc]
                )
                items.append(item)
            t[SPS] = items
        out.append(t)
    return out, kinds


@dataclass
class Outcome:
    """The comparison of one query."""

    query: Query
    expected: Response  # wlmscpfs
    got: Response  # wlmserver
    kinds: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # why a difference is not intended
    neutral: Response | None = None

    @property
    def problem(self) -> str:
        return "; ".join(self.problems)

    @property
    def identical(self) -> bool:
        return not self.kinds and not self.problems

    def report(self, limit: int = 8) -> str:
        """A readable account of an unexplained difference."""
        lines = [
            f"query {self.query.number} ({'; '.join(self.query.notes)}):",
            f"  {self.query.findscu()}",
            f"  why: {self.problem}",
            f"  wlmscpfs: {self.expected.describe()}",
            f"  wlmserver: {self.got.describe()}",
        ]
        e = Counter(freeze(t) for t in self.expected.answers)
        g = Counter(freeze(t) for t in self.got.answers)
        by_key = {freeze(t): t for t in [*self.expected.answers, *self.got.answers]}
        only_e, only_g = list((e - g).elements()), list((g - e).elements())
        for title, items in (("only from wlmscpfs", only_e), ("only from wlmserver", only_g)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {show(by_key[k])}" for k in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... {len(items) - limit} more")
        lines += _paired_differences([by_key[k] for k in only_e], [by_key[k] for k in only_g])
        return "\n".join(lines)


def _identity(tree: Tree) -> tuple[str, str]:
    items = tree.get(SPS)
    step = items[0].get("ScheduledProcedureStepID", ()) if isinstance(items, list) and items else ()
    return _uid(tree), step[0] if step else ""


def _flat(tree: Tree, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{SPS_PREFIX if key == SPS and not prefix else key}"
        if isinstance(value, list):
            out[path] = f"<{len(value)} items>"
            for i, item in enumerate(value):
                out.update(_flat(item, f"{path}[{i}]."))
        else:
            out[path] = "\\".join(value) if value else "<zero-length>"
    return out


def _paired_differences(only_e: list[Tree], only_g: list[Tree], limit: int = 3) -> list[str]:
    """For answers of the same entry (Study Instance UID and SPS ID) on both sides, the keys
    whose values differ."""
    by_identity = {_identity(t): t for t in only_g}
    lines: list[str] = []
    for e in only_e:
        g = by_identity.get(_identity(e))
        if g is None or len(lines) >= limit:
            continue
        fe, fg = _flat(e), _flat(g)
        diffs = [
            f"{k}: wlmscpfs {fe.get(k, '<absent>')}, wlmserver {fg.get(k, '<absent>')}"
            for k in sorted(set(fe) | set(fg))
            if fe.get(k) != fg.get(k)
        ]
        lines.append(f"  same entry {_identity(e)[0]} {_identity(e)[1]}: " + "; ".join(diffs))
    return lines


class Comparer:
    """Compares the answers of both servers to one query and explains their differences."""

    def __init__(
        self, model: Model, multi_uids: set[str], ask_wlmscpfs: Callable[[Query], Response]
    ) -> None:
        self.model = model
        self.multi_uids = multi_uids
        self.ask_wlmscpfs = ask_wlmscpfs

    def compare(self, query: Query, expected: Response, got: Response) -> Outcome:
        """Compare both servers' responses to a query; classify any difference."""
        out = Outcome(query, expected, got)
        out.problems += sorted({label_problem(label) for label in got.labels} - {""})
        if any(_uid(t) in self.multi_uids for t in got.answers):
            out.kinds.add(MULTI_ITEM)
        e_class, g_class = expected.status_class, got.status_class
        reasons = refusal_reasons(query)
        invalid = [c for c in constraints(query) if _invalid_cs(c)]
        if "none" in (e_class, g_class):
            out.problems.append("no final status")
        elif e_class == g_class == "failure":
            pass  # both refuse the query
        elif g_class == "failure":
            if e_class == "success" and reasons and got.status == 0xA900 and not got.answers:
                out.kinds.add(REFUSED)
            else:
                out.problems.append("wlmserver fails where wlmscpfs answers")
        elif g_class != "success" or e_class not in ("success", "failure"):
            out.problems.append("final status classes differ")
        elif reasons:
            out.problems.append(
                f"wlmserver answers a query it should refuse ({'; '.join(reasons)})"
            )
        elif e_class == "failure" and invalid:
            out.problems.append(
                f"suspected wlmserver bug: {INVALID_CS} ({', '.join(c.value for c in invalid)})"
            )
        elif e_class == "failure" and not list_on_single_valued(query):
            out.problems.append("wlmscpfs fails where wlmserver answers")
        else:
            self._compare_answers(out)
        return out

    def _compare_answers(self, out: Outcome) -> None:
        query, expected, got = out.query, out.expected, out.got
        expected_trees, kinds = as_wlmserver_answers(query, expected.answers, self.model)
        if expected.status_class == "success" and same_trees(expected_trees, got.answers):
            out.kinds |= kinds
            e_labels = Counter(zip(map(freeze, expected_trees), expected.labels, strict=True))
            g_labels = Counter(zip(map(freeze, got.answers), got.labels, strict=True))
            if e_labels != g_labels:
                out.kinds.add(LABEL)
            return
        query_flags = flags(query)
        if not query_flags:
            out.problems.append("answers differ (no intended difference concerns this query)")
            return
        self._explain(out, query_flags, expected_trees, kinds)

    def _explain(
        self, out: Outcome, query_flags: list[Flag], expected_trees: list[Tree], kinds: set[str]
    ) -> None:
        """Ask wlmscpfs again without the flagged keys; filter its answers by how wlmscpfs
        matches those keys (must give its answers back) and by how wlmserver is documented to
        match them (must give wlmserver's answers); count the respects that made a difference."""
        query = out.query
        paths = sorted({p for f in query_flags for p in f.paths})
        shown = ", ".join(".".join(p[-2:] if p[0] == SPS else p) for p in paths)
        neutral = self.ask_wlmscpfs(neutralized(query, paths))
        out.neutral = neutral
        if neutral.status_class != "success":
            out.problems.append(f"wlmscpfs fails the query without {shown}: {neutral.describe()}")
            return
        trees, neutral_kinds = as_wlmserver_answers(query, neutral.answers, self.model)
        labels = ["\\".join(lab) if lab else None for lab in neutral.labels]
        answers = list(zip(trees, labels, strict=True))
        first = [f.stages[0][1] for f in query_flags]
        last = [f.stages[-1][1] for f in query_flags]
        if out.expected.status_class == "success":
            predicted = [t for t, cs in answers if all(check(t, cs) for check in first)]
            if not same_trees(predicted, expected_trees):
                out.problems.append(
                    f"not an intended difference: wlmscpfs's answers are not those of the "
                    f"query without {shown} filtered by how wlmscpfs matches them "
                    f"({len(expected_trees)} answered, {len(predicted)} so filtered)"
                )
                return
        reference = []
        for t, cs in answers:
            if all(check(t, cs) for check in last):
                for f in query_flags:
                    for c in f.constraints:
                        if len(c.path) > (2 if c.path[0] == SPS else 1):
                            t = _prune(t, c.path, lambda v, c=c: reference_verdict(c, v))  # type: ignore[misc]
                reference.append(t)
        if not same_trees(reference, out.got.answers):
            out.problems.append(
                f"wlmserver's answers are not those of the query without {shown} filtered by "
                f"wlmserver's documented matching ({len(reference)} so filtered, "
                f"{len(out.got.answers)} answered)"
            )
            return
        contributed = _contributions(query_flags, answers)
        if out.expected.status_class == "failure":
            contributed.add(LIST_VM1)
        suspected = sorted(contributed & set(SUSPECTED))
        if suspected:
            out.problems += [f"suspected wlmserver bug: {k}" for k in suspected]
        out.kinds |= kinds | neutral_kinds | (contributed - set(SUSPECTED))


def _contributions(query_flags: list[Flag], answers: list[tuple[Tree, str | None]]) -> set[str]:
    """The respects (stage kinds) that change the verdict on some answer that the other flags
    let through (as wlmscpfs or as wlmserver matches them)."""
    kinds = set()
    for f in query_flags:
        others = [g for g in query_flags if g is not f]
        for t, cs in answers:
            if not (
                all(g.stages[0][1](t, cs) for g in others)
                or all(g.stages[-1][1](t, cs) for g in others)
            ):
                continue
            verdicts = [check(t, cs) for _, check in f.stages]
            for (kind, _), before, after in zip(f.stages[1:], verdicts, verdicts[1:], strict=False):
                if before != after:
                    kinds.add(kind)
    return kinds
