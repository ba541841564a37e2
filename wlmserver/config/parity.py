"""The rest of wlmscpfs's options (the documentation's "wlmscpfs options", in
docs/reference/wlmscpfs.md): transfer syntaxes, testing SCUs, logging from a file, host access
and VRs, and the checks wlmscpfs makes of them."""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path


def _sleep_seconds(text: str) -> float:
    """Seconds to sleep: 0 or more (wlmscpfs takes whole seconds; fractions are fine here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 <= value <= 86400):
        raise argparse.ArgumentTypeError(f"{text}: give 0 to 86400 seconds")
    return value


def _compression_level(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 9):
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (uncompressed) to 9 (best compression)")
    return int(text)


def add_wlmscpfs_parity_options(p: argparse.ArgumentParser) -> None:
    """The rest of wlmscpfs's options (the parser needs ``prefix_chars="-+"``)."""
    g = p.add_argument_group("wlmscpfs: general")
    g.add_argument(
        "--arguments",
        action="store_true",
        help="print the command line, each option by its long name, then serve",
    )
    g.add_argument(
        "-lc",
        "--log-config",
        type=Path,
        metavar="FILE",
        help="configure logging from FILE instead of -q/-v/-d/-ll: Python's logging INI "
        "format (logging.config.fileConfig), or a dictConfig .json or .toml file",
    )
    g = p.add_argument_group("wlmscpfs: preferred network transfer syntaxes")
    syntaxes = [
        ("+x=", "--prefer-uncompr", "uncompr", "prefer explicit VR local byte order (default)"),
        ("+xe", "--prefer-little", "little", "prefer explicit VR little endian"),
        ("+xb", "--prefer-big", "big", "prefer explicit VR big endian"),
        ("+xd", "--prefer-deflated", "deflated", "prefer deflated explicit VR little endian"),
        ("+xi", "--implicit", "implicit", "accept implicit VR little endian only"),
    ]
    for short, long, const, text in syntaxes:
        g.add_argument(
            short,
            long,
            dest="transfer_syntax_preference",
            action="store_const",
            const=const,
            default="uncompr",
            help=text,
        )
    g.add_argument(
        "+cl",
        "--compression-level",
        type=_compression_level,
        default=None,
        metavar="LEVEL",
        help="deflate level with +xd: 0 uncompressed, 1 fastest, 9 best (default 6)",
    )
    g = p.add_argument_group("wlmscpfs: testing SCUs")
    g.add_argument("--refuse", action="store_true", help="refuse every association")
    g.add_argument(
        "--reject",
        action="store_true",
        help="reject an association request without an Implementation Class UID",
    )
    for when, text in [
        ("before", "before matching each query"),
        ("during", "before each response of a query"),
        ("after", "after the final response of a query"),
    ]:
        g.add_argument(
            f"--sleep-{when}",
            dest=f"sleep_{when}_find",
            type=_sleep_seconds,
            default=0.0,
            metavar="SECONDS",
            help=f"sleep SECONDS {text} (default 0)",
        )
    g = p.add_argument_group(
        "wlmscpfs: host access and VRs (see Coming from wlmscpfs, in the docs)"
    )
    g.add_argument(
        "-ac",
        "--access-full",
        dest="access_control",
        action="store_false",
        default=False,
        help="accept connections from any host (default)",
    )
    g.add_argument(
        "+ac",
        "--access-control",
        dest="access_control",
        action="store_true",
        help="not supported (TCP wrapper rules): stops with an error; see --allow-host",
    )
    g.add_argument(
        "+u",
        "--enable-new-vr",
        dest="new_vrs",
        action="store_true",
        default=True,
        help="UN, UT and later VRs are always sent as they are (default)",
    )
    g.add_argument(
        "-u",
        "--disable-new-vr",
        dest="new_vrs",
        action="store_false",
        help="accepted; has no effect",
    )
    g.add_argument(
        "-dhl",
        "--disable-host-lookup",
        action="store_true",
        help="accepted; wlmserver never looks host names up",
    )


def check_wlmscpfs_parity_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> None:
    """Refuse the combinations wlmscpfs refuses, and ``+ac`` (exit status 2)."""
    if args.access_control:
        parser.error(
            "+ac/--access-control (TCP wrapper host access control) is not supported: "
            "list the hosts allowed with --allow-host"
        )
    if args.compression_level is not None and args.transfer_syntax_preference != "deflated":
        parser.error("+cl/--compression-level only with +xd/--prefer-deflated")
    if args.log_config is not None:
        given = [
            name
            for name, value in (
                ("-q", args.quiet),
                ("-v", args.verbose),
                ("-d", args.debug),
                ("-ll", args.log_level),
                ("--log-json", args.log_json),
            )
            if value
        ]
        if given:
            json_hint = (
                " (JSON lines: name wlmserver.logs.JsonFormatter as a formatter in it)"
                if args.log_json
                else ""
            )
            parser.error(
                f"-lc/--log-config cannot be combined with {', '.join(given)}: the file sets "
                f"the levels and formats{json_hint}"
            )


def expanded_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The command line with each option by its long name, as wlmscpfs's ``--arguments``
    prints it.

    Examples
    --------
    >>> from wlmserver.config.options import build_parser
    >>> expanded_arguments(build_parser(), ["-dfp", "db", "-v", "+xb", "-rff", "-v", "104"])
    ['--data-files-path', 'db', '--verbose', '--prefer-big', '--request-file-format', '-v', '104']
    """
    actions = {name: action for action in parser._actions for name in action.option_strings}
    out: list[str] = []
    words = iter(argv)
    for word in words:
        action = actions.get(word)
        if word == "--" or action is None:
            out.append(word)
            if word == "--":
                out.extend(words)
            continue
        longs = [name for name in action.option_strings if name.startswith("--")]
        out.append(longs[0] if longs else word)
        if action.nargs is None:  # one value follows, whatever it looks like
            out.extend(list(itertools.islice(words, 1)))
    return out
