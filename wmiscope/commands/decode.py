"""wmiscope decode FILE --as KIND: decode one WMI encoding cut out of a capture.

KIND                 what FILE holds
encoding-unit        [MS-WMIO] 2.2.1 EncodingUnit (signature 0x12345678)
object-block         [MS-WMIO] 2.2.5 ObjectBlock (no signature, no length)
object-array         [MS-WMI] 2.2.14 ObjectArray (WBEMDATA)
context              [MS-WMI] 2.2.13.1 IWbemContextBuffer, or the whole
                     OBJREF_CUSTOM that carries it (starting with MEOW)
instance-blob        [MS-WMI] 2.2.16 WBEM_INSTANCE_BLOB; --template names a file
                     with the template class as an EncodingUnit

A malformed input gives one line on stderr (``wmiscope: error: FILE: ...``),
naming the structure and the offset, and exit status 1; a usage mistake exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial

from wmiscope.cli import InputError, UsageError

KINDS = ("encoding-unit", "object-block", "object-array", "context", "instance-blob")


def add_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="file holding the bytes ('-' for stdin)")
    p.add_argument("--as", dest="kind", required=True, choices=KINDS, help="what the bytes are")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", dest="format", action="store_const", const="json",
                     help="print the decoded structure as JSON (default)")
    out.add_argument("--mof", dest="format", action="store_const", const="mof",
                     help="print the CIM objects as MOF")
    p.set_defaults(format="json")
    p.add_argument("--hex", action="store_true",
                   help="FILE (and --template) hold hex text; whitespace and colons are ignored")
    p.add_argument("--offset", type=offset, default=0,
                   help="where the encoding starts in FILE (default 0; 0x.. accepted)")
    p.add_argument("--template", metavar="FILE",
                   help="instance-blob: the template class as an EncodingUnit")


def offset(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise ValueError(text)
    return value


def run(args) -> int:
    if args.kind == "instance-blob" and not args.template:
        raise UsageError("--as instance-blob needs --template FILE (the template class EncodingUnit)")
    if args.kind != "instance-blob" and args.template:
        raise UsageError("--template only applies to --as instance-blob")
    data = _read(args.file, args.hex)
    template = None
    if args.template:
        template = _template(_read(args.template, args.hex), args.template)
    if args.offset > len(data):
        raise UsageError(f"--offset {args.offset} is past the end of the {len(data)} bytes")
    try:
        text = _decode(args.kind, data, args.offset, template, args.format)
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        from wmiscope.formats.errors import DecodeError, EncodeError

        if isinstance(e, (DecodeError, EncodeError)):
            raise InputError(f"{args.file}: {e}") from None
        raise InputError(f"{args.file}: internal error {type(e).__name__}: {e}") from None
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def _read(path: str, hex_text: bool) -> bytes:
    if path == "-":
        raw = sys.stdin.buffer.read()
    else:
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory, not a file")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise InputError(f"{path}: {e.strerror or e}") from None
    if not hex_text:
        return raw
    text = raw.decode("ascii", "replace")
    cleaned = "".join(text.replace(":", " ").split())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        bad = next((i for i, c in enumerate(cleaned) if c not in "0123456789abcdefABCDEF"), None)
        where = f"character {cleaned[bad]!r}" if bad is not None else "an odd number of hex digits"
        raise InputError(f"{path}: not hex text ({where})") from None


def _template(data: bytes, path: str):
    from wmiscope.formats import wmio
    from wmiscope.formats.errors import DecodeError
    from wmiscope.formats.refresher import template_class

    try:
        return template_class(wmio.parse_encoding_unit(data, 0))
    except DecodeError as e:
        raise InputError(f"{path} (template): {e}") from None


def _decode(kind: str, data: bytes, offset: int, template, fmt: str) -> str:
    """The decoded structure as MOF or as JSON: only the one asked for is rendered."""
    from wmiscope.formats import wmio

    if kind in ("encoding-unit", "object-block"):
        parse = wmio.parse_encoding_unit if kind == "encoding-unit" else wmio.parse_object_block
        obj = parse(data, offset)
        objects, doc = [obj], partial(wmio.to_json, obj)
    elif kind == "object-array":
        from wmiscope.formats.object_array import parse_object_array

        arr = parse_object_array(data, None, offset)
        objects, doc = arr.objects, arr.to_json
    elif kind == "context":
        from wmiscope.formats import context

        if data[offset:offset + 4] == b"MEOW":
            ctx = context.parse_context_objref(data, offset)
        else:
            ctx = context.parse_context(data, offset)
        if fmt == "mof":
            return _context_mof(ctx, wmio)
        objects, doc = [], ctx.to_json
    else:
        from wmiscope.formats.refresher import parse_instance_blob

        objects = parse_instance_blob(data, template, offset)
        doc = partial(_instance_blob_json, objects, wmio)
    if fmt == "mof":
        return "\n".join(wmio.to_mof(o) for o in objects)
    return json.dumps(doc(), indent=2, ensure_ascii=False, default=_json_default)


def _instance_blob_json(objects, wmio) -> dict:
    return {"structure": "WBEM_INSTANCE_BLOB", "numObjects": len(objects),
            "objects": [wmio.to_json(o) for o in objects]}


def _context_mof(ctx, wmio) -> str:
    """Context properties as MOF comments, embedded objects as MOF."""
    lines = [f"// IWbemContext {', '.join(str(g) for g in ctx.guids)}"]
    for p in ctx.properties:
        values = p.value if isinstance(p.value, list) else [p.value]
        if any(isinstance(v, (wmio.WmiClass, wmio.WmiInstance)) for v in values):
            lines.append(f"// {p.name} ({p.type_name}):")
            lines.extend(wmio.to_mof(v) for v in values)
        else:
            lines.append(f"// {p.name} ({p.type_name}) = {json.dumps(p.value, ensure_ascii=False)}")
    return "\n".join(lines)


def _json_default(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    return str(v)
