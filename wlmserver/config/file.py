"""The configuration file (TOML, ``--config FILE``): what does not fit on a command line.

::

    [server]                  # any command-line option, by its long name
    data-files-path = "/var/lib/wlmserver/wlistdb"
    port = 11112

    [access]                  # who may ask (see wlmserver.config.access)
    calling-ae-titles = ["CT*", "MR01"]
    hosts = ["10.20.0.0/16"]

    [access.called.WLMSERVER] # in addition, for associations calling WLMSERVER
    calling-ae-titles = ["CT01"]

    [access.certificates]     # calling AE titles tied to client certificates over TLS
    CT01 = ["CN=ct01.example.org"]  # (see wlmserver.config.certificates)

    [profiles.ct]             # modality profiles (see wlmserver.config.profiles)
    calling-ae-titles = ["CT*"]
    station-filter = true
    date-window = [-1, 1]
    match-keys = ["PregnancyStatus"]

Every error names the file, the line and the key, and is raised before the server starts.
This module reads and checks the file; the ``[server]`` table is checked against the command
line's own options by :mod:`wlmserver.cli`, which owns them.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.datadict import tag_for_keyword

from wlmserver.config.access import Access, AllowList, parse_network, valid_ae_pattern
from wlmserver.config.certificates import (
    OPTION_KEYS,
    REFUSE_UNBOUND,
    Binding,
    CertificateBindings,
    parse_identity,
)
from wlmserver.config.profiles import DEFAULT_PROFILE, Profile, Profiles
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.matching.keys import KEYS_BY_KEYWORD, never_matched
from wlmserver.matching.stepstatus import parse_statuses

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The tables a configuration file may hold.
TABLES = ("server", "access", "profiles")
_ALLOW_KEYS = ("calling-ae-titles", "hosts")
_PROFILE_KEYS = (
    "calling-ae-titles",
    "station-filter",
    "date-window",
    "charset",
    "sq-expansion",
    "omit-empty-optional",
    "hide-status",
    "match-keys",
    "match-all-keys",
)
_CHARSETS = {"file": CharsetPolicy.FILE, "latin1": CharsetPolicy.LATIN1}


class ConfigFileError(Exception):
    """A configuration file that cannot be used.

    Attributes
    ----------
    path : Path
        The file.
    line : int or None
        The line of the offending key, when known.
    key : str
        The dotted key (``access.hosts``), or ``""`` for the whole file.
    problem : str
        What is wrong, and what to write instead.
    """

    def __init__(self, path: Path, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.path, self.line, self.key, self.problem = path, line, key, problem


@dataclass(frozen=True)
class ServerOption:
    """One ``[server]`` key: a command-line option's long name, its value and line."""

    name: str
    value: Any
    line: int | None


@dataclass(frozen=True)
class ConfigFile:
    """A read and checked configuration file.

    Attributes
    ----------
    path : Path
        Where it was read from.
    server : tuple of ServerOption
        The ``[server]`` keys, in file order, for the command line to check and apply.
    access : Access
        The allow-lists.
    profiles : Profiles
        The modality profiles.
    """

    path: Path
    server: tuple[ServerOption, ...] = ()
    access: Access = field(default_factory=Access)
    profiles: Profiles = field(default_factory=Profiles)
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def error(self, key: str, problem: str) -> ConfigFileError:
        """An error about ``key`` (dotted), located at its line."""
        return ConfigFileError(self.path, self.lines.get(key), key, problem)


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_.\-" ]+?)\s*=')


def _split_dotted(text: str) -> list[str]:
    """``a."b.c".d`` as ``["a", "b.c", "d"]``."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([^.\s]+)', text)
    return [a or b or c for a, b, c in parts]


def key_lines(text: str) -> dict[str, int]:
    """The line of each key and table header of a TOML text, by dotted path.

    Good enough for error messages: tables, dotted keys and quoted keys; keys inside inline
    tables or multi-line values take the line of their table.

    Examples
    --------
    >>> key_lines('[server]\\nport = 1\\n[access.called."CT 1"]\\nhosts = []\\n')
    {'server': 1, 'server.port': 2, 'access.called.CT 1': 3, 'access.called.CT 1.hosts': 4}
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
            if not in_string:
                continue
        if in_string:
            continue
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("[["):
            table = _split_dotted(header.group(1))
            lines.setdefault(".".join(table), number)
            continue
        key = _KEY.match(line)
        if key:
            path = ".".join([*table, *_split_dotted(key.group(1))])
            lines.setdefault(path, number)
    return lines


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known keys: {', '.join(choices)}"


def load(path: Path) -> ConfigFile:
    """Read and check a configuration file.

    Raises
    ------
    ConfigFileError
        The file cannot be read, is not TOML, or holds an unknown table or key or a value
        of the wrong kind; the error names the file, line and key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigFileError(path, None, "", f"cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        if line is None:
            found = re.search(r"at line (\d+)", str(exc))
            line = int(found.group(1)) if found else None
        raise ConfigFileError(path, line, "", f"not valid TOML: {message}") from None
    return from_data(path, data, key_lines(text))


def from_data(path: Path, data: Mapping[str, Any], lines: Mapping[str, int]) -> ConfigFile:
    """Check the tables a TOML file was read into (``lines``: where each key is, for
    errors).

    Raises
    ------
    ConfigFileError
        An unknown table or key, or a value of the wrong kind.
    """
    draft = ConfigFile(path, lines=MappingProxyType(dict(lines)))
    for name in data:
        if name not in TABLES:
            raise draft.error(name, f"unknown table; {_suggest(name, TABLES)}")
        if not isinstance(data[name], dict):
            raise draft.error(name, f"must be a table: [{name}]")
    server = tuple(
        ServerOption(key, value, draft.lines.get(f"server.{key}"))
        for key, value in data.get("server", {}).items()
    )
    return ConfigFile(
        path,
        server=server,
        access=_access(draft, data.get("access", {})),
        profiles=_profiles(draft, data.get("profiles", {})),
        lines=draft.lines,
    )


def _strings(draft: ConfigFile, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise draft.error(key, 'must be a list of strings, like ["CT01", "MR*"]')
    return list(value)


def _titles(draft: ConfigFile, key: str, value: object) -> tuple[str, ...]:
    titles = tuple(_strings(draft, key, value))
    bad = [t for t in titles if not valid_ae_pattern(t)]
    if bad:
        raise draft.error(key, f"{bad[0]!r} is not an AE title (1 to 16 characters)")
    return titles


def _allow_list(draft: ConfigFile, where: str, table: Mapping[str, Any]) -> AllowList:
    titles: tuple[str, ...] | None = None
    hosts = None
    for key, value in table.items():
        dotted = f"{where}.{key}"
        if key == "calling-ae-titles":
            titles = _titles(draft, dotted, value)
        elif key == "hosts":
            try:
                hosts = tuple(parse_network(h) for h in _strings(draft, dotted, value))
            except ValueError as exc:
                raise draft.error(dotted, str(exc)) from None
        else:
            raise draft.error(dotted, f"unknown key; {_suggest(key, _ALLOW_KEYS)}")
    return AllowList(titles, hosts)


def _access(draft: ConfigFile, table: Mapping[str, Any]) -> Access:
    called: dict[str, AllowList] = {}
    mine = {k: v for k, v in table.items() if k not in ("called", "certificates")}
    if "called" in table and not isinstance(table["called"], dict):
        raise draft.error("access.called", "must hold tables: [access.called.<AETitle>]")
    for title, lists in table.get("called", {}).items():
        where = f"access.called.{title}"
        if not isinstance(lists, dict):
            raise draft.error(where, f"must be a table: [access.called.{title}]")
        if not valid_ae_pattern(title) or any(c in title for c in "*?"):
            raise draft.error(where, "not a called AE title (1 to 16 characters, no wildcard)")
        called[title.strip()] = _allow_list(draft, where, lists)
    return Access(
        _allow_list(draft, "access", mine),
        MappingProxyType(called),
        _certificates(draft, table.get("certificates", {})),
    )


def _certificates(draft: ConfigFile, table: object) -> CertificateBindings:
    """``[access.certificates]``: calling AE titles (or patterns) to the certificate
    identities allowed to use them, and ``refuse-unbound-titles``."""
    where = "access.certificates"
    if not isinstance(table, dict):
        raise draft.error(where, "must be a table: [access.certificates]")
    bindings = []
    refuse_unbound = False
    for key, value in table.items():
        dotted = f"{where}.{key}"
        if key == REFUSE_UNBOUND:
            refuse_unbound = _bool(draft, dotted, value)
            continue
        if not valid_ae_pattern(key):
            raise draft.error(
                dotted,
                "neither a calling AE title (1 to 16 characters, * and ? wildcards) nor an "
                f"option; {_suggest(key, list(OPTION_KEYS))}",
            )
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            close = difflib.get_close_matches(key, OPTION_KEYS, n=1)
            hint = f" (or did you mean {close[0]!r}?)" if close else ""
            raise draft.error(
                dotted,
                'must be a list of certificate identities, like ["CN=ct01.example.org", '
                f'"DNS:ct01.example.org"]{hint}',
            )
        try:
            identities = frozenset(parse_identity(v) for v in value)
        except ValueError as exc:
            raise draft.error(dotted, str(exc)) from None
        bindings.append(Binding(key.strip(), identities))
    return CertificateBindings(tuple(bindings), refuse_unbound)


def _bool(draft: ConfigFile, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise draft.error(key, "must be true or false")
    return value


def _statuses(draft: ConfigFile, dotted: str, value: Any) -> frozenset[str]:
    """Step statuses: a list of defined terms (or a string of them); [] or "none": none."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = " ".join(value)
    if not isinstance(value, str):
        raise draft.error(dotted, 'must be a list of step statuses, like ["COMPLETED"]')
    try:
        return parse_statuses(value)
    except ValueError as exc:
        raise draft.error(dotted, str(exc)) from None


def _match_keys(draft: ConfigFile, dotted: str, value: Any) -> frozenset[int]:
    """The tags of ``match-keys``: DICOM keywords of attributes that can be matching keys."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise draft.error(dotted, 'must be a list of keywords, like ["PregnancyStatus"]')
    tags = set()
    for keyword in value:
        tag = tag_for_keyword(keyword.strip())
        if tag is None:
            hint = difflib.get_close_matches(keyword, list(KEYS_BY_KEYWORD), n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            raise draft.error(
                dotted, f"{keyword!r} is not a DICOM attribute keyword (like PregnancyStatus){also}"
            )
        if never_matched(tag):
            raise draft.error(
                dotted, f"{keyword!r} is never a matching key (PS3.4 Table K.6-1: matching type -)"
            )
        tags.add(tag)
    return frozenset(tags)


def _profiles(draft: ConfigFile, table: Mapping[str, Any]) -> Profiles:
    profiles = []
    for name, settings in table.items():
        where = f"profiles.{name}"
        if not isinstance(settings, dict):
            raise draft.error(where, f"must be a table: [profiles.{name}]")
        kwargs: dict[str, Any] = {}
        for key, value in settings.items():
            dotted = f"{where}.{key}"
            if key == "calling-ae-titles":
                kwargs["calling_ae_titles"] = _titles(draft, dotted, value)
            elif key == "station-filter":
                kwargs["station_filter"] = _bool(draft, dotted, value)
            elif key == "date-window":
                if (
                    not isinstance(value, list)
                    or len(value) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                    or value[0] > value[1]
                    or max(abs(v) for v in value) > 3660
                ):
                    raise draft.error(
                        dotted, "must be [days before, days after] today, like [-1, 1]"
                    )
                kwargs["date_window"] = (value[0], value[1])
            elif key == "charset":
                if value not in _CHARSETS:
                    raise draft.error(dotted, f"must be one of {', '.join(map(repr, _CHARSETS))}")
                kwargs["charset_policy"] = _CHARSETS[value]
            elif key == "sq-expansion":
                kwargs["expand_empty_sps"] = _bool(draft, dotted, value)
            elif key == "omit-empty-optional":
                kwargs["omit_empty_optional"] = _bool(draft, dotted, value)
            elif key == "hide-status":
                kwargs["hide_statuses"] = _statuses(draft, dotted, value)
            elif key == "match-keys":
                kwargs["match_keys"] = _match_keys(draft, dotted, value)
            elif key == "match-all-keys":
                kwargs["match_all_keys"] = _bool(draft, dotted, value)
            else:
                raise draft.error(dotted, f"unknown key; {_suggest(key, _PROFILE_KEYS)}")
        if name != DEFAULT_PROFILE and not kwargs.get("calling_ae_titles"):
            raise draft.error(
                where,
                'names no calling AE title: add calling-ae-titles = ["..."] (or name it '
                "[profiles.default] to apply to every other calling AE title)",
            )
        profiles.append(Profile(name, **kwargs))
    return Profiles(tuple(profiles))
