"""Modality profiles: per calling AE title, what the server does for that modality's queries.

Modalities differ, and sites patch around them. A profile is chosen by the calling AE title
(the first profile whose ``calling-ae-titles`` matches, in the order of the configuration
file; else the profile named ``default``; else the server's options unchanged) and can:

- answer only with steps scheduled for the calling station when the query leaves
  ScheduledStationAETitle (0040,0001) universal (``station-filter``). Not standard: PS3.4
  K.2.2.1 leaves the choice of steps to the query; Orthanc (``FilterIssuerAet``) and dcm4chee
  offer the same for modalities that do not fill the key in;
- apply a date window around today when the query's ScheduledProcedureStepStartDate is
  universal (``date-window = [-1, 1]``: yesterday to tomorrow);
- choose the answers' character set policy (``charset``), turn the expansion of an empty SPS
  item off (``sq-expansion = false``, as ``-nse``), and leave out requested keys that are
  empty in the answer and optional (Type 3 in Table K.6-1, or not in it) for stacks that choke
  on zero-length values (``omit-empty-optional``);
- hide other step statuses than the server does (``hide-status = ["COMPLETED"]``), e.g. show
  DISCONTINUED steps to the modality that may resume them;
- match on more keys than the server's default set (``match-keys = ["PregnancyStatus"]``), or
  on every attribute by the generic PS3.4 C.2.2.2 rule for its VR (``match-all-keys = true``):
  by default an optional key outside that set is a return key only (K.2.2.1.1.2; see
  :class:`~wlmserver.matching.keys.MatchingKeys`).

The constraints a profile adds only narrow which steps answer: they are not returned, since the
query did not ask for them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from fnmatch import fnmatchcase

from wlmserver.matching.answers import CharsetPolicy
from wlmserver.matching.keys import MatchingKeys

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class Profile:
    """One modality profile; a None setting keeps the server's option.

    Attributes
    ----------
    name : str
        The profile's name in the configuration file (``[profiles.<name>]``).
    calling_ae_titles : tuple of str
        The calling AE titles it applies to (``*`` and ``?`` wildcards).
    station_filter : bool
        Narrow a query with a universal ScheduledStationAETitle to the calling AE title.
    date_window : tuple of int or None
        Days before and after today (``(-1, 1)``) that a query with a universal
        ScheduledProcedureStepStartDate is narrowed to.
    charset_policy : CharsetPolicy or None
        The answers' character set policy.
    expand_empty_sps : bool or None
        Expand an empty SPS item of a query to the Table K.6-1 SPS keys.
    omit_empty_optional : bool
        Leave out empty Type 3 (and non-Table K.6-1) keys from answers.
    hide_statuses : frozenset of str or None
        Step statuses not answered to this modality (``hide-status``), instead of the
        server's ``--hide-status``.
    match_keys : frozenset of int
        Tags matched in addition to the default matching keys (``match-keys``).
    match_all_keys : bool
        Match every attribute of a query, not only the matching keys (``match-all-keys``).
    """

    name: str
    calling_ae_titles: tuple[str, ...] = ()
    station_filter: bool = False
    date_window: tuple[int, int] | None = None
    charset_policy: CharsetPolicy | None = None
    expand_empty_sps: bool | None = None
    omit_empty_optional: bool = False
    hide_statuses: frozenset[str] | None = None
    match_keys: frozenset[int] = frozenset()
    match_all_keys: bool = False

    @property
    def matching(self) -> MatchingKeys:
        """The matching keys of this modality's queries.

        Examples
        --------
        >>> Profile("us", match_keys=frozenset({0x001021C0})).matching.matches_on(0x001021C0)
        True
        """
        return MatchingKeys(self.match_keys, self.match_all_keys)

    def applies_to(self, calling: str) -> bool:
        """Whether the profile names this calling AE title."""
        title = calling.strip()
        return any(fnmatchcase(title, p.strip()) for p in self.calling_ae_titles)

    def dates(self, today: datetime.date | None = None) -> tuple[str, str] | None:
        """The date window as ``(YYYYMMDD, YYYYMMDD)`` around ``today`` (the server's local
        date), or None.

        Examples
        --------
        >>> Profile("ct", date_window=(-1, 1)).dates(datetime.date(2026, 12, 31))
        ('20261230', '20270101')
        """
        if self.date_window is None:
            return None
        today = today or datetime.date.today()
        before, after = self.date_window
        first = today + datetime.timedelta(days=before)
        last = today + datetime.timedelta(days=after)
        return first.strftime("%Y%m%d"), last.strftime("%Y%m%d")

    @property
    def is_neutral(self) -> bool:
        """Whether the profile changes nothing."""
        return (
            not self.station_filter
            and self.date_window is None
            and self.charset_policy is None
            and self.expand_empty_sps is None
            and not self.omit_empty_optional
            and self.hide_statuses is None
            and self.matching.is_default
        )


#: The profile of a server without profiles: it changes nothing.
NO_PROFILE = Profile(DEFAULT_PROFILE)


@dataclass(frozen=True)
class Profiles:
    """The profiles of a server, in the order of the configuration file.

    Examples
    --------
    >>> profiles = Profiles((Profile("ct", ("CT*",), station_filter=True),
    ...                      Profile("default")))
    >>> profiles.for_calling("CT01").name, profiles.for_calling("MR01").name
    ('ct', 'default')
    """

    profiles: tuple[Profile, ...] = ()

    def for_calling(self, calling: str) -> Profile:
        """The profile of a calling AE title."""
        for profile in self.profiles:
            if profile.name != DEFAULT_PROFILE and profile.applies_to(calling):
                return profile
        return self.default

    @property
    def default(self) -> Profile:
        """The ``default`` profile, or one that changes nothing."""
        return next((p for p in self.profiles if p.name == DEFAULT_PROFILE), NO_PROFILE)
