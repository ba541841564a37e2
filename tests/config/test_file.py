"""The configuration file: what it holds, and errors that name the file, line and key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import documentation, documented
from hypothesis import given, settings
from hypothesis import strategies as st

from wlmserver.config.access import REJECT_CALLING_AET, REJECT_NO_REASON
from wlmserver.config.file import ConfigFileError, from_data, key_lines, load
from wlmserver.config.loader import apply_config_file, config_from_args
from wlmserver.config.loader import load as loader_load
from wlmserver.config.options import build_parser
from wlmserver.matching.answers import CharsetPolicy

GOOD = """\
# a site's configuration
[server]
port = 4242
aetitle = "WLM_MAIN"
no-sq-expansion = true
max-associations = 20
return-iso-ir-100 = true
allow-host = ["10.1.0.0/16"]

[access]
calling-ae-titles = ["CT*", "MR01"]
hosts = ["192.168.7.0/24", "127.0.0.1"]

[access.called.WLM]
calling-ae-titles = ["CT01"]

[profiles.ct]
calling-ae-titles = ["CT*"]
station-filter = true
date-window = [-1, 1]
charset = "latin1"
sq-expansion = false
omit-empty-optional = true

[profiles.default]
date-window = [0, 0]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wlmserver.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _config(tmp_path: Path, text: str, *argv: str):  # type: ignore[no-untyped-def]
    path = _write(tmp_path, text)
    parser = build_parser()
    file = load(path)
    apply_config_file(parser, file)
    return config_from_args(parser.parse_args(["-dfp", str(tmp_path), *argv]), file)


def test_a_file_sets_options_access_and_profiles(tmp_path: Path) -> None:
    config = _config(tmp_path, GOOD)
    assert config.port == 4242
    assert config.ae_title == "WLM_MAIN"
    assert config.expand_empty_sps is False
    assert config.max_associations == 20
    assert config.charset_policy is CharsetPolicy.LATIN1
    # [server] allow-host and [access] hosts add up
    assert config.access.everyone.calling_ae_titles == ("CT*", "MR01")
    assert [str(h) for h in config.access.everyone.hosts or ()] == [
        "10.1.0.0/16",
        "192.168.7.0/24",
        "127.0.0.1/32",
    ]
    assert config.access.refusal("CT05", "OTHER", "127.0.0.1") is None
    assert config.access.refusal("CT05", "WLM", "127.0.0.1").reject == REJECT_CALLING_AET  # type: ignore[union-attr]
    assert config.access.refusal("CT01", "WLM", "10.9.9.9").reject == REJECT_NO_REASON  # type: ignore[union-attr]
    ct = config.profiles.for_calling("CT07")
    assert (ct.name, ct.station_filter, ct.date_window) == ("ct", True, (-1, 1))
    assert ct.charset_policy is CharsetPolicy.LATIN1 and ct.expand_empty_sps is False
    assert ct.omit_empty_optional
    assert config.profiles.for_calling("US01").name == "default"
    assert config.config_file == tmp_path / "wlmserver.toml"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\ndata-files-path = "db"\nrequest-file-path = "/abs"\n')
    parser = build_parser()
    file = load(path)
    apply_config_file(parser, file)
    args = parser.parse_args([])
    assert args.data_files_path == tmp_path / "db"
    assert args.request_file_path == Path("/abs")


def test_tls_options_go_into_the_file(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[server]\nenable-tls = ["tls/server.key", "/etc/tls/server.pem"]\n'
        'add-cert-file = ["tls/ca.pem"]\ntls-port = 2762\nverify-peer-cert = true\n',
    )
    assert config.tls_key == tmp_path / "tls/server.key"
    assert config.tls_cert == Path("/etc/tls/server.pem")
    assert config.tls_ca_files == (tmp_path / "tls/ca.pem",)
    assert (config.tls_port, config.tls_peer_cert_mode) == (2762, "verify")


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, GOOD, "5151", "-aet", "OTHER", "--allow-calling-aet", "US01")
    assert (config.port, config.ae_title) == (5151, "OTHER")
    # a list option given on the command line adds to the file's list
    assert config.access.everyone.calling_ae_titles == ("CT*", "MR01", "US01")


def test_every_kind_of_option_goes_into_the_file(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "[server]\nprefer-big = true\nsleep-before = 0.5\nrefuse = true\n"
        'request-file-format = "#a_#t.dump"\nmax-file-size = 2\n',
    )
    assert config.transfer_syntax_preference == "big"
    assert config.sleep_before_find == 0.5 and config.refuse_associations
    assert config.request_file_format == "#a_#t.dump"
    assert config.max_file_size == 2 * 1024 * 1024


def test_without_a_file_nothing_is_refused(tmp_path: Path) -> None:
    config = config_from_args(build_parser().parse_args(["-dfp", str(tmp_path)]))
    assert config.access.is_open
    assert config.profiles.for_calling("CT01").is_neutral


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("[server]\nport = 1\n[acess]\nhosts = []\n", 3, "acess", "did you mean 'access'"),
        ("[server]\n\nmax-asociations = 3\n", 3, "server.max-asociations", "max-associations"),
        ('[server]\nport = "abc"\n', 2, "server.port", "not a port"),
        ("[server]\nport = 70000\n", 2, "server.port", "0 to 65535"),
        ('[server]\nno-sq-expansion = "yes"\n', 2, "server.no-sq-expansion", "true or false"),
        ('[server]\nlog-level = "loud"\n', 2, "server.log-level", "must be one of"),
        ('[server]\nconfig = "x.toml"\n', 2, "server.config", "not a command-line option"),
        ('[access]\nhosts = ["ct-room.local"]\n', 2, "access.hosts", "host names"),
        ('[access]\nhosts = "10.0.0.0/8"\n', 2, "access.hosts", "list of strings"),
        ("[access]\ncalling-aets = []\n", 2, "access.calling-aets", "calling-ae-titles"),
        ("[access]\ncalled = 3\n", 2, "access.called", "must hold tables"),
        ("profiles = 3\n", 1, "profiles", "must be a table"),
        ("[profiles]\nct = 3\n", 2, "profiles.ct", "must be a table"),
        ("[server]\nport = [1, 2]\n", 2, "server.port", "single value"),
        ('[server]\nenable-tls = ["a"]\n', 2, "server.enable-tls", "list of 2"),
        (
            '[access.called.WLM]\ncalling-ae-titles = ["A_TITLE_LONGER_THAN_16"]\n',
            2,
            "access.called.WLM.calling-ae-titles",
            "not an AE title",
        ),
        ("[profiles.ct]\nstation-filter = true\n", 1, "profiles.ct", "calling-ae-titles"),
        (
            '[profiles.ct]\ncalling-ae-titles = ["CT*"]\ndate-window = [1, -1]\n',
            3,
            "profiles.ct.date-window",
            "days before",
        ),
        (
            '[profiles.default]\ncharset = "utf8"\n',
            2,
            "profiles.default.charset",
            "'file', 'latin1'",
        ),
        (
            "[profiles.default]\nstation_filter = true\n",
            2,
            "profiles.default.station_filter",
            "did you mean 'station-filter'",
        ),
        ("[access]\ncertificates = 3\n", 2, "access.certificates", "must be a table"),
        (
            '[access.certificates]\nCT01 = "CN=ct01"\n',
            2,
            "access.certificates.CT01",
            "list of certificate identities",
        ),
        ("[access.certificates]\nCT01 = []\n", 2, "access.certificates.CT01", "list of"),
        (
            '[access.certificates]\n\nCT01 = ["ct01.example.org"]\n',
            3,
            "access.certificates.CT01",
            "not a certificate identity",
        ),
        (
            '[access.certificates]\n"CT 01" = ["IP:ct01.example.org"]\n',
            2,
            "access.certificates.CT 01",
            "not an IP address",
        ),
        (
            "[access.certificates]\nrefuse-unbound-title = true\n",
            2,
            "access.certificates.refuse-unbound-title",
            "did you mean 'refuse-unbound-titles'",
        ),
        (
            "[access.certificates]\nrefuse-unbound = true\n",
            2,
            "access.certificates.refuse-unbound",
            "did you mean 'refuse-unbound-titles'",
        ),
        (
            '[access.certificates]\nrefuse-unbound-titles = "yes"\n',
            2,
            "access.certificates.refuse-unbound-titles",
            "true or false",
        ),
        (
            '[profiles.default]\n\nmatch-keys = ["PregnancyStatuss"]\n',
            3,
            "profiles.default.match-keys",
            "'PregnancyStatuss' is not a DICOM attribute keyword (like PregnancyStatus); "
            "did you mean 'PregnancyStatus'?",
        ),
        (
            '[profiles.default]\nmatch-keys = "PregnancyStatus"\n',
            2,
            "profiles.default.match-keys",
            "list of keywords",
        ),
        (
            '[profiles.default]\nmatch-keys = ["ProtocolContextSequence"]\n',
            2,
            "profiles.default.match-keys",
            "never a matching key (PS3.4 Table K.6-1: matching type -)",
        ),
        (
            '[profiles.default]\nmatch-keys = ["SpecificCharacterSet"]\n',
            2,
            "profiles.default.match-keys",
            "never a matching key",
        ),
        (
            '[profiles.default]\nmatch-all-keys = "yes"\n',
            2,
            "profiles.default.match-all-keys",
            "true or false",
        ),
    ],
)
def test_errors_name_the_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        _config(tmp_path, text)
    error = caught.value
    assert (error.line, error.key) == (line, key)
    assert words in str(error)
    assert str(error).startswith(f"{tmp_path / 'wlmserver.toml'}:{line}: {key}: ")


def test_access_certificates_bind_calling_ae_titles(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[access.certificates]\n"
        'CT01 = ["CN=ct01.example.org", "dns:CT01.example.org"]\n'
        '"US*" = ["email:us@example.org"]\n'
        "refuse-unbound-titles = true\n",
    )
    certificates = load(path).access.certificates
    assert [(b.pattern, sorted(b.identities)) for b in certificates.bindings] == [
        ("CT01", ["CN=ct01.example.org", "DNS:ct01.example.org"]),
        ("US*", ["email:us@example.org"]),
    ]
    assert certificates.refuse_unbound
    refusal = load(path).access.certificate_refusal("FINDSCU", frozenset({"CN=x"}))
    assert refusal is not None and refusal.reject == REJECT_CALLING_AET


def test_access_certificates_need_tls_that_verifies_clients(tmp_path: Path) -> None:
    """Without TLS, or with -ic, no certificate is ever verified: every bound title would
    be refused. The loader says so, naming the table's line."""
    db = tmp_path / "db"
    (db / "WLM").mkdir(parents=True)
    path = _write(tmp_path, '[server]\nport = 0\n\n[access.certificates]\nCT01 = ["CN=ct01"]\n')
    with pytest.raises(ConfigFileError) as caught:
        loader_load(["--config", str(path), "-dfp", str(db)])
    assert str(caught.value).startswith(f"{path}:4: access.certificates: needs TLS with client")


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load(_write(tmp_path, "[server]\nport = 11112\naetitle = WLM\n"))
    assert caught.value.line == 3
    assert "not valid TOML" in str(caught.value)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read it"):
        load(tmp_path / "missing.toml")


def test_key_lines_follow_tables_and_quoted_keys() -> None:
    text = (
        '[server]\n"port" = 1\n\n[access.called."CT 1"]\nhosts = []\n'
        '[profiles.a]\nx = """\n[y]\n"""\nz = 1\n'
    )
    lines = key_lines(text)
    assert lines["server.port"] == 2
    assert lines["access.called.CT 1.hosts"] == 5
    assert lines["profiles.a.z"] == 10
    assert "y" not in lines


def test_the_server_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[access]\nhosts = ["10.0.0.0/33"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "wlmserver", "--config", str(path), "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--config {path}:2: access.hosts: '10.0.0.0/33' is not an IP address" in result.stderr
    assert "Traceback" not in result.stderr


_KEYS = st.sampled_from(
    [
        "server",
        "access",
        "profiles",
        "called",
        "default",
        "ct",
        "WLM",
        "hosts",
        "calling-ae-titles",
        "station-filter",
        "date-window",
        "charset",
        "sq-expansion",
        "omit-empty-optional",
        "port",
        "aetitle",
        "enable-tls",
        "add-cert-file",
        "tls-port",
        "no-sq-expansion",
        "max-file-size",
        "allow-host",
        "log-level",
        "certificates",
        "refuse-unbound-titles",
        "CT01",
        "x",
    ]
)
_VALUES = st.recursive(
    st.none().map(lambda _: "")
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_any_file_content_is_accepted_or_named_never_a_crash(data: dict) -> None:  # type: ignore[type-arg]
    """Whatever a TOML file holds, reading it gives a configuration or a ConfigFileError,
    and so does applying its [server] table to the command line."""
    path = Path("/etc/wlmserver/fuzz.toml")
    try:
        file = from_data(path, data, {})
        apply_config_file(build_parser(), file)
    except ConfigFileError as exc:
        assert str(exc).startswith(str(path))


def test_profiles_hide_statuses_and_refuse_unknown_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[profiles.us]\ncalling-ae-titles = ["US*"]\nhide-status = ["COMPLETED"]\n'
        '[profiles.default]\nhide-status = "none"\n'
    )
    profiles = load(good).profiles
    assert profiles.for_calling("US01").hide_statuses == frozenset({"COMPLETED"})
    assert profiles.for_calling("CT01").hide_statuses == frozenset()
    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles.us]\ncalling-ae-titles = ["US*"]\nhide-status = ["DONE"]\n')
    with pytest.raises(ConfigFileError, match=r"bad\.toml:3: profiles\.us\.hide-status: 'DONE'"):
        load(bad)


def _with_certificates() -> list[tuple[str, str]]:
    """The documentation's pages with the two [access.certificates] examples, as one text,
    and the README while it has them."""
    configuration, *readme = documentation("configuration.md", "[access.certificates]")
    (name, tls), *_ = documentation("tls-and-access.md", "[access.certificates]")
    return [(f"{configuration[0]}, {name}", configuration[1] + tls), *readme]


@pytest.mark.parametrize(
    ("name", "text"), [pytest.param(*p, id=p[0]) for p in _with_certificates()]
)
def test_the_documented_certificate_examples_are_accepted(
    name: str, text: str, tmp_path: Path
) -> None:
    """The TOML examples holding [access.certificates] read as they say."""
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.DOTALL) if "certificates]" in b]
    assert len(blocks) == 2, name
    for block in blocks:
        certificates = load(_write(tmp_path, block)).access.certificates
        ct01 = certificates.binding_for("CT01")
        assert ct01 is not None and "DNS:ct01.example.org" in ct01.identities


def test_profiles_turn_matching_on_for_more_keys(tmp_path: Path) -> None:
    path = tmp_path / "match.toml"
    path.write_text(
        '[profiles.us]\ncalling-ae-titles = ["US*"]\n'
        'match-keys = ["PregnancyStatus", "PatientWeight"]\n'
        '[profiles.all]\ncalling-ae-titles = ["OLD*"]\nmatch-all-keys = true\n'
    )
    profiles = load(path).profiles
    us, everything, other = (profiles.for_calling(t) for t in ("US01", "OLD01", "CT01"))
    assert us.match_keys == frozenset({0x001021C0, 0x00101030}) and not us.is_neutral
    assert us.matching.matches_on(0x001021C0) and not other.matching.matches_on(0x001021C0)
    assert everything.matching.matches_on(0x00104000)  # PatientComments, outside Table K.6-1
    assert not everything.matching.matches_on(0x00080201)  # Timezone Offset From UTC: never


@pytest.mark.parametrize(("name", "text"), documented("configuration.md", "## Configuration file"))
def test_the_documented_example_is_a_valid_file(name: str, text: str, tmp_path: Path) -> None:
    example = re.search(r"## Configuration file\n.*?```toml\n(.*?)```", text, re.S)
    assert example, f"{name} has no TOML example under '## Configuration file'"
    path = tmp_path / "wlmserver.toml"
    path.write_text(example.group(1), encoding="utf-8")
    profiles = load(path).profiles
    assert profiles.for_calling("US01").match_keys == frozenset({0x001021C0})


THREE_MISTAKES = """\
[server]
port = 11112
max-asociations = 3
data-files-path = "no-such-folder"

[access]
hosts = ["ct-room.local"]
"""


def test_every_mistake_is_reported_with_its_line_and_no_usage_text(tmp_path: Path) -> None:
    """A file with three mistakes says all three (one line each, file:line: key: problem),
    and no usage text: the command line was right (issue 19)."""
    path = _write(tmp_path, THREE_MISTAKES)
    result = subprocess.run(
        [sys.executable, "-m", "wlmserver", "--config", str(path), "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"wlmserver: error: --config {path}:3: server.max-asociations: not a command-line "
        "option; did you mean 'max-associations'? (see wlmserver --help: long names)",
        f"wlmserver: error: --config {path}:4: server.data-files-path: the database root "
        f"{tmp_path / 'no-such-folder'} is not a folder",
        f"wlmserver: error: --config {path}:7: access.hosts: 'ct-room.local' is not an IP "
        "address or network (like 10.2.0.0/16 or 192.168.1.7); host names are not looked up",
    ]
    assert "usage:" not in result.stderr


def test_a_file_read_alone_raises_all_its_mistakes_in_line_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[profiles.ct]\ncalling-ae-titles = ["CT*"]\nstation-filter = 1\n'
        '[acess]\n[access]\nhosts = "x"\n',
    )
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    assert [(e.line, e.key) for e in caught.value.errors] == [
        (3, "profiles.ct.station-filter"),
        (4, "acess"),
        (6, "access.hosts"),
    ]
    assert (caught.value.line, caught.value.key) == (3, "profiles.ct.station-filter")
    assert len(str(caught.value).splitlines()) == 3
    lenient = load(path, strict=False)
    assert [e.key for e in lenient.problems] == [e.key for e in caught.value.errors]
    assert lenient.profiles.for_calling("CT01").name == "ct"  # what was right is kept


def test_a_wrong_profile_title_is_one_mistake_not_two(tmp_path: Path) -> None:
    path = _write(tmp_path, '[profiles.ct]\ncalling-ae-titles = ["A_TITLE_LONGER_THAN_16"]\n')
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    assert [e.key for e in caught.value.errors] == ["profiles.ct.calling-ae-titles"]


def test_a_value_refused_after_parsing_names_the_file_or_the_option(tmp_path: Path) -> None:
    """The checks made after parsing (a root that is not a folder, an MPPS folder inside an
    AE folder ...) name the file's key when the value is the file's, and are usage errors
    when the command line gave it."""
    from wlmserver.config.loader import load as load_argv
    from wlmserver.config.options import UsageError

    (tmp_path / "db" / "CT01").mkdir(parents=True)
    path = _write(
        tmp_path,
        '[server]\ndata-files-path = "db"\nmpps-folder = "db/CT01/mpps"\nmax-pdu = 100\n',
    )
    with pytest.raises(ConfigFileError) as caught:
        load_argv(["--config", str(path)])
    assert [(e.line, e.key) for e in caught.value.errors] == [
        (3, "server.mpps-folder"),
        (4, "server.max-pdu"),
    ]
    assert "inside the AE folder CT01" in str(caught.value)
    with pytest.raises(UsageError, match="-pdu must be between"):
        load_argv(["--config", str(path), "-pdu", "200", "--mpps-folder", str(tmp_path / "m")])
    loaded = load_argv(["--config", str(path), "--mpps-folder", str(tmp_path / "m"), "-pdu", "0"])
    assert loaded.config.mpps_path == tmp_path / "m"
    assert set(loaded.from_file) == {"data_files_path"}
