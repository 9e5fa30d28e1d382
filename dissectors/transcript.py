"""The transcript: every message in the dialect of the MS-WMI section 4 traces.

MS-WMI section 4 shows its examples as Network Monitor prints them: a summary line per
message, then one line per field in wire order. This module renders our Call records
the same way, from the decoded parameters and the interface table, with no per-method
code: what a line looks like follows from the parameter's type string and the value the
decoders left.

    - WMI: IWbemServices:ExecQuery Request, Flags=32
    + StrQueryLanguage: WQL
    + StrQuery: select * from win32_process where Name='calc.exe'
    + Pad: 2 Bytes
    + Flags: 32 (0x20)
    + Ctx: NULL

Rules (each read off the traces of 4.1.1 - 4.3.3.2):

summary   `- LAYER: Interface:Method Request|Response[, items]`. LAYER is WMI, DCOM or
          MSRPC (plain RPC interfaces and unknown ones). The plain RPC interfaces of
          activation and OXID resolution print the method alone
          ("DCOM: RemoteCreateInstance Request"). A DCOM request's items are the ORPCTHIS
          version and causality id, a response's the ORPCTHAT flags. A WMI message's items
          are its integer and [string] wchar_t* parameters (not BSTRs, GUIDs or pointers:
          "NTLMLogin Request, NetworkResource=... PreferredLocale=... Flags=0" but
          "ExecQuery Request, Flags=32"), then ReturnValue=NAME. A message with no field
          line has no sign ("  WMI: IWbemFetchSmartEnum:GetSmartEnum Request").
sign      `+ ` where the field expands (strings, pointers, interface pointers, arrays,
          structures, flag sets, non-empty pads), two spaces otherwise (integers, GUIDs,
          enumerations, one-flag parameters, ReturnValue).
names     the IDL name without its Hungarian prefix (wsz, pstr, pdw, apl, pp, pl, pa,
          ap, dw, sz, p, l when an upper-case letter follows), otherwise capitalized:
          wszClientMachine -> ClientMachine, lFlags -> Flags, pCtx -> Ctx, ppEnum -> Enum,
          pdwBuffSize -> BuffSize, but strQuery -> StrQuery, uCount -> UCount,
          puReturned -> PuReturned. NAME_EXCEPTIONS holds the three names the traces spell
          otherwise.
pads      `Pad: N Bytes` before a fixed-size field (integer, GUID, return value) that
          follows a variable-length one (string, pointer, array); never between two
          variable-length fields, even when alignment bytes lie between them.
values    integers `6420 (0x1914)`; NULL pointers `NULL`; interface pointers
          `OBJREFSTANDARD - {IID}`; flag sets `32 (0x20)` with the flags named beneath;
          the parameters whose flag table has one flag (OpenNamespace, DeleteClass,
          DeleteInstance, ExecMethod: WBEM_FLAG_RETURN_IMMEDIATELY) print that flag and its
          meaning, or `Unknown` for any other value; time-outs `WBEM_NO_WAIT(...)` or
          `5000 ms (0x1388)`; return values `0x00000000 - NAME - text`.

Beyond the traces (they collapse what we expand): objects beneath their parameter
(class, keys, path, the values an instance carries; the whole MOF with mof=True),
ObjectArrays, contexts and refresher blobs beneath their buffer, the IPID and bindings of
interface pointers, sealed stubs as one line `(encrypted: N bytes of stub sealed with
NTLMSSP/privacy)`, the decoders' errors inline as `! wmi: ... at offset N`, the frame
numbers (frames=True), the operation a call belongs to (`[op-3 ExecQuery]`), and with
all=True the DCOM header line above each WMI message and the binds between calls.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Iterable, Iterator

from ..formats import wmio
from ..formats.context import WbemContext
from ..formats.object_array import ObjectArray
from ..formats.refresher import RefreshedObject
from ..spec import dcom as _dcom
from ..spec import interfaces as _if
from ..spec import ndr_types as _types
from ..spec import wbem as _wc
from .auth import auth_level_name, auth_type_name
from .dcerpc import PTYPE_NAMES
from .records import Call, ErrorRecord, Pdu

__all__ = ["display_name", "NAME_EXCEPTIONS", "TranscriptRenderer", "render_call", "render",
           "auth_type_name", "auth_level_name"]

# ---------------------------------------------------------------------------------------
# names

_PREFIXES = ("wsz", "pstr", "pdw", "apl", "pp", "pl", "pa", "pb", "ap", "dw", "sz", "p", "l")

NAME_EXCEPTIONS = {
    "proxyGUID": "proxyGUID",          # 4.2.3.1: printed as in the IDL
    "strSuperClass": "StrFilter",      # 4.2.3.2: CreateInstanceEnum's parameter by its older IDL name
    "pBuffer": "BufferPtrSize",        # 4.2.3.1: the pointer and its conformance, the ObjectArray follows
}


@lru_cache(maxsize=1024)
def display_name(idl_name: str) -> str:
    """A parameter's name as the traces print it (see the module docstring)."""
    name = NAME_EXCEPTIONS.get(idl_name)
    if name is not None:
        return name
    for pre in _PREFIXES:
        n = len(pre)
        if len(idl_name) > n and idl_name.startswith(pre) and idl_name[n].isupper():
            return idl_name[n:]
    return idl_name[:1].upper() + idl_name[1:]


# ---------------------------------------------------------------------------------------
# what a type string says about its field

_INTEGERS = frozenset(("byte", "ushort", "short", "ulong", "long", "uhyper", "hyper", "error_status_t", "HRESULT"))
_FIXED = _INTEGERS | {"float", "double", "GUID", "FILETIME", "COMVERSION"}
_WIDTH = {"uhyper": 64, "hyper": 64, "byte": 8, "ushort": 16, "short": 16}


@lru_cache(maxsize=1024)
def _fixed(typ: str) -> bool:
    if typ in _FIXED:
        return True
    s = _if.STRUCTS.get(typ)
    return bool(s and s["fields"] and all(_fixed(t) for _, t in s["fields"]))


def _summarized(typ: str) -> bool:
    """Whether a parameter's value goes on the summary line (integers and wchar_t strings)."""
    return typ in _INTEGERS or typ in ("wstring", "unique<wstring>", "string", "unique<string>")


# MS-WMI 3.1.4.3: these methods' lFlags tables list one flag; the traces print the parameter
# as a value ("Flags: Unknown" for 0) with the table's words for the flag.
_ONE_FLAG_METHODS = frozenset(("OpenNamespace", "DeleteClass", "DeleteInstance", "ExecMethod"))
_RETURN_IMMEDIATELY = ("WBEM_FLAG_RETURN_IMMEDIATELY", _wc.value_of("WBEM_FLAG_RETURN_IMMEDIATELY"),
                       "If this bit is not set, the server MUST make the method call synchronously. "
                       "If this bit is set, the server MUST make the method call semisynchronously.")
# Flag sets that are local only (MS-WMI 2.2.12: NTLMLogin's lFlags are reserved for local use):
# on the wire the parameter is a plain number.
_LOCAL_FLAG_SETS = frozenset(("WBEM_CONNECT_OPTIONS",))

_ORPC_FLAGS = _dcom.ORPC_FLAGS
_OBJREF_KIND = {kind: trace_name for _, _, kind, trace_name in _dcom.OBJREF_FLAGS}

MAX_OBJECT_VALUES = 64          # property values listed under an instance (the MOF has them all)
MAX_TEXT = 4096                 # characters of one string value
MAX_ELEMENTS = 256              # elements of an array listed one by one
MAX_DEPTH = 8                   # nesting of structures / objects


def _guid(text) -> str:
    return "{" + str(text).upper() + "}" if text else "NULL"


def _text(s: str) -> str:
    """A value on one line: control characters escaped, very long values cut (and said so)."""
    if len(s) > MAX_TEXT:
        s = s[:MAX_TEXT] + f"... ({len(s) - MAX_TEXT} more characters)"
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else (
        {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or f"\\x{ord(c):02x}") for c in s)


def _number(v: int, typ: str = "long") -> str:
    bits = _WIDTH.get(typ, 32)
    return f"{v} (0x{v & ((1 << bits) - 1):X})"


def _status(value: int) -> str:
    h = _wc.hresult(value)
    if h["name"]:
        return f"0x{h['value']:08X} - {h['name']} - {h['text']}"
    return f"0x{h['value']:08X} - {h['text']}"


def _status_short(value: int) -> str:
    h = _wc.hresult(value)
    return h["name"] or f"0x{h['value']:08X} - Unknown Value"


def _dcom_status(value) -> str:
    if not isinstance(value, int):
        return "?"
    if value == 0:
        return "Success"
    name = _wc.hresult_name(value)
    return f"0x{value & 0xFFFFFFFF:08X}" + (f" - {name}" if name else "")


def _scalar(v):
    """The number inside a described value ({"flags": n} / {"value": n}), else v."""
    if isinstance(v, dict):
        if "flags" in v:
            return v["flags"]
        if "value" in v:
            return v["value"]
    return v


# ---------------------------------------------------------------------------------------
# objects beneath their parameter

def _object_lines(obj, indent: str, mof: bool, depth: int = 0) -> list[str]:
    if depth > MAX_DEPTH:
        return [indent + "..."]
    if isinstance(obj, (wmio.WmiClass, wmio.WmiInstance)):
        return _wmi_object_lines(obj, indent, mof)
    if isinstance(obj, ObjectArray):
        out = [f"{indent}{obj.packet_type_name}: {len(obj.objects)} object(s)"]
        kinds = obj.object_types or [None] * len(obj.objects)
        for i, (o, kind) in enumerate(zip(obj.objects, kinds)):
            how = {1: "class", 2: "instance with its class", 3: "instance, class from the cache"}.get(kind, "object")
            out.append(f"{indent}[{i}] {how}")
            out += _object_lines(o, indent + "  ", mof, depth + 1)
        return out
    if isinstance(obj, WbemContext):
        out = [f"{indent}IWbemContext: {len(obj.properties)} value(s)"]
        for p in obj.properties[:MAX_ELEMENTS]:
            v = p.value
            if isinstance(v, (wmio.WmiClass, wmio.WmiInstance)):
                out.append(f"{indent}  {p.name} ({p.type_name}):")
                out += _object_lines(v, indent + "    ", mof, depth + 1)
            else:
                out.append(f"{indent}  {p.name} ({p.type_name}) = {_text(_plain(v))}")
        return out
    if isinstance(obj, RefreshedObject):
        return [f"{indent}RequestId {obj.request_id}: {obj.blob_type_name}, {len(obj.blob)} bytes"]
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if isinstance(v, (list, dict, wmio.WmiClass, wmio.WmiInstance, ObjectArray, WbemContext,
                              RefreshedObject)):
                out.append(f"{indent}{k}:")
                out += _object_lines(v, indent + "  ", mof, depth + 1)
            else:
                out.append(f"{indent}{k}: {_text(_plain(v))}")
        return out
    if isinstance(obj, (list, tuple)):
        out = []
        for i, o in enumerate(obj[:MAX_ELEMENTS]):
            sub = _object_lines(o, indent + "  ", mof, depth + 1)
            if len(sub) == 1:
                out.append(f"{indent}[{i}] {sub[0].strip()}")
            else:
                out.append(f"{indent}[{i}]")
                out += sub
        if len(obj) > MAX_ELEMENTS:
            out.append(f"{indent}... {len(obj) - MAX_ELEMENTS} more")
        return out
    return [indent + _text(_plain(obj))]


def _plain(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(_plain(x) for x in v[:MAX_ELEMENTS]) + ("" if len(v) <= MAX_ELEMENTS else ", ...") + "}"
    try:
        return json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict) else str(v)
    except (TypeError, ValueError):
        return str(v)


def _where(obj) -> str:
    """\\\\SERVER\\namespace: of a decorated object, else nothing."""
    deco = obj.decoration
    return f"\\\\{deco[0]}\\{deco[1]}:" if deco else ""


def _wmi_object_lines(obj, indent: str, mof: bool) -> list[str]:
    if mof:
        try:
            text = wmio.to_mof(obj)
        except Exception as e:     # an object we could decode but not print still gets its summary
            text = f"// MOF not available: {type(e).__name__}: {e}"
        return [indent + line.replace("\t", "    ") for line in text.splitlines()]
    if isinstance(obj, wmio.WmiClass):
        head = f"{indent}Class {obj.name}" + (f" : {obj.superclass}" if obj.superclass else "")
        out = [head]
        if obj.decoration:
            out.append(f"{indent}Path: {_where(obj)}{obj.name}")
        keys = [p.name for p in obj.properties if p.is_key]
        if keys:
            out.append(f"{indent}Keys: {', '.join(keys)}")
        out.append(f"{indent}Properties: {len(obj.properties)}")
        if obj.methods:
            sig = []
            for m in obj.methods:
                ins = [p.name for p in m.in_params.declared()] if m.in_params else []
                sig.append(f"{m.name}({', '.join(ins)})")
            out.append(f"{indent}Methods: {', '.join(sig)}")
        return out
    cls = obj.class_
    out = [f"{indent}Instance of {obj.class_name}"]
    if any(p.is_key for p in cls.properties) or obj.decoration:
        out.append(f"{indent}Path: {_where(obj)}{obj.path}")
    shown = 0
    for p in cls.declared():
        if p.name.startswith("__") or p.name in obj.defaulted:
            continue
        v = obj.values.get(p.name)
        if v is None:
            continue
        if shown == MAX_OBJECT_VALUES:
            out.append(f"{indent}... more values (see --mof)")
            break
        shown += 1
        if isinstance(v, (wmio.WmiClass, wmio.WmiInstance)):
            out.append(f"{indent}{p.name}:")
            out += _wmi_object_lines(v, indent + "  ", mof)
        else:
            out.append(f"{indent}{p.name} = {_text(_plain(v))}")
    return out


# ---------------------------------------------------------------------------------------
# the renderer

def _frames_text(frames) -> str:
    if not frames:
        return ""
    a, b = frames
    return f" [frame {b}]" if a == b else f" [frames {a}-{b}]"


def _layer(call: Call) -> tuple[str, dict | None]:
    info = _if.interface_by_uuid(call.interface_uuid) if call.interface else None
    if info is None:
        return ("DCOM" if call.ipid else "MSRPC"), None
    return {"wmi": "WMI", "dcom": "DCOM"}.get(info["group"], "MSRPC"), info


def _title(call: Call, info: dict | None) -> str:
    method = call.method or f"Opnum {call.opnum}"
    if info is None:
        if call.interface_uuid:
            return f"{_guid(call.interface_uuid)}:{method}"
        where = [f"context {call.ctx_id}"] if call.ctx_id is not None else []
        where += [f"IPID {_guid(call.ipid)}"] if call.ipid else []
        return f"unknown interface ({', '.join(where)}):{method}" if where else f"unknown interface:{method}"
    if not info["orpc"] and info["group"] == "dcom":
        return method
    return f"{call.interface}:{method}"


class TranscriptRenderer:
    """Turns pipeline records into transcript lines.

    frames      end each summary line with its frame number(s)
    mof         print whole objects as MOF beneath their parameter
    all         also the DCOM header line above every WMI message and the bind /
                alter_context / auth3 PDUs between calls (feed it Pdu records)
    operations  end summary lines with the operation the call belongs to
    """

    def __init__(self, *, frames: bool = False, mof: bool = False, all: bool = False,
                 operations: bool = True):
        self.frames = frames
        self.mof = mof
        self.all = all
        self.operations = operations

    # records ---------------------------------------------------------------------

    def render(self, records: Iterable) -> Iterator[str]:
        for rec in records:
            kind = type(rec)
            if kind is Call:
                yield from self.call_lines(rec)
            elif kind is ErrorRecord:
                yield self.error_line(rec) + (f" [frame {rec.frame}]" if self.frames and rec.frame else "")
            elif kind is Pdu and self.all:
                line = self.pdu_line(rec)
                if line:
                    yield line

    def error_line(self, e: ErrorRecord) -> str:
        text = f"! {e.stage}: "
        if e.structure:
            text += f"{e.structure}: "
        text += e.reason
        if e.offset is not None:
            text += f" at offset {e.offset}"
        return text

    def pdu_line(self, pdu: Pdu) -> str | None:
        """One line for the PDUs that are not part of a call (bind, alter_context, auth3 ...)."""
        if pdu.ptype in (0, 2, 3):
            return None
        name = PTYPE_NAMES.get(pdu.ptype, f"ptype {pdu.ptype}")
        parts = [f"call {pdu.call_id}"]
        for c in pdu.contexts:
            iface = _if.interface_by_uuid(c.abstract_uuid)
            what = iface["name"] if iface else _guid(c.abstract_uuid)
            syntax = _if.transfer_syntax_name(c.accepted_syntax) if c.accepted_syntax else None
            res = {0: "accepted", 1: "rejected", 2: "rejected", 3: "negotiated"}.get(c.result, "") if c.result is not None else ""
            parts.append(f"ctx {c.ctx_id} {what}" + (f" {res}" if res else "") + (f" ({syntax})" if syntax else ""))
        if pdu.auth is not None:
            parts.append(f"auth {auth_type_name(pdu.auth.auth_type)}/{auth_level_name(pdu.auth.auth_level)}")
        frames = _frames_text((pdu.first_frame, pdu.frame)) if self.frames else ""
        return f"  MSRPC: {name}, {', '.join(parts)}{frames}"

    # calls -----------------------------------------------------------------------

    def call_lines(self, call: Call) -> list[str]:
        layer, info = _layer(call)
        title = _title(call, info)
        decoded = call.decoded or {}
        out: list[str] = []
        req_errors, resp_errors = self._split_errors(call)
        if call.req_frames is not None:
            out += self._message(call, layer, info, title, "Request", decoded.get("request"), req_errors)
        elif req_errors:
            out += [self.error_line(e) for e in req_errors]
        if call.resp_frames is not None:
            out.append("")
            out += self._message(call, layer, info, title, "Response", decoded.get("response"), resp_errors)
        elif resp_errors:
            out += [self.error_line(e) for e in resp_errors]
        out.append("")
        return out

    def _split_errors(self, call: Call) -> tuple[list, list]:
        req, resp = [], []
        first_resp = call.resp_frames[0] if call.resp_frames else None
        for e in call.errors:
            if first_resp is not None and e.frame is not None and e.frame >= first_resp:
                resp.append(e)
            else:
                req.append(e)
        return req, resp

    def _suffix(self, call: Call, direction: str) -> str:
        s = ""
        if self.operations and call.operation:
            op = call.operation
            s += f" [{op.get('id')} {op.get('kind')}]" if op.get("kind") else f" [{op.get('id')}]"
        if self.frames:
            s += _frames_text(call.req_frames if direction == "Request" else call.resp_frames)
        return s

    def _message(self, call: Call, layer: str, info, title: str, direction: str, side: dict | None,
                 errors: list) -> list[str]:
        request = direction == "Request"
        stub = call.req_stub if request else call.resp_stub
        sealed = call.req_encrypted if request else call.resp_encrypted
        items: list[str] = []
        fields: list[str] = []
        pre: list[str] = []
        if not request and call.fault is not None:
            head = f"{layer}: {title} Fault, Status=0x{call.fault:08X}"
            name = _wc.hresult_name(call.fault)
            return [f"  {head}{' - ' + name if name else ''}{self._suffix(call, direction)}"] + \
                [self.error_line(e) for e in errors]
        if stub is None and sealed:
            n = call.req_stub_len if request else call.resp_stub_len
            fields.append(f"  (encrypted: {n} bytes of stub sealed with {_mechanism(call)})")
        elif side is not None and "params" in side and layer != "DCOM":
            items, fields = self._wmi_fields(call, info, side, stub, request)
            if getattr(call, "req_decrypted" if request else "resp_decrypted", False):
                fields.insert(0, f"  (decrypted: sealed with {_mechanism(call)}, opened with the given credentials)")
            verified = call.req_verified if request else call.resp_verified
            if verified is not None:
                fields.insert(0, f"  (signed with {_mechanism(call)}: the signature "
                                 f"{'verifies' if verified else 'does NOT verify'} with the given credentials)")
            header = side.get("orpcthis" if request else "orpcthat")
            if self.all and header is not None:
                pre.append(f"+ DCOM: WMI protocol {direction}, {_orpc_text(header, request)}")
        elif layer == "DCOM" and side is not None and info is not None:
            items, fields = self._dcom_fields(call, side, stub, request)
        elif stub is not None:
            fields.append(f"  Stub: {len(stub)} bytes" + ("" if call.interface else " (interface not known)"))
        head = f"{layer}: {title} {direction}" + (", " + " ".join(items) if items else "")
        if layer == "DCOM" and not items and side:
            h = side.get("orpcthis" if request else "orpcthat")
            if h is not None:
                head += ", " + _orpc_text(h, request)
        sign = "- " if (fields or errors) else "  "
        return pre + [sign + head + self._suffix(call, direction)] + fields + [self.error_line(e) for e in errors]

    # WMI: from the params the WMI decoder left ------------------------------------

    def _wmi_fields(self, call: Call, info, side: dict, stub: bytes | None, request: bool):
        items: list[str] = []
        lines: list[str] = []
        method = _if.method(call.interface_uuid, call.opnum) or {}
        types = {p["name"]: p["type"] for p in method.get("params", ())}
        prev_var = False
        last_end = None
        for p in side.get("params") or ():
            name = p.get("name", "?")
            typ = p.get("type") or types.get(name, "")
            label = display_name(name)
            fixed = _fixed(typ)
            if fixed and prev_var:
                lines.append(_pad_line(p.get("pad", 0)))
            prev_var = not fixed
            if p.get("offset") is not None and p.get("length") is not None:
                last_end = p["offset"] + p["length"]
            if _summarized(typ) and "error" not in p:
                items.append(f"{label}={self._summary_value(p.get('value'), typ)}")
            lines += self._param_lines(call, p, typ, label, stub, "")
        ret = side.get("return")
        if not request and isinstance(ret, dict) and isinstance(ret.get("value"), int):
            if prev_var:
                pad = ret.get("pad")
                if pad is None and stub is not None and last_end is not None:
                    pad = max(len(stub) - 4 - last_end, 0)
                lines.append(_pad_line(pad or 0))
            items.append(f"ReturnValue={_status_short(ret['value'])}")
            lines.append(f"  ReturnValue: {_status(ret['value'])}")
        return items, lines

    def _summary_value(self, value, typ: str) -> str:
        if value is None:
            return "NULL"
        v = _scalar(value)
        if isinstance(v, str):
            return _text(v)
        return str(v)

    def _param_lines(self, call: Call, p: dict, typ: str, label: str, stub, indent: str) -> list[str]:
        value = p.get("value")
        obj = p.get("object")
        if "error" in p:
            err = p["error"] or {}
            where = f" at offset {err['offset']}" if isinstance(err, dict) and err.get("offset") is not None else ""
            reason = err.get("reason") if isinstance(err, dict) else str(err)
            return [f"{indent}+ {label}: (not decoded: {reason}{where})"]
        sign = "  " if _fixed(typ) else "+ "
        objref = p.get("objref")
        below = indent + "    "
        if objref:
            lines = [f"{indent}+ {label}: {_objref_text(objref)}"]
            lines += _objref_detail(objref, below)
            if obj is not None:
                lines += _object_lines(obj, below, self.mof)
            return lines
        tree = _type(typ)
        if isinstance(tree, _types.InterfacePointer) or typ == "MInterfacePointer":
            if value is None and obj is None:
                return [f"{indent}+ {label}: NULL"]
        if isinstance(tree, _types.Unique) and isinstance(tree.inner, (_types.Array, _types.VArray)):
            return self._pointer_array_lines(p, typ, label, stub, indent, value, obj)
        if isinstance(value, dict) and ("flags" in value or "name" in value):
            return [*self._described_lines(call, p, typ, label, value, indent)]
        if value is None:
            return [f"{indent}+ {label}: NULL"] if not _fixed(typ) else [f"{indent}  {label}: NULL"]
        if typ == "GUID":
            return [f"{indent}  {label}: {_guid(value)}"]
        if isinstance(value, bool):
            return [f"{indent}{sign}{label}: {value}"]
        if isinstance(value, int):
            return [f"{indent}{sign}{label}: {_number(value, typ)}"]
        if isinstance(value, str):
            lines = [f"{indent}{sign}{label}: {_text(value)}"]
            if obj is not None:
                lines += _object_lines(obj, below, self.mof)
            return lines
        if isinstance(value, list):
            lines = [f"{indent}+ {label}: {len(value)} Elements"]
            return lines + self._elements(call, typ, value, below, obj if isinstance(obj, list) else None)
        if isinstance(value, dict) and obj is not None and not isinstance(obj, (list, tuple)) \
                and not _if.STRUCTS.get(_strip_unique(typ)):
            # a structure decoded out of the parameter's bytes (the optimized Indicate's ObjectArray)
            return [f"{indent}+ {label}: {_structure_name(obj)}"] + _object_lines(obj, below, self.mof)
        if isinstance(value, dict):
            lines = [f"{indent}+ {label}:"]
            lines += self._struct_lines(call, typ, value, below, 0)
            if obj is not None:
                lines += _object_lines(obj, below, self.mof)
            return lines
        lines = [f"{indent}{sign}{label}: {_text(_plain(value))}"]
        if obj is not None:
            lines += _object_lines(obj, below, self.mof)
        return lines

    def _pointer_array_lines(self, p, typ, label, stub, indent, value, obj) -> list[str]:
        """unique<array<...>>: `Pointer To 0x00020000, N Elements`, the decoded content as a
        sibling line named after its structure (4.2.3.1: BufferPtrSize, then ObjectArray)."""
        ref = p.get("referent")
        if value is None and obj is None and not ref:
            return [f"{indent}+ {label}: Pointer To NULL"]
        count = _element_count(value)
        where = f"0x{ref:08X}" if ref else "?"
        lines = [f"{indent}+ {label}: Pointer To {where}, {count} Elements"]
        below = indent + "    "
        element = _element_type(typ)
        if isinstance(value, list) and element != "byte":
            lines += self._elements(None, element, value, below, obj if isinstance(obj, list) else None)
        elif obj is not None:
            lines.append(f"{indent}+ {_structure_name(obj)}:")
            lines += _object_lines(obj, below, self.mof)
        return lines

    def _elements(self, call, typ: str, values: list, indent: str, objects: list | None = None) -> list[str]:
        """Array elements one per line, [i] first; objects[i] (what element i decoded to) beneath."""
        element = _element_type(typ)
        out = []
        for i, v in enumerate(values[:MAX_ELEMENTS]):
            obj = objects[i] if objects is not None and i < len(objects) else None
            if _is_pointer_json(v):
                out.append(f"{indent}[{i}] {_objref_text(v)}")
                out += _objref_detail(v, indent + "    ")
            elif isinstance(v, dict) and not ("flags" in v or "name" in v):
                out.append(f"{indent}[{i}]")
                out += self._struct_lines(call, element, v, indent + "  ", 1)
            elif isinstance(v, dict):
                out.append(f"{indent}[{i}] {_described_text(v)}")
            elif element == "GUID":
                out.append(f"{indent}[{i}] {_guid(v)}")
            elif isinstance(v, int) and element in ("HRESULT",):
                out.append(f"{indent}[{i}] {_status(v)}")
            elif isinstance(v, int):
                out.append(f"{indent}[{i}] {_number(v, element)}")
            elif v is None:
                out.append(f"{indent}[{i}] NULL")
            else:
                out.append(f"{indent}[{i}] {_text(_plain(v))}")
            if obj is not None:
                out += _object_lines(obj, indent + "    ", self.mof)
        if len(values) > MAX_ELEMENTS:
            out.append(f"{indent}... {len(values) - MAX_ELEMENTS} more")
        return out

    def _struct_lines(self, call, typ: str, value: dict, indent: str, depth: int) -> list[str]:
        """A decoded structure: its fields in STRUCTS order (then any others), named by rule."""
        if depth > MAX_DEPTH:
            return [indent + "..."]
        out = []
        spec = _if.STRUCTS.get(_strip_unique(typ), {})
        fields = dict(spec.get("fields") or ())
        for _, arm, arm_type in (spec.get("union") or {}).get("arms", ()):
            fields[arm] = arm_type
        # a known structure shows its fields only (the decoder's extra keys summarize what is shown beneath)
        order = [k for k in fields if k in value] if fields else list(value)
        for k in order:
            v = value[k]
            ftyp = fields.get(k, "")
            label = display_name(k[2:] if k.startswith("m_") else k)
            if _is_pointer_json(v):
                out.append(f"{indent}+ {label}: {_objref_text(v)}")
                out += _objref_detail(v, indent + "    ")
            elif _is_bytes_json(v):
                out.append(f"{indent}+ {label}: {v['length']} bytes")
            elif isinstance(v, (wmio.WmiClass, wmio.WmiInstance, ObjectArray, WbemContext, RefreshedObject)):
                out.append(f"{indent}+ {label}:")
                out += _object_lines(v, indent + "    ", self.mof)
            elif isinstance(v, dict) and ("flags" in v or "name" in v):
                enums = _wc.field_annotation(_strip_unique(typ), k) or ()
                out.append(f"{indent}  {label}: {_described_text(v, ftyp, enums)}")
            elif isinstance(v, dict):
                out.append(f"{indent}+ {label}:")
                out += self._struct_lines(call, ftyp, v, indent + "    ", depth + 1)
            elif isinstance(v, list):
                out.append(f"{indent}+ {label}: {len(v)} Elements")
                out += self._elements(call, ftyp, v, indent + "    ")
            elif v is None:
                out.append(f"{indent}+ {label}: NULL")
            elif ftyp == "GUID":
                out.append(f"{indent}  {label}: {_guid(v)}")
            elif isinstance(v, int) and not isinstance(v, bool):
                out.append(f"{indent}  {label}: {_status(v) if ftyp == 'HRESULT' and v else _number(v, ftyp)}")
            else:
                out.append(f"{indent}{'+ ' if isinstance(v, str) else '  '}{label}: {_text(_plain(v))}")
        return out

    def _dcom_fields(self, call: Call, side: dict, stub: bytes | None, request: bool):
        """A DCOM call from the parameters the table interpreter decoded, in the dialect of the
        traces' DCOM parser: a [unique] pointer to an array is `XPtr: Pointer To 0x...`, an
        array `Size: N Elements` then its elements, the labels of DCOM_LABELS (else the IDL
        name as display_name makes it), the activation facts beneath ActivationProperties."""
        header = side.get("orpcthis" if request else "orpcthat")
        items = [_orpc_text(header, request)] if header is not None else []
        lines: list[str] = []
        if header is not None:
            lines.append(f"+ {'HeaderReq' if request else 'HeaderResp'}: {_orpc_text(header, request)}")
        for p in side.get("params") or ():
            lines += self._dcom_param_lines(p, "    ")
        ret = side.get("return")
        if not request and isinstance(ret, dict) and isinstance(ret.get("value"), int):
            lines.append(f"+ ReturnValue: {_dcom_status(ret['value'])}")
        return items, lines

    def _dcom_param_lines(self, p: dict, below: str) -> list[str]:
        name = p.get("name", "?")
        typ = p.get("type") or ""
        label = DCOM_LABELS.get(name) or display_name(_strip_dcom_prefix(name))
        value = p.get("value")
        if "error" in p:
            return self._param_lines(None, p, typ, label, None, "")
        if "activation" in p:
            return [f"+ {label}:"] + _activation_lines(p["activation"], below)
        tree = _type(typ)
        if isinstance(tree, _types.Unique) and isinstance(tree.inner, (_types.Array, _types.VArray)):
            ref = p.get("referent")
            ptr_label = DCOM_POINTER_LABELS.get(name) or label + "Ptr"
            lines = [f"+ {ptr_label}: Pointer To " + (f"0x{ref:08X}" if ref else "NULL")]
            return lines + (self._dcom_array_lines(p, tree.inner, label, below) if ref else [])
        if isinstance(tree, (_types.Array, _types.VArray)):
            return self._dcom_array_lines(p, tree, label, below)
        base = _types.strip_unique(tree) if tree is not None else None
        if isinstance(base, _types.InterfacePointer) or (isinstance(base, _types.Builtin)
                                                          and base.name == "MInterfacePointer"):
            return [f"+ {label}:" + (f" {_objref_text(value)}" if value else "")]
        if value is None:
            return [f"+ {label}: NULL"]
        if isinstance(value, dict) and isinstance(value.get("bindings"), list):       # a DUALSTRINGARRAY
            return [f"  {label}: {', '.join(value['bindings'])}"]
        if isinstance(base, _types.Struct) and base.name == "COMVERSION":
            return [f"  {label}: {value.get('MajorVersion')}.{value.get('MinorVersion')}"]
        if typ == "GUID":
            return [f"  {label}: {_guid(value)}"]
        if isinstance(value, dict) and isinstance(value.get("value"), int):           # an HRESULT
            return [f"  {label}: {_dcom_status(value['value'])}"]
        if isinstance(value, int) and not isinstance(value, bool):
            return [f"  {label}: {_number(value, typ)}"]
        return [f"  {label}: {_text(_plain(value))}"]

    def _dcom_array_lines(self, p: dict, array, label: str, below: str) -> list[str]:
        values = p.get("value")
        values = values if isinstance(values, list) else []
        names = p.get("interfaces") or []
        lines = [f"+ Size: {_element_count(p.get('value'))} Elements", f"+ {label}:"]
        element = _types.strip_unique(array.element)
        for i, v in enumerate(values[:MAX_ELEMENTS]):
            lines.append(below + _dcom_element(element, v, names[i] if i < len(names) else None))
        if len(values) > MAX_ELEMENTS:
            lines.append(f"{below}... {len(values) - MAX_ELEMENTS} more")
        return lines

    def _described_lines(self, call, p, typ, label, value: dict, indent: str) -> list[str]:
        """Flag sets, enumerations and status codes, as the traces print each."""
        name = p.get("name", "")
        enums = _wc.annotation(call.interface or "", call.method or "", name) or ()
        if "flags" not in value:
            return [f"{indent}  {label}: {_described_text(value, typ, enums)}"]
        n = value["flags"]
        if call.method in _ONE_FLAG_METHODS and name == "lFlags":
            flag, bit, text = _RETURN_IMMEDIATELY
            return [f"{indent}  {label}: {flag} - {text}" if n == bit else f"{indent}  {label}: Unknown"]
        if enums and all(e in _LOCAL_FLAG_SETS for e in enums):
            return [f"{indent}  {label}: {_number(n, typ)}"]
        return [f"{indent}+ {label}: {_number(n, typ)}"] + [f"{indent}    {f}" for f in value.get("names") or ()]


def _described_text(value: dict, typ: str = "long", enums: tuple = ()) -> str:
    """One described number. A status (an HRESULT-typed value, or a parameter read as one) is
    a plain number when S_OK (`Status: 0 (0x0)`, 4.3.3.1), else `0x... - NAME - text`; an
    enumeration value `NAME - text`, one with a unit (the time-outs) `NAME(text)`, or for a
    value it does not name `5000 ms (0x1388)` (4.3.3.1)."""
    if "flags" in value:
        names = value.get("names") or ()
        return _number(value["flags"], typ) + (" " + " | ".join(names) if names else "")
    v = value.get("value")
    if not isinstance(v, int):
        return _text(_plain(value))
    if typ == "HRESULT" or enums[:1] == ("HRESULT",) or (not enums and _is_status(value)):
        return _number(v, typ) if v == 0 else _status(v)
    name, text = value.get("name"), value.get("text") or ""
    unit = _ENUM_UNITS.get(enums[0]) if enums else _UNIT_OF_NAME.get(name)
    if name is None:
        return f"{v} {unit} (0x{v & 0xFFFFFFFF:X})" if unit else f"{_number(v, typ)} - Unknown Value"
    return f"{name}({text})" if unit else f"{name} - {text}"


_ENUM_UNITS = {n: e["unit"] for n, e in _wc.ENUMS.items() if e.get("unit")}
_UNIT_OF_NAME = {v[0]: e["unit"] for e in _wc.ENUMS.values() if e.get("unit") for v in e["values"]}
_ENUM_NAMES = frozenset(v[0] for e in _wc.ENUMS.values() for v in e["values"])


def _is_status(value: dict) -> bool:
    """A described value that came from the status tables rather than an enumeration."""
    name = value.get("name")
    return name not in _ENUM_NAMES and (name is not None or "Unknown Value (" in (value.get("text") or ""))


@lru_cache(maxsize=1024)
def _type(typ: str):
    """The grammar's tree of a parameter's or field's type string (None when none is known)."""
    return _types.parse(typ) if typ else None


def _element_type(typ: str) -> str:
    """The element type of an (optionally unique) array type, else the type unique-stripped."""
    tree = _type(typ)
    return _types.element(tree).text if tree is not None else ""


def _strip_unique(typ: str) -> str:
    tree = _type(typ)
    return _types.strip_unique(tree).text if tree is not None else ""


def _structure_name(obj) -> str:
    if isinstance(obj, ObjectArray):
        return "ObjectArray"
    if isinstance(obj, WbemContext):
        return "IWbemContextBuffer"
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], RefreshedObject):
        return "WBEM_REFRESHED_OBJECT"
    if isinstance(obj, (wmio.WmiClass, wmio.WmiInstance)):
        return "EncodingUnit"
    return type(obj).__name__


def _element_count(value) -> int:
    """How many elements an array parameter's decoded value holds (its conformance)."""
    if isinstance(value, (list, str)):
        return len(value)
    if isinstance(value, dict) and isinstance(value.get("length"), int):
        return value["length"]             # a byte array, shown by its length and hex
    return 0


def _pad_line(n: int) -> str:
    return f"{'+ ' if n else '  '}Pad: {n} Bytes"


def _mechanism(call: Call) -> str:
    return f"{auth_type_name(call.auth_type)}/{auth_level_name(call.auth_level)}"


def _orpc_text(h: dict, request: bool) -> str:
    if request:
        return f"DCOM Version={h.get('version')} Causality Id={_guid(h.get('cid'))}"
    flags = h.get("flags", 0) or 0
    if flags in _ORPC_FLAGS:
        name, text = _ORPC_FLAGS[flags]
        return f"{name} - {text}"
    return " | ".join(n for bit, (n, _) in _ORPC_FLAGS.items() if bit and flags & bit) or f"0x{flags:X}"


def _is_bytes_json(v) -> bool:
    """A byte array as the WMI decoder renders it: {"length", "hex"[, "truncated"]}."""
    return isinstance(v, dict) and "length" in v and "hex" in v


def _is_pointer_json(v) -> bool:
    """An interface pointer as the WMI decoder renders it inside structures and arrays."""
    return isinstance(v, dict) and "objref" in v and "iid" in v


def _objref_text(o: dict) -> str:
    kind = o.get("kind") or o.get("objref")
    if not isinstance(kind, str):
        return "OBJREF (not decoded)"
    return f"{_OBJREF_KIND.get(kind, 'OBJREF ' + kind)} - {_guid(o.get('iid'))}"


def _objref_detail(o: dict, indent: str) -> list[str]:
    """What the traces collapse under an interface pointer: its IPID and where its exporter listens."""
    out = []
    std = o.get("std") or {}
    ipid = o.get("ipid") or std.get("ipid")
    if ipid:
        name = o.get("interface")
        out.append(f"{indent}IPID: {_guid(ipid)}" + (f" ({name})" if name else ""))
    bindings = o.get("bindings")
    if bindings:
        out.append(f"{indent}Bindings: {', '.join(bindings)}")
    return out


# ---------------------------------------------------------------------------------------
# DCOM: the labels the traces' DCOM parser gives the IDL's parameters (MS-WMI 4.1.1, 4.2.3,
# 4.3.3: RemQueryInterface, RemoteCreateInstance), and how one array element reads.

DCOM_LABELS = {
    "ripid": "QueriedObjectIpId", "cRefs": "PublicObjectReferenceCount", "cIids": "NumRequestedIIds",
    "iids": "InterfaceIds", "ppQIResults": "QueryInterfaceResults", "ppMIF": "QueryInterfaceResults",
    "cInterfaceRefs": "ObjectReferenceCount", "InterfaceRefs": "InterfaceReferences",
    "pUnkOuter": "AggregationInterface", "pActProperties": "ActivationProperties",
    "ppActProperties": "ActivationProperties", "pipidRemUnknown": "IpidRemUnknown",
}
DCOM_POINTER_LABELS = {"ppQIResults": "RemqiresultPtr"}
# MS-DCOM's own Hungarian prefixes (pointer to pointer to DUALSTRINGARRAY, array): dropped
# like the WMI ones, so ppdsaOxidBindings reads OxidBindings, arRequestedProtseqs RequestedProtseqs.
_DCOM_PREFIXES = ("ppdsa", "ar")


def _strip_dcom_prefix(name: str) -> str:
    for pre in _DCOM_PREFIXES:
        if len(name) > len(pre) and name.startswith(pre) and name[len(pre)].isupper():
            return name[len(pre):]
    return name
_ACTIVATION_FACTS = (("class_name", "Class"), ("clsid", "CLSID"), ("requested_interfaces", "Interfaces"),
                     ("server_name", "ServerName"), ("requested_protseqs", "Protseqs"), ("oxid", "OXID"),
                     ("ipid_remunknown", "IRemUnknown IPID"), ("server_version", "ServerVersion"),
                     ("authn_hint", "AuthnHint"), ("oxid_bindings_text", "Bindings"))


def _dcom_element(element, v, name: str | None) -> str:
    """One element of a DCOM array parameter: an IID with the interface it names, a REMQIRESULT
    or REMINTERFACEREF as the traces summarize them, a status, an interface pointer."""
    if isinstance(v, dict) and "hResult" in v:                                       # REMQIRESULT
        hr = v["hResult"].get("value") if isinstance(v["hResult"], dict) else v["hResult"]
        ipid = (v.get("std") or {}).get("ipid") if isinstance(hr, int) and not hr & 0x80000000 else None
        return f"{v.get('interface') or _guid(v.get('iid'))}: {_dcom_status(hr)}" + (f", IPID {_guid(ipid)}" if ipid else "")
    if isinstance(v, dict) and "cPublicRefs" in v:                                   # REMINTERFACEREF
        return (f"{_guid(v.get('ipid'))}" + (f" {v['interface']}" if v.get("interface") else "")
                + f", PublicRefs {v.get('cPublicRefs')}, PrivateRefs {v.get('cPrivateRefs')}")
    if _is_pointer_json(v):
        ipid = v.get("ipid")
        return (name + ": " if name else "") + _objref_text(v) + (f", IPID {_guid(ipid)}" if ipid else "")
    if isinstance(v, dict) and isinstance(v.get("value"), int):                      # an HRESULT
        return _dcom_status(v["value"])
    if v is None:
        return "NULL"
    if isinstance(element, _types.Builtin) and element.name == "GUID":
        iface = _if.interface_name(v)
        return _guid(v) + (f" {iface}" if iface else "")
    if isinstance(v, int) and not isinstance(v, bool):
        return _number(v, element.text)
    return _text(_plain(v))


def _activation_lines(side: dict, indent: str) -> list[str]:
    out = []
    for key, label in _ACTIVATION_FACTS:
        v = side.get(key)
        if v in (None, [], ""):
            continue
        if key == "clsid" or key == "ipid_remunknown":
            v = _guid(v)
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        out.append(f"{indent}{label}: {v}")
    for e in side.get("interfaces") or ():
        ipid = e.get("ipid")
        out.append(f"{indent}{e.get('interface') or _guid(e.get('iid'))}: {_dcom_status(e.get('hresult'))}"
                   + (f", IPID {_guid(ipid)}" if ipid else ""))
    return out


# ---------------------------------------------------------------------------------------
# module-level helpers

def render_call(call: Call, **options) -> list[str]:
    """The transcript lines of one call: its request, a blank line, its response."""
    return TranscriptRenderer(**options).call_lines(call)


def render(records: Iterable, **options) -> Iterator[str]:
    """Transcript lines of a stream of pipeline records (Call, ErrorRecord, and Pdu with all=True)."""
    return TranscriptRenderer(**options).render(records)
