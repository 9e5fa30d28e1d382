"""The report's knowledge as data: ATT&CK techniques, reconnaissance classes, known
tool patterns, registry hives and WMI method return codes.

Edit these tables to teach the report something new; findings.py only walks them.
"""

from __future__ import annotations

import re

# MITRE ATT&CK Enterprise: id -> (name, tactic). Only the techniques the rules emit.
TECHNIQUES = {
    "T1047": ("Windows Management Instrumentation", "Execution"),
    "T1543.003": ("Create or Modify System Process: Windows Service", "Persistence"),
    "T1569.002": ("System Services: Service Execution", "Execution"),
    "T1489": ("Service Stop", "Impact"),
    "T1546.003": ("Event Triggered Execution: Windows Management Instrumentation Event Subscription",
                  "Persistence"),
    "T1112": ("Modify Registry", "Defense Evasion"),
    "T1012": ("Query Registry", "Discovery"),
    "T1490": ("Inhibit System Recovery", "Impact"),
    "T1003.003": ("OS Credential Dumping: NTDS", "Credential Access"),
    "T1057": ("Process Discovery", "Discovery"),
    "T1007": ("System Service Discovery", "Discovery"),
    "T1518": ("Software Discovery", "Discovery"),
    "T1518.001": ("Software Discovery: Security Software Discovery", "Discovery"),
    "T1033": ("System Owner/User Discovery", "Discovery"),
    "T1087.001": ("Account Discovery: Local Account", "Discovery"),
    "T1069.001": ("Permission Groups Discovery: Local Groups", "Discovery"),
    "T1082": ("System Information Discovery", "Discovery"),
    "T1016": ("System Network Configuration Discovery", "Discovery"),
    "T1049": ("System Network Connections Discovery", "Discovery"),
    "T1083": ("File and Directory Discovery", "Discovery"),
    "T1135": ("Network Share Discovery", "Discovery"),
    "T1654": ("Log Enumeration", "Discovery"),
    "T1074.001": ("Data Staged: Local Data Staging", "Collection"),
    "T1041": ("Exfiltration Over C2 Channel", "Exfiltration"),
    "T1070": ("Indicator Removal", "Defense Evasion"),
    "T1059.001": ("Command and Scripting Interpreter: PowerShell", "Execution"),
}


def technique(tid: str) -> dict:
    name, tactic = TECHNIQUES[tid]
    return {"id": tid, "name": name, "tactic": tactic,
            "reference": f"https://attack.mitre.org/techniques/{tid.replace('.', '/')}/"}


# Reconnaissance: a class named in a query (or enumerated) -> technique. Matched on the
# class after FROM / the enumerated class, case-insensitively, first match wins.
RECON_CLASSES = [
    (r"(AntiVirus|AntiSpyware|Firewall)Product", "T1518.001", "security products"),
    (r"Win32_ShadowCopy", "T1082", "shadow copies"),
    (r"Win32_Process", "T1057", "processes"),
    (r"Win32_(Service|BaseService|SystemDriver)", "T1007", "services"),
    (r"Win32_(LoggedOnUser|LogonSession|ComputerSystem\b.*UserName)", "T1033", "logged-on users"),
    (r"Win32_(UserAccount|Account|SystemAccount|UserProfile)", "T1087.001", "accounts"),
    (r"Win32_(Group|GroupUser)", "T1069.001", "groups"),
    (r"Win32_(NetworkAdapter\w*|IP4RouteTable|NetworkConnection)", "T1016", "network configuration"),
    (r"MSFT_NetTCPConnection", "T1049", "network connections"),
    (r"Win32_Share", "T1135", "shares"),
    (r"(Win32_(LogicalDisk|Directory|Volume|DiskDrive)|CIM_(DataFile|Directory))", "T1083", "files and disks"),
    (r"Win32_(Product|InstalledWin32Program|InstalledStoreProgram)", "T1518", "installed software"),
    (r"Win32_NTLogEvent", "T1654", "event logs"),
    (r"Win32_(OperatingSystem|ComputerSystem\w*|BIOS|Processor|QuickFixEngineering|Environment|TimeZone)",
     "T1082", "system information"),
]
RECON_CLASSES = [(re.compile(rf"^(?:{p})$", re.I), t, what) for p, t, what in RECON_CLASSES]

_FROM = re.compile(r"\bFROM\s+([\w$]+)", re.I)
_ISA = re.compile(r"\bISA\s+'?([\w$]+)", re.I)


def query_classes(query: str) -> list[str]:
    """The classes a WQL query reads: after FROM, and inside ISA for event queries."""
    return _FROM.findall(query or "") + _ISA.findall(query or "")


def recon_technique(class_name: str):
    for pat, tid, what in RECON_CLASSES:
        if pat.match(class_name or ""):
            return tid, what
    return None


# Known tools, recognised from the command line (Win32_Process.Create) and the call
# pattern. Each: name, regex over the command line, what the match means.
TOOL_PATTERNS = [
    ("impacket wmiexec",
     re.compile(r"cmd(\.exe)?\s+/Q\s+/c\s+.*1>\s*\\\\(127\.0\.0\.1|localhost)\\(ADMIN|C)\$\\__[\d.]+\s+2>&1", re.I),
     "output redirected to \\\\127.0.0.1\\ADMIN$\\__<epoch> and read back over SMB (impacket wmiexec.py)"),
    ("NetExec wmi exec",
     re.compile(r"cmd(\.exe)?\s+/Q\s+/c\s+.*1>\s*C:\\windows\\temp\\[0-9a-f-]{36}\.txt\s+2>&1\s+&&\s+certutil\s+-encodehex",
                re.I),
     "output to C:\\windows\\temp\\<uuid>.txt, hex-encoded by certutil and stored with reg add under "
     "HKLM\\Software\\Classes, then read back through StdRegProv (NetExec's wmi protocol)"),
    ("CrackMapExec wmiexec",
     re.compile(r"cmd(\.exe)?\s+/Q\s+/c\s+.*1>\s*(\\Windows\\Temp\\[A-Za-z]{6}|\\\\[\d.]+\\\w+\\[A-Za-z]{6})\s+2>&1", re.I),
     "output redirected to \\Windows\\Temp\\<6 letters> (or a share on the attacker) and read over SMB "
     "(CrackMapExec's smb wmiexec method)"),
    ("encoded PowerShell launcher",
     re.compile(r"powershell(\.exe)?\b.*\s-(e|ec|en|enc|encodedcommand)\s", re.I),
     "PowerShell started with an encoded command (Covenant / SharpWMI / Empire style launchers)"),
]

# Invoke-WMIExec builds the packets itself and is the only tool seen spelling the
# method 'create' in lower case (after GetObject 'win32_process').
INVOKE_WMIEXEC_METHOD = "create"
INVOKE_WMIEXEC = ("Invoke-WMIExec", "method name 'create' and class 'win32_process' in lower case, as "
                  "Invoke-WMIExec writes them")

# PowerShell encoded command: -e / -ec / -en / -enc / -encodedcommand
PS_ENCODED = re.compile(r"\s-(?:e|ec|en|enc|enco\w*)\s+([A-Za-z0-9+/=]{8,})", re.I)

# StdRegProv
REGISTRY_HIVES = {
    0x80000000: "HKEY_CLASSES_ROOT",
    0x80000001: "HKEY_CURRENT_USER",
    0x80000002: "HKEY_LOCAL_MACHINE",
    0x80000003: "HKEY_USERS",
    0x80000005: "HKEY_CURRENT_CONFIG",
}
REGISTRY_WRITE = re.compile(r"^(Set\w*Value|CreateKey|SetSecurityDescriptor)$", re.I)
REGISTRY_DELETE = re.compile(r"^(DeleteValue|DeleteKey)$", re.I)
REGISTRY_READ = re.compile(r"^(Get\w*Value|EnumKey|EnumValues|CheckAccess|GetSecurityDescriptor)$", re.I)
# A registry value or environment variable this large is a file moved through WMI, not configuration.
DATA_CHANNEL_BYTES = 4096

# Tools recognised from the arguments of a Win32_Service.Create: name, the in-parameters
# they always pass, what that means.
SERVICE_TOOLS = [
    ("wmiexec-pro", {"ServiceType": 16, "ErrorControl": 0, "StartMode": "Automatic", "DesktopInteract": False,
                     "StartName": "LocalSystem", "LoadOrderGroup": "System"},
     "ServiceType 16, ErrorControl 0, StartMode Automatic, StartName LocalSystem and LoadOrderGroup 'System': "
     "the fixed arguments of wmiexec-pro's service module"),
]

# Tools recognised from the names they give subscription objects: name, regex over a
# filter / consumer / timer name, what that means.
SUBSCRIPTION_TOOLS = [
    ("wmiexec-pro", re.compile(r"^windows-object-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I),
     "objects named windows-object-<uuid>, as wmiexec-pro's VBScript execution names them"),
    ("impacket wmipersist", re.compile(r"^(EF|TI)_.+"),
     "filter EF_<name> / timer TI_<name> beside consumer <name>, as impacket's wmipersist.py names them"),
]

SUBSCRIPTION_CLASSES = {
    "__intervaltimerinstruction": "timer",
    "__absolutetimerinstruction": "timer",
    "__eventfilter": "filter",
    "__filtertoconsumerbinding": "binding",
    "commandlineeventconsumer": "consumer",
    "activescripteventconsumer": "consumer",
    "logfileeventconsumer": "consumer",
    "ntlogeventconsumer": "consumer",
    "smtpeventconsumer": "consumer",
}

# Win32_Process.Create / Win32_Service.* ReturnValue (documented in the class references)
PROCESS_CREATE_RETURN = {0: "Successful completion", 2: "Access denied", 3: "Insufficient privilege",
                         8: "Unknown failure", 9: "Path not found", 21: "Invalid parameter"}
SERVICE_RETURN = {0: "Success", 1: "Not Supported", 2: "Access Denied", 3: "Dependent Services Running",
                  4: "Invalid Service Control", 5: "Service Cannot Accept Control", 6: "Service Not Active",
                  7: "Service Request Timeout", 8: "Unknown Failure", 9: "Path Not Found",
                  10: "Service Already Running", 11: "Service Database Locked",
                  12: "Service Dependency Deleted", 13: "Service Dependency Failure", 14: "Service Disabled",
                  15: "Service Logon Failed", 16: "Service Marked For Deletion", 17: "Service No Thread",
                  18: "Status Circular Dependency", 19: "Status Duplicate Name", 20: "Status Invalid Name",
                  21: "Status Invalid Parameter", 22: "Status Invalid Service Account",
                  23: "Status Service Exists", 24: "Service Already Paused"}
REGISTRY_RETURN = {0: "Success", 1: "Not found (ERROR_FILE_NOT_FOUND)", 2: "Not found (ERROR_FILE_NOT_FOUND)",
                   5: "Access denied"}
