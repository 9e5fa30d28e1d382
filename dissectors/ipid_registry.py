"""The IPID registry (MS-DCOM 3.1.1.1, 3.2.1): which IPID is which interface of which object.

Every OBJREF seen on the wire, every RemQueryInterface result and every activation reply
teaches it which IPID is which interface of which object (OXID, OID) and where its
exporter listens; OXID resolution teaches it the exporters' bindings. A request's object
UUID then names its interface on any connection, sealed or not. One registry is shared by
every connection of an analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.objref import DualStringArray, ObjRef, hex64
from ..spec import interfaces as _if
from .ndr import GUID_NULL

__all__ = ["IpidEntry", "OxidEntry", "IpidRegistry"]


@dataclass(slots=True)
class IpidEntry:
    ipid: str
    iid: str | None = None
    oxid: int | None = None
    oid: int | None = None
    resolver: DualStringArray | None = None    # saResAddr of the OBJREF that carried it
    frame: int | None = None                   # where it was first learned
    conn: int | None = None
    source: str | None = None                  # objref | remqi | activation | resolver
    public_refs: int | None = None

    @property
    def interface(self) -> str | None:
        return _if.interface_name(self.iid)

    def to_dict(self) -> dict:
        return {"ipid": self.ipid, "iid": self.iid, "interface": self.interface, "oxid": hex64(self.oxid),
                "oid": hex64(self.oid), "frame": self.frame, "conn": self.conn, "source": self.source,
                "resolver": self.resolver.bindings_text() if self.resolver else None}


@dataclass(slots=True)
class OxidEntry:
    oxid: int
    bindings: DualStringArray | None = None    # the object exporter's string bindings
    ipid_remunknown: str | None = None
    authn_hint: int | None = None
    version: str | None = None
    frame: int | None = None

    def to_dict(self) -> dict:
        return {"oxid": hex64(self.oxid), "bindings": self.bindings.bindings_text() if self.bindings else None,
                "ipid_remunknown": self.ipid_remunknown, "authn_hint": self.authn_hint,
                "version": self.version, "frame": self.frame}


class IpidRegistry:
    """IPID -> interface / object / exporter, OXID -> bindings: shared by every connection.

    Bounded for endless (live) traffic: past ``max_ipids`` IPIDs (``max_oxids`` OXIDs)
    the least recently learned or used one is forgotten; a call on a forgotten IPID is
    named from its bind context, as one on an IPID never seen."""

    def __init__(self, *, max_ipids: int = 1 << 13, max_oxids: int = 1 << 11) -> None:
        self.ipids: dict[str, IpidEntry] = {}
        self.oxids: dict[int, OxidEntry] = {}
        self.conflicts = 0                     # IPIDs re-announced with an unrelated IID
        self.max_ipids = max_ipids
        self.max_oxids = max_oxids
        self.forgotten = 0                     # entries given up to stay within the bounds

    def __len__(self) -> int:
        return len(self.ipids)

    def __contains__(self, ipid) -> bool:
        return isinstance(ipid, str) and ipid.lower() in self.ipids

    def lookup(self, ipid: str | None) -> IpidEntry | None:
        if not ipid:
            return None
        key = ipid.lower()
        e = self.ipids.pop(key, None)
        if e is not None:
            self.ipids[key] = e                # most recently used last: eviction takes the front
        return e

    def oxid(self, oxid: int | None) -> OxidEntry | None:
        return self.oxids.get(oxid) if oxid is not None else None

    def learn_ipid(self, ipid: str, iid: str | None = None, *, oxid: int | None = None, oid: int | None = None,
                   resolver: DualStringArray | None = None, frame: int | None = None, conn: int | None = None,
                   source: str | None = None, public_refs: int | None = None) -> IpidEntry | None:
        key = ipid.lower()
        if key == GUID_NULL:
            return None
        iid = iid.lower() if iid else None
        e = self.ipids.get(key)
        if e is None:
            e = IpidEntry(key, iid, oxid, oid, resolver, frame, conn, source, public_refs)
            self.ipids[key] = e
            if len(self.ipids) > self.max_ipids:
                del self.ipids[next(iter(self.ipids))]
                self.forgotten += 1
            return e
        if iid and iid != e.iid:
            if e.iid is None or _if.derives_from(iid, e.iid):
                e.iid = iid                    # a more derived interface of the same pointer
            elif not _if.derives_from(e.iid, iid):
                self.conflicts += 1
        if e.oxid is None:
            e.oxid = oxid
        if e.oid is None:
            e.oid = oid
        if e.resolver is None:
            e.resolver = resolver
        if e.frame is None:
            e.frame, e.conn, e.source = frame, conn, source
        return e

    def learn_objref(self, objref: ObjRef, *, iid: str | None = None, frame: int | None = None,
                     conn: int | None = None, source: str = "objref") -> IpidEntry | None:
        s = objref.std
        if s is None:
            return None
        return self.learn_ipid(s.ipid, iid or objref.iid, oxid=s.oxid, oid=s.oid, resolver=objref.resolver,
                               frame=frame, conn=conn, source=source, public_refs=s.public_refs)

    def learn_oxid(self, oxid: int, *, bindings: DualStringArray | None = None, ipid_remunknown: str | None = None,
                   authn_hint: int | None = None, version: str | None = None, frame: int | None = None) -> OxidEntry:
        e = self.oxids.get(oxid)
        if e is None:
            e = self.oxids[oxid] = OxidEntry(oxid, frame=frame)
            if len(self.oxids) > self.max_oxids:
                del self.oxids[next(iter(self.oxids))]
                self.forgotten += 1
        if bindings is not None:
            e.bindings = bindings
        if ipid_remunknown is not None:
            e.ipid_remunknown = ipid_remunknown.lower()
        if authn_hint is not None:
            e.authn_hint = authn_hint
        if version is not None:
            e.version = version
        return e

    def bindings_for(self, ipid: str) -> list[str]:
        """Where the object behind `ipid` is reached: its exporter's bindings when its OXID
        was resolved, else the resolver bindings its OBJREF carried."""
        e = self.lookup(ipid)
        if e is None:
            return []
        ox = self.oxids.get(e.oxid) if e.oxid is not None else None
        if ox is not None and ox.bindings is not None:
            return ox.bindings.bindings_text()
        return e.resolver.bindings_text() if e.resolver else []

    def as_dict(self) -> dict:
        return {"ipids": [e.to_dict() for e in self.ipids.values()],
                "oxids": [e.to_dict() for e in self.oxids.values()], "conflicts": self.conflicts}
