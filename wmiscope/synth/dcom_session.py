"""DCOM as a WMI client drives it, for synthetic captures (MS-DCOM 3.1, MS-WMI 4.1).

A session starts with the DCOM activation of WbemLevel1Login on the server's port 135,
then connects to the object exporter the activation named: IRemUnknown2 bound first, an
alter_context for each further interface, large replies cut at max_xmit_frag. Stubs come
from the interface table (wmi.encode_request / encode_response) where it describes them;
the activation blobs and ResolveOxid2, which it does not, are written field by field here.

The GUIDs come from the interface table too: the decoder, the transcript, the Lua plugin
and these builders read one table, so a sample cannot disagree with the decoder about them.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

from ..dissectors import wmi
from ..spec import interfaces
from ..dissectors.activation import build_activation_properties
from ..dissectors.orpc import write_orpcthat, write_orpcthis
from ..formats.objref import OBJREF_CUSTOM, OBJREF_STANDARD, build_dualstringarray, build_objref
from ..dissectors.ndr import NdrWriter
from .wire import TcpSession, bind, bind_ack, request, response


def iid_of(name: str) -> str:
    """The IID of an interface the table knows by that name."""
    return interfaces.interface_by_name(name)["uuid"]


def clsid_of(name: str) -> str:
    """The GUID of a class, unmarshaler or activation property the table knows by that name."""
    return next(c["uuid"] for c in interfaces.CLSIDS if c["name"] == name)


IREMOTE_SCM_ACTIVATOR = iid_of("IRemoteSCMActivator")
IOBJECT_EXPORTER = iid_of("IObjectExporter")
IREMUNKNOWN2 = iid_of("IRemUnknown2")
IACTIVATION_PROPERTIES_IN = iid_of("IActivationPropertiesIn")
IACTIVATION_PROPERTIES_OUT = iid_of("IActivationPropertiesOut")
ICONTEXT = iid_of("IContext")
IWBEM_LEVEL1_LOGIN = iid_of("IWbemLevel1Login")
IWBEM_LOGIN_CLIENT_ID = iid_of("IWbemLoginClientID")
IWBEM_SERVICES = iid_of("IWbemServices")
IWBEM_FETCH_SMART_ENUM = iid_of("IWbemFetchSmartEnum")
IWBEM_WCO_SMART_ENUM = iid_of("IWbemWCOSmartEnum")

CLSID_WBEM_LEVEL1_LOGIN = clsid_of("WbemLevel1Login")
CLSID_ACT_PROPS_IN = clsid_of("ActivationPropertiesIn")
CLSID_ACT_PROPS_OUT = clsid_of("ActivationPropertiesOut")      # also the id of PropsOutInfo
CLSID_CONTEXT_MARSHALER = clsid_of("ContextMarshaler")
PROP_SPECIAL = clsid_of("SpecialSystemProperties")
PROP_INSTANTIATION = clsid_of("InstantiationInfo")
PROP_ACTIVATION_CONTEXT = clsid_of("ActivationContextInfo")
PROP_SECURITY = clsid_of("SecurityInfo")
PROP_LOCATION = clsid_of("ServerLocationInfo")
PROP_SCM_REQUEST = clsid_of("ScmRequestInfo")
PROP_SCM_REPLY = clsid_of("ScmReplyInfo")

NCACN_IP_TCP = 0x07
# The security bindings a Windows Server 2008 R2 exporter lists (authentication services,
# MS-RPCE 2.2.1.1.7): SPNEGO, NTLM, Kerberos, Schannel, and the Negotiate extension 0x1e.
SECURITY_BINDINGS = tuple((svc, 0xFFFF, "") for svc in (0x09, 0x0A, 0x10, 0x0E, 0x1E))
_OID_BASE = 0x5F3E2D1C00000000


def fixed_ipid(counter: int, pid: int, tag: str) -> str:
    """An IPID the way Windows lays them out (MS-DCOM 2.2.18.2 leaves the form to the
    exporter): a per-process counter, the exporter's process id, then a fixed tail; ours is
    derived from `tag` so that every run writes the same one."""
    tail = hashlib.sha256(tag.encode()).hexdigest()[:16]
    return f"{counter:08x}-{pid:04x}-0000-{tail[:4]}-{tail[4:]}"


class Host:
    """A Windows host of a sample: its NetBIOS name and IPv4 address."""

    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip

    def resolver(self, port: int | None = None) -> bytes:
        """The DUALSTRINGARRAY of this host's exporter: its name and address (with the
        exporter's port in an OXID resolution, without it in an OBJREF)."""
        at = f"[{port}]" if port else ""
        return build_dualstringarray([(NCACN_IP_TCP, self.name + at), (NCACN_IP_TCP, self.ip + at)],
                                     SECURITY_BINDINGS)


class Association:
    """One DCE/RPC connection as Windows drives it: bind for the first interface, an
    alter_context for each further one, call ids counting up, PDUs cut at max_frag."""

    def __init__(self, pcap, clock, client: tuple[str, int], server: tuple[str, int], first_iface: str, *,
                 max_frag: int = 5840):
        self.clock = clock
        self.tcp = TcpSession(pcap, clock, client, server)
        self.tcp.open()
        self.call_id = 0
        self.contexts: dict[str, int] = {}
        self.max_frag = max_frag
        self.port = server[1]
        self._bind(first_iface, alter=False)

    def _exchange(self, requests, responses, think: float = 0.004) -> None:
        for pdu in requests:
            self.tcp.send(0, pdu)
        self.clock.tick(think)
        for pdu in responses:
            self.tcp.send(1, pdu)
        self.clock.tick(0.002)

    def _bind(self, iface: str, alter: bool) -> int:
        self.call_id += 1
        ctx = len(self.contexts)
        self._exchange([bind(self.call_id, [(ctx, iface, (0, 0))], alter=alter, max_frag=self.max_frag)],
                       [bind_ack(self.call_id, 1, alter=alter, max_frag=self.max_frag,
                                 sec_addr="" if alter else str(self.port))])
        self.contexts[iface] = ctx
        return ctx

    def call(self, iface: str, opnum: int, req: bytes, resp: bytes, *, ipid: str | None = None,
             think: float = 0.004) -> None:
        ctx = self.contexts.get(iface)
        if ctx is None:
            ctx = self._bind(iface, alter=True)
        self.call_id += 1
        self._exchange(request(self.call_id, ctx, opnum, req, object_uuid=ipid, max_frag=self.max_frag),
                       response(self.call_id, ctx, resp, max_frag=self.max_frag), think)

    def close(self) -> None:
        self.tcp.close()


def call_method(conn: Association, cid: str, interface: str, method: str, ipid: str, request: dict | bytes,
                response: dict | None = None, hresult: int = 0, *, think: float = 0.004) -> None:
    """A call by interface and method name; the request's values (interface pointers as OBJREF
    bytes or WMI objects) or, where the table cannot say it, the request stub itself."""
    info = interfaces.interface_by_name(interface)
    opnum = next(m["opnum"] for m in interfaces.methods_of(info["uuid"]).values() if m["name"] == method)
    req = request if isinstance(request, bytes) else wmi.encode_request(interface, method, request, cid=cid)
    resp = wmi.encode_response(interface, method, response or {}, hresult)
    conn.call(info["uuid"], opnum, req, resp, ipid=ipid, think=think)


# ---- the activation on port 135 and the OXID resolution: blobs the interface table leaves opaque

def _write_exporter_bindings(w: NdrWriter, bindings: bytes) -> None:
    """A DUALSTRINGARRAY as a pointee: its conformance (wNumEntries), then the array."""
    w.count(len(bindings) // 2 - 2), w.raw(bindings)


def _write_remunknown(w: NdrWriter, remunknown_ipid: str) -> None:
    """What an exporter tells about itself (MS-DCOM 2.2.22.2.8.1, 3.1.2.5.1.1): the IPID of
    its IRemUnknown, the authentication hint (level 4, packet), COM version 5.7."""
    w.guid(remunknown_ipid), w.u32(4), w.u16(5), w.u16(7)


def activation_request(cid: str, server: Host) -> bytes:
    """IRemoteSCMActivator::RemoteCreateInstance for WbemLevel1Login (MS-DCOM 3.1.2.5.2.3.2),
    its ActivationPropertiesIn blob built property by property as Windows 7 sends it."""
    special = NdrWriter()
    for v in (0xFFFFFFFF, 0, 0, 0, 1):         # session, RemoteThisSessionId, impersonating, partition, authn level
        special.u32(v)
    special.guid("00000000-0000-0000-0000-000000000000")
    for v in (0, 0x14, 2):                       # dwPRTFlags, dwOrigClsctx, dwFlags
        special.u32(v)
    special.raw(bytes(40))                       # Reserved1..3
    inst = NdrWriter()
    inst.guid(CLSID_WBEM_LEVEL1_LOGIN), inst.u32(0x14), inst.u32(0), inst.i32(0), inst.u32(1), inst.u32(0)
    inst.referent(), inst.u32(88), inst.u16(5), inst.u16(7), inst.conformant_guids([IWBEM_LEVEL1_LOGIN])
    context = struct.pack("<HH16sIIIIIII", 1, 1, uuid.UUID("e91a6c22-ecd3-4bcd-b236-1a73b86360ad").bytes_le,
                          2, 0, 0, 0, 0, 0, 1)
    act_ctx = NdrWriter()
    act_ctx.u32(0), act_ctx.u32(0), act_ctx.u32(0), act_ctx.u32(0), act_ctx.referent(), act_ctx.referent(False)
    act_ctx.interface_pointer_data(build_objref(ICONTEXT, OBJREF_CUSTOM, clsid=CLSID_CONTEXT_MARSHALER,
                                                payload=context))
    security = NdrWriter()
    security.u32(0), security.referent(), security.referent(False)
    security.u32(0), security.referent(), security.referent(False), security.u32(0)
    security.wstring(server.name)
    location = NdrWriter()
    location.referent(False), location.u32(0), location.u32(0), location.u32(0)
    scm = NdrWriter()
    scm.referent(False), scm.referent(), scm.u32(2), scm.u16(1), scm.referent(), scm.count(1), scm.u16(NCACN_IP_TCP)
    blob = build_activation_properties([
        (PROP_SPECIAL, special.getvalue()), (PROP_INSTANTIATION, inst.getvalue()),
        (PROP_ACTIVATION_CONTEXT, act_ctx.getvalue()), (PROP_SECURITY, security.getvalue()),
        (PROP_LOCATION, location.getvalue()), (PROP_SCM_REQUEST, scm.getvalue())])
    w = NdrWriter()
    write_orpcthis(w, cid)
    w.referent(False)                            # pUnkOuter: no aggregation
    w.interface_pointer(build_objref(IACTIVATION_PROPERTIES_IN, OBJREF_CUSTOM, clsid=CLSID_ACT_PROPS_IN,
                                     payload=blob))
    return w.getvalue()


def activation_response(server: Host, port: int, oxid: int, login: bytes, remunknown_ipid: str) -> bytes:
    """Its reply: PropsOutInfo with the IWbemLevel1Login OBJREF, ScmReplyInfoData with the
    exporter's OXID, IRemUnknown IPID and bindings; ORPCTHAT flags ORPCF_LOCAL as in 4.1.1."""
    props = NdrWriter()
    props.u32(1), props.referent(), props.referent(), props.referent()
    props.conformant_guids([IWBEM_LEVEL1_LOGIN]), props.conformant_u32s([0])
    props.count(1), props.referent(), props.interface_pointer_data(login)
    reply = NdrWriter()
    reply.referent(False), reply.referent()
    reply.u64(oxid), reply.referent()
    _write_remunknown(reply, remunknown_ipid)
    _write_exporter_bindings(reply, server.resolver(port))
    blob = build_activation_properties([(CLSID_ACT_PROPS_OUT, props.getvalue()), (PROP_SCM_REPLY, reply.getvalue())],
                                       dest_ctx=2)
    w = NdrWriter()
    write_orpcthat(w, flags=1)
    w.interface_pointer(build_objref(IACTIVATION_PROPERTIES_OUT, OBJREF_CUSTOM, clsid=CLSID_ACT_PROPS_OUT,
                                     payload=blob))
    w.u32(0)
    return w.getvalue()


def resolve_oxid2(pcap, clock, caller: Host, callee: Host, oxid: int, port: int, remunknown: str,
                  caller_port: int) -> None:
    """IObjectExporter::ResolveOxid2 on the callee's port 135 (MS-DCOM 3.1.2.5.1.1): where the
    exporter of an OXID met in an OBJREF listens."""
    req = NdrWriter()
    req.u64(oxid), req.u16(1), req.count(1), req.u16(NCACN_IP_TCP)
    resp = NdrWriter()
    resp.referent()
    _write_exporter_bindings(resp, callee.resolver(port))
    _write_remunknown(resp, remunknown)
    resp.u32(0)
    a = Association(pcap, clock, (caller.ip, caller_port), (callee.ip, 135), IOBJECT_EXPORTER)
    a.call(IOBJECT_EXPORTER, 4, req.getvalue(), resp.getvalue())
    a.close()


class DcomSession:
    """A WMI client's session with one server: activation, the object exporter connection,
    and the calls on it. IPIDs are drawn from the server's process id in call order unless
    a call names the one it hands out (the spec traces print some)."""

    def __init__(self, pcap, clock, client: Host, server: Host, cid: str, *, pid: int, exporter: int = 49158,
                 client_port: int = 49301, oxid: int = 0x3A7C5D1E0B9F2468, login_ipid: str | None = None):
        self.pcap, self.clock = pcap, clock
        self.client, self.server = client, server
        self.cid = cid
        self.pid = pid
        self.exporter = exporter
        self.client_port = client_port
        self.oxid = oxid
        self.counter = 0x9000
        self.remunknown = fixed_ipid(0xC000, pid, cid + "remunknown")
        self.login = login_ipid or self.new_ipid("login")
        self.conn: Association | None = None

    def new_ipid(self, tag: str) -> str:
        self.counter += 0x1004
        return fixed_ipid(self.counter, self.pid, self.cid + tag)

    def _new_oid(self) -> int:
        self.counter += 1
        return _OID_BASE + self.counter

    def objref(self, iid: str, ipid: str) -> bytes:
        return build_objref(iid, OBJREF_STANDARD, ipid=ipid, oxid=self.oxid, oid=self._new_oid(),
                            resolver=self.server.resolver())

    def activate(self) -> None:
        """Port 135 first: RemoteCreateInstance, then the connection is closed."""
        scm = Association(self.pcap, self.clock, (self.client.ip, self.client_port), (self.server.ip, 135),
                          IREMOTE_SCM_ACTIVATOR)
        login = self.objref(IWBEM_LEVEL1_LOGIN, self.login)
        scm.call(IREMOTE_SCM_ACTIVATOR, 4, activation_request(self.cid, self.server),
                 activation_response(self.server, self.exporter, self.oxid, login, self.remunknown), think=0.02)
        scm.close()
        self.clock.tick(0.003)
        self.conn = Association(self.pcap, self.clock, (self.client.ip, self.client_port + 1),
                                (self.server.ip, self.exporter), IREMUNKNOWN2)

    def call(self, interface: str, method: str, ipid: str, request: dict, response: dict | None = None,
             hresult: int = 0, *, think: float = 0.004) -> None:
        """A call on the exporter connection; interface pointers given as OBJREF bytes or WMI objects."""
        call_method(self.conn, self.cid, interface, method, ipid, request, response, hresult, think=think)

    def rem_qi(self, ipid: str, iid: str, new_ipid: str | None = None) -> str:
        """IRemUnknown2::RemQueryInterface (MS-DCOM 3.1.1.5.6.1.1): one IID, cRefs 5 as the traces show."""
        new_ipid = new_ipid or self.new_ipid("qi" + iid)
        self.call("IRemUnknown2", "RemQueryInterface", self.remunknown, {"ripid": ipid, "cRefs": 5, "iids": [iid]},
                  {"ppQIResults": [{"hResult": 0, "std": {"flags": 0, "cPublicRefs": 5, "oxid": self.oxid,
                                                          "oid": self._new_oid(), "ipid": new_ipid}}]})
        return new_ipid

    def rem_release(self, ipids: list[str]) -> None:
        self.call("IRemUnknown2", "RemRelease", self.remunknown, {"InterfaceRefs": [
            {"ipid": i, "cPublicRefs": 5, "cPrivateRefs": 0} for i in ipids]})

    def login_sequence(self, machine: str, pid: int, resource: str, locale: str = "en-US,en",
                       services_ipid: str | None = None) -> str:
        """MS-WMI 4.1.1 after the activation: IWbemLoginClientID, SetClientInfo, EstablishPosition,
        NTLMLogin; returns the IWbemServices IPID."""
        client_id = self.rem_qi(self.login, IWBEM_LOGIN_CLIENT_ID)
        self.call("IWbemLoginClientID", "SetClientInfo", client_id,
                  {"wszClientMachine": machine, "lClientProcId": pid, "lReserved": 0})
        self.call("IWbemLevel1Login", "EstablishPosition", self.login,
                  {"reserved1": None, "reserved2": 0}, {"LocaleVersion": 1})
        services = services_ipid or self.new_ipid("services")
        self.call("IWbemLevel1Login", "NTLMLogin", self.login,
                  {"wszNetworkResource": resource, "wszPreferredLocale": locale, "lFlags": 0, "pCtx": None},
                  {"ppNamespace": self.objref(IWBEM_SERVICES, services)}, think=0.03)
        return services

    def connect(self, client_pid: int, namespace: str, locale: str = "en-US,en", *,
                server_name: str | None = None) -> str:
        """activate(), then login_sequence() into `namespace` on the server, named as the
        client wrote it (`server_name`, the server's own name unless given); returns the
        IWbemServices IPID."""
        self.activate()
        resource = f"\\\\{server_name or self.server.name}\\{namespace}"
        return self.login_sequence(self.client.name, client_pid, resource, locale)

    def smart_enum(self, enum_ipid: str) -> str:
        """RemQueryInterface for IWbemFetchSmartEnum on an enumerator, then GetSmartEnum (4.2.2.3)."""
        fetch = self.rem_qi(enum_ipid, IWBEM_FETCH_SMART_ENUM)
        smart = self.new_ipid("smartenum" + enum_ipid)
        self.call("IWbemFetchSmartEnum", "GetSmartEnum", fetch, {},
                  {"ppSmartEnum": self.objref(IWBEM_WCO_SMART_ENUM, smart)})
        return smart

    def close(self) -> None:
        self.conn.close()
