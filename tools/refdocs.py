"""Write the documentation's generated reference, so that it cannot drift from the code.

- ``docs/reference/options.md``, whole: every command-line option from the server's argument
  parser (:func:`wlmserver.config.options.build_parser`), group by group, with its
  configuration file key, and the configuration file's tables and keys
  (:mod:`wlmserver.config.file`, :mod:`wlmserver.config.certificates`);
- in ``docs/conformance-statement.md``, the text between ``<!-- generated: NAME -->`` and
  ``<!-- end: NAME -->``: the SOP classes and transfer syntaxes of
  :mod:`wlmserver.service.server`, the association defaults of the parser, the worklist keys of
  :data:`wlmserver.matching.keys.WORKLIST_KEYS` (matching type, matched by default, return
  type), the matching rules per VR, and the statuses of :mod:`wlmserver.matching.status` and
  :mod:`wlmserver.matching.mpps`. The text around them is written by hand.

``tests/test_docs.py`` fails while a committed page differs from what this makes.

Usage::

    python3 tools/refdocs.py            # write the pages
    python3 tools/refdocs.py --check    # exit status 1, naming the pages that differ
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from pathlib import Path

from pydicom.datadict import dictionary_description, dictionary_VR
from pydicom.uid import UID

from wlmserver.config import certificates, file
from wlmserver.config.options import build_parser
from wlmserver.matching import keys
from wlmserver.matching.keys import Level, WorklistKey
from wlmserver.matching.mpps import MppsStatus
from wlmserver.matching.status import Status
from wlmserver.service import server

ROOT = Path(__file__).resolve().parent.parent
OPTIONS_PAGE = ROOT / "docs" / "reference" / "options.md"
CONFORMANCE_PAGE = ROOT / "docs" / "conformance-statement.md"
GENERATOR = "python3 tools/refdocs.py"

#: Options that are not ``[server]`` keys of the configuration file.
NOT_IN_FILE = frozenset({"help", "version", "config"})

#: What each key of an allow-list does (``[access]``, ``[access.called.<AET>]``): an example
#: value, and Markdown.
ALLOW_KEYS = {
    "calling-ae-titles": (
        '["CT*", "MR01"]',
        "admit only these calling AE titles (`*` and `?` wildcards, case-sensitive); "
        "others get A-ASSOCIATE-RJ, calling AE title not recognized",
    ),
    "hosts": (
        '["10.20.0.0/16"]',
        "admit only peers from these addresses or networks (host names are not looked up)",
    ),
}

#: What each key of a modality profile does (``[profiles.<name>]``).
PROFILE_KEYS = {
    "calling-ae-titles": (
        '["CT*"]',
        "the calling AE titles the profile applies to (the first profile whose titles match, "
        "in file order; `[profiles.default]` needs none and applies to every other title)",
    ),
    "station-filter": (
        "true",
        "a query whose ScheduledStationAETitle is absent, empty or `*` answers only the steps "
        "of the calling AE title (not standard)",
    ),
    "date-window": (
        "[-1, 1]",
        "a query whose SPS start date is universal answers only steps from today+before to "
        "today+after",
    ),
    "charset": (
        '"latin1"',
        'the answers\' character set policy: `"file"` (as `-csk`) or `"latin1"` (as `-cs1`)',
    ),
    "sq-expansion": ("false", "an empty SPS item in a query is not expanded (as `-nse`)"),
    "omit-empty-optional": (
        "true",
        "requested keys empty in the answer are left out, but Table K.6-1's Type 1 and 2 "
        "return keys",
    ),
    "hide-status": (
        '["COMPLETED"]',
        "the step statuses not answered to this modality, instead of `--hide-status`",
    ),
    "match-keys": (
        '["PregnancyStatus"]',
        "these keys are matched too (by default a return key only), by the C.2.2.2 rule for "
        "their VR",
    ),
    "match-all-keys": (
        "true",
        "every key of the query is matched, in Table K.6-1 or not, but the `-` ones",
    ),
}

#: What each option key of ``[access.certificates]`` does.
CERTIFICATE_OPTION_KEYS = {
    certificates.REFUSE_UNBOUND: (
        "true",
        "over TLS, refuse every calling AE title that no key binds (default false)",
    ),
}


def escape(text: str) -> str:
    """Text for a Markdown table cell, shown as written.

    Examples
    --------
    >>> escape("DIR/<AETitle>/ | *.json")
    'DIR/&lt;AETitle&gt;/ \\\\| \\\\*.json'
    """
    for char in "\\`*_|[]":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def code(text: str) -> str:
    """Text as inline code in a table cell (``|`` escaped: tables split cells on it)."""
    return "`" + text.replace("|", "\\|") + "`"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- options


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def _is_number(action: argparse.Action) -> bool:
    if not callable(action.type):
        return False
    try:
        value = action.type("1")
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metavar(action: argparse.Action) -> tuple[str, ...]:
    if isinstance(action.metavar, tuple):
        return action.metavar
    if action.metavar:
        return (action.metavar,)
    if action.choices:
        return ("{" + ",".join(map(str, action.choices)) + "}",)
    return (action.dest.upper(),)


def _value(action: argparse.Action) -> str:
    """What the option takes on the command line."""
    if action.nargs == 0:
        return ""
    return " ".join(_metavar(action))


def _file_key(action: argparse.Action) -> str:
    """The option as a ``[server]`` key, with the kind of value it takes there."""
    longs = [o[2:] for o in action.option_strings if o.startswith("--")]
    name = longs[0] if longs else action.dest
    if name in NOT_IN_FILE:
        return "—"
    if action.nargs == 0:
        return code(f"{name} = true")
    quote = "" if _is_number(action) else '"'
    values = [f"{quote}{m}{quote}" for m in _metavar(action)]
    if isinstance(action, argparse._AppendAction):
        return code(f"{name} = [{values[0]}, ...]")
    if isinstance(action.nargs, int):
        return code(f"{name} = [{', '.join(values)}]")
    return code(f"{name} = {values[0]}")


def _default(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The default, where the parser holds it in the unit the option takes."""
    if action.nargs == 0:
        effect = getattr(action, "const", None)
        default = parser.get_default(action.dest)
        return "(default)" if effect is not None and effect == default else ""
    default = action.default
    if default is None or default == [] or default is argparse.SUPPRESS:
        return ""
    if callable(action.type):
        try:
            if action.type(str(default)) != default:
                return ""
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            return ""  # held in another unit (bytes for MiB): the text says it
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return code(str(default)) if str(default) else '`""`'


def _option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return code(f"[{action.dest}]")
    return ", ".join(code(o) for o in action.option_strings)


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option and positional of the parser, in the order of its groups."""
    return [a for group in parser._action_groups for a in group._group_actions]


def options_section(parser: argparse.ArgumentParser) -> str:
    parts = []
    for group in parser._action_groups:
        if not group._group_actions:
            continue
        title = group.title or ""
        title = {"positional arguments": "The port", "options": "General"}.get(title, title)
        rows = [
            (
                _option_names(a),
                code(_value(a)) if _value(a) else "",
                _default(parser, a),
                _file_key(a),
                escape(_help(parser, a)),
            )
            for a in group._group_actions
        ]
        header = ("option", "value", "default", "configuration file `[server]`", "what it does")
        if not title.startswith("wlmscpfs"):
            title = title[:1].upper() + title[1:]
        parts.append(f"### {title}\n\n{table(header, rows)}")
    return "\n".join(parts)


def _keys_table(described: dict[str, tuple[str, str]], known: Sequence[str], where: str) -> str:
    missing = [k for k in known if k not in described]
    extra = [k for k in described if k not in known]
    if missing or extra:
        raise SystemExit(
            f"refdocs: {where}: describe {missing} in tools/refdocs.py; {extra} are no longer keys"
        )
    rows = [(code(k), code(f"{k} = {described[k][0]}"), described[k][1]) for k in known]
    return table(("key", "example", "what it does"), rows)


def options_page() -> str:
    """docs/reference/options.md."""
    parser = build_parser()
    if set(file.TABLES) != {"server", "access", "profiles"}:
        raise SystemExit(f"refdocs: describe the configuration file's tables {file.TABLES}")
    return f"""# Options and configuration keys

<!-- Generated by {GENERATOR} from the argument parser and the configuration file's checks;
do not edit: tests/test_docs.py fails while this page differs from what it writes. -->

Every option of `wlmserver [options] [port]`, and every table and key of the configuration
file (`--config FILE`), as the code defines them: this page is generated from the server's
argument parser and from the checks of the configuration file. What they do at length, with
examples: [Configuration](../configuration.md), [TLS and access](../tls-and-access.md),
[MPPS](../mpps.md), [Retention](../retention.md); how each compares with DCMTK's `wlmscpfs`:
[Coming from wlmscpfs](wlmscpfs.md).

## Command-line options

An option given on the command line overrides the configuration file's `[server]` key of the
same name; list options (`allow-calling-aet`, `allow-host`) add up. A relative path in the file
is relative to the file's folder. `help`, `version` and `config` have no key.

{options_section(parser)}
## The configuration file

A TOML file with these tables, and no others; an unknown table or key is refused with its file,
line and a "did you mean" (exit status 2).

### `[server]`

Any command-line option above, by its long name: the column "configuration file `[server]`".

### `[access]` and `[access.called.<AET>]`

Who may ask: a list not given allows everyone, an empty list no one. `[access.called.<AET>]`
narrows further for associations calling that AE title; an association must pass every list
that applies.

{_keys_table(ALLOW_KEYS, file.ALLOW_KEYS, "allow-list keys")}
### `[access.certificates]`

Over TLS with client certificates: a calling AE title (or a pattern with `*` and `?`) as the
key, the certificate identities that may call as it as its value
(`CT01 = ["CN=ct01.example.org", "DNS:ct01.example.org"]`: `CN=`, `DNS:`, `email:`, `URI:`,
`IP:`), and these options:

{_keys_table(CERTIFICATE_OPTION_KEYS, certificates.OPTION_KEYS, "access.certificates options")}
### `[profiles.<name>]`

Modality profiles, chosen by the calling AE title: the first `[profiles.<name>]` whose
`calling-ae-titles` match, in file order; else `[profiles.default]`; else none.

{_keys_table(PROFILE_KEYS, file.PROFILE_KEYS, "profile keys")}"""


# ---------------------------------------------------------------------------- conformance


def _uid_row(uid: str) -> tuple[str, str]:
    return (UID(uid).name, code(uid))


def sop_classes() -> str:
    rows = [
        (*_uid_row(uid), "SCP")
        for uid in (
            server.VERIFICATION,
            server.MODALITY_WORKLIST_FIND,
            server.MODALITY_PERFORMED_PROCEDURE_STEP,
        )
    ]
    return table(("SOP Class name", "SOP Class UID", "role"), rows)


#: The option behind each transfer syntax preference (``wlmserver.config.parity``).
PREFERENCE_OPTIONS = {
    "uncompr": "`+x=`, `--prefer-uncompr` (default)",
    "little": "`+xe`, `--prefer-little`",
    "big": "`+xb`, `--prefer-big`",
    "deflated": "`+xd`, `--prefer-deflated`",
    "implicit": "`+xi`, `--implicit`",
}


def transfer_syntaxes() -> str:
    preferences = server.TRANSFER_SYNTAX_PREFERENCES
    if set(preferences) != set(PREFERENCE_OPTIONS):
        raise SystemExit(f"refdocs: name the option of each preference {sorted(preferences)}")
    every = list(dict.fromkeys(uid for order in preferences.values() for uid in order))
    names = table(("Transfer Syntax name", "UID"), (_uid_row(uid) for uid in every))
    rows = [
        (PREFERENCE_OPTIONS[p], ", then ".join(UID(u).name for u in order))
        for p, order in preferences.items()
    ]
    return (
        names
        + "\nAccepted for each presentation context, the first of these the requestor proposed"
        " (on a little-endian machine):\n\n"
        + table(("option", "transfer syntaxes, most preferred first"), rows)
    )


#: The options whose defaults are the association policy.
ASSOCIATION_OPTIONS = (
    "--aetitle",
    "port",
    "--max-associations",
    "--max-associations-per-peer",
    "--max-pdu",
    "--acse-timeout",
    "--dimse-timeout",
    "--max-identifier-size",
    "--max-value-length",
    "--max-answers",
)


def association_defaults() -> str:
    parser = build_parser()
    by_name = {n: a for a in parser._actions for n in (*a.option_strings, a.dest)}
    rows = []
    for name in ASSOCIATION_OPTIONS:
        action = by_name[name]
        default = _default(parser, action) or "none (unlimited)"
        rows.append((_option_names(action), default, escape(_help(parser, action))))
    return table(("option", "default", "meaning"), rows)


def _where(key: WorklistKey) -> str:
    parts = ["SPS item"] if key.level is Level.SPS else ["top level"]
    parts += [f"{dictionary_description(k)} item" for k in key.within]
    return " › ".join(parts)


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _matched(key: WorklistKey) -> str:
    if key.matching == "-":
        return "never"
    if key.within:
        return "when its sequence is matched"
    return "yes" if key.matched else "return key only"


def _rule(vr: str) -> str:
    if vr == "SQ":
        return "sequence matching"
    if vr in ("DA", "TM", "DT"):
        return "single value, range"
    if vr == "UI":
        return "single value, list of UIDs"
    rules = ["single value", "list of values"]
    if vr in keys.WILDCARD_VRS:
        rules.insert(1, "wildcards")
    return ", ".join(rules)


def matching_keys() -> str:
    rows = []
    for key in keys.WORKLIST_KEYS:
        vr = dictionary_VR(key.tag)
        rows.append(
            (
                escape(dictionary_description(key.tag)),
                _tag(key.tag),
                vr,
                _where(key),
                key.matching,
                _matched(key),
                _rule(vr) if key.matching != "-" else "—",
            )
        )
    header = (
        "attribute",
        "tag",
        "VR",
        "where",
        "K.6-1 matching type",
        "matched by default",
        "matching (C.2.2.2)",
    )
    return table(header, rows)


def _returned(key: WorklistKey) -> str:
    if key.within:
        return "in its sequence's items: the keys the query's item names (all, when it is empty)"
    empty = "empty" if dictionary_VR(key.tag) == "SQ" else "zero-length"
    if key.tag in keys.MANDATORY_RETURN_TAGS:
        return f"always ({empty} when the entry has none)"
    return f"{empty} when the entry has none; left out then with `omit-empty-optional`"


def _required(key: WorklistKey) -> str:
    required = keys.REQUIRED_SPS if key.level is Level.SPS else keys.REQUIRED_TOP
    for alternatives in required:
        if key.keyword in alternatives and not key.within:
            others = [dictionary_description(a) for a in alternatives if a != key.keyword]
            return "yes" if not others else "this or " + " or ".join(others)
    return ""


def return_keys() -> str:
    rows = []
    for key in keys.WORKLIST_KEYS:
        in_expansion = (
            "yes" if key.tag in keys.SPS_EXPANSION_TAGS and key.level is Level.SPS else ""
        )
        rows.append(
            (
                escape(dictionary_description(key.tag)),
                _tag(key.tag),
                _where(key),
                key.return_type,
                _returned(key),
                _required(key),
                in_expansion if not key.within else "",
            )
        )
    returned = {
        "SpecificCharacterSet": "by the server: exactly when the answer holds non-ASCII text",
        "TimezoneOffsetFromUTC": "as a return key: filled from the entry",
    }
    for key in keys.IDENTIFIER_ATTRIBUTES:
        rows.append(
            (
                escape(dictionary_description(key.tag)),
                _tag(key.tag),
                "top level (Table K.6-1a)",
                key.return_type,
                returned[key.keyword],
                "",
                "",
            )
        )
    header = (
        "attribute",
        "tag",
        "where",
        "return key type",
        "returned",
        "Type 1 in a served entry",
        "empty SPS item expands to it",
    )
    return table(header, rows)


def matching_rules() -> str:
    def vrs(values: Iterable[str]) -> str:
        return ", ".join(sorted(values))

    rows = [
        ("universal", "every VR", "a zero-length value, or only `*`: every entry matches"),
        ("single value", "every VR but SQ", "equal value; a multi-valued entry if any value is"),
        ("list of values", "every VR but SQ", "`A\\B`: any of them (a list of UIDs for UI)"),
        ("wildcards `*` `?`", vrs(keys.WILDCARD_VRS), "C.2.2.2.4"),
        ("range", "DA, TM, DT", "`a-b`, `a-`, `-b`; a partial time covers its precision"),
        (
            "combined date-time range",
            ", ".join(
                f"{dictionary_description(d)} with {dictionary_description(t)}"
                for d, t in keys.COMBINED_DATE_TIME
            ),
            "C.2.2.2.5.1",
        ),
        ("sequence", "SQ", "an item of the entry matches all the keys of the query's item"),
        (
            "compared by value",
            vrs(keys.NUMERIC_VRS),
            "numbers, not their spelling (`72.50` is `72.5`)",
        ),
        (
            "compared as decoded text",
            vrs(keys.CHARSET_VRS),
            "in the query's and the file's Specific Character Set",
        ),
    ]
    return table(("matching type", "VRs", "how"), rows)


def _member_docs(enum: type[IntEnum]) -> dict[str, str]:
    """The docstrings written under the members of an enum's class body."""
    tree = ast.parse(inspect.getsource(enum))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for before, after in itertools.pairwise(body):
        if (
            isinstance(before, ast.Assign)
            and isinstance(before.targets[0], ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[before.targets[0].id] = " ".join(after.value.value.split())
    return docs


def statuses(enum: type[IntEnum], fallback: Callable[[IntEnum], str]) -> str:
    docs = _member_docs(enum)
    rows = [
        (
            code(f"0x{member.value:04X}"),
            member.name.replace("_", " ").title().replace("Sop", "SOP"),
            escape(docs.get(member.name) or fallback(member)),
        )
        for member in enum
    ]
    return table(("status", "name", "when"), rows)


def find_statuses() -> str:
    return statuses(Status, lambda m: "")


def mpps_statuses() -> str:
    return statuses(MppsStatus, lambda m: "the request was accepted and stored")


#: The generated parts of the Conformance Statement, by marker name.
CONFORMANCE_PARTS: dict[str, Callable[[], str]] = {
    "sop-classes": sop_classes,
    "transfer-syntaxes": transfer_syntaxes,
    "association-defaults": association_defaults,
    "find-statuses": find_statuses,
    "mpps-statuses": mpps_statuses,
    "matching-rules": matching_rules,
    "matching-keys": matching_keys,
    "return-keys": return_keys,
}

_PART = re.compile(r"(<!-- generated: ([a-z-]+) -->\n).*?(<!-- end: \2 -->)", re.S)


def conformance_page(text: str) -> str:
    """The Conformance Statement with each generated part made again."""
    seen = []

    def part(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in CONFORMANCE_PARTS:
            raise SystemExit(f"refdocs: no generated part {name!r} ({sorted(CONFORMANCE_PARTS)})")
        seen.append(name)
        return f"{match.group(1)}\n{CONFORMANCE_PARTS[name]()}\n{match.group(3)}"

    made = _PART.sub(part, text)
    missing = sorted(set(CONFORMANCE_PARTS) - set(seen))
    if missing:
        raise SystemExit(f"refdocs: {CONFORMANCE_PAGE.name} lacks the generated parts {missing}")
    return made


def pages() -> dict[Path, str]:
    """Each generated page as it should be."""
    return {
        OPTIONS_PAGE: options_page(),
        CONFORMANCE_PAGE: conformance_page(CONFORMANCE_PAGE.read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say which pages differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"{names}: not what the code says; run {GENERATOR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
