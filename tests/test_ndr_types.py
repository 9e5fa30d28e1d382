"""The one grammar of the interface table's type strings (wmiscope.spec.ndr_types).

The decoder, the encoder, the transcript and the correlation all read types through it,
so a type string it misreads would misdecode every call of that method; one it cannot
read must be refused, never taken as "no size".
"""

from __future__ import annotations

import pytest

from wmiscope.dissectors import interpreter, operations, wmi
from wmiscope.spec import interfaces as I
from wmiscope.spec import ndr_types as T


def test_every_type_string_of_the_table_parses_and_keeps_its_text():
    strings = T.table_type_strings()
    assert len(strings) > 600
    kinds = set()
    for where, s in strings:
        tree = T.parse(s)
        assert tree.text == s, where
        kinds.add(type(tree).__name__)
    assert kinds >= {"Primitive", "Builtin", "Struct", "InterfacePointer", "Unique", "Array", "VArray"}


def test_trees_say_what_the_idl_says():
    t = T.parse("out varray<IWbemClassObject*,uCount,puReturned>".split()[1])
    assert isinstance(t, T.VArray) and (t.size, t.length) == ("uCount", "puReturned")
    assert T.pointer_interface(t.element) == "IWbemClassObject"
    u = T.parse("unique<array<WBEM_REFRESHED_OBJECT,plNumObjects>>")
    assert T.element(u) == T.Struct("WBEM_REFRESHED_OBJECT", "WBEM_REFRESHED_OBJECT")
    assert T.pointer_interface(T.parse("unique<IWbemCallResult*>")) == "IWbemCallResult"
    assert T.pointer_interface(T.parse("BSTR")) is None
    assert T.parse("varray<byte,16,16>").size == 16


@pytest.mark.parametrize("text,scope,value", [
    ("(size+7)&~7", {"size": 9}, 16),            # ORPC_EXTENT.data (MS-DCOM 2.2.13.1): rounded up to 8
    ("(size+7)&~7", {"size": 16}, 16),
    ("(size+1)&~1", {"size": 3}, 4),             # ORPC_EXTENT_ARRAY.extent: rounded up to even
    ("a+b&c", {"a": 1, "b": 2, "c": 6}, 2),      # C precedence: + before &
    ("a|b&c", {"a": 1, "b": 2, "c": 6}, 3),
    ("2*n+1", {"n": 5}, 11),
])
def test_size_expressions_parse_and_evaluate(text, scope, value):
    e = T.parse(f"array<byte,{text}>").size
    assert isinstance(e, T.Expr) and e.text == text
    assert e.evaluate(scope.get) == value
    assert e.evaluate({}.get) is None             # a name not decoded yet: unknown, not zero


def test_table_expressions_are_expressions_not_none():
    fields = dict(I.STRUCTS["ORPC_EXTENT"]["fields"])
    size = T.parse(fields["data"]).size
    assert isinstance(size, T.Expr) and size.names() == {"size"}


@pytest.mark.parametrize("bad", [
    "array<byte>", "array<byte,n,m>", "varray<byte,n>", "unique<>", "unique<byte", "array<byte,(size+7>",
    "array<byte,size)>", "array<byte,>", "array<byte,a b>", "array<byte,size$2>", "array<byte,+>",
    "IFoo*", "NoSuchStruct", "ulong long", "list<byte>", "", "unique<ulong>>", "array<byte,n>>",
])
def test_strings_outside_the_grammar_are_rejected(bad):
    with pytest.raises(T.TypeStringError):
        T.parse(bad)


def test_the_interpreter_compiles_every_method_through_the_grammar():
    compiled = failed = 0
    for i in I.INTERFACES:
        for m in i["methods"]:
            plan = wmi.method_plan(i["name"], m["opnum"])
            if plan.error:
                failed += 1
                # only the OLE Automation structures whose fields the table leaves out
                assert "VARIANT" in plan.error or "EXCEPINFO" in plan.error, (i["name"], m["name"], plan.error)
            else:
                compiled += 1
    assert compiled > 100 and failed <= 2
    with pytest.raises(KeyError):
        interpreter._node("array<byte,(size+7>")


def test_the_correlation_reads_pointer_parameters_through_the_grammar():
    produces, passes = operations._pointer_params()
    assert produces[("IWbemServices", "ExecQuery")] == ("IEnumWbemClassObject",)
    assert produces[("IWbemServices", "GetObject")] == ("IWbemCallResult",)
    assert passes[("IWbemServices", "ExecQueryAsync")] == ("IWbemObjectSink",)
