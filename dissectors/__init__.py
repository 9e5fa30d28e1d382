"""The capture-to-calls pipeline, one module per stage (see DESIGN.md):

  capture     pcap/pcapng/gzip files and live interfaces -> link-layer frames -> TCP segments
  tcp         bidirectional TCP reassembly, gaps marked
  dcerpc      connection-oriented DCE/RPC PDUs, fragments, bind contexts, pairing
  auth        NTLMSSP, SPNEGO and Kerberos tokens carried in auth verifiers
  ndr         the small NDR reader the DCOM and WMI stubs are decoded with
  dcom        ORPCTHIS/ORPCTHAT, OBJREF, activation, the IPID registry
  interfaces  the one interface table (UUIDs, opnums, methods, parameters) as data
  pipeline    wires the stages together and counts what it saw
"""
