"""The one interface table: WMI and DCOM interfaces, their methods and NDR signatures.

Plain data (dicts, lists, str, int, bool) so that it dumps to JSON as is
(`to_json()`): the DCOM decoder, the WMI decoder, the transcript renderer and the
Wireshark Lua generator all read this one table.

Sources: MS-WMI 3.1.4 and section 6 (Appendix A, full IDL); MS-DCOM 3.1.2.5 and
section 6 (IRemoteSCMActivator, IActivation, IObjectExporter, IRemUnknown(2));
MS-OAUT 3.1.4 (IDispatch).

Interface entry
    name, uuid (lower-case text), group ("wmi" | "dcom" | "rpc": plain RPC
    interfaces seen beside WMI, named but not decoded), base (name of the
    interface it derives from, or None), orpc (True when calls carry the implicit
    ORPCTHIS / ORPCTHAT of MS-DCOM 2.2.13: every COM object interface; False for the
    plain RPC interfaces IRemoteSCMActivator, IActivation, IObjectExporter), local
    (True when no method is ever sent on the wire: custom-marshaled or local-only),
    spec (section), aliases, optional note / custom_marshal, and methods: only the
    interface's own methods; the base chain supplies the rest (`methods_of`).

Method entry
    opnum, name, returns (the NDR type of the return value), params in IDL order.
    For ORPC interfaces the params list starts with the implicit
    {"name": "ORPCthis", "dir": "in", "type": "ORPCTHIS", "implicit": True} and
    {"name": "ORPCthat", "dir": "out", "type": "ORPCTHAT", "implicit": True}.
    Request stub = the "in"/"inout" params in order; response stub = the
    "out"/"inout" params in order, then the return value. handle_t parameters are
    not on the wire and are left out.

Parameter entry
    name (as in the IDL), dir ("in" | "out" | "inout"), type (below).

Type strings: what is marshaled, with top-level [ref] pointers removed (NDR sends
nothing for them), so an IDL `[out] DWORD* p` is "ulong" and `[out] IFoo** pp`
is "IFoo*".
    byte ushort short ulong long uhyper hyper float double   NDR primitives
    HRESULT (long)  error_status_t (ulong)  GUID (16 bytes)  FILETIME (2 x ulong)
    wstring          [string] wchar_t*: conformant varying UTF-16, NUL-terminated
    string           [string] char*
    BSTR             unique pointer to FLAGGED_WORD_BLOB (MS-OAUT 2.2.23)
    IFoo*            an interface pointer: unique pointer to an MInterfacePointer
                     holding an OBJREF for interface IFoo (custom-marshaled for
                     IWbemClassObject and IWbemContext, MS-WMI 2.2.4 / 2.2.13)
    MInterfacePointer  the bare MS-DCOM 2.2.14 structure (conformant)
    unique<T>        [unique] pointer: referent ID, then T unless NULL
    array<T,n>       conformant array, n = the size_is parameter name or a number
    varray<T,n,l>    conformant varying array (size_is n, length_is l)
    UPPER / _Named   a named structure, see STRUCTS (ORPCTHIS, ORPCTHAT,
                     COMVERSION, DUALSTRINGARRAY, REMQIRESULT, REMINTERFACEREF,
                     _WBEM_REFRESHER_ID, ... DISPPARAMS, VARIANT, EXCEPINFO)
"""

from __future__ import annotations

import json

# ---------------------------------------------------------------------------------------
# builders: each parameter is written "dir type name", e.g. "in BSTR strQuery"

_ORPC_PARAMS = (
    {"name": "ORPCthis", "dir": "in", "type": "ORPCTHIS", "implicit": True},
    {"name": "ORPCthat", "dir": "out", "type": "ORPCTHAT", "implicit": True},
)


def _m(opnum: int, name: str, *params: str, returns: str = "HRESULT", **extra) -> dict:
    ps = []
    for p in params:
        direction, typ, pname = p.split()
        assert direction in ("in", "out", "inout"), p
        ps.append({"name": pname, "dir": direction, "type": typ})
    return {"opnum": opnum, "name": name, "returns": returns, "params": ps, **extra}


def _iface(name: str, uuid: str, group: str, base: str | None, methods: list, *,
           orpc: bool = True, local: bool = False, spec: str = "", aliases=(), **extra) -> dict:
    if orpc:
        for m in methods:
            m["params"] = [dict(p) for p in _ORPC_PARAMS] + m["params"]
    return {"name": name, "uuid": uuid.lower(), "group": group, "base": base, "orpc": orpc,
            "local": local, "spec": spec, "aliases": list(aliases), **extra, "methods": methods}


_CTX = "in IWbemContext* pCtx"
_SINK = "in IWbemObjectSink* pResponseHandler"
_FLAGS = "in long lFlags"
_CALLRESULT = "inout unique<IWbemCallResult*> ppCallResult"

# ---------------------------------------------------------------------------------------
# MS-WMI

_WMI = [
    _iface("IWbemLevel1Login", "f309ad18-d86a-11d0-a075-00c04fb68820", "wmi", "IUnknown", [
        _m(3, "EstablishPosition", "in unique<wstring> reserved1", "in ulong reserved2",
           "out ulong LocaleVersion"),
        _m(4, "RequestChallenge", "in unique<wstring> reserved1", "in unique<wstring> reserved2",
           "out varray<byte,16,16> reserved3"),
        _m(5, "WBEMLogin", "in unique<wstring> reserved1", "in unique<varray<byte,16,16>> reserved2",
           "in long reserved3", "in IWbemContext* reserved4", "out IWbemServices* reserved5"),
        _m(6, "NTLMLogin", "in unique<wstring> wszNetworkResource", "in unique<wstring> wszPreferredLocale",
           _FLAGS, _CTX, "out IWbemServices* ppNamespace"),
    ], spec="MS-WMI 3.1.4.1"),
    _iface("IWbemObjectSink", "7c857801-7381-11cf-884d-00aa004b2e24", "wmi", "IUnknown", [
        _m(3, "Indicate", "in long lObjectCount", "in array<IWbemClassObject*,lObjectCount> apObjArray"),
        _m(4, "SetStatus", _FLAGS, "in HRESULT hResult", "in BSTR strParam",
           "in IWbemClassObject* pObjParam"),
    ], spec="MS-WMI 3.1.4.2"),
    _iface("IWbemServices", "9556dc99-828c-11cf-a37e-00aa003240c7", "wmi", "IUnknown", [
        _m(3, "OpenNamespace", "in BSTR strNamespace", _FLAGS, _CTX,
           "inout unique<IWbemServices*> ppWorkingNamespace", "inout unique<IWbemCallResult*> ppResult"),
        _m(4, "CancelAsyncCall", "in IWbemObjectSink* pSink"),
        _m(5, "QueryObjectSink", _FLAGS, "out IWbemObjectSink* ppResponseHandler"),
        _m(6, "GetObject", "in BSTR strObjectPath", _FLAGS, _CTX,
           "inout unique<IWbemClassObject*> ppObject", _CALLRESULT),
        _m(7, "GetObjectAsync", "in BSTR strObjectPath", _FLAGS, _CTX, _SINK),
        _m(8, "PutClass", "in IWbemClassObject* pObject", _FLAGS, _CTX, _CALLRESULT),
        _m(9, "PutClassAsync", "in IWbemClassObject* pObject", _FLAGS, _CTX, _SINK),
        _m(10, "DeleteClass", "in BSTR strClass", _FLAGS, _CTX, _CALLRESULT),
        _m(11, "DeleteClassAsync", "in BSTR strClass", _FLAGS, _CTX, _SINK),
        _m(12, "CreateClassEnum", "in BSTR strSuperclass", _FLAGS, _CTX, "out IEnumWbemClassObject* ppEnum"),
        _m(13, "CreateClassEnumAsync", "in BSTR strSuperclass", _FLAGS, _CTX, _SINK),
        _m(14, "PutInstance", "in IWbemClassObject* pInst", _FLAGS, _CTX, _CALLRESULT),
        _m(15, "PutInstanceAsync", "in IWbemClassObject* pInst", _FLAGS, _CTX, _SINK),
        _m(16, "DeleteInstance", "in BSTR strObjectPath", _FLAGS, _CTX, _CALLRESULT),
        _m(17, "DeleteInstanceAsync", "in BSTR strObjectPath", _FLAGS, _CTX, _SINK),
        _m(18, "CreateInstanceEnum", "in BSTR strSuperClass", _FLAGS, _CTX, "out IEnumWbemClassObject* ppEnum"),
        _m(19, "CreateInstanceEnumAsync", "in BSTR strSuperClass", _FLAGS, _CTX, _SINK),
        _m(20, "ExecQuery", "in BSTR strQueryLanguage", "in BSTR strQuery", _FLAGS, _CTX,
           "out IEnumWbemClassObject* ppEnum"),
        _m(21, "ExecQueryAsync", "in BSTR strQueryLanguage", "in BSTR strQuery", _FLAGS, _CTX, _SINK),
        _m(22, "ExecNotificationQuery", "in BSTR strQueryLanguage", "in BSTR strQuery", _FLAGS, _CTX,
           "out IEnumWbemClassObject* ppEnum"),
        _m(23, "ExecNotificationQueryAsync", "in BSTR strQueryLanguage", "in BSTR strQuery", _FLAGS, _CTX,
           _SINK),
        _m(24, "ExecMethod", "in BSTR strObjectPath", "in BSTR strMethodName", _FLAGS, _CTX,
           "in IWbemClassObject* pInParams", "inout unique<IWbemClassObject*> ppOutParams", _CALLRESULT),
        _m(25, "ExecMethodAsync", "in BSTR strObjectPath", "in BSTR strMethodName", _FLAGS, _CTX,
           "in IWbemClassObject* pInParams", _SINK),
    ], spec="MS-WMI 3.1.4.3"),
    _iface("IEnumWbemClassObject", "027947e1-d731-11ce-a357-000000000001", "wmi", "IUnknown", [
        _m(3, "Reset"),
        _m(4, "Next", "in long lTimeout", "in ulong uCount",
           "out varray<IWbemClassObject*,uCount,puReturned> apObjects", "out ulong puReturned"),
        _m(5, "NextAsync", "in ulong uCount", "in IWbemObjectSink* pSink"),
        _m(6, "Clone", "out IEnumWbemClassObject* ppEnum"),
        _m(7, "Skip", "in long lTimeout", "in ulong nCount"),
    ], spec="MS-WMI 3.1.4.4"),
    _iface("IWbemCallResult", "44aca675-e8fc-11d0-a07c-00c04fb68820", "wmi", "IUnknown", [
        _m(3, "GetResultObject", "in long lTimeout", "out IWbemClassObject* ppResultObject"),
        _m(4, "GetResultString", "in long lTimeout", "out BSTR pstrResultString"),
        _m(5, "GetResultServices", "in long lTimeout", "out IWbemServices* ppServices"),
        _m(6, "GetCallStatus", "in long lTimeout", "out long plStatus"),
    ], spec="MS-WMI 3.1.4.5"),
    _iface("IWbemFetchSmartEnum", "1c1c45ee-4395-11d2-b60b-00104b703efd", "wmi", "IUnknown", [
        _m(3, "GetSmartEnum", "out IWbemWCOSmartEnum* ppSmartEnum"),
    ], spec="MS-WMI 3.1.4.6"),
    _iface("IWbemWCOSmartEnum", "423ec01e-2e35-11d2-b604-00104b703efd", "wmi", "IUnknown", [
        _m(3, "Next", "in GUID proxyGUID", "in long lTimeout", "in ulong uCount", "out ulong puReturned",
           "out ulong pdwBuffSize", "out unique<array<byte,pdwBuffSize>> pBuffer"),
    ], spec="MS-WMI 3.1.4.7"),
    _iface("IWbemLoginClientID", "d4781cd6-e5d3-44df-ad94-930efe48a887", "wmi", "IUnknown", [
        _m(3, "SetClientInfo", "in unique<wstring> wszClientMachine", "in long lClientProcId",
           "in long lReserved"),
    ], spec="MS-WMI 3.1.4.8"),
    _iface("IWbemLoginClientIDEx", "9f6c78ef-fce5-42fa-abea-3e7df91921dc", "wmi", "IUnknown", [
        _m(3, "SetClientInfoEx", "in unique<wstring> wszClientMachine",
           "in unique<wstring> wszClientMachineFQDN", "in long lClientProcId", "in FILETIME Timestamp",
           "in long lReserved",
           note="Parameters inferred from Windows 10 traffic (covenant_sharpwmi capture, frame 85): "
                "NetBIOS name, FQDN, process id, a FILETIME some hours before the call "
                "(likely the client process start time), then a zero long."),
    ], spec="not in MS-WMI", note="Undocumented; called by Windows 10 and later clients after SetClientInfo."),
    _iface("IWbemLoginHelper", "541679ab-2e5f-11d3-b34e-00104bcc4b4a", "wmi", "IUnknown", [
        _m(3, "SetEvent", "in string sEventToSet"),
    ], spec="MS-WMI 3.1.4.9"),
    _iface("IWbemBackupRestore", "c49e32c7-bc8b-11d2-85d4-00105a1f8304", "wmi", "IUnknown", [
        _m(3, "Backup", "in wstring strBackupToFile", _FLAGS),
        _m(4, "Restore", "in wstring strRestoreFromFile", _FLAGS),
    ], spec="MS-WMI 3.1.4.10"),
    _iface("IWbemBackupRestoreEx", "a359dec5-e813-4834-8a2a-ba7f1d777d76", "wmi", "IWbemBackupRestore", [
        _m(5, "Pause"),
        _m(6, "Resume"),
    ], spec="MS-WMI 3.1.4.11"),
    _iface("IWbemRefreshingServices", "2c9273e0-1dc3-11d3-b364-00105a1f8177", "wmi", "IUnknown", [
        _m(3, "AddObjectToRefresher", "in _WBEM_REFRESHER_ID pRefresherId", "in wstring wszPath", _FLAGS,
           "in IWbemContext* pContext", "in ulong dwClientRefrVersion", "out _WBEM_REFRESH_INFO pInfo",
           "out ulong pdwSvrRefrVersion"),
        _m(4, "AddObjectToRefresherByTemplate", "in _WBEM_REFRESHER_ID pRefresherId",
           "in IWbemClassObject* pTemplate", _FLAGS, "in IWbemContext* pContext",
           "in ulong dwClientRefrVersion", "out _WBEM_REFRESH_INFO pInfo", "out ulong pdwSvrRefrVersion"),
        _m(5, "AddEnumToRefresher", "in _WBEM_REFRESHER_ID pRefresherId", "in wstring wszClass", _FLAGS,
           "in IWbemContext* pContext", "in ulong dwClientRefrVersion", "out _WBEM_REFRESH_INFO pInfo",
           "out ulong pdwSvrRefrVersion"),
        _m(6, "RemoveObjectFromRefresher", "in _WBEM_REFRESHER_ID pRefresherId", "in long lId", _FLAGS,
           "in ulong dwClientRefrVersion", "out ulong pdwSvrRefrVersion"),
        _m(7, "GetRemoteRefresher", "in _WBEM_REFRESHER_ID pRefresherId", _FLAGS,
           "in ulong dwClientRefrVersion", "out IWbemRemoteRefresher* ppRemRefresher", "out GUID pGuid",
           "out ulong pdwSvrRefrVersion"),
        _m(8, "ReconnectRemoteRefresher", "in _WBEM_REFRESHER_ID pRefresherId", _FLAGS,
           "in long lNumObjects", "in ulong dwClientRefrVersion",
           "in array<_WBEM_RECONNECT_INFO,lNumObjects> apReconnectInfo",
           "inout array<_WBEM_RECONNECT_RESULTS,lNumObjects> apReconnectResults",
           "out ulong pdwSvrRefrVersion"),
    ], spec="MS-WMI 3.1.4.12"),
    _iface("IWbemRemoteRefresher", "f1e9c5b2-f59b-11d2-b362-00105a1f8177", "wmi", "IUnknown", [
        _m(3, "RemoteRefresh", _FLAGS, "out long plNumObjects",
           "out unique<array<WBEM_REFRESHED_OBJECT,plNumObjects>> paObjects"),
        _m(4, "StopRefreshing", "in long lNumIds", "in array<long,lNumIds> aplIds", _FLAGS),
        _m(5, "Opnum5NotUsedOnWire", _FLAGS, "out GUID pGuid"),
    ], spec="MS-WMI 3.1.4.13"),
    _iface("IWbemShutdown", "b7b31df9-d515-11d3-a11c-00105a1f515a", "wmi", "IUnknown", [
        _m(3, "Shutdown", "in long reserved1", "in ulong reserved2", "in IWbemContext* Reserved3"),
    ], spec="MS-WMI 3.1.4.14",
        note="MS-WMI 3.1.4.14 prints IWbemLevel1Login's UUID {F309AD18-...} for this interface; "
             "the IID Windows uses (wbemcli.h) is {B7B31DF9-D515-11D3-A11C-00105A1F515A}."),
    _iface("IUnsecuredApartment", "1cfaba8c-1523-11d1-ad79-00c04fd8fdff", "wmi", "IUnknown", [
        _m(3, "CreateObjectStub", "in IUnknown* reserved1", "out IUnknown* reserved2"),
    ], spec="MS-WMI 3.1.4.15"),
    _iface("IWbemUnsecuredApartment", "31739d04-3471-4cf4-9a7c-57a44ae71956", "wmi", "IUnknown", [
        _m(3, "CreateSinkStub", "in IWbemObjectSink* reserved1", "in ulong reserved2",
           "in unique<wstring> reserved3", "out IWbemObjectSink* reserved4"),
    ], spec="MS-WMI 3.1.4.16",
        note="Opnum as MS-WMI 3.1.4.16 gives it; the Windows SDK derives this interface from "
             "IUnsecuredApartment, which would put CreateSinkStub at opnum 4."),
    _iface("IWbemClassObject", "dc12a681-737f-11cf-884d-00aa004b2e24", "wmi", "IUnknown", [],
           local=True, spec="MS-WMI 2.2.4",
           custom_marshal={"clsid": "4590f812-1d3a-11d0-891f-00aa004b2e24",
                           "format": "MS-WMIO EncodingUnit (MS-WMIO 2.2.1)"}),
    _iface("IWbemContext", "44aca674-e8fc-11d0-a07c-00c04fb68820", "wmi", "IUnknown", [],
           local=True, spec="MS-WMI 2.2.13",
           custom_marshal={"clsid": "674b6698-ee92-11d0-ad71-00c04fd8fdff",
                           "format": "IWbemContextBuffer (MS-WMI 2.2.13.1)"}),
]

# ---------------------------------------------------------------------------------------
# MS-DCOM, MS-OAUT

_ACT_COMMON = ("in ORPCTHIS orpcthis", "out ORPCTHAT orpcthat")

_DCOM = [
    _iface("IUnknown", "00000000-0000-0000-c000-000000000046", "dcom", None, [
        _m(0, "QueryInterface", "in GUID riid", "out IUnknown* ppvObject"),
        _m(1, "AddRef", returns="ulong"),
        _m(2, "Release", returns="ulong"),
    ], spec="MS-DCOM 3.1.1.5.8", note="Local only: on the wire the IRemUnknown methods stand in for these."),
    _iface("IRemUnknown", "00000131-0000-0000-c000-000000000046", "dcom", "IUnknown", [
        _m(3, "RemQueryInterface", "in GUID ripid", "in ulong cRefs", "in ushort cIids",
           "in array<GUID,cIids> iids", "out unique<array<REMQIRESULT,cIids>> ppQIResults"),
        _m(4, "RemAddRef", "in ushort cInterfaceRefs", "in array<REMINTERFACEREF,cInterfaceRefs> InterfaceRefs",
           "out array<HRESULT,cInterfaceRefs> pResults"),
        _m(5, "RemRelease", "in ushort cInterfaceRefs",
           "in array<REMINTERFACEREF,cInterfaceRefs> InterfaceRefs"),
    ], spec="MS-DCOM 3.1.1.5.6"),
    _iface("IRemUnknown2", "00000143-0000-0000-c000-000000000046", "dcom", "IRemUnknown", [
        _m(6, "RemQueryInterface2", "in GUID ripid", "in ushort cIids", "in array<GUID,cIids> iids",
           "out array<HRESULT,cIids> phr", "out array<unique<MInterfacePointer>,cIids> ppMIF"),
    ], spec="MS-DCOM 3.1.1.5.7"),
    _iface("IRemoteSCMActivator", "000001a0-0000-0000-c000-000000000046", "dcom", None, [
        _m(0, "Opnum0NotUsedOnWire"),
        _m(1, "Opnum1NotUsedOnWire"),
        _m(2, "Opnum2NotUsedOnWire"),
        _m(3, "RemoteGetClassObject", *_ACT_COMMON, "in unique<MInterfacePointer> pActProperties",
           "out unique<MInterfacePointer> ppActProperties"),
        _m(4, "RemoteCreateInstance", *_ACT_COMMON, "in unique<MInterfacePointer> pUnkOuter",
           "in unique<MInterfacePointer> pActProperties", "out unique<MInterfacePointer> ppActProperties"),
    ], orpc=False, spec="MS-DCOM 3.1.2.5.2.2", aliases=("ISystemActivator",)),
    _iface("IActivation", "4d9f4ab8-7d1c-11cf-861e-0020af6e7c57", "dcom", None, [
        _m(0, "RemoteActivation", "in ORPCTHIS ORPCthis", "out ORPCTHAT ORPCthat", "in GUID Clsid",
           "in unique<wstring> pwszObjectName", "in unique<MInterfacePointer> pObjectStorage",
           "in ulong ClientImpLevel", "in ulong Mode", "in ulong Interfaces",
           "in unique<array<GUID,Interfaces>> pIIDs", "in ushort cRequestedProtseqs",
           "in array<ushort,cRequestedProtseqs> aRequestedProtseqs", "out uhyper pOxid",
           "out unique<DUALSTRINGARRAY> ppdsaOxidBindings", "out GUID pipidRemUnknown",
           "out ulong pAuthnHint", "out COMVERSION pServerVersion", "out HRESULT phr",
           "out array<unique<MInterfacePointer>,Interfaces> ppInterfaceData",
           "out array<HRESULT,Interfaces> pResults", returns="error_status_t"),
    ], orpc=False, spec="MS-DCOM 3.1.2.5.2.3.1", aliases=("IRemoteActivation",)),
    _iface("IObjectExporter", "99fcfec4-5260-101b-bbcb-00aa0021347a", "dcom", None, [
        _m(0, "ResolveOxid", "in uhyper pOxid", "in ushort cRequestedProtseqs",
           "in array<ushort,cRequestedProtseqs> arRequestedProtseqs",
           "out unique<DUALSTRINGARRAY> ppdsaOxidBindings", "out GUID pipidRemUnknown",
           "out ulong pAuthnHint", returns="error_status_t"),
        _m(1, "SimplePing", "in uhyper pSetId", returns="error_status_t"),
        _m(2, "ComplexPing", "inout uhyper pSetId", "in ushort SequenceNum", "in ushort cAddToSet",
           "in ushort cDelFromSet", "in unique<array<uhyper,cAddToSet>> AddToSet",
           "in unique<array<uhyper,cDelFromSet>> DelFromSet", "out ushort pPingBackoffFactor",
           returns="error_status_t"),
        _m(3, "ServerAlive", returns="error_status_t"),
        _m(4, "ResolveOxid2", "in uhyper pOxid", "in ushort cRequestedProtseqs",
           "in array<ushort,cRequestedProtseqs> arRequestedProtseqs",
           "out unique<DUALSTRINGARRAY> ppdsaOxidBindings", "out GUID pipidRemUnknown",
           "out ulong pAuthnHint", "out COMVERSION pComVersion", returns="error_status_t"),
        _m(5, "ServerAlive2", "out COMVERSION pComVersion", "out unique<DUALSTRINGARRAY> ppdsaOrBindings",
           "out ulong pReserved", returns="error_status_t"),
    ], orpc=False, spec="MS-DCOM 3.1.2.5.1", aliases=("IOXIDResolver",)),
    _iface("IDispatch", "00020400-0000-0000-c000-000000000046", "dcom", "IUnknown", [
        _m(3, "GetTypeInfoCount", "out ulong pctinfo"),
        _m(4, "GetTypeInfo", "in ulong iTInfo", "in ulong lcid", "out ITypeInfo* ppTInfo"),
        _m(5, "GetIDsOfNames", "in GUID riid", "in array<unique<wstring>,cNames> rgszNames",
           "in ulong cNames", "in ulong lcid", "out array<long,cNames> rgDispId"),
        _m(6, "Invoke", "in long dispIdMember", "in GUID riid", "in ulong lcid", "in ulong dwFlags",
           "in DISPPARAMS pDispParams", "out VARIANT pVarResult", "out EXCEPINFO pExcepInfo",
           "out ulong pArgErr", "in ulong cVarRef", "in array<ulong,cVarRef> rgVarRefIdx",
           "inout array<VARIANT,cVarRef> rgVarRef"),
    ], spec="MS-OAUT 3.1.4"),
    # Interfaces that only appear as OBJREF IIDs (activation blobs, contexts): named, never called.
    _iface("IActivationPropertiesIn", "000001a2-0000-0000-c000-000000000046", "dcom", "IUnknown", [],
           local=True, spec="MS-DCOM 2.2.22"),
    _iface("IActivationPropertiesOut", "000001a3-0000-0000-c000-000000000046", "dcom", "IUnknown", [],
           local=True, spec="MS-DCOM 2.2.22"),
    _iface("IContext", "000001c0-0000-0000-c000-000000000046", "dcom", "IUnknown", [],
           local=True, spec="MS-DCOM 2.2.20"),
    # ITypeInfo comes back from IDispatch::GetTypeInfo; its Remote* methods keep these opnums.
    _iface("ITypeInfo", "00020401-0000-0000-c000-000000000046", "dcom", "IUnknown", [
        _m(n, name) for n, name in (
            (3, "GetTypeAttr"), (4, "GetTypeComp"), (5, "GetFuncDesc"), (6, "GetVarDesc"),
            (7, "GetNames"), (8, "GetRefTypeOfImplType"), (9, "GetImplTypeFlags"),
            (12, "GetDocumentation"), (13, "GetDllEntry"), (14, "GetRefTypeInfo"),
            (16, "CreateInstance"), (17, "GetMops"), (18, "GetContainingTypeLib"))
    ], spec="MS-OAUT 3.7.4"),
    # Plain RPC interfaces that travel beside WMI (endpoint mapper, the domain
    # controller calls a login triggers): named so that they are not counted as
    # unknown; their stubs are not decoded (no parameters listed).
    _iface("epmapper", "e1af8308-5d1f-11c9-91a4-08002b14a0fa", "rpc", None, [
        _m(n, name) for n, name in (
            (0, "ept_insert"), (1, "ept_delete"), (2, "ept_lookup"), (3, "ept_map"),
            (4, "ept_lookup_handle_free"), (5, "ept_inq_object"), (6, "ept_mgmt_delete"))
    ], orpc=False, spec="C706 appendix O; MS-RPCE 2.2.1.2.5"),
    _iface("netlogon", "12345678-1234-abcd-ef00-01234567cffb", "rpc", None, [
        _m(n, name) for n, name in (
            (0, "NetrLogonUasLogon"), (1, "NetrLogonUasLogoff"), (2, "NetrLogonSamLogon"),
            (3, "NetrLogonSamLogoff"), (4, "NetrServerReqChallenge"), (5, "NetrServerAuthenticate"),
            (6, "NetrServerPasswordSet"), (15, "NetrServerAuthenticate2"), (21, "NetrLogonGetCapabilities"),
            (26, "NetrServerAuthenticate3"), (29, "NetrLogonGetDomainInfo"), (30, "NetrServerPasswordSet2"),
            (34, "DsrGetDcNameEx2"), (39, "NetrLogonSamLogonEx"), (40, "DsrEnumerateDomainTrusts"),
            (45, "NetrLogonSamLogonWithFlags"))
    ], orpc=False, spec="MS-NRPC 3.5.4"),
    _iface("drsuapi", "e3514235-4b06-11d1-ab04-00c04fc2dcd2", "rpc", None, [
        _m(n, name) for n, name in (
            (0, "IDL_DRSBind"), (1, "IDL_DRSUnbind"), (2, "IDL_DRSReplicaSync"), (3, "IDL_DRSGetNCChanges"),
            (4, "IDL_DRSUpdateRefs"), (12, "IDL_DRSCrackNames"), (16, "IDL_DRSDomainControllerInfo"))
    ], orpc=False, spec="MS-DRSR 4.1"),
]

INTERFACES: list[dict] = _WMI + _DCOM

# ---------------------------------------------------------------------------------------
# Named structures that appear in the signatures (field name, type), for the
# renderer and the Lua generator. Conformant members use the array<> forms.

STRUCTS: dict[str, dict] = {
    "COMVERSION": {"spec": "MS-DCOM 2.2.11", "fields": [["MajorVersion", "ushort"], ["MinorVersion", "ushort"]]},
    "ORPC_EXTENT": {"spec": "MS-DCOM 2.2.13.1", "fields": [["id", "GUID"], ["size", "ulong"],
                                                           ["data", "array<byte,(size+7)&~7>"]]},
    "ORPC_EXTENT_ARRAY": {"spec": "MS-DCOM 2.2.13.2", "fields": [
        ["size", "ulong"], ["reserved", "ulong"], ["extent", "unique<array<unique<ORPC_EXTENT>,(size+1)&~1>>"]]},
    "ORPCTHIS": {"spec": "MS-DCOM 2.2.13.3", "fields": [
        ["version", "COMVERSION"], ["flags", "ulong"], ["reserved1", "ulong"], ["cid", "GUID"],
        ["extensions", "unique<ORPC_EXTENT_ARRAY>"]]},
    "ORPCTHAT": {"spec": "MS-DCOM 2.2.13.4", "fields": [
        ["flags", "ulong"], ["extensions", "unique<ORPC_EXTENT_ARRAY>"]]},
    "MInterfacePointer": {"spec": "MS-DCOM 2.2.14", "fields": [
        ["ulCntData", "ulong"], ["abData", "array<byte,ulCntData>"]]},
    "STDOBJREF": {"spec": "MS-DCOM 2.2.18.2", "fields": [
        ["flags", "ulong"], ["cPublicRefs", "ulong"], ["oxid", "uhyper"], ["oid", "uhyper"], ["ipid", "GUID"]]},
    "DUALSTRINGARRAY": {"spec": "MS-DCOM 2.2.19.1", "fields": [
        ["wNumEntries", "ushort"], ["wSecurityOffset", "ushort"], ["aStringArray", "array<ushort,wNumEntries>"]]},
    "REMQIRESULT": {"spec": "MS-DCOM 2.2.22.2", "fields": [["hResult", "HRESULT"], ["std", "STDOBJREF"]]},
    "REMINTERFACEREF": {"spec": "MS-DCOM 2.2.22.3", "fields": [
        ["ipid", "GUID"], ["cPublicRefs", "ulong"], ["cPrivateRefs", "ulong"]]},
    "_WBEM_REFRESHER_ID": {"spec": "MS-WMI 2.2.21", "fields": [
        ["m_szMachineName", "unique<string>"], ["m_dwProcessId", "ulong"], ["m_guidRefresherId", "GUID"]]},
    "_WBEM_REFRESH_INFO": {"spec": "MS-WMI 2.2.20", "fields": [
        ["m_lType", "long"], ["m_Info", "WBEM_REFRESH_INFO_UNION"], ["m_lCancelId", "long"]]},
    "_WBEM_REFRESH_INFO_REMOTE": {"spec": "MS-WMI 2.2.27", "fields": [
        ["m_pRefresher", "IWbemRemoteRefresher*"], ["m_pTemplate", "IWbemClassObject*"], ["m_Guid", "GUID"]]},
    "_WBEM_REFRESH_INFO_NON_HIPERF": {"spec": "MS-WMI 2.2.26", "fields": [
        ["m_wszNamespace", "unique<wstring>"], ["m_pTemplate", "IWbemClassObject*"]]},
    # A non-encapsulated union: its discriminant (switch_type) goes on the wire right before
    # the arm, and must equal the field of the enclosing structure named by switch_is.
    "WBEM_REFRESH_INFO_UNION": {"spec": "MS-WMI 2.2.28", "fields": [],
                                "union": {"switch_type": "long", "switch_is": "m_lType", "arms": [
                                    [3, "m_Remote", "_WBEM_REFRESH_INFO_REMOTE"],
                                    [6, "m_NonHiPerf", "_WBEM_REFRESH_INFO_NON_HIPERF"],
                                    [0, "m_hres", "HRESULT"]]}},
    "_WBEM_RECONNECT_INFO": {"spec": "MS-WMI 2.2.22", "fields": [
        ["m_lType", "long"], ["m_pwcsPath", "unique<wstring>"]]},
    "_WBEM_RECONNECT_RESULTS": {"spec": "MS-WMI 2.2.23", "fields": [["m_lId", "long"], ["m_hr", "HRESULT"]]},
    "WBEM_REFRESHED_OBJECT": {"spec": "MS-WMI 2.2.15", "fields": [
        ["m_lRequestId", "long"], ["m_lBlobType", "long"], ["m_lBlobLength", "long"],
        ["m_pbBlob", "unique<array<byte,m_lBlobLength>>"]]},
    "FILETIME": {"spec": "MS-DTYP 2.3.3", "fields": [["dwLowDateTime", "ulong"], ["dwHighDateTime", "ulong"]]},
    "DISPPARAMS": {"spec": "MS-OAUT 2.2.33", "fields": [
        ["rgvarg", "unique<array<VARIANT,cArgs>>"], ["rgdispidNamedArgs", "unique<array<long,cNamedArgs>>"],
        ["cArgs", "ulong"], ["cNamedArgs", "ulong"]]},
    "VARIANT": {"spec": "MS-OAUT 2.2.29", "fields": []},
    "EXCEPINFO": {"spec": "MS-OAUT 2.2.36", "fields": []},
}

# ---------------------------------------------------------------------------------------
# Well-known class IDs and GUIDs that name things inside stubs.

CLSIDS: list[dict] = [
    # MS-WMI
    {"name": "WbemLevel1Login", "uuid": "8bc3f05e-d86b-11d0-a075-00c04fb68820", "group": "wmi",
     "spec": "MS-WMI 6", "purpose": "class activated to obtain IWbemLevel1Login"},
    {"name": "WbemClassObject unmarshaler", "uuid": "4590f812-1d3a-11d0-891f-00aa004b2e24", "group": "wmi",
     "spec": "MS-WMI 2.2.4", "purpose": "OBJREF_CUSTOM CLSID of a marshaled IWbemClassObject"},
    {"name": "WbemContext unmarshaler", "uuid": "674b6698-ee92-11d0-ad71-00c04fd8fdff", "group": "wmi",
     "spec": "MS-WMI 2.2.13", "purpose": "OBJREF_CUSTOM CLSID of a marshaled IWbemContext"},
    {"name": "WbemContext", "uuid": "674b6698-ee92-11d0-ad71-00c04fd8fdfe", "group": "wmi",
     "spec": "MS-WMI 6", "purpose": "coclass of IWbemContext"},
    {"name": "WbemClassObject", "uuid": "9a653086-174f-11d2-b5f9-00104b703efd", "group": "wmi",
     "spec": "MS-WMI 6", "purpose": "coclass of IWbemClassObject"},
    {"name": "WbemBackupRestore", "uuid": "c49e32c6-bc8b-11d2-85d4-00105a1f8304", "group": "wmi",
     "spec": "MS-WMI 6", "purpose": "coclass of IWbemBackupRestoreEx"},
    {"name": "WbemShutdown", "uuid": "73e709ea-5d93-4b2e-bbb0-99b7938da9e4", "group": "wmi",
     "spec": "MS-WMI 3.1.4.14", "purpose": "object exporting IWbemShutdown"},
    {"name": "WbemShutdown (alternate)", "uuid": "1f87137d-0e7c-44d5-8c73-4effb68962f2", "group": "wmi",
     "spec": "MS-WMI 3.1.4.14", "purpose": "object exporting IWbemShutdown"},
    {"name": "UnsecuredApartment", "uuid": "49bd2028-1523-11d1-ad79-00c04fd8fdff", "group": "wmi",
     "spec": "MS-WMI 3.1.4.15", "purpose": "object exporting IUnsecuredApartment / IWbemUnsecuredApartment"},
    # MS-DCOM 1.9
    {"name": "ActivationPropertiesIn", "uuid": "00000338-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 1.9", "purpose": "OBJREF_CUSTOM unmarshaler of the activation request properties"},
    {"name": "ActivationPropertiesOut", "uuid": "00000339-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 1.9", "purpose": "OBJREF_CUSTOM unmarshaler of the activation reply properties; "
                                         "also CLSID_PropsOutInfo"},
    {"name": "SpecialSystemProperties", "uuid": "000001b9-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.2", "purpose": "activation property SpecialPropertiesData"},
    {"name": "InstantiationInfo", "uuid": "000001ab-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.1", "purpose": "activation property InstantiationInfoData"},
    {"name": "ActivationContextInfo", "uuid": "000001a5-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.5", "purpose": "activation property ActivationContextInfoData"},
    {"name": "SecurityInfo", "uuid": "000001a6-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.7", "purpose": "activation property SecurityInfoData"},
    {"name": "ServerLocationInfo", "uuid": "000001a4-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.6", "purpose": "activation property LocationInfoData"},
    {"name": "ScmRequestInfo", "uuid": "000001aa-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.4", "purpose": "activation property ScmRequestInfoData"},
    {"name": "ScmReplyInfo", "uuid": "000001b6-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.8", "purpose": "activation property ScmReplyInfoData"},
    {"name": "InstanceInfo", "uuid": "000001ad-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.22.2.3", "purpose": "activation property InstanceInfoData"},
    {"name": "ContextMarshaler", "uuid": "0000033b-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.20", "purpose": "OBJREF_CUSTOM unmarshaler of a context"},
    {"name": "ErrorObject", "uuid": "0000031b-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.21.2", "purpose": "OBJREF_CUSTOM unmarshaler of error information"},
    {"name": "ERROR_EXTENSION", "uuid": "0000031c-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.21.1", "purpose": "ORPC_EXTENT id: error information"},
    {"name": "CONTEXT_EXTENSION", "uuid": "00000334-0000-0000-c000-000000000046", "group": "dcom",
     "spec": "MS-DCOM 2.2.21.4", "purpose": "ORPC_EXTENT id: context ORPC extension"},
    # classes abused for DCOM lateral movement (not WMI): named so that reports say what they are
    {"name": "ShellWindows", "uuid": "9ba05972-f6a8-11cf-a442-00a0c90a8f39", "group": "dcom",
     "spec": "", "purpose": "Explorer ShellWindows (dcomexec lateral movement)"},
    {"name": "ShellBrowserWindow", "uuid": "c08afd90-f2a1-11d1-8455-00a0c91f3880", "group": "dcom",
     "spec": "", "purpose": "Explorer ShellBrowserWindow (dcomexec lateral movement)"},
    {"name": "MMC20.Application", "uuid": "49b2791a-b1ae-4c90-9b8e-e860ba07f889", "group": "dcom",
     "spec": "", "purpose": "MMC application object (dcomexec lateral movement)"},
]

# Parameters whose NDR bytes carry an MS-WMI encoding that the signature alone does not
# say, decoded with state kept across calls ("encoding" names the decoder's hook):
#   object_array       an ObjectArray (WBEMDATA, MS-WMI 2.2.14) read against the
#                      enumeration's class cache (3.1.4.7.1)
#   refreshed_objects  WBEM_REFRESHED_OBJECT blobs (2.2.15-2.2.19) read against the
#                      template of their request id
#   indicate           after the sink answered WBEM_S_NEW_STYLE (3.1.4.2.1) the objects come
#                      as an ObjectArray instead of interface pointers
SPECIAL_PARAMS: list[dict] = [
    {"interface": "IWbemWCOSmartEnum", "method": "Next", "param": "pBuffer", "encoding": "object_array",
     "spec": "MS-WMI 3.1.4.7.1"},
    {"interface": "IWbemRemoteRefresher", "method": "RemoteRefresh", "param": "paObjects",
     "encoding": "refreshed_objects", "spec": "MS-WMI 2.2.15"},
    {"interface": "IWbemObjectSink", "method": "Indicate", "param": "apObjArray", "encoding": "indicate",
     "spec": "MS-WMI 3.1.4.2.1"},
]

TRANSFER_SYNTAXES: list[dict] = [
    {"name": "NDR", "uuid": "8a885d04-1ceb-11c9-9fe8-08002b104860", "version": "2.0", "spec": "C706 14"},
    {"name": "NDR64", "uuid": "71710533-beba-4937-8319-b5dbef9ccc36", "version": "1.0", "spec": "MS-RPCE 2.2.5"},
    {"name": "Bind time feature negotiation", "uuid_prefix": "6cb71c2c-9812-4540-", "version": "1.0",
     "spec": "MS-RPCE 3.3.1.5.3",
     "note": "the last eight octets of the UUID carry the feature bitmask, e.g. 6cb71c2c-9812-4540-0300-000000000000"},
]

# ---------------------------------------------------------------------------------------
# lookups

_BY_UUID: dict[str, dict] = {i["uuid"]: i for i in INTERFACES}
_BY_NAME: dict[str, dict] = {i["name"]: i for i in INTERFACES}
_CLSID_BY_UUID: dict[str, dict] = {}
for _c in CLSIDS:
    _CLSID_BY_UUID.setdefault(_c["uuid"], _c)


def _norm(u: str | None) -> str:
    return (u or "").strip().strip("{}").lower()


def _get(table: dict, u: str | None):
    """table[u] for a UUID as text. The decoders hand over lower-case canonical text, so
    the exact key is tried before normalizing (this runs for every call and OBJREF)."""
    hit = table.get(u)
    return hit if hit is not None or not u else table.get(_norm(u))


def base_chain(iface: dict) -> list[dict]:
    """An interface entry, then the one it derives from, and so on up to the root (a cycle
    in the table ends the walk)."""
    chain: list[dict] = []
    seen = set()
    cur = iface
    while cur is not None and cur["name"] not in seen:
        seen.add(cur["name"])
        chain.append(cur)
        cur = _BY_NAME.get(cur["base"]) if cur["base"] else None
    return chain


def _flatten(iface: dict) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i in reversed(base_chain(iface)):
        for m in i["methods"]:
            out[m["opnum"]] = m
    return out


_METHODS: dict[str, dict[int, dict]] = {i["uuid"]: _flatten(i) for i in INTERFACES}
_ANCESTORS: dict[str, frozenset] = {i["uuid"]: frozenset(a["uuid"] for a in base_chain(i)) for i in INTERFACES}


def interface_by_uuid(uuid: str | None) -> dict | None:
    return _get(_BY_UUID, uuid)


def interface_name(uuid: str | None) -> str | None:
    i = _get(_BY_UUID, uuid)
    return i["name"] if i else None


def interface_by_name(name: str) -> dict | None:
    return _BY_NAME.get(name)


def methods_of(uuid: str | None) -> dict[int, dict]:
    """opnum -> method entry, inherited methods included (IUnknown's 0-2 for COM interfaces)."""
    return _get(_METHODS, uuid) or {}


def method(uuid: str | None, opnum: int | None) -> dict | None:
    if opnum is None:
        return None
    return (_get(_METHODS, uuid) or {}).get(opnum)


def method_name(uuid: str | None, opnum: int | None) -> str | None:
    m = method(uuid, opnum)
    return m["name"] if m else None


def is_orpc(uuid: str | None) -> bool:
    i = _get(_BY_UUID, uuid)
    return bool(i and i["orpc"])


def derives_from(uuid: str | None, ancestor: str | None) -> bool:
    """Whether interface `uuid` is `ancestor` or inherits from it."""
    ancestors = _get(_ANCESTORS, uuid)
    a = _get(_BY_UUID, ancestor)
    return ancestors is not None and a is not None and a["uuid"] in ancestors


def clsid_name(uuid: str | None) -> str | None:
    c = _get(_CLSID_BY_UUID, uuid)
    return c["name"] if c else None


def uuid_of(name: str) -> str:
    """The UUID of an interface or class of the table by its name: the decoders take their
    IIDs and CLSIDs from here rather than from copies of their own (KeyError if unknown)."""
    i = _BY_NAME.get(name)
    if i is not None:
        return i["uuid"]
    for c in CLSIDS:
        if c["name"] == name:
            return c["uuid"]
    raise KeyError(f"no interface or class named {name!r} in the table")


def transfer_syntax_name(uuid: str | None) -> str | None:
    u = _norm(uuid)
    for t in TRANSFER_SYNTAXES:
        if u == t.get("uuid") or (t.get("uuid_prefix") and u.startswith(t["uuid_prefix"])):
            return t["name"]
    return None


def special_param(interface: str, method: str, param: str) -> str | None:
    """The encoding hook of a parameter of SPECIAL_PARAMS, or None."""
    return _SPECIAL.get((interface, method, param))


_SPECIAL = {(s["interface"], s["method"], s["param"]): s["encoding"] for s in SPECIAL_PARAMS}


def export() -> dict:
    """Everything the spec layer holds, as plain JSON-able data: the interfaces, structures,
    class IDs and transfer syntaxes, the parameters with special encodings, the
    enumerations and flag sets with the parameters and fields they name, every named
    status code (HRESULT), and the MS-DCOM constants. Generators outside Python (the
    Wireshark Lua plugin) read this and nothing else."""
    from . import dcom, wbem       # the spec layer's own modules; nothing outside it

    return {
        "version": 2,
        "interfaces": INTERFACES,
        "structs": STRUCTS,
        "clsids": CLSIDS,
        "transfer_syntaxes": TRANSFER_SYNTAXES,
        "special_params": SPECIAL_PARAMS,
        "enums": {name: {**e, "values": [list(v) for v in e["values"]],
                         **({"masks": [list(v) for v in e["masks"]]} if "masks" in e else {})}
                  for name, e in wbem.ENUMS.items()},
        "param_enums": [{"interface": i, "method": m, "param": p, "enums": list(e)}
                        for (i, m, p), e in wbem.PARAM_ENUMS.items()],
        "field_enums": [{"struct": s, "field": f, "enums": list(e)} for (s, f), e in wbem.FIELD_ENUMS.items()],
        "hresults": {
            "wbemstatus": [{"name": n, "value": v, "text": x} for n, v, x in wbem.WBEMSTATUS],
            "appendix_c": [{"name": n, "value": v, "use": u} for n, v, u in wbem.APPENDIX_C],
            "erref": [{"name": n, "value": v, "text": x} for n, v, x in wbem.ERREF],
        },
        "dcom": {
            "objref_signature": dcom.OBJREF_SIGNATURE,
            "objref_extended_signature": dcom.OBJREF_EXTENDED_SIGNATURE,
            "objref_flags": [{"value": v, "name": n, "kind": k, "trace_name": t} for v, n, k, t in dcom.OBJREF_FLAGS],
            "tower_ids": {str(k): v for k, v in dcom.TOWER_IDS.items()},
            "orpc_flags": {str(k): {"name": n, "text": x} for k, (n, x) in dcom.ORPC_FLAGS.items()},
        },
    }


def to_json(indent: int | None = 1) -> str:
    """The whole spec layer as JSON (see export())."""
    return json.dumps(export(), indent=indent, sort_keys=False)
