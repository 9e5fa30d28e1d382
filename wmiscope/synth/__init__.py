"""Builders for synthetic captures: what Windows would put on the wire, made by us.

  wire          pcap files, TCP sessions, DCE/RPC PDUs (bind, request, fragments...)
  dcom_session  DCOM as a WMI client drives it: hosts, associations, the activation on
                port 135, RemQueryInterface / RemRelease, the WMI login sequence
  sealing       packet privacy: the NTLM and Kerberos sealers, their DER / SPNEGO
                tokens, and the TEST-ONLY sample credentials and keytab
  wmi_objects   the WMI classes and instances the samples carry, ObjectArrays with
                fixed classIDs
  samples       the scenarios of the sample captures in pcaps/ (`python -m wmiscope.synth`)

The package stays in the source tree and out of the wheel (its credentials are test-only).

The wire names are re-exported here (`synth.PcapWriter`, `synth.request`, ...): tests
that only frame bytes need nothing else, and importing them stays cheap (wire takes only
the dissectors' constants; the other modules pull in their encoders).
"""

from .wire import (ACK, FIN, NDR64_SYNTAX, NDR_SYNTAX, PFC_FIRST_FRAG, PFC_LAST_FRAG, PFC_OBJECT_UUID, PSH, RST,
                   SYN, Clock, PcapWriter, TcpSession, auth3, bind, bind_ack, fault, ipv4_tcp_frame, request, response)

__all__ = ["ACK", "FIN", "NDR64_SYNTAX", "NDR_SYNTAX", "PFC_FIRST_FRAG", "PFC_LAST_FRAG", "PFC_OBJECT_UUID", "PSH",
           "RST", "SYN", "Clock", "PcapWriter", "TcpSession", "auth3", "bind", "bind_ack", "fault", "ipv4_tcp_frame",
           "request", "response"]
