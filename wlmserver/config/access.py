"""Who may ask: calling AE title and peer address allow-lists, globally and per called AE title.

DICOM has no login: whoever reaches the port can read every worklist. An association is
admitted only when its calling AE title and its peer address are on every allow-list that
applies to it: the global lists, then those of the called AE title. A list that is not given
allows everyone; an empty list allows no one.

A refusal is an A-ASSOCIATE-RJ (PS3.8 9.3.4) with the reason that fits: "calling AE title
not recognized" for a calling AE title not on the list, "no reason given" for an address
(PS3.8 has no reason for it, and saying which address would help a prober).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

from wlmserver.config.certificates import CertificateBindings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A-ASSOCIATE-RJ (result, source, reason): rejected permanent, by the service user,
#: "calling AE title not recognized" (PS3.8 Table 9-21).
REJECT_CALLING_AET = (0x01, 0x01, 0x03)
#: A-ASSOCIATE-RJ: rejected permanent, by the service user, "no reason given".
REJECT_NO_REASON = (0x01, 0x01, 0x01)


def parse_network(text: str) -> Network:
    """An address or network (``10.2.0.0/16``, ``192.168.1.7``, ``::1``) as a network.

    Host names are not accepted: the server never looks names up (an allow-list that depends
    on DNS is only as strong as DNS).

    Raises
    ------
    ValueError
        ``text`` is not an IPv4 or IPv6 address or network.

    Examples
    --------
    >>> parse_network("10.2.3.4/16")
    IPv4Network('10.2.0.0/16')
    >>> parse_network("::1")
    IPv6Network('::1/128')
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network (like 10.2.0.0/16 or 192.168.1.7); "
            "host names are not looked up"
        ) from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
    return address


def valid_ae_pattern(pattern: str) -> bool:
    """Whether a calling AE title pattern can ever match: 1 to 16 characters of the AE
    repertoire, no backslash, ``*`` and ``?`` as wildcards (PS3.5 6.2)."""
    text = pattern.strip()
    return 0 < len(text) <= 16 and text.isascii() and text.isprintable() and "\\" not in text


@dataclass(frozen=True)
class AllowList:
    """One set of allow-lists.

    Attributes
    ----------
    calling_ae_titles : tuple of str or None
        Calling AE titles allowed, with ``*`` and ``?`` wildcards (case-sensitive, as AE titles
        are); None allows every title.
    hosts : tuple of networks or None
        Peer addresses allowed; None allows every address.
    """

    calling_ae_titles: tuple[str, ...] | None = None
    hosts: tuple[Network, ...] | None = None

    def refuses_title(self, calling: str) -> bool:
        """Whether the calling AE title is not on the list."""
        if self.calling_ae_titles is None:
            return False
        title = calling.strip()
        return not any(fnmatchcase(title, p.strip()) for p in self.calling_ae_titles)

    def refuses_address(self, address: str) -> bool:
        """Whether the peer address is not on the list (an unreadable one never is)."""
        if self.hosts is None:
            return False
        ip = _address(address)
        return ip is None or not any(ip in net for net in self.hosts if net.version == ip.version)


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused.

    Attributes
    ----------
    reject : tuple of int
        The A-ASSOCIATE-RJ result, source and reason.
    reason : str
        For the log: which list refused it (no patient data; AE titles and addresses are not).
    """

    reject: tuple[int, int, int]
    reason: str


@dataclass(frozen=True)
class Access:
    """The allow-lists of a server: global, and per called AE title.

    Attributes
    ----------
    everyone : AllowList
        Applies to every association.
    called : Mapping of str to AllowList
        Applies, in addition, to associations calling that AE title.
    certificates : CertificateBindings
        Calling AE titles tied to client certificates (``[access.certificates]``; see
        :mod:`wlmserver.config.certificates`).
    """

    everyone: AllowList = field(default_factory=AllowList)
    called: Mapping[str, AllowList] = field(default_factory=lambda: MappingProxyType({}))
    certificates: CertificateBindings = field(default_factory=CertificateBindings)

    @property
    def is_open(self) -> bool:
        """Whether nobody is ever refused."""
        lists: Iterable[AllowList] = (self.everyone, *self.called.values())
        return self.certificates.is_empty and all(
            a.calling_ae_titles is None and a.hosts is None for a in lists
        )

    def certificate_refusal(
        self, calling: str, identities: frozenset[str] | None
    ) -> Refusal | None:
        """Why ``[access.certificates]`` refuses an association from ``calling`` with a
        client certificate of these identities (None: over plain TCP), or None.

        Examples
        --------
        >>> from wlmserver.config.certificates import Binding
        >>> bound = Binding("CT01", frozenset({"CN=ct01"}))
        >>> access = Access(certificates=CertificateBindings((bound,)))
        >>> access.certificate_refusal("CT01", frozenset({"CN=ct01"})) is None
        True
        >>> access.certificate_refusal("CT01", None).reject == REJECT_CALLING_AET
        True
        """
        reason = self.certificates.refusal(calling, identities)
        return None if reason is None else Refusal(REJECT_CALLING_AET, reason)

    def refusal(self, calling: str, called: str, address: str) -> Refusal | None:
        """Why an association from ``calling`` at ``address`` to ``called`` is refused, or
        None when it is allowed.

        Examples
        --------
        >>> access = Access(AllowList(calling_ae_titles=("CT*",)))
        >>> access.refusal("CT01", "WLM", "10.0.0.1") is None
        True
        >>> access.refusal("MR01", "WLM", "10.0.0.1").reason
        'calling AE title not allowed (access: calling-ae-titles)'
        """
        lists = [("access", self.everyone)]
        specific = self.called.get(called.strip())
        if specific is not None:
            lists.append((f"access.called.{called.strip()}", specific))
        for where, allow in lists:
            if allow.refuses_address(address):
                return Refusal(REJECT_NO_REASON, f"address not allowed ({where}: hosts)")
            if allow.refuses_title(calling):
                return Refusal(
                    REJECT_CALLING_AET, f"calling AE title not allowed ({where}: calling-ae-titles)"
                )
        return None
