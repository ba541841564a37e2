"""The drop formats an AE folder may hold: a registry, and the one way to read a dropped file.

A format is a suffix and a function from a file's bytes to entries (or the reason the file is
refused). The index, the watcher, ``check`` and ``explain`` ask a :class:`Formats` (the formats
one store serves) whether a name is served and to read it, and never name a format
themselves: a new intake format (HL7 v2 orders, say) is one module with a parse function and
one :class:`Format` in :data:`FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE, FileResult, read_file_bytes
from wlmserver.store.jsondrop import parse_json_drop
from wlmserver.store.listing import NameRule
from wlmserver.store.wlfile import parse_worklist

#: File names starting so are never served: hidden and editors' temporary files.
HIDDEN_PREFIXES = (".", "~", "#")

Parse = Callable[..., FileResult]
"""``parse(data, path, *, reject_incomplete)``: a file's entries, or raise
:class:`~wlmserver.store.files.WorklistFileError` saying why it is not served."""


@dataclass(frozen=True)
class Format:
    """One drop format.

    Attributes
    ----------
    name : str
        How options and messages call it.
    suffix : str
        The file name suffix, lower case with its dot (matched in any case).
    parse : Parse
        From the file's bytes to its entries.
    default : bool
        Served unless turned off; otherwise only when asked for (``--json-drops``).
    """

    name: str
    suffix: str
    parse: Parse
    default: bool

    def names(self, file_name: str) -> bool:
        """Whether a file name is one of this format's: the suffix in any case, not hidden,
        not a temporary name.

        Examples
        --------
        >>> names = [WORKLIST.names(n) for n in ("a.wl", "B.WL", ".a.wl", "a.wl.tmp", "~a.wl")]
        >>> names, WORKLIST.names(".wl"), WORKLIST.names("#a.wl")
        ([True, True, False, False, False], False, False)
        """
        return NameRule((self.suffix,), HIDDEN_PREFIXES).serves(file_name)


WORKLIST = Format("worklist file", ".wl", parse_worklist, default=True)
"""DICOM worklist files, as wlmscpfs serves them (:mod:`wlmserver.store.wlfile`)."""

JSON_DROP = Format("JSON drop", ".json", parse_json_drop, default=False)
"""Orders as JSON (``--json-drops``, :mod:`wlmserver.store.jsondrop`)."""

FORMATS: tuple[Format, ...] = (WORKLIST, JSON_DROP)
"""Every drop format, the default ones first."""


@dataclass(frozen=True)
class Formats:
    """The drop formats one store serves.

    Parameters
    ----------
    served : tuple of Format
        The formats served.
    """

    served: tuple[Format, ...] = tuple(f for f in FORMATS if f.default)

    @classmethod
    def chosen(cls, *, json_drops: bool = False) -> Formats:
        """The default formats, and JSON drops when asked for."""
        return cls(tuple(f for f in FORMATS if f.default or (json_drops and f is JSON_DROP)))

    def format_of(self, file_name: str) -> Format | None:
        """The served format a file name belongs to, or None."""
        return next((f for f in self.served if f.names(file_name)), None)

    @property
    def rule(self) -> NameRule:
        """The names served, as a rule (what a child process listing a folder applies)."""
        return NameRule(tuple(f.suffix for f in self.served), HIDDEN_PREFIXES)

    def serves(self, file_name: str) -> bool:
        """Whether a file name is served (by any of these formats)."""
        return self.format_of(file_name) is not None

    def read(
        self,
        path: Path,
        *,
        reject_incomplete: bool = True,
        max_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> FileResult:
        """Read a dropped file as the server does (at most ``max_size`` bytes).

        Raises
        ------
        WorklistFileError
            Why the file is not served (not a regular file, cut short, not its format ...).
        OSError
            It cannot be read.
        """
        fmt = self.format_of(path.name) or WORKLIST
        data = read_file_bytes(path, max_size)
        return fmt.parse(data, path, reject_incomplete=reject_incomplete)

    def holds_served_files(self, folder: Path) -> bool:
        """Whether a folder holds served files itself (an AE folder, not a database root)."""
        try:
            return any(self.serves(p.name) for p in folder.iterdir())
        except OSError:
            return False
