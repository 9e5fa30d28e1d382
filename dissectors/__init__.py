"""The capture-to-calls pipeline, one module per stage (see DESIGN.md):

  capture          pcap/pcapng/gzip files and live interfaces -> link-layer frames -> TCP segments
  tcp              bidirectional TCP reassembly, gaps marked
  dcerpc           connection-oriented DCE/RPC PDUs, fragments, bind contexts, pairing
  auth             which token an auth verifier holds, SPNEGO / GSS-API / Netlogon framing; security contexts
  der              the bounded DER (X.690) reader Kerberos and SPNEGO tokens are read with
  ntlmssp          NTLMSSP messages (MS-NLMP 2.2)
  kerberos         Kerberos messages and per-message tokens (RFC 4120, 4121, 4757)
  credentials      the analyst's secrets and the key provider that unseals stubs with them
  crypto_ntlm      NTLMSSP session security (MS-NLMP 3.3, 3.4)
  crypto_kerberos  Kerberos keys, tickets and per-message tokens (RFC 3961, 4120, 4121)
  ndr              the NDR 2.0 reader and writer the DCOM and WMI stubs are read and written with
  orpc             ORPCTHIS / ORPCTHAT, the implicit first parameter of every ORPC call (MS-DCOM 2.2.13)
  activation       the activation property blobs of IRemoteSCMActivator (MS-DCOM 2.2.22)
  ipid_registry    which IPID is which interface of which object, and the OXID bindings
  dcom             names every call, decodes the DCOM methods, feeds the IPID registry
  interpreter      the table interpreter: any method's parameters decoded and encoded from its signature
  wmi              MS-WMI's hooks into it (MS-WMIO objects, ObjectArrays, refresher blobs) and the WMI decoder
  operations       which WMI calls belong together (enumerators, call results, sinks, logins)
  transcript       every message in the dialect of the MS-WMI section 4 traces
  records          the records that flow between the stages
  pipeline         wires the stages together and counts what it saw

The interface table and the WBEM / DCOM constants they read live in wmiscope.spec; the
OBJREF and DUALSTRINGARRAY declarations in formats/objref.py.
"""
