"""Operations: which WMI calls belong together, across calls, objects and connections.

One WMI request from an analyst's point of view is many DCE/RPC calls:

  query / enumeration   IWbemServices::ExecQuery, CreateInstanceEnum, CreateClassEnum,
                        ExecNotificationQuery (MS-WMI 3.1.1.1.2.1) return an
                        IEnumWbemClassObject; its Next / NextAsync / Skip / Reset / Clone
                        (3.1.4.4; a Clone is another enumerator of the same result set),
                        the RemQueryInterface that asks it for IWbemFetchSmartEnum, GetSmartEnum
                        (3.1.4.6) and the IWbemWCOSmartEnum::Next calls (3.1.4.7) all belong to it
  semisynchronous       a call made with WBEM_FLAG_RETURN_IMMEDIATELY (0x10, 2.2.6) returns an
                        IWbemCallResult (3.1.1.1.2.2, 3.1.4.5): GetResultObject / GetResultString /
                        GetResultServices / GetCallStatus belong to the call that returned it
  asynchronous          an *Async call (or IEnumWbemClassObject::NextAsync) passes an
                        IWbemObjectSink; the server calls Indicate / SetStatus on it (3.1.1.1.3, 3.1.4.2)
                        over a connection of its own, from the server to the client's object
                        exporter, with the sink's IPID as object UUID; CancelAsyncCall(pSink)
                        (3.1.4.3.2) names the call by its sink. The sink may be a stub the client
                        made with IUnsecuredApartment::CreateObjectStub or
                        IWbemUnsecuredApartment::CreateSinkStub (3.1.4.15-3.1.4.16)
  refresher             IWbemRefreshingServices (3.1.4.12) calls that name one client refresher
                        (_WBEM_REFRESHER_ID.m_guidRefresherId, 2.2.21), the IWbemRemoteRefresher
                        they return, its RemoteRefresh / StopRefreshing calls (3.1.4.13); the
                        templates of _WBEM_REFRESH_INFO (2.2.20) are kept by m_lCancelId, the
                        request id of the WBEM_REFRESHED_OBJECTs (2.2.15) RemoteRefresh returns
  login                 IWbemLoginClientID(Ex)::SetClientInfo, IWbemLevel1Login::EstablishPosition
                        and NTLMLogin (3.1.4.1, 3.1.4.8) on one login object; NTLMLogin and
                        OpenNamespace name the namespace of the IWbemServices they return, and
                        every operation started on that IWbemServices carries it

`Operations.observe(call)` is called for every completed Call in capture order (after
the DCOM and WMI decoders) and sets `call.operation`:

    {"id": "op-7", "kind": "ExecQuery", "namespace": "\\\\HOST\\root\\cimv2",
     "origin": {"conn": 11, "call_id": 861, "frame": 284, "method": "ExecQuery"},
     "origin_call": "11:861", "role": "origin" | "login" | "enumerator" | "smart-enum"
     | "call-result" | "sink-callback" | "cancel" | "refresher" | "query-interface" | "release",
     "mode": "synchronous" | "semisynchronous" | "asynchronous"   (when known)
     "inferred": True                                             (only when a link was guessed)}

Links are made from what the DCOM layer shows in clear (the request's object UUID, the
interface pointers in request and response stubs, RemQueryInterface results) and, once
the WMI decoder ran, from named parameters. When a stub is sealed, the interface pointer
it returned is unknown; the operation then waits for it ("pending", per interface): the
next call on an IPID never seen, of that interface, is attributed to the most recent
such operation between the same two hosts, and its record says "inferred".

As the WMI decoder's state (`WmiState`), it hands out one ClassCache per IWbemWCOSmartEnum
or sink IPID (the ObjectArray classID cache of 2.2.14) and the refresher templates
by request id.

All state is keyed by host pair (so a capture split by host pair analyses alike; a
callback connection from the server to the client is the same pair) and bounded by LRU
caps. An unsecured apartment lives on the client host, so a CreateObjectStub seen on the
wire is a loopback call: its stub is kept under the pair (client, client), where the
async call that passes the stub finds it.
"""

from __future__ import annotations

import sys
from collections import Counter, OrderedDict

from ..formats.errors import DecodeError
from ..formats.object_array import ClassCache
from ..formats.wmio import WmiClass, WmiInstance
from ..spec import interfaces as _if
from ..spec import ndr_types as _types
from ..spec import wbem as _wc
from .ndr import NdrReader
from .records import Call, ErrorRecord, call_frame

__all__ = ["Operation", "Operations", "ROLES"]

ROLE_ORIGIN = "origin"
ROLE_LOGIN = "login"
ROLE_ENUMERATOR = "enumerator"
ROLE_SMART_ENUM = "smart-enum"
ROLE_CALL_RESULT = "call-result"
ROLE_SINK_CALLBACK = "sink-callback"
ROLE_CANCEL = "cancel"
ROLE_REFRESHER = "refresher"
ROLE_QUERY_INTERFACE = "query-interface"
ROLE_RELEASE = "release"
ROLES = (ROLE_ORIGIN, ROLE_LOGIN, ROLE_ENUMERATOR, ROLE_SMART_ENUM, ROLE_CALL_RESULT, ROLE_SINK_CALLBACK,
         ROLE_CANCEL, ROLE_REFRESHER, ROLE_QUERY_INTERFACE, ROLE_RELEASE)

WBEM_FLAG_RETURN_IMMEDIATELY = _wc.value_of("WBEM_FLAG_RETURN_IMMEDIATELY")    # 2.2.6
WBEM_STATUS_COMPLETE = _wc.value_of("WBEM_STATUS_COMPLETE")                    # 3.1.4.2.2 SetStatus lFlags
WBEM_STATUS_REQUIREMENTS = _wc.value_of("WBEM_STATUS_REQUIREMENTS")            # 2.2.7
WBEM_S_NEW_STYLE = _wc.value_of("WBEM_S_NEW_STYLE")     # 2.2.11: the sink takes ObjectArray Indicates

# Interfaces whose objects exist for one operation: a call on them joins it, and a
# pointer to one returned by an operation's call becomes part of that operation.
_OPERATION_INTERFACES = {
    "IEnumWbemClassObject": ROLE_ENUMERATOR,
    "IWbemFetchSmartEnum": ROLE_SMART_ENUM,
    "IWbemWCOSmartEnum": ROLE_SMART_ENUM,
    "IWbemCallResult": ROLE_CALL_RESULT,
    "IWbemObjectSink": ROLE_SINK_CALLBACK,
    "IWbemRemoteRefresher": ROLE_REFRESHER,
}
_LOGIN_INTERFACES = frozenset(("IWbemLevel1Login", "IWbemLoginClientID", "IWbemLoginClientIDEx",
                               "IWbemLoginHelper"))
_TRACKED = frozenset(_OPERATION_INTERFACES) | {"IWbemServices"}

# RemQueryInterface asking an unknown object for these says what the object is.
_QI_HINTS = {"IWbemFetchSmartEnum": "IEnumWbemClassObject", "IWbemRefreshingServices": "IWbemServices"}

def _pointer_params() -> tuple[dict, dict]:
    """From the interface table: (interface, method) -> tracked interfaces it returns
    (out / inout pointers), and -> tracked interfaces it passes in (sinks)."""
    produces: dict[tuple[str, str], tuple[str, ...]] = {}
    passes: dict[tuple[str, str], tuple[str, ...]] = {}
    for i in _if.INTERFACES:
        if i["group"] != "wmi":
            continue
        for m in i["methods"]:
            outs, ins = [], []
            for p in m["params"]:
                iface = _types.pointer_interface(_types.parse(p["type"]))
                if iface not in _TRACKED:
                    continue
                (ins if p["dir"] == "in" else outs).append(iface)
            if outs:
                produces[(i["name"], m["name"])] = tuple(outs)
            if ins and m["name"] != "CancelAsyncCall":     # names a sink already passed
                passes[(i["name"], m["name"])] = tuple(ins)
    # _WBEM_REFRESH_INFO_REMOTE (2.2.27) holds the IWbemRemoteRefresher: not visible in the type string
    for name in ("AddObjectToRefresher", "AddObjectToRefresherByTemplate", "AddEnumToRefresher"):
        produces[("IWbemRefreshingServices", name)] = ("IWbemRemoteRefresher",)
    return produces, passes


_PRODUCES, _PASSES = _pointer_params()


# ---------------------------------------------------------------------------------------
# what a call shows: interface pointers and parameters

def _side(call: Call, side: str) -> dict | None:
    d = call.decoded
    return d.get(side) if d else None


def _param(call: Call, side: str, name: str) -> dict | None:
    d = _side(call, side)
    for p in (d.get("params") or ()) if d else ():
        if p.get("name") == name:
            return p
    return None


def _value(call: Call, side: str, name: str):
    p = _param(call, side, name)
    return p.get("value") if p else None


def _int(v) -> int | None:
    """An integer parameter value, whether given plain or as {"flags": n, ...} / {"value": n, ...}."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, dict):
        for k in ("flags", "value"):
            if isinstance(v.get(k), int):
                return v[k]
    return None


def _find(v, key: str, depth: int = 0):
    """The first value under `key` in nested dicts / lists (decoded structures)."""
    if depth > 8:
        return None
    if isinstance(v, dict):
        if key in v:
            return v[key]
        items = v.values()
    elif isinstance(v, list):
        items = v
    else:
        return None
    for x in items:
        r = _find(x, key, depth + 1)
        if r is not None:
            return r
    return None


def _wmi_object(v, depth: int = 0):
    """The first WmiClass / WmiInstance in a param's "object" (possibly nested)."""
    if isinstance(v, (WmiClass, WmiInstance)):
        return v
    if depth > 8:
        return None
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
    for x in items:
        r = _wmi_object(x, depth + 1)
        if r is not None:
            return r
    return None


def _pointers(call: Call, side: str) -> list[tuple[str | None, str]]:
    """(interface, IPID) of every standard interface pointer in one side's stub, in wire order."""
    d = _side(call, side)
    if not d:
        return []
    out = []
    for o in d.get("objrefs") or ():
        std = o.get("std")
        if std and std.get("ipid"):
            out.append((o.get("interface"), std["ipid"]))
    if not out:                                   # a decoder that kept only its params
        for p in d.get("params") or ():
            o = p.get("objref")
            ipid = o.get("ipid") or (o.get("std") or {}).get("ipid") if o else None
            if ipid:
                out.append((o.get("interface"), ipid))
    return out


def _returned_ipids(call: Call) -> list[str]:
    """The IPIDs a RemQueryInterface (REMQIRESULTs) or RemQueryInterface2 (MInterfacePointers)
    reply hands out, the failed ones left out."""
    out = []
    for r in _value(call, "response", "ppQIResults") or ():
        std = r.get("std") or {}
        if not (_int(r.get("hResult")) or 0) & 0x80000000 and std.get("ipid"):
            out.append(std["ipid"])
    hrs = _value(call, "response", "phr") or []
    for i, o in enumerate((_param(call, "response", "ppMIF") or {}).get("objrefs") or ()):
        ipid = (o or {}).get("ipid")
        if ipid and not (_int(hrs[i]) if i < len(hrs) else 0) & 0x80000000:
            out.append(ipid)
    return out


def _hresult(call: Call) -> int | None:
    """The method's HRESULT: the decoded return value, else the last 4 octets of the response stub."""
    d = _side(call, "response")
    ret = d.get("return") if d else None
    if isinstance(ret, dict) and isinstance(ret.get("value"), int):
        return ret["value"]
    stub = call.resp_stub
    if stub and len(stub) >= 4 and call.fault is None:
        return int.from_bytes(stub[-4:], "little" if call.drep & 0x10 else "big")
    return None


def _leading_string(call: Call) -> str | None:
    """The first request parameter as a string (NTLMLogin's unique wstring, OpenNamespace's
    BSTR) when no WMI decoder named the parameters."""
    req = _side(call, "request")
    stub = call.req_stub
    if not req or stub is None or "params_offset" not in req:
        return None
    r = NdrReader(stub, req["params_offset"], base=0, little_endian=bool(call.drep & 0x10))
    try:
        return r.unique_wstring() if call.method == "NTLMLogin" else r.bstr()
    except DecodeError:
        return None


def _join_namespace(parent: str | None, child: str | None) -> str | None:
    """OpenNamespace's strNamespace is relative to the IWbemServices it is called on (3.1.4.3.1)."""
    if not child:
        return parent
    if not parent or child.startswith(("\\\\", "//")):
        return _shared(child)
    return _shared(parent.rstrip("\\/") + "\\" + child.lstrip("\\/"))


def _shared(namespace):
    """One string per namespace name: every session of a capture names the same few, and
    the operations and IPIDs that keep one would otherwise each hold a copy."""
    return sys.intern(namespace) if type(namespace) is str else namespace


def _sealed(call: Call, side: str) -> bool:
    if side == "request":
        return call.req_encrypted and call.req_stub is None
    return call.resp_encrypted and call.resp_stub is None and call.fault is None


# ---------------------------------------------------------------------------------------
# state

class Operation:
    """One WMI operation: what the analyst thinks of as one request.

    Kept as plain fields: a capture holds thousands of operations alive (every IPID that
    served one keeps it), and its record's id, origin and origin_call are made when a
    call is assigned to it, not stored (about half the cost of an operation)."""

    __slots__ = ("number", "name", "kind", "namespace", "conn", "call_id", "frame", "method", "mode", "closed",
                 "result_namespace", "templates", "paths")

    def __init__(self, number: int, kind: str, namespace: str | None, call: Call):
        self.number = number                    # "op-N"
        self.name: str | None = None            # an id given instead (a shard's stand-in, dissectors.parallel)
        self.kind = kind
        self.namespace = namespace
        self.conn = call.conn                   # the origin call
        self.call_id = call.call_id
        self.frame = call_frame(call, 0)
        self.method = call.method
        self.mode: str | None = None
        self.closed = False                     # SetStatus(WBEM_STATUS_COMPLETE) or CancelAsyncCall seen
        self.result_namespace: str | None = None    # OpenNamespace: the namespace it opens
        self.templates: dict | None = None      # refresher: request id -> template object (LRU order)
        self.paths: dict | None = None          # refresher: CIM path -> template (ReconnectRemoteRefresher)

    @property
    def id(self) -> str:
        return self.name or f"op-{self.number}"

    @id.setter
    def id(self, value: str) -> None:
        self.name = value

    @property
    def origin_call(self) -> str:
        return f"{self.conn}:{self.call_id}"

    def record(self, role: str, inferred: bool = False) -> dict:
        d = {"id": self.name or f"op-{self.number}", "kind": self.kind, "namespace": self.namespace,
             "origin": {"conn": self.conn, "call_id": self.call_id, "frame": self.frame, "method": self.method},
             "origin_call": f"{self.conn}:{self.call_id}", "role": role}
        if self.mode is not None:
            d["mode"] = self.mode
        if inferred:
            d["inferred"] = True
        return d

    def __repr__(self) -> str:
        return f"Operation({self.id}, {self.kind}, {self.namespace!r}, origin={self.origin_call})"


class _Object:
    """A DCOM object as the operations see it, shared by its IPIDs (RemQueryInterface
    results, an unsecured-apartment stub and the sink it wraps)."""

    __slots__ = ("op", "namespace", "inferred", "new_style")

    def __init__(self, op: Operation | None = None, namespace: str | None = None, inferred: bool = False):
        self.op = op
        self.namespace = namespace
        self.inferred = inferred
        self.new_style = False                  # sink: WBEM_S_NEW_STYLE seen (3.1.4.2.1)


def _lru_put(d: dict, key, value, caps: dict, table: str) -> None:
    """d[key] = value as its most recently used entry (a dict's order is its LRU order), the
    least recently used entries past caps[table] forgotten and counted
    (caps["forgotten"][table]): correlation lost is never silent."""
    d.pop(key, None)
    d[key] = value
    cap = caps[table]
    while len(d) > cap:
        del d[next(iter(d))]
        caps["forgotten"][table] += 1


def _lru_get(d: dict | None, key):
    """d[key] (made the most recently used entry), or None."""
    if d is None:
        return None
    v = d.pop(key, None)
    if v is not None:
        d[key] = v
    return v


class _PairState:
    """Everything known between two hosts.

    There are as many of these as host pairs (up to caps["pairs"]), so each costs what it
    holds: plain dicts in LRU order (an OrderedDict costs 2-3 times as much), and the
    tables most pairs never use (pending pointers of sealed replies, ObjectArray class
    caches, refreshers) stay None until their first entry; a pending table that empties
    is let go (a dict keeps its size after deletes)."""

    __slots__ = ("objects", "pending", "caches", "refreshers", "caps")

    def __init__(self, caps: dict):
        self.objects: dict[str, _Object] = {}
        self.pending: dict[str, list] | None = None     # interface -> [(op, namespace)], newest last
        self.caches: dict[str, ClassCache] | None = None
        self.refreshers: dict | None = None
        self.caps = caps

    def get(self, ipid: str | None) -> _Object | None:
        if not ipid:
            return None
        return _lru_get(self.objects, ipid)

    def put(self, ipid: str, obj: _Object) -> _Object:
        _lru_put(self.objects, ipid, obj, self.caps, "objects")
        return obj

    def link(self, ipid: str, op: Operation) -> _Object:
        """ipid's object now serves `op` (a sink reused by a later call moves to it)."""
        o = self.get(ipid)
        if o is None:
            return self.put(ipid, _Object(op, op.namespace))
        o.op = op
        o.inferred = False
        return o

    def find(self, ipid: str | None, interface: str | None) -> tuple[_Object | None, bool]:
        """The object behind ipid; for one never seen, the most recent operation waiting
        for a pointer of that interface (a sealed reply carried it)."""
        o = self.get(ipid)
        if o is not None:
            return o, o.inferred
        pending = self.pending
        if ipid and interface and pending is not None:
            q = pending.get(interface)
            if q:
                op, ns = q.pop()
                if not q:
                    del pending[interface]
                    if not pending:
                        self.pending = None
                return self.put(ipid, _Object(op, ns, True)), True
        return None, False

    def expect(self, interface: str, op: Operation | None, namespace: str | None) -> None:
        """An operation waits for a pointer of `interface` (the newest caps["pending"] wait)."""
        if self.pending is None:
            self.pending = {}
        q = self.pending.get(interface)
        if q is None:
            q = self.pending[interface] = []
        q.append((op, namespace))
        if len(q) > self.caps["pending"]:
            del q[0]


class Operations:
    """Assigns every WMI call to an operation (see the module docstring); also the WMI
    decoder's `WmiState`: `class_cache(call)` and `refresher_template(call, request_id)`.

    Never raises out of `observe`: an internal failure becomes an ErrorRecord on the call."""

    def __init__(self, *, max_pairs: int = 1024, max_objects: int = 8192, max_pending: int = 8,
                 max_caches: int = 1024, max_refreshers: int = 64, max_templates: int = 4096):
        self._pairs: OrderedDict[tuple, _PairState] = OrderedDict()
        self._caps = {"pairs": max_pairs, "objects": max_objects, "pending": max_pending,
                      "caches": max_caches, "refreshers": max_refreshers, "templates": max_templates,
                      "template_paths": max_templates, "forgotten": Counter()}
        self._next = 0
        self._handlers = {
            "IWbemServices": self._services,
            "IRemUnknown": self._rem_unknown,
            "IRemUnknown2": self._rem_unknown,
            "IWbemRefreshingServices": self._refreshing_services,
            "IUnsecuredApartment": self._unsecured_apartment,
            "IWbemUnsecuredApartment": self._unsecured_apartment,
        }
        for name in _OPERATION_INTERFACES:
            self._handlers[name] = self._member
        for name in _LOGIN_INTERFACES:
            self._handlers[name] = self._login
        for i in _if.INTERFACES:                # backup / restore, shutdown: one call, one operation
            if i["group"] == "wmi" and not i["local"]:
                self._handlers.setdefault(i["name"], self._standalone)

    @property
    def count(self) -> int:
        """Operations created so far."""
        return self._next

    @property
    def forgotten(self) -> Counter:
        """Entries given up to stay within the bounds, by table (pairs, objects, caches,
        refreshers, templates): calls on them are no longer tied to their operation."""
        return self._caps["forgotten"]

    # -- the WmiState protocol ----------------------------------------------------------

    def class_cache(self, call: Call) -> ClassCache:
        """The ObjectArray classID cache of this call's IWbemWCOSmartEnum or sink (its IPID)."""
        ipid = call.ipid
        if not ipid:
            return ClassCache()
        st = self._state(call)
        c = _lru_get(st.caches, ipid)
        if c is None:
            c = ClassCache()
            if st.caches is None:
                st.caches = {}
            _lru_put(st.caches, ipid, c, self._caps, "caches")
        return c

    def refresher_template(self, call: Call, request_id: int):
        """The _WBEM_REFRESH_INFO template (WmiInstance / WmiClass) that request id
        `request_id` of this IWbemRemoteRefresher's refresher was added with, or None."""
        st = self._state(call)
        o = st.get(call.ipid)
        op = o.op if o is not None else None
        if op is not None and op.templates and request_id in op.templates:
            return op.templates[request_id]
        # An IWbemRemoteRefresher met first here (its reply was sealed or not captured):
        # the most recent refresher between these hosts that knows the id.
        for op in reversed(st.refreshers.values()) if st.refreshers else ():
            if op.templates and request_id in op.templates:
                return op.templates[request_id]
        return None

    def is_new_style(self, call: Call) -> bool:
        """Whether this call's sink accepted optimized (ObjectArray) Indicate calls."""
        o = self._state(call).get(call.ipid)
        return bool(o and o.new_style)

    # -- observing ---------------------------------------------------------------------

    def observe(self, call: Call) -> None:
        handler = self._handlers.get(call.interface)
        if handler is None:
            return
        try:
            handler(self._state(call), call)
        except Exception as e:      # a correlation bug must not stop the pipeline
            call.errors.append(ErrorRecord(stage="wmi", reason=f"operations: internal error: {type(e).__name__}: {e}",
                                           frame=call_frame(call, 0), conn=call.conn, kind="wmi.internal_error"))

    def _state(self, call: Call) -> _PairState:
        a, b = call.client[0], call.server[0]
        key = (a, b) if a <= b else (b, a)
        st = self._pairs.get(key)
        if st is None:
            st = _PairState(self._caps)
            _lru_put(self._pairs, key, st, self._caps, "pairs")
        else:
            self._pairs.move_to_end(key)
        return st

    def _new_op(self, call: Call, kind: str, namespace: str | None) -> Operation:
        self._next += 1
        return Operation(self._next, kind, namespace, call)

    # -- links made by a call's own pointers -------------------------------------------

    def _outputs(self, st: _PairState, call: Call, op: Operation, services_namespace: str | None) -> None:
        """Interface pointers a call returned: per-operation objects join `op`, an
        IWbemServices gets the namespace; sealed replies leave the operation waiting."""
        for iface, ipid in _pointers(call, "response"):
            if iface == "IWbemServices":
                o = st.get(ipid)
                if o is None:
                    st.put(ipid, _Object(None, services_namespace))
                else:
                    o.namespace = services_namespace
            elif iface in _OPERATION_INTERFACES:
                st.link(ipid, op)
        key = (call.interface, call.method)
        if _sealed(call, "response"):
            for iface in _PRODUCES.get(key, ()):
                if iface == "IWbemServices":
                    st.expect(iface, None, services_namespace)
                else:
                    st.expect(iface, op, op.namespace)
        if key in _PASSES:                      # sinks handed to the server for its callbacks
            if _sealed(call, "request"):
                st.expect("IWbemObjectSink", op, op.namespace)
            else:
                # An unsecured-apartment stub was made on the client host itself: its object
                # there (shared with the sink it wraps) serves this operation too.
                apartment = self._pairs.get((call.client[0], call.client[0]))
                for iface, ipid in _pointers(call, "request"):
                    if iface == "IWbemObjectSink" or iface is None or iface == "IUnknown":
                        st.link(ipid, op)
                        stub = apartment.get(ipid) if apartment is not None and apartment is not st else None
                        if stub is not None:
                            stub.op = op

    # -- handlers ------------------------------------------------------------------------

    def _services(self, st: _PairState, call: Call) -> None:
        """IWbemServices: every call starts an operation in the namespace of its IPID."""
        obj, inferred = st.find(call.ipid, "IWbemServices")
        namespace = obj.namespace if obj is not None else None
        method = call.method or f"opnum {call.opnum}"
        if method == "CancelAsyncCall":
            for _, ipid in _pointers(call, "request"):
                sink = st.get(ipid)
                if sink is not None and sink.op is not None:
                    sink.op.closed = True
                    call.operation = sink.op.record(ROLE_CANCEL, sink.inferred)
                    return
        op = self._new_op(call, method, namespace)
        op.mode = _mode(call)
        if method == "OpenNamespace":
            name = _value(call, "request", "strNamespace")
            op.result_namespace = _join_namespace(namespace, name if name is not None else _leading_string(call))
        self._outputs(st, call, op, op.result_namespace)
        if op.mode is None and any(i == "IWbemCallResult" for i, _ in _pointers(call, "response")):
            op.mode = "semisynchronous"
        call.operation = op.record(ROLE_ORIGIN, inferred)

    def _member(self, st: _PairState, call: Call) -> None:
        """Calls on an operation's own objects: enumerators, smart enums, call results,
        sinks, remote refreshers."""
        iface = call.interface
        obj, inferred = st.find(call.ipid, iface)
        if obj is not None and obj.op is not None:
            op = obj.op
        else:
            # Its origin was not captured: the object is an operation of its own.
            op = self._new_op(call, iface, obj.namespace if obj is not None else None)
            if obj is not None:
                obj.op = op
            elif call.ipid:
                obj = st.put(call.ipid, _Object(op, None))
        method = call.method
        if iface == "IWbemObjectSink" and obj is not None:
            self._sink_status(call, obj, op)
        elif iface == "IWbemRemoteRefresher" and method == "StopRefreshing" and op.templates:
            ids = _value(call, "request", "aplIds")
            for rid in ids if isinstance(ids, list) else ():
                if isinstance(rid, int):
                    op.templates.pop(rid, None)
        self._outputs(st, call, op, op.result_namespace or op.namespace)
        call.operation = op.record(_OPERATION_INTERFACES[iface], inferred)

    @staticmethod
    def _sink_status(call: Call, obj: _Object, op: Operation) -> None:
        """3.1.4.2: a sink turns new-style when an Indicate returns WBEM_S_NEW_STYLE (or a
        SetStatus(WBEM_STATUS_REQUIREMENTS) says so); SetStatus(WBEM_STATUS_COMPLETE) ends the call."""
        if call.method == "Indicate":
            if _hresult(call) == WBEM_S_NEW_STYLE:
                obj.new_style = True
        elif call.method == "SetStatus":
            flags = _int(_value(call, "request", "lFlags"))
            hr = _int(_value(call, "request", "hResult"))
            if flags == WBEM_STATUS_REQUIREMENTS and hr == WBEM_S_NEW_STYLE:
                obj.new_style = True
            elif flags == WBEM_STATUS_COMPLETE:
                op.closed = True

    def _login(self, st: _PairState, call: Call) -> None:
        """The login object's calls form one operation; NTLMLogin names the namespace."""
        obj = st.get(call.ipid)
        if obj is None:
            obj = st.put(call.ipid, _Object()) if call.ipid else _Object()
        if obj.op is None:
            obj.op = self._new_op(call, "Login", None)
        op = obj.op
        if call.method in ("NTLMLogin", "WBEMLogin"):
            if call.method == "NTLMLogin":
                ns = _value(call, "request", "wszNetworkResource")
                if ns is None and _param(call, "request", "wszNetworkResource") is None:
                    ns = _leading_string(call)
                if ns:
                    op.namespace = _shared(ns)
            self._outputs(st, call, op, op.namespace)
        call.operation = op.record(ROLE_LOGIN, obj.inferred)

    def _rem_unknown(self, st: _PairState, call: Call) -> None:
        """RemQueryInterface(2) shares the object's operation / namespace with the IPIDs it
        returns; RemAddRef / RemRelease of one operation's IPIDs belong to it."""
        if call.method in ("RemQueryInterface", "RemQueryInterface2"):
            ripid = _param(call, "request", "ripid") or {}
            target = ripid.get("value")
            if not target:
                return                          # sealed
            obj = st.get(target)
            inferred = obj.inferred if obj is not None else False
            if obj is None:
                hint = ripid.get("interface")   # what the IPID registry knows it as
                if hint not in _TRACKED:
                    asked = [i for i in (_param(call, "request", "iids") or {}).get("interfaces") or ()
                             if isinstance(i, str)]
                    hint = next((_QI_HINTS[i] for i in asked if i in _QI_HINTS), None)
                if hint:
                    obj, inferred = st.find(target, hint)
                if obj is None:
                    obj = st.put(target, _Object())
            for ipid in _returned_ipids(call):
                st.put(ipid, obj)
            if obj.op is not None:
                call.operation = obj.op.record(ROLE_QUERY_INTERFACE, inferred)
        elif call.method in ("RemRelease", "RemAddRef"):
            ops, inferred = set(), False
            for ref in _value(call, "request", "InterfaceRefs") or ():
                o = st.get(ref.get("ipid"))
                if o is None or o.op is None:
                    return
                ops.add(o.op)
                inferred |= o.inferred
            if len(ops) == 1:
                call.operation = ops.pop().record(ROLE_RELEASE, inferred)

    def _standalone(self, st: _PairState, call: Call) -> None:
        call.operation = self._new_op(call, call.method or f"opnum {call.opnum}", None).record(ROLE_ORIGIN)

    def _unsecured_apartment(self, st: _PairState, call: Call) -> None:
        """CreateObjectStub / CreateSinkStub: the stub returned and the sink it wraps are
        one object for the operations, so callbacks to either reach the async call."""
        op = self._new_op(call, call.method or f"opnum {call.opnum}", None)
        sinks = _pointers(call, "request")
        stubs = _pointers(call, "response")
        if sinks and stubs:
            obj = st.get(sinks[0][1]) or st.put(sinks[0][1], _Object())
            for _, ipid in stubs:
                st.put(ipid, obj)
        call.operation = op.record(ROLE_ORIGIN)

    def _refreshing_services(self, st: _PairState, call: Call) -> None:
        """IWbemRefreshingServices: one operation per client refresher (_WBEM_REFRESHER_ID,
        2.2.21); the templates of _WBEM_REFRESH_INFO are kept by m_lCancelId (2.2.20)."""
        obj, inferred = st.find(call.ipid, "IWbemServices")
        namespace = obj.namespace if obj is not None else None
        rid = _find(_value(call, "request", "pRefresherId"), "m_guidRefresherId")
        key = rid if isinstance(rid, str) else ("ipid", call.ipid)
        op = _lru_get(st.refreshers, key)
        if op is None:
            op = self._new_op(call, "Refresher", namespace)
            if st.refreshers is None:
                st.refreshers = {}
            _lru_put(st.refreshers, key, op, self._caps, "refreshers")
        method = call.method
        if method in ("AddObjectToRefresher", "AddObjectToRefresherByTemplate", "AddEnumToRefresher"):
            self._keep_template(call, op)
        elif method == "ReconnectRemoteRefresher":
            self._reconnect(call, op)
        self._outputs(st, call, op, namespace)
        call.operation = op.record(ROLE_REFRESHER, inferred)

    def _keep_template(self, call: Call, op: Operation) -> None:
        info = _param(call, "response", "pInfo")
        if info is None:
            return
        cancel_id = _int(_find(info.get("value"), "m_lCancelId"))
        template = _wmi_object(info.get("object"))
        if cancel_id is None or template is None:
            return
        if op.templates is None:
            op.templates, op.paths = {}, {}
        _lru_put(op.templates, cancel_id, template, self._caps, "templates")
        path = _value(call, "request", "wszPath") or _value(call, "request", "wszClass")
        if path is None:                        # AddObjectToRefresherByTemplate: the template's own path
            given = _param(call, "request", "pTemplate")
            path = getattr(given.get("object"), "path", None) if given else None
        if isinstance(path, str):
            _lru_put(op.paths, path.lower(), template, self._caps, "template_paths")

    def _reconnect(self, call: Call, op: Operation) -> None:
        """ReconnectRemoteRefresher (3.1.4.12.6) gives the objects it restores new ids
        (_WBEM_RECONNECT_RESULTS.m_lId): their templates are the ones added under that path."""
        if not op.paths:
            return
        infos = _value(call, "request", "apReconnectInfo") or []
        results = _value(call, "response", "apReconnectResults") or []
        if not isinstance(infos, list) or not isinstance(results, list):
            return
        for info, res in zip(infos, results):
            path = _find(info, "m_pwcsPath")
            new_id = _int(_find(res, "m_lId"))
            template = op.paths.get(path.lower()) if isinstance(path, str) else None
            if template is not None and new_id is not None:
                _lru_put(op.templates, new_id, template, self._caps, "templates")


def _mode(call: Call) -> str | None:
    """How the client waits for the result (MS-WMI 3.1.1.1): *Async methods call a sink back;
    WBEM_FLAG_RETURN_IMMEDIATELY makes a call semisynchronous."""
    method = call.method or ""
    if method.endswith("Async"):
        return "asynchronous"
    flags = _int(_value(call, "request", "lFlags"))
    if flags is None:
        return None
    return "semisynchronous" if flags & WBEM_FLAG_RETURN_IMMEDIATELY else "synchronous"
