"""The WMI classes and instances the sample captures carry, and their ObjectArrays.

Classes are shaped like the ones Windows serves (names, superclasses, keys, qualifiers,
method signatures), built with our MS-WMIO builder (wmiscope.formats.wmio). ObjectArrays
(MS-WMI 2.2.14) get fixed classIDs so that a capture is the same on every run.
"""

from __future__ import annotations

import uuid

from ..formats import wmio
from ..formats.object_array import ClassCache, PacketType, build_object_array

# classIDs of the samples' ObjectArrays (MS-WMI 2.2.14.1 lets the server draw them)
PROCESS_CLASS_ID = "3b8a3c8e-5d0a-4c6b-9f0e-2a1d7c4e6b10"
TESTWMI_CLASS_ID = "a5f1e2d3-6b7c-4d8e-9f10-1a2b3c4d5e6f"


def object_array(objects, class_ids, packet_type: PacketType = PacketType.NEXT) -> bytes:
    """An ObjectArray (MS-WMI 2.2.14) whose classIDs are the given ones (in order of first
    use) instead of random ones, so that the capture is the same on every run. An optimized
    IWbemObjectSink::Indicate carries one with packet type INDICATE (bPacketType 0)."""
    cache = ClassCache()
    data = build_object_array(objects, packet_type, cache)
    fixed = iter(class_ids)
    for drawn in list(cache):
        data = data.replace(drawn.bytes_le, uuid.UUID(next(fixed)).bytes_le)
    return data


def method_params(method: wmio.Method, ins: dict, outs: dict) -> tuple[wmio.WmiInstance, wmio.WmiInstance]:
    """A method's in- and out-parameter instances with the given values."""
    return wmio.new_instance(method.in_params, ins), wmio.new_instance(method.out_params, outs)


# ---- Win32_Process

_WIN32_PROCESS_UUID = "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}"


def win32_process_class() -> wmio.WmiClass:
    """A Win32_Process shaped like the real one (keys, CIMTYPE qualifiers, Create's signature)."""
    create_in = [("CommandLine", "string", None, [("In", True)]),
                 ("CurrentDirectory", "string", None, [("In", True)]),
                 ("ProcessStartupInformation", "object:Win32_ProcessStartup", None, [("In", True)])]
    create_out = [("ProcessId", "uint32", None, [("Out", True)]),
                  ("ReturnValue", "uint32", None, [("Out", True)])]
    return wmio.new_class(
        "Win32_Process", superclass="CIM_Process",
        qualifiers=[("dynamic", True), ("provider", "CIMWin32"), ("UUID", _WIN32_PROCESS_UUID)],
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


def process_instance(cls: wmio.WmiClass, decoration, pid: int, name: str, command: str | None,
                     parent: int) -> wmio.WmiInstance:
    """A running process of win32_process_class(), as a server decorates it."""
    return wmio.new_instance(cls, {"Handle": str(pid), "ProcessId": pid, "Name": name, "Caption": name,
                                   "CommandLine": command, "ParentProcessId": parent}, decoration=decoration)


def _read(name, *quals, cimtype="string"):
    """A read-only property: its qualifiers after `read`."""
    return (name, cimtype, None, [("read", True), *quals])


# Win32_Process as Windows Server 2008 R2 defines it (CIM_Process, root\cimv2): its 45 properties
# with the qualifiers that are not amended (the localized ones stay on the server unless
# WBEM_FLAG_USE_AMENDED_QUALIFIERS is set).
_KEYISH = (("MaxLen", 256), ("CIM_Key", True))
_PROCESS_PROPERTIES = [
    _read("Caption", ("MaxLen", 64)), _read("CommandLine"), _read("CreationClassName", *_KEYISH),
    _read("CreationDate", ("Fixed", True), cimtype="datetime"), _read("CSCreationClassName", *_KEYISH),
    _read("CSName", *_KEYISH), _read("Description"),
    _read("ExecutablePath", ("Privileges", ["SeDebugPrivilege"]),
          ("MappingStrings", ["Win32API|Tool Help Structures|MODULEENTRY32|szExePath"])),
    _read("ExecutionState", ("ValueMap", [str(i) for i in range(8)]), cimtype="uint16"),
    _read("Handle", ("key", True), ("MaxLen", 256), ("Override", "Handle")),
    _read("HandleCount", ("MappingStrings", ["Win32API|Process and Thread Functions|GetProcessHandleCount"]),
          cimtype="uint32"),
    _read("InstallDate", ("MappingStrings", ["MIF.DMTF|ComponentID|001.5"]), cimtype="datetime"),
    _read("KernelModeTime", ("Units", "100 nanoseconds"), ("Override", "KernelModeTime"), cimtype="uint64"),
    _read("MaximumWorkingSetSize", ("Privileges", ["SeDebugPrivilege"]), ("Units", "kilobytes"),
          ("MappingStrings", ["Win32|WINNT.H|QUOTA_LIMITS|MaximumWorkingSetSize"]), cimtype="uint32"),
    _read("MinimumWorkingSetSize", ("Privileges", ["SeDebugPrivilege"]), ("Units", "kilobytes"),
          ("MappingStrings", ["Win32|WINNT.H|QUOTA_LIMITS|MinimumWorkingSetSize"]), cimtype="uint32"),
    _read("Name", ("Override", "Name")), _read("OSCreationClassName", *_KEYISH), _read("OSName", *_KEYISH),
    _read("OtherOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                     "OtherOperationCount"]), cimtype="uint64"),
    _read("OtherTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                        "IO_COUNTERS|OtherTransferCount"]),
          cimtype="uint64"),
    _read("PageFaults", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PageFaultCount"]),
          cimtype="uint32"),
    _read("PageFileUsage", ("Units", "kilobytes"),
          ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PagefileUsage"]),
          cimtype="uint32"),
    _read("ParentProcessId", ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                 "PROCESS_INFORMATION|dwProcessId"]), cimtype="uint32"),
    _read("PeakPageFileUsage", ("Units", "kilobytes"),
          ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PeakPagefileUsage"]),
          cimtype="uint32"),
    _read("PeakVirtualSize", ("Units", "bytes"), cimtype="uint64"),
    _read("PeakWorkingSetSize", ("Units", "kilobytes"),
          ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PeakWorkingSetSize"]),
          cimtype="uint32"),
    _read("Priority", ("Override", "Priority"),
          ("MappingStrings", ["Win32API|Scheduling Priorities"]), cimtype="uint32"),
    _read("PrivatePageCount", cimtype="uint64"),
    _read("ProcessId", ("MappingStrings", ["Win32API|Process and Thread Structures|PROCESS_INFORMATION|"
                                           "dwProcessId "]), cimtype="uint32"),
    _read("QuotaNonPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                        "QuotaNonPagedPoolUsage"]), cimtype="uint32"),
    _read("QuotaPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                     "QuotaPagedPoolUsage"]), cimtype="uint32"),
    _read("QuotaPeakNonPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                            "QuotaPeakNonPagedPoolUsage"]), cimtype="uint32"),
    _read("QuotaPeakPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                         "QuotaPeakPagedPoolUsage"]), cimtype="uint32"),
    _read("ReadOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                    "ReadOperationCount"]), cimtype="uint64"),
    _read("ReadTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                       "IO_COUNTERS|ReadTransferCount"]),
          cimtype="uint64"),
    _read("SessionId", cimtype="uint32"), _read("Status", ("MaxLen", 10)),
    _read("TerminationDate", cimtype="datetime"),
    _read("ThreadCount", ("MappingStrings", ["Win32API|Process Status|SYSTEM_PROCESS_INFORMATION|"
                                             "NumberOfThreads"]), cimtype="uint32"),
    _read("UserModeTime", ("Units", "100 nanoseconds"), ("Override", "UserModeTime"), cimtype="uint64"),
    _read("VirtualSize", ("Units", "bytes"), cimtype="uint64"), _read("WindowsVersion"),
    _read("WorkingSetSize", ("Units", "bytes"), ("Override", "WorkingSetSize"), cimtype="uint64"),
    _read("WriteOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                     "WriteOperationCount"]), cimtype="uint64"),
    _read("WriteTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                        "IO_COUNTERS|WriteTransferCount"]),
          cimtype="uint64"),
]
_PROCESS_QUALIFIERS = [("Locale", 1033), ("UUID", _WIN32_PROCESS_UUID), ("dynamic", True),
                       ("provider", "CIMWin32"), ("SupportsCreate", True), ("CreateBy", "Create"),
                       ("SupportsDelete", True), ("DeleteBy", "DeleteInstance")]


# The DMTF mappings of the properties that CIM_Process and its parents define.
_DMTF_MAPPINGS = {name: f"MIF.DMTF|Process Information|001.{i}" for i, name in enumerate((
    "Caption", "CreationClassName", "CreationDate", "CSCreationClassName", "CSName", "Description",
    "ExecutionState", "KernelModeTime", "Name", "OSCreationClassName", "OSName", "PrivatePageCount",
    "TerminationDate", "UserModeTime"), 1)}


def full_win32_process_class(decoration, mapping_note: str = "") -> wmio.WmiClass:
    """Win32_Process with its whole property set; `mapping_note` is a last MappingStrings
    entry of Priority, there to bring the encoding to the size a trace reports."""
    props = []
    for name, t, d, quals in _PROCESS_PROPERTIES:
        if name in _DMTF_MAPPINGS:
            quals = [*quals, ("MappingStrings", [_DMTF_MAPPINGS[name]])]
        props.append((name, t, d, quals))
    if mapping_note:
        i = next(i for i, p in enumerate(props) if p[0] == "Priority")
        name, t, d, quals = props[i]
        quals = [q if q[0] != "MappingStrings" else (q[0], q[1] + [mapping_note]) for q in quals]
        props[i] = (name, t, d, quals)
    return wmio.new_class("Win32_Process", "CIM_Process", properties=props, qualifiers=_PROCESS_QUALIFIERS,
                          decoration=decoration)


_PRIORITY_MAPPING = ("Win32API|Process and Thread Functions|GetPriorityClass|SetPriorityClass|"
                     "Win32API|Process and Thread Functions|SetThreadPriority|GetThreadPriority|")


def sized_win32_process(values: dict, decoration, size: int) -> wmio.WmiInstance:
    """An instance of full_win32_process_class() whose ObjectArray alone is `size` bytes: a
    trace prints the BuffSize of the object, not the qualifiers that made it that big, so the
    class's Priority gets a MappingStrings entry long enough to make up the difference."""
    cls = full_win32_process_class(decoration)
    base = len(object_array([wmio.new_instance(cls, values, decoration=decoration)], [PROCESS_CLASS_ID]))
    # one more MappingStrings element costs its HeapRef, the string's flag octet and its NUL
    need = size - base - 6
    if need < 0:
        raise ValueError(f"Win32_Process already takes {base} bytes, more than {size}")
    cls = full_win32_process_class(decoration, (_PRIORITY_MAPPING * (need // len(_PRIORITY_MAPPING) + 1))[:need])
    return wmio.new_instance(cls, values, decoration=decoration)


def terminate_params(decoration) -> tuple[wmio.WmiInstance, wmio.WmiInstance]:
    """Win32_Process::Terminate's in- and out-parameters as WMI marshals them (MS-WMI 2.3.3):
    abstract __PARAMETERS classes, lower-case in / out qualifiers; the in-parameters made
    by the client (Reason left NULL, as wbemtest does), the out-parameters decorated by the server."""
    ins = wmio.new_class("__PARAMETERS", properties=[("Reason", "uint32", None, [("in", True), ("ID", 0)])],
                         qualifiers=[("abstract", True)])
    outs = wmio.new_class("__PARAMETERS", properties=[("ReturnValue", "uint32", None, [("out", True)])],
                          qualifiers=[("abstract", True)])
    return wmio.new_instance(ins), wmio.new_instance(outs, {"ReturnValue": 0}, decoration=decoration)


# ---- the TestWMI class of MS-WMI 4.2.3.2

def testwmi_class(decoration) -> wmio.WmiClass:
    """`Class TestWMI { [key] uint32 x; uint32 y; };`, as 4.2.3.2 defines it in root\\cimv2\\MyTest."""
    return wmio.new_class("TestWMI", properties=[("x", "uint32", None, [("key", True)]), ("y", "uint32")],
                          decoration=decoration)


def testwmi(cls: wmio.WmiClass, x: int, y: int) -> wmio.WmiInstance:
    return wmio.new_instance(cls, {"x": x, "y": y}, decoration=cls.decoration)


# ---- performance counters for a refresher

def perf_raw_data_class(name: str, counters, decoration) -> wmio.WmiClass:
    """A high-performance Win32_PerfRawData class: a Name key, then the (counter, CIM type) pairs."""
    props = [("Name", "string", None, [("key", True)])] + [(c, t) for c, t in counters]
    return wmio.new_class(name, "Win32_PerfRawData", properties=props,
                          qualifiers=[("dynamic", True), ("provider", "Nt5_GenericPerfProvider_V1"),
                                      ("hiperf", True)], decoration=decoration)


# ---- permanent event subscription (root\subscription)

_CREATOR_SID = ("CreatorSID", "uint8[]", None, [("read", True)])
_KEY = [("key", True)]


def event_filter_class(decoration) -> wmio.WmiClass:
    return wmio.new_class("__EventFilter", "__IndicationRelated", decoration=decoration, properties=[
        _CREATOR_SID, ("EventAccess", "string"), ("EventNamespace", "string"), ("Name", "string", None, _KEY),
        ("Query", "string"), ("QueryLanguage", "string")])


def command_line_event_consumer_class(decoration) -> wmio.WmiClass:
    return wmio.new_class("CommandLineEventConsumer", "__EventConsumer", decoration=decoration, properties=[
        ("CommandLineTemplate", "string"), ("CreateNewConsole", "boolean"), _CREATOR_SID,
        ("ExecutablePath", "string"), ("KillTimeout", "uint32"), ("MachineName", "string"),
        ("Name", "string", None, _KEY), ("RunInteractively", "boolean"), ("ShowWindowCommand", "uint32"),
        ("WorkingDirectory", "string")], qualifiers=[("provider", "CommandLineEventConsumer")])


def filter_to_consumer_binding_class(decoration) -> wmio.WmiClass:
    return wmio.new_class("__FilterToConsumerBinding", "__IndicationRelated", decoration=decoration, properties=[
        ("Consumer", "ref:__EventConsumer", None, _KEY), _CREATOR_SID, ("DeliverSynchronously", "boolean"),
        ("Filter", "ref:__EventFilter", None, _KEY), ("MaintainSecurityContext", "boolean")])
