"""Bytes <-> objects for the encodings carried inside WMI calls.

Pure functions, no I/O and no packet knowledge; they read wmiscope.spec, never dissectors:
  wmio          MS-WMIO objects (EncodingUnit, ObjectBlock, classes, instances)
  object_array  MS-WMI 2.2.14 ObjectArray (WBEMDATA) and its classID cache
  context       MS-WMI 2.2.13 IWbemContextBuffer
  refresher     MS-WMI 2.2.15-2.2.19 refresher blobs
  objref        MS-DCOM 2.2.18-19 OBJREF (all four flavors), STDOBJREF, DUALSTRINGARRAY
  guid          MS-DTYP 2.3.4 GUIDs as text
"""

from .errors import DecodeError, EncodeError

__all__ = ["DecodeError", "EncodeError"]
