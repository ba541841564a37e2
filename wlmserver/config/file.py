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

Every error names the file, the line and the key, and is raised before the server starts;
a file with several mistakes is reported with all of them at once (one
:class:`ConfigFileError` whose ``errors`` are each of them, in line order), so that one edit
fixes them all. This module reads and checks the file; the ``[server]`` table is checked
against the command line's own options by :mod:`wlmserver.config.loader`, which owns them.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
#: The keys of an allow-list: ``[access]`` and each ``[access.called.<AET>]``.
ALLOW_KEYS = ("calling-ae-titles", "hosts")
#: The keys of a modality profile, ``[profiles.<name>]``.
PROFILE_KEYS = (
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
    errors : tuple of ConfigFileError
        Every mistake found in the file, in line order: this one alone, or (an error made
        by :meth:`every`) all of them, ``path``, ``line``, ``key`` and ``problem`` being the
        first's. Its message is one line per mistake.
    """

    def __init__(self, path: Path, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.path, self.line, self.key, self.problem = path, line, key, problem
        self.errors: tuple[ConfigFileError, ...] = (self,)

    @classmethod
    def every(cls, errors: Sequence[ConfigFileError]) -> ConfigFileError:
        """One error standing for all of ``errors`` (each once, in line order; the lines
        of a whole-file problem first).

        Examples
        --------
        >>> a = ConfigFileError(Path("w.toml"), 3, "server.port", "not a port")
        >>> b = ConfigFileError(Path("w.toml"), 2, "access.hosts", "not a list")
        >>> print(ConfigFileError.every([a, b]))
        w.toml:2: access.hosts: not a list
        w.toml:3: server.port: not a port
        """
        unique = {str(e): e for error in errors for e in error.errors}
        ordered = sorted(unique.values(), key=lambda e: e.line or 0)
        if len(ordered) == 1:
            return ordered[0]
        first = ordered[0]
        combined = cls(first.path, first.line, first.key, first.problem)
        combined.args = ("\n".join(map(str, ordered)),)
        combined.errors = tuple(ordered)
        return combined


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
    problems : tuple of ConfigFileError
        The mistakes found, when it was read with ``strict=False`` (:func:`load`); what they
        are about is left out of the other attributes.
    """

    path: Path
    server: tuple[ServerOption, ...] = ()
    access: Access = field(default_factory=Access)
    profiles: Profiles = field(default_factory=Profiles)
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[ConfigFileError, ...] = ()

    def error(self, key: str, problem: str) -> ConfigFileError:
        """An error about ``key`` (dotted), located at its line."""
        return ConfigFileError(self.path, self.lines.get(key), key, problem)


@dataclass(frozen=True)
class _Draft(ConfigFile):
    """A file being checked: the mistakes found so far (:meth:`collecting`)."""

    found: list[ConfigFileError] = field(default_factory=list)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Record a :class:`ConfigFileError` raised inside, and go on with the next key."""
        try:
            yield
        except ConfigFileError as exc:
            self.found.extend(exc.errors)


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


def load(path: Path, *, strict: bool = True) -> ConfigFile:
    """Read and check a configuration file.

    Parameters
    ----------
    path : Path
        The file.
    strict : bool
        Raise on the mistakes found (all of them at once); with False, a file that is TOML
        is returned with its mistakes in ``problems``, for the caller to add its own (the
        ``[server]`` keys, :func:`wlmserver.config.loader.apply_config_file`) and raise.

    Raises
    ------
    ConfigFileError
        The file cannot be read, is not TOML, or holds unknown tables or keys or values of
        the wrong kind; each error names the file, line and key.
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
    return from_data(path, data, key_lines(text), strict=strict)


def from_data(
    path: Path, data: Mapping[str, Any], lines: Mapping[str, int], *, strict: bool = True
) -> ConfigFile:
    """Check the tables a TOML file was read into (``lines``: where each key is, for
    errors); ``strict`` as for :func:`load`.

    Raises
    ------
    ConfigFileError
        Unknown tables or keys, or values of the wrong kind: every one of them.
    """
    draft = _Draft(path, lines=MappingProxyType(dict(lines)))
    tables: dict[str, Mapping[str, Any]] = {}
    for name in data:
        with draft.collecting():
            if name not in TABLES:
                raise draft.error(name, f"unknown table; {_suggest(name, TABLES)}")
            if not isinstance(data[name], dict):
                raise draft.error(name, f"must be a table: [{name}]")
            tables[name] = data[name]
    server = tuple(
        ServerOption(key, value, draft.lines.get(f"server.{key}"))
        for key, value in tables.get("server", {}).items()
    )
    access = _access(draft, tables.get("access", {}))
    profiles = _profiles(draft, tables.get("profiles", {}))
    if draft.found and strict:
        raise ConfigFileError.every(draft.found)
    return ConfigFile(
        path,
        server=server,
        access=access,
        profiles=profiles,
        lines=draft.lines,
        problems=ConfigFileError.every(draft.found).errors if draft.found else (),
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


def _allow_list(draft: _Draft, where: str, table: Mapping[str, Any]) -> AllowList:
    titles: tuple[str, ...] | None = None
    hosts = None
    for key, value in table.items():
        dotted = f"{where}.{key}"
        with draft.collecting():
            if key == "calling-ae-titles":
                titles = _titles(draft, dotted, value)
            elif key == "hosts":
                try:
                    hosts = tuple(parse_network(h) for h in _strings(draft, dotted, value))
                except ValueError as exc:
                    raise draft.error(dotted, str(exc)) from None
            else:
                raise draft.error(dotted, f"unknown key; {_suggest(key, ALLOW_KEYS)}")
    return AllowList(titles, hosts)


def _access(draft: _Draft, table: Mapping[str, Any]) -> Access:
    called: dict[str, AllowList] = {}
    mine = {k: v for k, v in table.items() if k not in ("called", "certificates")}
    tables = table.get("called", {})
    if not isinstance(tables, dict):
        with draft.collecting():
            raise draft.error("access.called", "must hold tables: [access.called.<AETitle>]")
        tables = {}
    for title, lists in tables.items():
        where = f"access.called.{title}"
        with draft.collecting():
            if not isinstance(lists, dict):
                raise draft.error(where, f"must be a table: [access.called.{title}]")
            if not valid_ae_pattern(title) or any(c in title for c in "*?"):
                raise draft.error(where, "not a called AE title (1 to 16 characters, no wildcard)")
            called[title.strip()] = _allow_list(draft, where, lists)
    certificates = CertificateBindings()
    with draft.collecting():
        certificates = _certificates(draft, table.get("certificates", {}))
    return Access(_allow_list(draft, "access", mine), MappingProxyType(called), certificates)


def _certificates(draft: _Draft, table: object) -> CertificateBindings:
    """``[access.certificates]``: calling AE titles (or patterns) to the certificate
    identities allowed to use them, and ``refuse-unbound-titles``."""
    where = "access.certificates"
    if not isinstance(table, dict):
        raise draft.error(where, "must be a table: [access.certificates]")
    bindings = []
    refuse_unbound = False
    for key, value in table.items():
        dotted = f"{where}.{key}"
        with draft.collecting():
            if key == REFUSE_UNBOUND:
                refuse_unbound = _bool(draft, dotted, value)
                continue
            if not valid_ae_pattern(key):
                raise draft.error(
                    dotted,
                    "neither a calling AE title (1 to 16 characters, * and ? wildcards) nor an "
                    f"option; {_suggest(key, list(OPTION_KEYS))}",
                )
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) for v in value)
            ):
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


def _profiles(draft: _Draft, table: Mapping[str, Any]) -> Profiles:
    profiles = []
    for name, settings in table.items():
        with draft.collecting():
            profiles.append(_profile(draft, name, settings))
    return Profiles(tuple(profiles))


def _profile(draft: _Draft, name: str, settings: object) -> Profile:
    """One ``[profiles.<name>]`` table; its keys' mistakes are collected, the first of the
    table itself raised."""
    where = f"profiles.{name}"
    if not isinstance(settings, dict):
        raise draft.error(where, f"must be a table: [profiles.{name}]")
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = f"{where}.{key}"
        with draft.collecting():
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
                raise draft.error(dotted, f"unknown key; {_suggest(key, PROFILE_KEYS)}")
    titles_wrong = "calling-ae-titles" in settings and "calling_ae_titles" not in kwargs
    if name != DEFAULT_PROFILE and not kwargs.get("calling_ae_titles") and not titles_wrong:
        raise draft.error(
            where,
            'names no calling AE title: add calling-ae-titles = ["..."] (or name it '
            "[profiles.default] to apply to every other calling AE title)",
        )
    return Profile(name, **kwargs)
