"""Fuzzing MPPS over real associations (issue 20): hypothesis-made N-CREATE and N-SET data
sets (random attributes, VRs, lengths, character sets, nested sequences, bad UIDs, missing and
extra elements, big values) to an in-process server; every response a PS3.7 status, the
association still answering a C-ECHO, none held past its timeouts, no traceback, and what was
acknowledged read back by a server started on the same folder (strategies and checks:
tools/fuzzing.py; ``tools/fuzz.py --targets mpps`` runs many more)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import load_tool

pytestmark = pytest.mark.filterwarnings("ignore")

fuzzing = load_tool("fuzzing")

EXAMPLES = 300


def test_fuzzed_mpps_requests_are_answered_and_what_is_acknowledged_is_kept() -> None:
    tally: Counter[str] = Counter()
    started = time.monotonic()
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        fuzzing.run_target("mpps", EXAMPLES, tally, fuzz=fuzz)
        assert fuzz.settle(30) == 0, "associations still open after the fuzz cases"
        fuzz.check_mpps_readback(tally)  # raises for an acknowledged instance lost
        fuzz.check_healthy()  # C-FIND still answers exactly; no traceback logged
    assert fuzzing.cases(tally, "mpps") == EXAMPLES
    # the cases reach the store's rules, not only the decoder: successes and refusals
    assert tally["mpps: N-CREATE 0x0000"] and tally["mpps: N-SET 0x0000"]
    assert tally["mpps: N-CREATE 0x0120"] and tally["mpps: N-SET 0x0112"]
    assert tally["mpps: read back after a restart"]
    assert time.monotonic() - started < 120


def test_an_n_set_without_its_instance_uid_is_aborted_at_once() -> None:
    """pynetdicom ignored it without a response: the modality waited for its DIMSE timeout
    and the association held its slot (found by the MPPS fuzzing)."""
    leanfind = load_tool("leanfind")
    with fuzzing.fuzz_server(echo_thread_errors=False, network_timeout=30.0) as fuzz:
        with fuzzing._connect(fuzz.port) as sock:
            reader = leanfind._Reader(sock)
            sock.sendall(fuzzing.MPPS_ASSOCIATE_RQ)
            assert reader.pdu()[0] == 0x02
            started = time.monotonic()
            sock.sendall(fuzzing.n_set_message(1, "", None))
            with pytest.raises(fuzzing._Aborted):
                fuzzing.read_response(reader)
            assert time.monotonic() - started < 5  # not the 30 s network timeout
        assert fuzz.settle(10) == 0
        fuzz.check_healthy()
