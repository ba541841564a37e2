"""The fast path hands encoded answers to pynetdicom, and writes the PDUs its DUL would write
(pynetdicom is the oracle)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from wlmserver.matching.encoding import EncodedAnswer
from wlmserver.service.fastpath import install, installed


def test_install_makes_pynetdicom_send_the_bytes() -> None:
    from pynetdicom import service_class

    assert install() and installed()
    answer = EncodedAnswer([(0x00100020, "LO", ("ABC",))], ())
    assert service_class.encode(answer, False, True) == answer.encode(False, True)
    plain = Dataset()
    plain.PatientID = "ABC"
    assert service_class.encode(plain, False, True) == answer.encode(False, True)


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 40])
def test_pending_fragments_equal_pynetdicoms(max_pdu: int) -> None:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode

    from wlmserver.service.fastpath import pending_pdata

    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(
        EncodedAnswer([(0x00100020, "LO", ("ABC" * 30,))], ()).encode(False, True)
    )
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    expected = [p.presentation_data_value_list for p in message.encode_msg(3, max_pdu)]
    command = encode(message.command_set, True, True)
    assert command is not None
    got = [
        p.presentation_data_value_list
        for p in pending_pdata(3, command, primitive.Identifier.getvalue(), max_pdu)
    ]
    assert got == expected


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 40])
@pytest.mark.parametrize("with_data", [True, False])
def test_direct_pdus_are_the_bytes_pynetdicoms_dul_writes(max_pdu: int, with_data: bool) -> None:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.pdu import P_DATA_TF

    from wlmserver.service.fastpath import command_set, p_data_tf

    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    primitive.Status = 0xFF00 if with_data else 0x0000
    data = EncodedAnswer([(0x00100020, "LO", ("ABC" * 30,))], ()).encode(False, True)
    primitive.Identifier = BytesIO(data) if with_data else None
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    expected = b""
    for pdata in message.encode_msg(3, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        expected += pdu.encode()
    command = command_set(primitive)
    assert command_set(primitive) is command  # built once
    assert p_data_tf(3, command, data if with_data else None, max_pdu) == expected
