"""The one grammar of the interface table's type strings (see interfaces.py for their meaning).

Every reader of the table (the NDR interpreter that decodes and encodes, the transcript,
the correlation of calls, the generators) asks this module what a type string says
instead of taking the text apart itself. A string the grammar does not accept raises
`TypeStringError`: nothing is silently read as "no size".

    type   := "unique<" type ">"
            | "array<" type "," expr ">"              conformant array, size_is expr
            | "varray<" type "," expr "," expr ">"    conformant varying array (size_is, length_is)
            | IDENT "*"                               interface pointer (IDENT an interface of the table)
            | IDENT                                   primitive, built-in, or a structure of STRUCTS
    expr   := or ;  or := and ("|" and)* ;  and := sum ("&" sum)* ;
    sum    := prod (("+" | "-") prod)* ;  prod := unary ("*" unary)* ;
    unary  := "~" unary | "(" expr ")" | INT | IDENT   (C precedence; IDENT a parameter or field)

A size or length that is a plain name or number stays a `str` / `int` (the common case,
looked up directly); any other expression, such as ORPC_EXTENT's `(size+7)&~7`, is an `Expr`
the reader evaluates with `Expr.evaluate`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from . import interfaces as _if

__all__ = [
    "TypeStringError", "Expr", "Type", "Primitive", "Builtin", "Struct", "InterfacePointer", "Unique",
    "Array", "VArray", "PRIMITIVES", "BUILTINS", "parse", "strip_unique", "element", "pointer_interface",
    "table_type_strings",
]

# NDR primitives: name -> (size in octets, signed; None for floating point)
PRIMITIVES: dict[str, tuple[int, bool | None]] = {
    "byte": (1, False), "ushort": (2, False), "short": (2, True), "ulong": (4, False), "long": (4, True),
    "uhyper": (8, False), "hyper": (8, True), "float": (4, None), "double": (8, None),
    "HRESULT": (4, False), "error_status_t": (4, False),
}
# Built-in types with a fixed wire form the interpreter knows (interfaces.py docstring)
BUILTINS = frozenset(("GUID", "FILETIME", "wstring", "string", "BSTR", "MInterfacePointer"))


class TypeStringError(ValueError):
    """A type string (or a size expression in it) outside the grammar."""


# ---------------------------------------------------------------------------------------
# size expressions

@dataclass(frozen=True, slots=True)
class Expr:
    """A size_is / length_is expression other than a bare name or number."""

    text: str
    op: str                       # "+", "-", "*", "&", "|", "~"
    args: tuple                   # int | str | Expr each

    def names(self) -> set[str]:
        out = set()
        for a in self.args:
            if isinstance(a, str):
                out.add(a)
            elif isinstance(a, Expr):
                out |= a.names()
        return out

    def evaluate(self, lookup) -> int | None:
        """The value, with lookup(name) -> int | None for the names; None if any is unknown."""
        vals = []
        for a in self.args:
            v = a if isinstance(a, int) else (lookup(a) if isinstance(a, str) else a.evaluate(lookup))
            if v is None:
                return None
            vals.append(v)
        if self.op == "~":
            return ~vals[0]
        x, y = vals
        return {"+": x + y, "-": x - y, "*": x * y, "&": x & y, "|": x | y}[self.op]


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(.))")
_LEVELS = (("|",), ("&",), ("+", "-"), ("*",))


def _expr(text: str):
    tokens = []
    for num, ident, ch in _TOKEN.findall(text):
        tokens.append(int(num) if num else ident if ident else ch)
    tokens = [t for t in tokens if t != ""]
    if not tokens:
        raise TypeStringError(f"empty size expression in {text!r}")
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def binary(level: int):
        if level == len(_LEVELS):
            return unary()
        left = binary(level + 1)
        while isinstance(peek(), str) and peek() in _LEVELS[level]:
            op = take()
            left = Expr("", op, (left, binary(level + 1)))
        return left

    def unary():
        t = take() if peek() is not None else None
        if t == "~":
            return Expr("", "~", (unary(),))
        if t == "(":
            inner = binary(0)
            if peek() != ")":
                raise TypeStringError(f"unbalanced parenthesis in size expression {text!r}")
            take()
            return inner
        if isinstance(t, int) or (isinstance(t, str) and re.fullmatch(r"[A-Za-z_]\w*", t)):
            return t
        raise TypeStringError(f"unexpected {t!r} in size expression {text!r}")

    result = binary(0)
    if pos != len(tokens):
        raise TypeStringError(f"unexpected {tokens[pos]!r} in size expression {text!r}")
    if isinstance(result, Expr):
        result = Expr(text, result.op, result.args)
    return result


# ---------------------------------------------------------------------------------------
# type trees

@dataclass(frozen=True, slots=True)
class Type:
    text: str                     # the type string, as the table writes it


@dataclass(frozen=True, slots=True)
class Primitive(Type):
    name: str

    @property
    def size(self) -> int:
        return PRIMITIVES[self.name][0]


@dataclass(frozen=True, slots=True)
class Builtin(Type):
    name: str                     # GUID, FILETIME, wstring, string, BSTR, MInterfacePointer


@dataclass(frozen=True, slots=True)
class Struct(Type):
    name: str                     # a key of interfaces.STRUCTS (structure or union)


@dataclass(frozen=True, slots=True)
class InterfacePointer(Type):
    interface: str


@dataclass(frozen=True, slots=True)
class Unique(Type):
    inner: Type


@dataclass(frozen=True, slots=True)
class Array(Type):
    element: Type
    size: int | str | Expr


@dataclass(frozen=True, slots=True)
class VArray(Type):
    element: Type
    size: int | str | Expr
    length: int | str | Expr


def _split_args(s: str, text: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
            if depth < 0:
                raise TypeStringError(f"unbalanced '>' in {text!r}")
        elif ch == "," and depth == 0:
            out.append(s[start:i].strip())
            start = i + 1
    if depth:
        raise TypeStringError(f"unbalanced '<' in {text!r}")
    out.append(s[start:].strip())
    return out


_IDENT = re.compile(r"[A-Za-z_]\w*")
_ARITY = {"unique": 1, "array": 2, "varray": 3}


@functools.lru_cache(maxsize=None)
def parse(text: str) -> Type:
    """The tree of a type string; TypeStringError if it is outside the grammar or names a
    type the table does not have."""
    if not isinstance(text, str):
        raise TypeStringError(f"a type string is text, not {type(text).__name__}")
    t = text.strip()
    lt = t.find("<")
    if lt > 0:
        kind = t[:lt]
        if kind not in _ARITY or not t.endswith(">"):
            raise TypeStringError(f"{text!r}: expected unique<...>, array<...> or varray<...>")
        args = _split_args(t[lt + 1:-1], text)
        if len(args) != _ARITY[kind]:
            raise TypeStringError(f"{text!r}: {kind}<> takes {_ARITY[kind]} argument(s), not {len(args)}")
        inner = parse(args[0])
        if kind == "unique":
            return Unique(t, inner)
        if kind == "array":
            return Array(t, inner, _expr(args[1]))
        return VArray(t, inner, _expr(args[1]), _expr(args[2]))
    if t.endswith("*"):
        name = t[:-1]
        if _if.interface_by_name(name) is None:
            raise TypeStringError(f"{text!r}: {name} is not an interface of the table")
        return InterfacePointer(t, name)
    if not _IDENT.fullmatch(t):
        raise TypeStringError(f"{text!r} is not a type string")
    if t in PRIMITIVES:
        return Primitive(t, t)
    if t in BUILTINS:
        return Builtin(t, t)
    if t in _if.STRUCTS:
        return Struct(t, t)
    raise TypeStringError(f"type {t!r} is not in the table's vocabulary")


# ---------------------------------------------------------------------------------------
# questions the readers ask

def strip_unique(t: Type) -> Type:
    """The type a chain of [unique] pointers points to."""
    while isinstance(t, Unique):
        t = t.inner
    return t


def element(t: Type) -> Type:
    """The element type of an (optionally [unique]) array, else the type itself (unique stripped)."""
    t = strip_unique(t)
    return t.element if isinstance(t, (Array, VArray)) else t


def pointer_interface(t: Type) -> str | None:
    """The interface an (optionally [unique]) interface pointer parameter carries."""
    t = strip_unique(t)
    return t.interface if isinstance(t, InterfacePointer) else None


def table_type_strings() -> list[tuple[str, str]]:
    """(where, type string) of every type the table writes: parameters, return values,
    structure fields, union switch types and arms."""
    out = []
    for i in _if.INTERFACES:
        for m in i["methods"]:
            where = f"{i['name']}::{m['name']}"
            out.append((where + " returns", m["returns"]))
            out += [(f"{where} {p['name']}", p["type"]) for p in m["params"]]
    for name, s in _if.STRUCTS.items():
        out += [(f"{name}.{f}", t) for f, t in s["fields"]]
        u = s.get("union")
        if u:
            out.append((f"{name} switch", u["switch_type"]))
            out += [(f"{name}.{arm}", t) for _, arm, t in u["arms"]]
    return out
