"""Writes the project's sample captures into pcaps/.

    python pcaps/generate.py            # all samples, next to this file
    python pcaps/generate.py OUTDIR

Each sample is a WMI session as Windows puts it on the wire (see wmiscope.synth
for the TCP and DCE/RPC framing), with stubs written by our NDR writer and
objects by our MS-WMIO builder. Tests check every sample against independent
implementations: tshark must read each PDU as we do, impacket must decode the
objects we encoded. Output is deterministic (fixed clock, fixed UUIDs), so a
regenerated file is byte-identical and `git diff` shows real changes only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wmiscope import synth
from wmiscope.dissectors.dcom import (OBJREF_CUSTOM, OBJREF_STANDARD, build_dualstringarray, build_objref,
                                      write_orpcthat, write_orpcthis)
from wmiscope.dissectors.ndr import NdrWriter
from wmiscope.formats import wmio

IWBEM_LEVEL1_LOGIN = "f309ad18-d86a-11d0-a075-00c04fb68820"
IWBEM_SERVICES = "9556dc99-828c-11cf-a37e-00aa003240c7"
IWBEM_CLASS_OBJECT = "dc12a681-737f-11cf-884d-00aa004b2e24"
CLSID_WBEM_CLASS_OBJECT_UNMARSHALER = "4590f812-1d3a-11d0-891f-00aa004b2e24"

CLIENT = ("10.20.30.40", 50111)
SERVER = ("10.20.30.50", 49669)
SERVER_NAME = "SRV-FILES01"
LOGIN_IPID = "00008c00-1a5c-0000-4b1d-7e0a3c2f1a01"
SERVICES_IPID = "00009401-1a5c-0000-7a6e-2b9f51c3d402"
CAUSALITY = "5a6f0c3e-2b1d-4e8a-9c7b-0d1e2f3a4b5c"


def _stub(build) -> bytes:
    w = NdrWriter()
    build(w)
    return w.getvalue()


def _class_objref(obj) -> bytes:
    """IWbemClassObject custom-marshaled (MS-WMI 2.2.4): OBJREF_CUSTOM around an EncodingUnit."""
    return build_objref(IWBEM_CLASS_OBJECT, OBJREF_CUSTOM, clsid=CLSID_WBEM_CLASS_OBJECT_UNMARSHALER,
                        payload=wmio.build_encoding_unit(obj))


def win32_process_class() -> wmio.WmiClass:
    """A Win32_Process shaped like the real one (keys, CIMTYPE qualifiers, Create's signature)."""
    startup = wmio.new_class("Win32_ProcessStartup", properties=[("ShowWindow", "uint16")])
    create_in = [("CommandLine", "string", None, [("In", True)]),
                 ("CurrentDirectory", "string", None, [("In", True)]),
                 ("ProcessStartupInformation", "object:Win32_ProcessStartup", None, [("In", True)])]
    create_out = [("ProcessId", "uint32", None, [("Out", True)]),
                  ("ReturnValue", "uint32", None, [("Out", True)])]
    del startup
    return wmio.new_class(
        "Win32_Process", superclass="CIM_Process",
        qualifiers=[("dynamic", True), ("provider", "CIMWin32"), ("UUID", "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}")],
        properties=[
            ("Caption", "string"), ("CommandLine", "string"), ("CreationDate", "datetime"),
            ("ExecutablePath", "string"), ("Handle", "string", None, [("key", True)]),
            ("HandleCount", "uint32"), ("Name", "string"), ("ParentProcessId", "uint32"),
            ("ProcessId", "uint32"), ("SessionId", "uint32"), ("ThreadCount", "uint32"),
            ("WorkingSetSize", "uint64"),
        ],
        methods=[("Create", create_in, create_out, [("Constructor", True), ("Static", True)]),
                 ("Terminate", [("Reason", "uint32", None, [("In", True)])],
                  [("ReturnValue", "uint32", None, [("Out", True)])], [("Destructor", True)])],
    )


def process_create(path: Path) -> None:
    """NTLMLogin to root\\cimv2, GetObject Win32_Process (a fragmented reply), ExecMethod Create."""
    clock = synth.Clock()
    with synth.PcapWriter(path) as pcap:
        tcp = synth.TcpSession(pcap, clock, CLIENT, SERVER)
        tcp.open()
        call = iter(range(1, 100))

        def exchange(req_pdus, resp_pdus):
            for pdu in req_pdus:
                tcp.send(0, pdu)
            clock.tick(0.004)
            for pdu in resp_pdus:
                tcp.send(1, pdu)

        cid = next(call)
        exchange([synth.bind(cid, [(0, IWBEM_LEVEL1_LOGIN, (0, 0))])],
                 [synth.bind_ack(cid, 1, sec_addr=str(SERVER[1]))])

        cid = next(call)
        req = _stub(lambda w: (write_orpcthis(w, CAUSALITY),
                               w.unique_wstring(f"\\\\{SERVER_NAME}\\root\\cimv2"),
                               w.unique_wstring("en-US,en"), w.i32(0), w.interface_pointer(None)))
        services = build_objref(IWBEM_SERVICES, OBJREF_STANDARD, ipid=SERVICES_IPID,
                                oxid=0x6d1a4c0b2e9f8a31, oid=0x1c2b3a4d5e6f7081,
                                resolver=build_dualstringarray([(0x07, SERVER_NAME), (0x07, SERVER[0])]))
        resp = _stub(lambda w: (write_orpcthat(w), w.interface_pointer(services), w.u32(0)))
        exchange(synth.request(cid, 0, 6, req, object_uuid=LOGIN_IPID), synth.response(cid, 0, resp))

        cid = next(call)
        exchange([synth.bind(cid, [(1, IWBEM_SERVICES, (0, 0))], alter=True)],
                 [synth.bind_ack(cid, 1, alter=True)])

        cls = win32_process_class()
        cid = next(call)
        req = _stub(lambda w: (write_orpcthis(w, CAUSALITY), w.bstr("Win32_Process"), w.i32(0),
                               w.interface_pointer(None), w.referent(False), w.referent(False)))
        resp = _stub(lambda w: (write_orpcthat(w), w.interface_pointer(_class_objref(cls)),
                                w.referent(False), w.u32(0)))
        # A small max_xmit_frag makes the class reply span several fragments, as big replies do.
        exchange(synth.request(cid, 1, 6, req, object_uuid=SERVICES_IPID),
                 synth.response(cid, 1, resp, max_frag=1024))

        create = cls.methods[0]
        in_params = wmio.new_instance(create.in_params, {"CommandLine": "cmd.exe /c whoami > C:\\Windows\\Temp\\o.txt"})
        out_params = wmio.new_instance(create.out_params, {"ProcessId": 4242, "ReturnValue": 0})
        cid = next(call)
        req = _stub(lambda w: (write_orpcthis(w, CAUSALITY), w.bstr("Win32_Process"), w.bstr("Create"),
                               w.i32(0), w.interface_pointer(None), w.interface_pointer(_class_objref(in_params)),
                               w.referent(False), w.referent(False)))
        resp = _stub(lambda w: (write_orpcthat(w), w.interface_pointer(_class_objref(out_params)),
                                w.referent(False), w.u32(0)))
        exchange(synth.request(cid, 1, 24, req, object_uuid=SERVICES_IPID), synth.response(cid, 1, resp))
        tcp.close()


SAMPLES = {"wmi-process-create.pcap": process_create}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for name, make in SAMPLES.items():
        make(out / name)
        print(out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
