"""The Kerberos client principal: only the service is in clear; the client (cname@crealm)
is inside the ticket, which the analyst's keytab opens. Checked on the Kerberos-sealed
sample with the keytab the generator writes (--secrets), and without it."""

from __future__ import annotations

import json

from test_report import SCHEMA
import jsonschema
import tshark_util
from tshark_util import PCAPS
from wmiscope.cli import main

SAMPLE = PCAPS / "wmi-process-create-kerberos-sealed.pcap"
SERVICE = "host/srv-files01.wmilab.example@WMILAB.EXAMPLE"


def lines(capsys, *argv) -> list[dict]:
    assert main([*map(str, argv)]) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def test_the_keytab_names_the_kerberos_client_in_the_call_records(capsys):
    keytab = tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"]
    calls = [d for d in lines(capsys, "calls", "--format", "jsonl", SAMPLE, "--keytab", keytab) if d["type"] == "call"]
    assert [d["method"] for d in calls] == ["NTLMLogin", "GetObject", "ExecMethod"]
    assert {(d["auth"]["principal"], d["auth"]["client"]) for d in calls} == {(SERVICE, "analyst@WMILAB.EXAMPLE")}
    # without the keytab the client stays unknown: the field is absent, the service still named
    calls = [d for d in lines(capsys, "calls", "--format", "jsonl", SAMPLE) if d["type"] == "call"]
    assert all(d["auth"]["principal"] == SERVICE and "client" not in d["auth"] for d in calls)


def test_the_report_user_is_the_kerberos_client(capsys):
    keytab = tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"]
    docs = lines(capsys, "report", SAMPLE, "--keytab", keytab)
    assert [d["event"]["action"] for d in docs] == ["namespace-login", "process-create"]
    for d in docs:
        jsonschema.validate(d, SCHEMA)
        assert d["user"] == {"name": "analyst", "domain": "WMILAB.EXAMPLE"}
        assert d["wmi"]["principal"] == f"analyst@WMILAB.EXAMPLE (Kerberos to {SERVICE})"
        assert d["wmi"]["kerberos_service"] == SERVICE
    assert docs[1]["process"]["command_line"] == r"cmd.exe /c whoami > C:\Windows\Temp\o.txt"


def test_without_the_keytab_the_report_says_the_client_is_unknown(capsys):
    docs = lines(capsys, "report", SAMPLE)
    assert [d["wmi"]["basis"] for d in docs] == ["inferred", "inferred"]
    for d in docs:
        assert "user" not in d and d["wmi"]["principal"] == f"Kerberos to {SERVICE}"
        assert any("the Kerberos client is not known" in r and "--keytab" in r for r in d["wmi"]["reasons"])


def test_an_authenticator_naming_another_client_is_said():
    # The authenticator repeats the ticket's client (RFC 4120 3.2.3); one naming someone else
    # is a forged or altered AP-REQ: said as an auth anomaly, the ticket's (KDC-sealed) name kept.
    from wmiscope.dissectors import auth as A
    from wmiscope.dissectors.credentials import ConnectionKeys, Credentials
    from wmiscope.synth.sealing import KerberosSealer

    sealer = KerberosSealer()
    raw = sealer.first_leg()
    ap_req = A.inner_token(A.parse_token(raw))
    plain = sealer.session_key.decrypt(11, ap_req.authenticator_cipher)
    forged = sealer.session_key.encrypt(11, plain.replace(b"analyst", b"mallory"), bytes(16))
    ctx = A.AuthContext(0, 9)
    ctx.add_token(5, 0, 11, raw.replace(ap_req.authenticator_cipher, forged))
    ctx.add_token(6, 1, 12, sealer.second_leg())
    creds = Credentials()
    creds.add_keytab(tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"])
    errors = []
    state = ConnectionKeys(creds, 0, errors.append)._establish(ctx)
    assert state.keys.authenticator_client == "mallory@WMILAB.EXAMPLE"
    assert ctx.client_principal == "analyst@WMILAB.EXAMPLE"
    (err,) = errors
    assert err.stage == "auth" and err.structure == "Authenticator.cname" and "mallory@WMILAB.EXAMPLE" in err.reason
