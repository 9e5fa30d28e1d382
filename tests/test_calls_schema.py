"""`calls --format jsonl` against its versioned schema (docs/calls.schema.json).

Detection engineers load these lines into a SIEM by field name; the schema file is the
contract, so every record of every real capture and sample must validate against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import golden_util
from wmiscope.dissectors import jsonl

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "calls.schema.json").read_text())
CAPTURES = golden_util.captures()


def test_the_schema_is_a_valid_json_schema_of_this_version():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$defs"]["call"]["properties"]["schema"] == {"const": jsonl.SCHEMA_VERSION}
    # the TypedDict and the schema list the same call fields
    typed = set(jsonl.CallRecord.__annotations__)
    assert typed == set(SCHEMA["$defs"]["call"]["properties"])


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_every_record_of_every_capture_validates(capture):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    lines = golden_util.render(capture, "calls").splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
        assert not errors, f"{capture.name}: {record.get('type')} {record.get('call_id')}: " + \
            "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:3])
        assert record["schema"] == jsonl.SCHEMA_VERSION


def test_a_record_that_breaks_the_contract_is_caught():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    record = json.loads(golden_util.render(CAPTURES[0], "calls").splitlines()[0])
    record["callid"] = record.pop("call_id")                # a rename the schema does not know
    assert not validator.is_valid(record)


def test_the_calls_table_names_every_call_without_decoding_parameters(captures_dir):
    """The table prints no parameter, so it decodes no WMI parameter (the DCOM ones it needs
    to name calls: they teach the IPIDs); it still names and pairs every call exactly as
    the JSON lines do."""
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.dissectors.records import Call

    path = captures_dir / "wmimplant.pcap"
    full = [r for r in Analysis(objects=False).run(path) if type(r) is Call]
    table = [r for r in Analysis(objects=False, params=False).run(path) if type(r) is Call]
    assert [(c.call_id, c.interface, c.method, c.ipid) for c in table] == \
        [(c.call_id, c.interface, c.method, c.ipid) for c in full]
    def wmi(calls):
        return [c for c in calls if c.interface and c.interface.startswith("IWbem")]
    assert any("params" in (c.decoded or {}).get("request", {}) for c in wmi(full))
    assert not any("params" in (c.decoded or {}).get(side, {}) for c in wmi(table) for side in ("request", "response"))
