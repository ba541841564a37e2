"""DICOM TLS with DCMTK's findscu (Debian's 3.6.7, OpenSSL 3): who is answered, who is
refused, and the server run as a user runs it.

Certificates are made per module with trustme (see ``tests/tls_certs.py``). Servers listen on
free loopback ports; every subprocess has a timeout; waits are bounded polls on outcomes.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer, start_wlmserver, stop_wlmserver, until, write_wl
from tls_certs import Certs, make_certs

FINDSCU = Path("/usr/bin/findscu")  # not the pynetdicom findscu that may shadow it on PATH
TIMEOUT = 30  # seconds, for every subprocess
PENDING = re.compile(r"Find Response:? \d+ \(Pending\)")
FINAL = re.compile(r"Received Final Find Response(?: \(([^)]*)\))?")
ANSWERS = 3

pytestmark = pytest.mark.skipif(not FINDSCU.exists(), reason="DCMTK findscu not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def served(db: Path) -> Path:
    for n in range(ANSWERS):
        write_wl(db / "WLM" / f"{n}.wl", PatientID=f"P{n}")
    return db


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        yield caplog


def findscu(port: int, *tls: str | Path) -> subprocess.CompletedProcess[str]:
    """DCMTK's findscu -W -v against 127.0.0.1 with TLS options ``tls`` (none: plain TCP)."""
    return subprocess.run(
        [
            str(FINDSCU),
            "-W",
            "-v",
            *map(str, tls),
            *("-aec", "WLM", "127.0.0.1", str(port)),
            *("-k", "PatientID", "-k", "(0040,0100)[0].ScheduledProcedureStepID"),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=TIMEOUT,
    )


def answered(result: subprocess.CompletedProcess[str]) -> int:
    """The number of answers of a findscu run that succeeded (asserted)."""
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    match = FINAL.search(text)
    assert match and (match.group(1) or "Success") == "Success", text
    return len(PENDING.findall(text))


def refused(result: subprocess.CompletedProcess[str]) -> None:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert not PENDING.search(text), text


def client(certs: Certs, name: str = "client") -> list[str | Path]:
    """findscu's options for a client with ``name``'s certificate, trusting the server's CA
    (findscu verifies the server's certificate: -rc is its default)."""
    return ["+tls", certs.key(name), certs.cert(name), "+cf", certs.ca]


def anonymous(certs: Certs) -> list[str | Path]:
    """findscu's options for TLS without a client certificate."""
    return ["+tla", "+cf", certs.ca]


def _one_failure(logs: pytest.LogCaptureFixture, reason: str) -> None:
    """One handshake failure line naming the peer and the reason, no traceback."""

    def failures() -> list[str]:
        return [
            r.getMessage()
            for r in logs.records
            if r.name == "wlmserver.service.tls" and "TLS handshake from" in r.getMessage()
        ]

    assert until(lambda: len(failures()) >= 1), logs.text
    (line,) = failures()
    assert line.startswith("TLS handshake from 127.0.0.1:") and reason in line, line
    assert not [r for r in logs.records if r.name.startswith("wlmserver") and r.exc_info]
    # the association ends there: what findscu sends after a refused TLS 1.3 handshake (its
    # A-ASSOCIATE-RQ) is not read as a PDU ("PDU type 0x02 of 1245879828 bytes refused")
    assert until(lambda: any("closed at the TLS handshake" in m for m in logs.messages))
    loud = [
        r.getMessage()
        for r in logs.records
        if r.levelno >= logging.WARNING and r.name.startswith("wlmserver")
    ]
    assert loud == [line], loud


def _versions(logs: pytest.LogCaptureFixture) -> list[str]:
    """The TLS versions of the associations ended, from their ``--log-json`` fields."""
    fields = [getattr(r, "fields", {}) for r in logs.records]
    return [str(f["tls"]) for f in fields if f.get("event") == "association" and "tls" in f]


def test_findscu_with_a_trusted_certificate_is_answered_over_tls13_and_tls12(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())  # +cf: -rc by default
    assert answered(findscu(server.port, *client(certs))) == ANSWERS
    # +pz, DCMTK's Extended BCP 195 profile, negotiates TLS 1.2 (ECDHE, AES-GCM)
    assert answered(findscu(server.port, "+pz", *client(certs))) == ANSWERS
    assert until(lambda: len(_versions(logs)) == 2)
    assert _versions(logs) == ["TLSv1.3", "TLSv1.2"]


def test_findscu_signed_by_another_ca_is_refused_and_the_server_keeps_serving(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())
    refused(findscu(server.port, *client(certs, "rogue")))
    _one_failure(logs, "certificate verify failed: unable to get local issuer certificate")
    assert answered(findscu(server.port, *client(certs))) == ANSWERS


def test_findscu_without_a_certificate_is_refused_when_required_answered_with_ic(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    required = start_server(**certs.server())
    for _ in range(4):  # the bytes findscu sends after the refusal race the close
        logs.clear()
        refused(findscu(required.port, *anonymous(certs)))
        _one_failure(logs, "no client certificate (one is required)")
    ignoring = start_server(**certs.server(tls_peer_cert="ignore"))
    assert answered(findscu(ignoring.port, *anonymous(certs))) == ANSWERS
    # -ic as DCMTK's: the certificate is not verified (not even asked for), so a client
    # signed by a CA that +cf does not name is answered too
    assert answered(findscu(ignoring.port, *client(certs, "rogue"))) == ANSWERS


def test_plain_findscu_on_the_tls_port_is_refused(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())
    refused(findscu(server.port))
    _one_failure(logs, "not a TLS client")
    assert answered(findscu(server.port, *client(certs))) == ANSWERS


def test_retired_profiles_and_a_distrusted_server_are_refused(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    """The retired AES (TLS 1.2 CBC) and NULL profiles find no BCP 195 cipher suite; a
    findscu that does not trust the server's certificate ends the handshake itself."""
    server = start_server(**certs.server())
    for profile in ("+pa", "+pn"):
        refused(findscu(server.port, profile, *client(certs)))
    assert until(lambda: sum("no cipher suite in common" in m for m in logs.messages) == 2)
    logs.clear()
    distrusting = ["+tls", certs.key("client"), certs.cert("client"), "+cf", certs.other_ca]
    refused(findscu(server.port, *distrusting))
    _one_failure(logs, "the client refused the handshake")


def test_plain_and_tls_side_by_side(start_server: StartServer, served: Path, certs: Certs) -> None:
    server = start_server(**certs.server(tls_port=0))
    assert server.tls_port is not None and server.tls_port != server.port
    assert answered(findscu(server.port)) == ANSWERS
    assert answered(findscu(server.tls_port, *client(certs))) == ANSWERS
    refused(findscu(server.tls_port))
    refused(findscu(server.port, *client(certs)))
    assert answered(findscu(server.port)) == ANSWERS


def test_python_m_wlmserver_serves_tls_as_a_user_starts_it(served: Path, certs: Certs) -> None:
    key, cert, ca = certs.key("server"), certs.cert("server"), certs.ca
    process, _, line = start_wlmserver(
        [
            *("+tls", str(key), str(cert), "+cf", str(ca), "-dfp", str(served)),
            *("--bind", "127.0.0.1", "--tls-port", "0", "0"),
        ]
    )
    try:
        ports = re.search(r"on port (\d+).*TLS on port (\d+): add \+tls CLIENT.key", line)
        assert ports, line
        plain, secure = int(ports.group(1)), int(ports.group(2))
        assert answered(findscu(secure, *client(certs))) == ANSWERS
        refused(findscu(secure, *client(certs, "rogue")))
        refused(findscu(secure))
        for _ in range(4):  # no certificate: what findscu sends after the refusal is not read
            refused(findscu(secure, *anonymous(certs)))
        assert answered(findscu(plain)) == ANSWERS
    finally:
        err = stop_wlmserver(process)
    assert err.count("no client certificate (one is required)") == 4, err
    assert "PDU type" not in err, err  # a TLS 1.3 client's next bytes, read raw as a "PDU"
    assert f"TLS (1.2 or 1.3) on port {secure}; a client certificate signed" in err
    assert "(TLSv1.3): released" in err
    assert "certificate verify failed" in err and "not a TLS client" in err
    assert "Traceback" not in err and "P0" not in err  # no traceback, no patient data


def test_python_m_wlmserver_names_a_bad_file_and_exits_2(served: Path, certs: Certs) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "wlmserver", "-dfp", str(served)),
            *("+tls", str(certs.key("client")), str(certs.cert("server")), "0"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"wlmserver: error: +tls: the private key {certs.key('client')} does not belong to the "
        f"certificate {certs.cert('server')}"
    )


ECHOSCU = Path("/usr/bin/echoscu")


def echoscu(port: int, calling: str, *tls: str | Path) -> subprocess.CompletedProcess[str]:
    """DCMTK's echoscu -v from ``calling`` to WLM at 127.0.0.1 with TLS options ``tls``."""
    return subprocess.run(
        [
            str(ECHOSCU),
            "-v",
            *map(str, tls),
            "-aet",
            calling,
            "-aec",
            "WLM",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=TIMEOUT,
    )


@pytest.mark.skipif(not ECHOSCU.exists(), reason="DCMTK echoscu not installed")
def test_echoscu_with_ct01s_certificate_is_served_as_ct01_and_rejected_as_findscu(
    tmp_path: Path, served: Path, certs: Certs
) -> None:
    """The configuration file ties CT01 to its certificate ([access.certificates]): echoscu
    with it is answered as CT01; as FINDSCU it gets A-ASSOCIATE-RJ calling AE title not
    recognized, and the log one line saying why."""
    config = tmp_path / "wlmserver.toml"
    config.write_text(
        "[server]\n"
        f'data-files-path = "{served}"\n'
        'bind = "127.0.0.1"\n'
        f'enable-tls = ["{certs.key("server")}", "{certs.cert("server")}"]\n'
        f'add-cert-file = ["{certs.ca}"]\n'
        "\n[access.certificates]\n"
        'CT01 = ["CN=ct01.example.org", "DNS:ct01.example.org"]\n',
        encoding="utf-8",
    )
    process, port, _ = start_wlmserver(["--config", str(config), "0"])
    try:
        ct01 = ["+tls", certs.key("ct01"), certs.cert("ct01"), "+cf", certs.ca]
        served_as_ct01 = echoscu(port, "CT01", *ct01)
        as_findscu = echoscu(port, "FINDSCU", *ct01)
        other_as_ct01 = echoscu(port, "CT01", *client(certs))
    finally:
        err = stop_wlmserver(process)
    assert served_as_ct01.returncode == 0, served_as_ct01.stdout + served_as_ct01.stderr
    for result in (as_findscu, other_as_ct01):
        text = result.stdout + result.stderr
        assert result.returncode != 0, text
        assert "Association Rejected" in text, text
        assert "Reason: Calling AE Title Not Recognized" in text, text
    rejected = [line for line in err.splitlines() if "rejected: the client certificate" in line]
    assert len(rejected) == 4, err  # the refusal and its association's end, for each
    assert "association from FINDSCU@127.0.0.1:" in rejected[0]
    assert "CN=ct01.example.org is bound to other calling AE titles" in rejected[0]
    assert "access.certificates: calling AE titles bound to client certificate identities: " in err
