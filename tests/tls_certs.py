"""Certificates for the TLS tests, made with trustme: a CA signing the server's and a
client's certificate, and CT01's (subject CN and subjectAltName ``ct01.example.org``), and a
second CA, not trusted by the server, signing a rogue client's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme


@dataclass(frozen=True)
class Certs:
    """PEM files: ``ca.pem``, and ``<name>.key`` / ``<name>.pem`` for server, client, ct01,
    rogue."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.folder / "other-ca.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def server(self, **overrides: Any) -> dict[str, Any]:
        """Config fields of a TLS server trusting ``ca.pem`` (so requiring client certs)."""
        fields: dict[str, Any] = {
            "tls_key": self.key("server"),
            "tls_cert": self.cert("server"),
            "tls_ca_files": (self.ca,),
        }
        return {**fields, **overrides}


def make_certs(folder: Path) -> Certs:
    """Write a CA, a server and a client certificate it signs, and a rogue client's signed
    by another CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    leaves = {
        "server": ca.issue_cert("localhost", "127.0.0.1"),
        "client": ca.issue_cert("modality.example"),
        "ct01": ca.issue_cert("ct01.example.org", common_name="ct01.example.org"),
        "rogue": other.issue_cert("modality.example"),
    }
    for name, leaf in leaves.items():
        leaf.private_key_pem.write_to_path(str(folder / f"{name}.key"))
        leaf.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
    return Certs(folder)
