"""Orders as a RIS gives them: read, completed, and merged one file per requested procedure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ORDER
from pydicom.dataset import Dataset

from wlmserver.store import orders

NAME = orders.order_file_name


def test_text_its_character_set_cannot_hold_is_refused() -> None:
    order = dict(ORDER, SpecificCharacterSet="ISO_IR 100", PatientName="Δημητρίου^Ελένη")
    with pytest.raises(orders.EntryError, match="PatientName: has characters ISO_IR 100 cannot"):
        orders.complete(orders.from_flat(order))
    latin1 = orders.complete(orders.from_flat(dict(ORDER, SpecificCharacterSet="ISO_IR 100")))
    assert latin1.SpecificCharacterSet == "ISO_IR 100"  # Müller fits: kept as asked


def _entry(number: int, **changes: str) -> orders.InputEntry:
    return orders.InputEntry("orders.csv", number, "row", orders.from_flat({**ORDER, **changes}))


def test_entries_of_one_requested_procedure_are_one_order_with_a_step_each() -> None:
    planned = orders.plan_orders(
        [_entry(1), _entry(2, Modality="MR"), _entry(3, AccessionNumber="A2")]
    )
    assert [(o.name, o.steps, o.problems) for o in planned] == [
        (NAME("A100"), 2, []),
        (NAME("A2"), 1, []),
    ]
    first = planned[0].dataset
    assert first is not None
    steps = first.ScheduledProcedureStepSequence
    assert [s.Modality for s in steps] == ["CT", "MR"]
    assert [s.ScheduledProcedureStepID for s in steps] == ["A100.1", "A100.2"]


def test_entries_that_disagree_on_the_order_are_refused_whole_naming_attributes() -> None:
    (order,) = orders.plan_orders([_entry(1), _entry(2, PatientID="SECRET9", Modality="MR")])
    assert order.dataset is None
    assert order.problems[0] == "one requested procedure, refused whole"
    assert "differ in PatientID" in order.problems[1] and "SECRET9" not in order.problems[1]


@pytest.mark.parametrize(
    ("text", "name", "form"),
    [
        ("[{}]", None, "json"),
        ("(0010,0010) PN [X]", None, "dump"),
        ("PatientName,PatientID", None, "csv"),
        ("anything", Path("x.dump"), "dump"),
        ("anything", Path("x.txt"), "dump"),
        ("{}", Path("x.csv"), "csv"),
    ],
)
def test_input_forms_are_told_apart(text: str, name: Path | None, form: str) -> None:
    assert orders.detect_format(text, name) == form


def test_csv_and_json_give_the_same_dataset() -> None:
    flat = {"PatientName": "DOE^JANE", "PatientID": "P1", "Modality": "CT"}
    (from_csv,) = orders.entries_from_csv(",".join(flat) + "\n" + ",".join(flat.values()) + "\n")
    (from_json,) = orders.entries_from_json(json.dumps(flat))
    assert isinstance(from_csv, Dataset) and from_csv == from_json
    assert from_csv.ScheduledProcedureStepSequence[0].Modality == "CT"  # SPS keys at the top


def test_file_names_are_stable_and_do_not_name_the_accession() -> None:
    """Files were named <Accession>_<RPID>.wl, and file names reach the log at INFO."""
    name = orders.order_file_name("ACC-SECRET-77", "RP9")
    assert name == orders.order_file_name("ACC-SECRET-77", "RP9")  # the same order, one file
    assert name != orders.order_file_name("ACC-SECRET-77", "RP8")
    assert "SECRET" not in name and "RP9" not in name
    assert name.startswith("order-") and name.endswith(".wl")
