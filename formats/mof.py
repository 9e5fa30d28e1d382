"""MOF text (DMTF DSP0004 syntax, as WMI's GetObjectText writes it) of the
classes and instances decoded by wmio.

A class shows its qualifiers, every property in DeclarationOrder (inherited
ones too: an analyst wants the whole shape), defaults, and methods with
their in/out parameters merged by the ID qualifier.  An instance shows the
values it carries itself (not those left at the class default).  The CIMTYPE
qualifier is not printed: the type it names is the property's MOF type.
"""

from __future__ import annotations

from .cim import CIM_ARRAY_FLAG, CIM_INHERITED_FLAG, CIM_TYPE_MASK, CimType, QualifierFlavor, mof_flavors
from .wmio import WmiClass, WmiInstance

_INDENT = "\t"

# MOF string escapes: the named ones, other control characters as \xHHHH
_ESCAPES = {c: f"\\x{c:04x}" for c in range(0x20)} | {
    ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _escape(s: str) -> str:
    return s.translate(_ESCAPES)


def literal(value, cimtype: int | None = None, level: int = 1) -> str:
    """A MOF literal for a decoded value."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (list, tuple)):
        base = None if cimtype is None else cimtype & ~CIM_ARRAY_FLAG
        return "{" + ", ".join(literal(v, base, level) for v in value) + "}"
    if isinstance(value, (WmiInstance, WmiClass)):
        return _render(value, level).rstrip().rstrip(";")
    if isinstance(value, str):
        if cimtype is not None and cimtype & CIM_TYPE_MASK == CimType.CHAR16:
            return "'" + _escape(value).replace("'", "\\'") + "'"
        return '"' + _escape(value) + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _qualifier_text(q, local_flavors: bool = True) -> str:
    if q.value is True:
        text = q.name
    elif isinstance(q.value, (list, tuple)):
        text = f"{q.name}{literal(q.value, q.cimtype)}"
    else:
        text = f"{q.name}({literal(q.value, q.cimtype)})"
    if local_flavors and not q.flavor & QualifierFlavor.ORIGIN_PROPAGATED:
        fl = mof_flavors(q.flavor)
        if fl:
            text += " : " + " ".join(fl)
    return text


def _qualifiers(quals, skip=("CIMTYPE",)) -> str:
    shown = [q for q in quals if q.name.upper() not in skip]
    if not shown:
        return ""
    return "[" + ", ".join(_qualifier_text(q) for q in shown) + "] "


def _mof_type(p) -> tuple[str, str]:
    """(type text before the name, suffix after it) for a property/parameter."""
    b = p.cimtype & CIM_TYPE_MASK
    arr = "[]" if p.cimtype & CIM_ARRAY_FLAG else ""
    if b == CimType.REFERENCE or b == CimType.OBJECT:
        # the class named by the CIMTYPE qualifier ("ref:Win32_Foo", "object:Bar")
        ct = p.qualifier("CIMTYPE")
        cls = (ct.partition(":")[2] if isinstance(ct, str) else "") or "object"
        return (f"{cls} ref" if b == CimType.REFERENCE else cls), arr
    name = p.type_name
    return name[:-2] if arr else name, arr


def _property_line(p) -> str:
    typ, arr = _mof_type(p)
    text = f"{_qualifiers(p.qualifiers)}{typ} {p.name}{arr}"
    if p.value is not None and not p.null:
        text += " = " + literal(p.value, p.cimtype & ~CIM_INHERITED_FLAG, 2)
    return text + ";"


def _method_line(m) -> str:
    params: dict[str, tuple] = {}
    ret = "void"
    for direction, sig in (("in", m.in_params), ("out", m.out_params)):
        if sig is None:
            continue
        for p in sig.properties:
            if direction == "out" and p.name == "ReturnValue":
                ret = " ".join(_mof_type(p)).strip()
                continue
            ident = p.qualifier("ID", 1 << 20)
            prev = params.get(p.name)
            dirs = (prev[2] if prev else ()) + (direction,)
            params[p.name] = (ident if not isinstance(ident, bool) else 1 << 20, p, dirs)
    args = []
    for ident, p, dirs in sorted(params.values(), key=lambda x: (x[0], x[1].name)):
        quals = [q for q in p.qualifiers if q.name.upper() not in ("CIMTYPE", "ID", "IN", "OUT")]
        heads = ", ".join(list(dirs) + [_qualifier_text(q, False) for q in quals])
        typ, arr = _mof_type(p)
        args.append(f"[{heads}] {typ} {p.name}{arr}")
    return f"{_qualifiers(m.qualifiers)}{ret} {m.name}({', '.join(args)});"


def _render(obj, level: int = 0) -> str:
    pad = _INDENT * level
    inner = _INDENT * (level + 1)
    lines = []
    if isinstance(obj, WmiInstance):
        lines.append(f"{pad}{_qualifiers(obj.qualifiers).strip()}".rstrip() if obj.qualifiers else None)
        lines.append(f"{pad}instance of {obj.class_.name}")
        lines.append(pad + "{")
        pq = obj.property_qualifiers or {}
        for p in obj.class_.declared():
            if p.name in obj.defaulted:
                continue
            q = _qualifiers(pq.get(p.name, []))
            value = literal(obj.values.get(p.name), p.cimtype & ~CIM_INHERITED_FLAG, level + 1)
            lines.append(f"{inner}{q}{p.name} = {value};")
        lines.append(pad + "};")
        return "\n".join(x for x in lines if x is not None) + "\n"
    if isinstance(obj, WmiClass):
        q = _qualifiers(obj.qualifiers).strip()
        if q:
            lines.append(pad + q)
        head = f"class {obj.name}" + (f" : {obj.superclass}" if obj.superclass else "")
        lines.append(pad + head)
        lines.append(pad + "{")
        for p in obj.declared():
            lines.append(inner + _property_line(p))
        for m in obj.methods:
            lines.append(inner + _method_line(m))
        lines.append(pad + "};")
        return "\n".join(lines) + "\n"
    raise TypeError(f"not a WMI object: {type(obj).__name__}")


def render(obj) -> str:
    text = _render(obj)
    deco = getattr(obj, "decoration", None)
    if deco:
        text = f"// \\\\{deco[0]}\\{deco[1]}\n" + text
    return text
