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


def tls_option_problem(args: argparse.Namespace) -> str | None:
    """Why TLS options do not go together, in one line, or None (the files are checked when
    the TLS context is made, :func:`wlmserver.service.tls.server_context`)."""
    if args.tls is None:
        needs_tls = [
            ("+cf", bool(args.tls_ca_files)),
            ("+cd", bool(args.tls_ca_dirs)),
            ("--tls-port", args.tls_port is not None),
            *((o[0], args.tls_peer_cert == o[2]) for o in PEER_CERT_OPTIONS),
        ]
        for option, given in needs_tls:
            if given:
                return f"{option} needs +tls KEY CERT (the server's key and certificate)"
        return None
    trusted = args.tls_ca_files or args.tls_ca_dirs
    if args.tls_peer_cert in ("require", "verify") and not trusted:
        option = next(o[0] for o in PEER_CERT_OPTIONS if o[2] == args.tls_peer_cert)
        return f"{option} needs trusted certificates to verify clients with: +cf FILE or +cd DIR"
    if args.tls_port is not None and args.tls_port == args.port and args.port != 0:
        return f"--tls-port {args.tls_port} is the plain TCP port too: give another one"
    return None
