"""MS-DCOM constants as data: OBJREF flavors, tower ids, ORPC flags.

  OBJREF_FLAGS   MS-DCOM 2.2.18.1: the flags field of an OBJREF names its flavor
  TOWER_IDS      MS-DCOM 2.2.19.3 (C706 appendix I): the protocol sequence of a STRINGBINDING
  ORPC_FLAGS     MS-DCOM 2.2.13.3 (ORPCINFOFLAGS): the flags of ORPCTHIS, with the words the
                 MS-WMI section 4 traces print for them
"""

from __future__ import annotations

OBJREF_SIGNATURE = 0x574F454D                   # "MEOW" read as a little-endian ulong
OBJREF_EXTENDED_SIGNATURE = 0x4E535956          # Signature1 / Signature2 of OBJREF_EXTENDED

# flag value, name, the JSON records' short name of the flavor, the traces' name of it
OBJREF_FLAGS: list[tuple[int, str, str, str]] = [
    (0x1, "OBJREF_STANDARD", "standard", "OBJREFSTANDARD"),
    (0x2, "OBJREF_HANDLER", "handler", "OBJREFHANDLER"),
    (0x4, "OBJREF_CUSTOM", "custom", "OBJREFCUSTOM"),
    (0x8, "OBJREF_EXTENDED", "extended", "OBJREFEXTENDED"),
]

TOWER_IDS: dict[int, str] = {
    0x04: "ncacn_dnet_nsp", 0x07: "ncacn_ip_tcp", 0x08: "ncadg_ip_udp", 0x09: "ncacn_nb_tcp",
    0x0C: "ncacn_spx", 0x0D: "ncacn_nb_ipx", 0x0E: "ncadg_ipx", 0x0F: "ncacn_np",
    0x10: "ncalrpc", 0x12: "ncacn_nb_nb", 0x16: "ncacn_at_dsp", 0x17: "ncadg_at_ddp",
    0x1A: "ncacn_vns_spp", 0x1D: "ncadg_mq", 0x1F: "ncacn_http",
}

ORPC_FLAGS: dict[int, tuple[str, str]] = {
    0: ("ORPCFNUL", "No additional information in this packet"),
    1: ("ORPCFLOCAL", "Local call to this computer"),
    2: ("ORPCFRESERVED1", "Reserved"), 4: ("ORPCFRESERVED2", "Reserved"),
    8: ("ORPCFRESERVED3", "Reserved"), 16: ("ORPCFRESERVED4", "Reserved"),
}
