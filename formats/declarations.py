"""Construct helpers the MS-WMI encodings share (wmio, object_array, context, refresher).

FixedHeader: a fixed-size construct Struct, parsed through a struct.Struct
derived from it.  Located: names a spec structure inside a construct
declaration, so that a construct failure becomes a located DecodeError.
compiled_parser: a declaration's parser compiled by construct's code generator,
its byte code kept on disk so that later runs do not compile it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import re
import struct

from construct import Bytes, Const, ConstructError, FormatField, Renamed, Struct, Subconstruct
from construct.core import CodeGen, Compiled

from .errors import DecodeError, EncodeError

__all__ = ["FixedHeader", "Located", "construct_failure", "compiled_parser"]


def construct_failure(e: ConstructError) -> tuple[str, str]:
    """(field path, message) of a construct error, e.g. ("Properties.PropertyType", "...")."""
    text = str(e)
    head, _, message = text.partition("\n")
    path = ""
    if head.startswith("Error in path"):
        parts = [p.strip() for p in head[len("Error in path"):].split("->")]
        path = ".".join(p for p in parts if p and not p.startswith("("))
    return path, (message or head)


class FixedHeader:
    """A fixed-size construct Struct, parsed through a struct.Struct derived from it.

    The construct declaration stays the single source of truth (field names,
    formats, Const values) and builds; parsing goes through one precompiled
    struct.Struct because headers are read once per object and construct's
    interpreter costs tens of microseconds per Struct.  Const fields become
    checks whose failure names the field and its absolute offset.
    """

    def __init__(self, name: str, declaration: Struct):
        self.name = name
        self.declaration = declaration
        fmt = "<"
        self.fields: list[tuple[str, int]] = []   # (field name, offset in header)
        self.checks: list[tuple[int, object]] = []  # (field index, required value)
        offset = 0
        for i, sub in enumerate(declaration.subcons):
            assert isinstance(sub, Renamed), "every header field is named"
            inner = sub.subcon
            if isinstance(inner, Const):
                self.checks.append((i, inner.value))
                inner = inner.subcon
            if isinstance(inner, FormatField):
                code = inner.fmtstr[1:]
            elif isinstance(inner, Bytes) and isinstance(inner.length, int):
                code = f"{inner.length}s"
            else:  # pragma: no cover - declaration error
                raise TypeError(f"{name}.{sub.name}: not a fixed-size field")
            self.fields.append((sub.name, offset))
            fmt += code
            offset += struct.calcsize("<" + code)
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size

    def unpack(self, buf, offset: int, end: int | None = None) -> tuple:
        """Field values in declaration order; Const fields are checked."""
        if end is None:
            end = len(buf)
        if offset < 0 or offset + self.size > end:
            raise DecodeError(self.name, offset,
                              f"truncated: {self.size} bytes needed, {max(end - offset, 0)} left")
        values = self.struct.unpack_from(buf, offset)
        for i, required in self.checks:
            if values[i] != required:
                name, at = self.fields[i]
                raise DecodeError(f"{self.name}.{name}", offset + at,
                                  f"must be {_show(required)}, found {_show(values[i])}")
        return values

    def field_offset(self, name: str) -> int:
        return dict(self.fields)[name]

    def pack(self, **values) -> bytes:
        """Build through the construct declaration (Const fields fill themselves)."""
        try:
            return self.declaration.build(values)
        except ConstructError as e:
            path, message = construct_failure(e)
            raise EncodeError(f"{self.name}.{path}: {message}") from None


def _show(v) -> str:
    return f"0x{v:X}" if isinstance(v, int) else repr(v)


class Located(Subconstruct):
    """Names a spec structure inside a construct declaration.

    Any construct failure while parsing it becomes a DecodeError naming the
    structure and the field path, at the absolute offset where the structure
    starts (the declarations parse from a stream positioned in the caller's
    whole buffer, so stream positions are absolute).  The innermost Located
    wins: a DecodeError raised inside passes through unchanged.
    """

    def __init__(self, name: str, subcon):
        super().__init__(subcon)
        self.spec_name = name

    def _parse(self, stream, context, path):
        start = stream.tell()
        try:
            return self.subcon._parsereport(stream, context, path)
        except ConstructError as e:
            fields, message = construct_failure(e)
            here = path.replace("(parsing)", "").replace(" -> ", ".").strip(".")
            if here and fields.startswith(here):
                fields = fields[len(here):].lstrip(".")
            name = f"{self.spec_name}.{fields}" if fields else self.spec_name
            raise DecodeError(name, start, message) from None

    def _build(self, obj, stream, context, path):
        return self.subcon._build(obj, stream, context, path)


# ---------------------------------------------------------------------------------------
# compiled parsers, cached across runs

_ID = re.compile(r"\b\d{6,}\b")


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wmiscope", "construct")


def compiled_parser(declaration) -> Compiled:
    """The declaration's parser as construct compiles it (the declaration stays the one
    definition: this is construct's own code generation, parse side only).

    Compiling the generated source is most of the cost (about 0.1 s for the MS-WMIO
    declarations, at every start of a run that decodes an object), so its byte code is
    kept in ~/.cache/wmiscope/construct (XDG_CACHE_HOME), keyed by the source's digest
    and the interpreter's byte-code version. The generated source names the objects it
    calls back into by their id(), which differs from run to run: those numbers are
    replaced by small indexes first, so that the same declarations give the same source.
    Any failure to read or write the cache only means compiling."""
    code = CodeGen()
    code.append(_PRELUDE)
    code.append(f"""
        def parseall(io, this):
            return {declaration._compileparse(code)}
    """)
    index: dict[int, int] = {}
    linked = {**code.linkedinstances, **code.linkedparsers}

    def renumber(m):
        n = int(m.group(0))
        if n not in linked:
            return m.group(0)
        return str(index.setdefault(n, len(index)))

    source = _ID.sub(renumber, code.toString())
    digest = hashlib.sha1(importlib.util.MAGIC_NUMBER + source.encode()).hexdigest()
    path = os.path.join(_cache_dir(), digest + ".marshal")
    byte_code = None
    try:
        with open(path, "rb") as f:
            byte_code = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        pass
    if byte_code is None:
        byte_code = compile(source, f"<construct {digest[:12]}>", "exec")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(marshal.dumps(byte_code))
            os.replace(tmp, path)
        except OSError:
            pass
    namespace: dict = {}
    exec(byte_code, namespace)
    namespace["linkedinstances"].update({i: code.linkedinstances[n] for n, i in index.items()
                                         if n in code.linkedinstances})
    namespace["linkedparsers"].update({i: code.linkedparsers[n] for n, i in index.items()
                                       if n in code.linkedparsers})
    parse = namespace["parseall"]
    compiled = Compiled(parse, None)
    compiled.defersubcon = declaration
    return compiled


# What construct's own compile() puts before the generated functions (the names they use).
_PRELUDE = """
    from construct import *
    from construct.lib import *
    from io import BytesIO
    import struct
    import collections
    import itertools

    def restream(data, func):
        return func(BytesIO(data))
    def reuse(obj, func):
        return func(obj)

    linkedinstances = {}
    linkedparsers = {}
    linkedbuilders = {}

    len_ = len
    sum_ = sum
    min_ = min
    max_ = max
    abs_ = abs
"""
