"""The TLS options, with the names of DCMTK's TLS-capable tools (storescp, findscu)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: ``-rc``, ``-vc``, ``-ic``: option, long option, ``Config.tls_peer_cert``, help.
PEER_CERT_OPTIONS = (
    (
        "-rc",
        "--require-peer-cert",
        "require",
        "require a client certificate signed by a trusted one (default with +cf or +cd)",
    ),
    ("-vc", "--verify-peer-cert", "verify", "verify a client certificate if one is presented"),
    (
        "-ic",
        "--ignore-peer-cert",
        "ignore",
        "do not ask for a client certificate (default without +cf and +cd)",
    ),
)


def add_tls_options(p: argparse.ArgumentParser) -> None:
    """The TLS options, with the names of DCMTK's TLS-capable tools (storescp, findscu)."""
    g = p.add_argument_group(
        "transport layer security (TLS 1.2 or 1.3, BCP 195; PS3.15 Annex B)",
    )
    g.add_argument(
        "+tls",
        "--enable-tls",
        dest="tls",
        nargs=2,
        type=Path,
        metavar=("KEY", "CERT"),
        help="serve TLS with this PEM private key and certificate (on the port, or on "
        "--tls-port beside plain TCP)",
    )
    g.add_argument(
        "+cf",
        "--add-cert-file",
        dest="tls_ca_files",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="trust the PEM certificates in FILE (CAs or self-signed clients) to verify "
        "clients (repeatable)",
    )
    g.add_argument(
        "+cd",
        "--add-cert-dir",
        dest="tls_ca_dirs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="trust the PEM certificates in the files of DIR (repeatable)",
    )
    peer = g.add_mutually_exclusive_group()
    for short, long, mode, text in PEER_CERT_OPTIONS:
        peer.add_argument(
            short, long, dest="tls_peer_cert", action="store_const", const=mode, help=text
        )
    g.add_argument(
        "--tls-port",
        type=_tls_port,
        metavar="PORT",
        help="serve TLS on PORT and plain TCP on the port (default: with +tls, the port "
        "is TLS only)",
    )


def _tls_port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0 to 65535")
    return int(text)


def tls_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS fields of :class:`Config` from parsed arguments."""
    key, cert = args.tls if args.tls else (None, None)
    return {
        "tls_key": key,
        "tls_cert": cert,
        "tls_ca_files": tuple(args.tls_ca_files),
        "tls_ca_dirs": tuple(args.tls_ca_dirs),
        "tls_peer_cert": args.tls_peer_cert,
        "tls_port": args.tls_port,
    }
