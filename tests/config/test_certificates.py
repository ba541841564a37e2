"""Client certificates tied to calling AE titles: identities as written and as certificates
carry them, and who is refused (a data table: a new rule is a new row)."""

from __future__ import annotations

import pytest

from wlmserver.config.certificates import (
    Binding,
    CertificateBindings,
    describe_certificate,
    identities_of,
    parse_identity,
)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("CN=ct01.example.org", "CN=ct01.example.org"),
        ("cn = CT01 Room 1", "CN=CT01 Room 1"),  # a common name is compared as written
        ("DNS:CT01.Example.Org", "DNS:ct01.example.org"),
        ("email:Ct01@Example.ORG", "email:Ct01@example.org"),  # the local part as written
        ("URI:urn:dicom:ct01", "URI:urn:dicom:ct01"),
        ("IP:10.0.0.1", "IP:10.0.0.1"),
        ("ip:0:0:0:0:0:0:0:1", "IP:::1"),
    ],
)
def test_identities_are_written_with_a_prefix(written: str, canonical: str) -> None:
    assert parse_identity(written) == canonical


@pytest.mark.parametrize(
    "written", ["ct01.example.org", "CN=", "DNS:  ", "IP:host.example", "O=Site", ""]
)
def test_other_identities_are_refused(written: str) -> None:
    with pytest.raises(ValueError, match=r"identity|IP address"):
        parse_identity(written)


def test_a_certificate_has_its_common_names_and_alternative_names() -> None:
    cert = {
        "subject": (
            (("organizationName", "Site"),),
            (("commonName", "ct01.example.org"),),
        ),
        "subjectAltName": (
            ("DNS", "CT01.example.org"),
            ("email", "ct01@Example.org"),
            ("URI", "urn:dicom:ct01"),
            ("IP Address", "10.0.0.1"),
            ("othername", "<unsupported>"),
        ),
    }
    assert identities_of(cert) == {
        "CN=ct01.example.org",
        "DNS:ct01.example.org",
        "email:ct01@example.org",
        "URI:urn:dicom:ct01",
        "IP:10.0.0.1",
    }
    assert identities_of({}) == frozenset()
    assert describe_certificate(identities_of(cert)) == "CN=ct01.example.org"


CT01 = frozenset({"CN=ct01.example.org", "DNS:ct01.example.org"})
US = frozenset({"DNS:us.example.org"})
OTHER = frozenset({"CN=somebody.example.org"})
TABLE = CertificateBindings(
    (
        Binding("US*", US),
        Binding("CT01", frozenset({"DNS:ct01.example.org"})),
        Binding("CT*", frozenset({"CN=ct-shared.example.org"})),
    )
)
STRICT = CertificateBindings(TABLE.bindings, refuse_unbound=True)
NO_CERT: frozenset[str] = frozenset()
PLAIN = None  # over plain TCP


@pytest.mark.parametrize(
    ("table", "calling", "identities", "refused_because"),
    [
        # a bound title: its certificate, over TLS only
        (TABLE, "CT01", CT01, None),
        (TABLE, "CT01", OTHER, "not one bound to calling AE title CT01"),
        (TABLE, "CT01", NO_CERT, "presented no client certificate"),
        (TABLE, "CT01", PLAIN, "TLS only"),
        # the exact key wins over a pattern listed before or after it
        (TABLE, "CT01", frozenset({"CN=ct-shared.example.org"}), "access.certificates: CT01"),
        (TABLE, "CT02", frozenset({"CN=ct-shared.example.org"}), None),
        (TABLE, "US01", US, None),
        (TABLE, "US01", CT01, "access.certificates: US*"),
        # a bound certificate under a title no key binds (CT01's certificate as FINDSCU)
        (TABLE, "FINDSCU", CT01, "bound to other calling AE titles"),
        (TABLE, "FINDSCU", OTHER, None),
        (TABLE, "FINDSCU", NO_CERT, None),
        (TABLE, "FINDSCU", PLAIN, None),
        # refuse-unbound-titles: over TLS only
        (STRICT, "FINDSCU", OTHER, "bound to no client certificate"),
        (STRICT, "FINDSCU", PLAIN, None),
        (STRICT, "CT01", CT01, None),
        # no table: nobody
        (CertificateBindings(), "CT01", PLAIN, None),
        (CertificateBindings(), "CT01", OTHER, None),
    ],
)
def test_who_is_refused(
    table: CertificateBindings,
    calling: str,
    identities: frozenset[str] | None,
    refused_because: str | None,
) -> None:
    reason = table.refusal(calling, identities)
    if refused_because is None:
        assert reason is None
    else:
        assert reason is not None and refused_because in reason, reason


def test_the_log_line_names_titles_and_counts_only() -> None:
    assert STRICT.describe() == (
        "access.certificates: calling AE titles bound to client certificate identities: "
        "US* (1), CT01 (1), CT* (1); unbound titles over TLS refused"
    )
    assert CertificateBindings().is_empty and not STRICT.is_empty
