"""Client certificates tied to calling AE titles (the configuration file's
``[access.certificates]``).

A calling AE title is whatever the peer says it is; over TLS with client certificates
verified (``-rc``, ``-vc``), the server knows who the peer is. This table ties the two: a
modality's AE title may only be used with its certificate, and its certificate only with its
AE title::

    [access.certificates]
    CT01 = ["CN=ct01.example.org", "DNS:ct01.example.org"]
    "US*" = ["DNS:ultrasound.example.org"]
    refuse-unbound-titles = true

- A calling AE title is *bound* by the key naming it exactly, else by the first key whose
  ``*``/``?`` pattern matches it, in the file's order. A bound title is admitted only over
  TLS with a verified client certificate carrying one of the key's identities: over plain TCP
  (``--tls-port`` beside the plain port), without a certificate or with another one it is
  refused.
- A certificate carrying an identity the table lists is tied to the titles that list it: with
  a title bound to no key it is refused (CT01's certificate calling as FINDSCU).
- ``refuse-unbound-titles = true``: over TLS, a calling AE title that no key binds is refused
  whatever the certificate (by default it is served, as without the table). Option keys are
  longer than 16 characters, so that they can never be an AE title.
- Identities, matched exactly (no wildcards): ``CN=`` a subject common name, and the
  subjectAltName entries ``DNS:`` (case-insensitive), ``email:`` (its domain
  case-insensitive), ``URI:`` and ``IP:`` (any spelling of the address).

A refusal is an A-ASSOCIATE-RJ "calling AE title not recognized" (see
:class:`~wlmserver.config.access.Access`), logged with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

#: ``refuse-unbound-titles``: the one option key of the table (longer than an AE title).
REFUSE_UNBOUND = "refuse-unbound-titles"
#: The option keys of ``[access.certificates]``; any other key is a calling AE title.
OPTION_KEYS = (REFUSE_UNBOUND,)
#: Identity prefixes as written in the file (any case), and their canonical spelling.
PREFIXES = {"cn=": "CN=", "dns:": "DNS:", "email:": "email:", "uri:": "URI:", "ip:": "IP:"}
_WRITTEN = re.compile(r"^\s*([A-Za-z]+)\s*([=:])(.*)$", re.DOTALL)
#: ``ssl.SSLSocket.getpeercert()``'s subjectAltName types, as identity prefixes.
_SAN_PREFIXES = {"DNS": "DNS:", "email": "email:", "URI": "URI:", "IP Address": "IP:"}


def _canonical(prefix: str, value: str) -> str:
    if prefix == "DNS:":
        return prefix + value.lower()
    if prefix == "email:":
        local, at, domain = value.rpartition("@")
        return prefix + (f"{local}@{domain.lower()}" if at else value)
    if prefix == "IP:":
        try:
            return prefix + str(ipaddress.ip_address(value.strip()))
        except ValueError:
            return prefix + value
    return prefix + value


def parse_identity(text: str) -> str:
    """A certificate identity of the configuration file in its canonical form.

    Raises
    ------
    ValueError
        ``text`` has no known prefix, no value, or an IP address that is not one.

    Examples
    --------
    >>> parse_identity("dns:CT01.Example.ORG")
    'DNS:ct01.example.org'
    >>> parse_identity("CN=ct01.example.org")
    'CN=ct01.example.org'
    >>> parse_identity("ip:0:0::1")
    'IP:::1'
    """
    found = _WRITTEN.match(text)
    value = found.group(3).strip() if found else ""
    prefix = PREFIXES.get(f"{found.group(1).lower()}{found.group(2)}") if found else None
    if prefix is not None and value:
        if prefix == "IP:":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{text!r}: {value!r} is not an IP address") from None
        return _canonical(prefix, value)
    raise ValueError(
        f"{text!r} is not a certificate identity: write CN=<subject common name>, or "
        "DNS:, email:, URI: or IP: and a subjectAltName entry"
    )


def identities_of(cert: Mapping[str, Any]) -> frozenset[str]:
    """The identities of a verified peer certificate, as :meth:`ssl.SSLSocket.getpeercert`
    decodes it (an empty dict: no certificate, or one not verified).

    Examples
    --------
    >>> sorted(identities_of({
    ...     "subject": ((("organizationName", "Site"),), (("commonName", "ct01"),)),
    ...     "subjectAltName": (("DNS", "CT01.example.org"), ("IP Address", "10.0.0.1")),
    ... }))
    ['CN=ct01', 'DNS:ct01.example.org', 'IP:10.0.0.1']
    """
    found = set()
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                found.add(_canonical("CN=", str(value)))
    for kind, value in cert.get("subjectAltName", ()):
        prefix = _SAN_PREFIXES.get(kind)
        if prefix is not None:
            found.add(_canonical(prefix, str(value).strip()))
    return frozenset(found)


def describe_certificate(identities: Iterable[str]) -> str:
    """A certificate in a log line: its common name, else its first identity (no patient
    data: certificates name hosts and devices)."""
    ordered = sorted(identities, key=lambda i: (not i.startswith("CN="), i))
    return ordered[0] if ordered else "no identity"


@dataclass(frozen=True)
class Binding:
    """One key of ``[access.certificates]``.

    Attributes
    ----------
    pattern : str
        The calling AE title, or a pattern of them (``*`` and ``?``).
    identities : frozenset of str
        The certificate identities allowed to use it, canonical (:func:`parse_identity`).
    """

    pattern: str
    identities: frozenset[str]

    @property
    def is_pattern(self) -> bool:
        """Whether the key is a wildcard pattern rather than one AE title."""
        return any(c in self.pattern for c in "*?")

    def matches(self, calling: str) -> bool:
        """Whether the key binds this calling AE title."""
        return fnmatchcase(calling.strip(), self.pattern.strip())


@dataclass(frozen=True)
class CertificateBindings:
    """The ``[access.certificates]`` table (empty: no binding, nobody refused by it).

    Attributes
    ----------
    bindings : tuple of Binding
        In the file's order.
    refuse_unbound : bool
        Over TLS, refuse a calling AE title that no key binds (``refuse-unbound-titles``).
    """

    bindings: tuple[Binding, ...] = ()
    refuse_unbound: bool = False

    @property
    def is_empty(self) -> bool:
        """Whether the table refuses nobody (it is absent, or empty)."""
        return not self.bindings and not self.refuse_unbound

    def binding_for(self, calling: str) -> Binding | None:
        """The key binding a calling AE title: its own, else the first pattern matching it."""
        title = calling.strip()
        exact = [b for b in self.bindings if not b.is_pattern and b.pattern.strip() == title]
        if exact:
            return exact[0]
        return next((b for b in self.bindings if b.is_pattern and b.matches(title)), None)

    def refusal(self, calling: str, identities: frozenset[str] | None) -> str | None:
        """Why an association from ``calling`` is refused, for the log, or None.

        Parameters
        ----------
        calling : str
            The calling AE title.
        identities : frozenset of str or None
            The identities of the client's verified certificate (empty: none presented), or
            None over plain TCP.

        Examples
        --------
        >>> table = CertificateBindings((Binding("CT01", frozenset({"CN=ct01"})),))
        >>> table.refusal("CT01", frozenset({"CN=ct01"})) is None
        True
        >>> table.refusal("FINDSCU", frozenset({"CN=ct01"}))
        'the client certificate CN=ct01 is bound to other calling AE titles (access.certificates)'
        >>> table.refusal("FINDSCU", None) is None
        True
        """
        if self.is_empty:
            return None
        title = calling.strip()
        binding = self.binding_for(title)
        if binding is not None:
            where = f"access.certificates: {binding.pattern}"
            if identities is None:
                return (
                    f"calling AE title {title} is bound to a client certificate: TLS only ({where})"
                )
            if not identities:
                return f"calling AE title {title} presented no client certificate ({where})"
            if identities.isdisjoint(binding.identities):
                return (
                    f"the client certificate {describe_certificate(identities)} is not one bound "
                    f"to calling AE title {title} ({where})"
                )
            return None
        if identities is None:
            return None  # plain TCP: the table binds certificates only
        if self.refuse_unbound:
            return (
                f"calling AE title {title} is bound to no client certificate "
                f"(access.certificates: {REFUSE_UNBOUND})"
            )
        if any(not identities.isdisjoint(b.identities) for b in self.bindings):
            return (
                f"the client certificate {describe_certificate(identities)} is bound to other "
                "calling AE titles (access.certificates)"
            )
        return None

    def describe(self) -> str:
        """The start-up (and reload) log line: which titles are bound, to how many
        identities (no patient data)."""
        bound = [f"{b.pattern} ({len(b.identities)})" for b in self.bindings]
        unbound = "refused" if self.refuse_unbound else "served"
        return (
            f"access.certificates: calling AE titles bound to client certificate identities: "
            f"{', '.join(bound) or '(none)'}; unbound titles over TLS {unbound}"
        )
