"""Names for the numbers in WMI stubs, as data: HRESULTs, flag sets and enumerations.

  WBEMSTATUS (MS-WMI 2.2.11)          every status a WMI method returns, with the spec's
                                      description of each (WBEM_S_NO_ERROR carries the text
                                      the section 4 traces print for it)
  Appendix C (MS-WMI 8)               the further WBEM_* codes, local-only or unused on the wire
  MS-ERREF 2.1 / 2.2                  the COM, RPC and Win32 HRESULTs a DCOM call can return
  flag sets and enumerations          2.2.5 - 2.2.10, 2.2.12, 2.2.17, 2.2.24, 2.2.25
  PARAM_ENUMS / FIELD_ENUMS           which parameter of which method (which structure field)
                                      is read with which of them

`hresult(v)` and `describe(names, v)` turn a number into what the decoder puts in a
parameter: {"value", "name", "text"} for an enumeration or a status,
{"flags", "names"} for a flag set.
"""

from __future__ import annotations

__all__ = [
    "WBEMSTATUS", "APPENDIX_C", "ERREF", "ENUMS", "PARAM_ENUMS", "FIELD_ENUMS",
    "hresult", "hresult_name", "describe", "annotation", "field_annotation", "enum_value", "value_of",
]

# ---------------------------------------------------------------------------------------
# WBEMSTATUS (2.2.11): name, value, description

WBEMSTATUS: list[tuple[str, int, str]] = [
    ("WBEM_S_NO_ERROR", 0x00000000, "Indicates a successful completion to the method call."),
    ("WBEM_S_FALSE", 0x00000001, "Either no more CIM objects are available, the number of returned CIM objects "
                                 "is less than the number requested, or this is the end of an enumeration."),
    ("WBEM_S_TIMEDOUT", 0x00040004, "The attempt to establish the connection has expired."),
    ("WBEM_S_NEW_STYLE", 0x000400FF, "The server supports ObjectArray encoding; see section 3.1.4.2.1 for details."),
    ("WBEM_S_PARTIAL_RESULTS", 0x00040010, "The server could not return all the objects and/or properties requested."),
    ("WBEM_E_FAILED", 0x80041001, "The server has encountered an unknown error while processing the client's request."),
    ("WBEM_E_NOT_FOUND", 0x80041002, "The object specified in the path does not exist."),
    ("WBEM_E_ACCESS_DENIED", 0x80041003, "The permission required to perform the operation is not helped by the "
                                         "security principal performing the operation."),
    ("WBEM_E_PROVIDER_FAILURE", 0x80041004, "The server has encountered an unknown error while processing the "
                                            "client's request."),
    ("WBEM_E_TYPE_MISMATCH", 0x80041005, "The server has found an incorrect data type associated with property or "
                                         "input parameter in client's request."),
    ("WBEM_E_OUT_OF_MEMORY", 0x80041006, "The server ran out of memory before completing the operation."),
    ("WBEM_E_INVALID_CONTEXT", 0x80041007, "The IWbemContext object sent as part of client's request does not "
                                           "contain the required properties."),
    ("WBEM_E_INVALID_PARAMETER", 0x80041008, "One or more of the parameters passed to the method is not valid."),
    ("WBEM_E_NOT_AVAILABLE", 0x80041009, "The resource is unavailable."),
    ("WBEM_E_CRITICAL_ERROR", 0x8004100A, "The server has encountered a catastrophic failure and cannot process any "
                                          "client's request."),
    ("WBEM_E_NOT_SUPPORTED", 0x8004100C, "The attempted operation is not supported."),
    ("WBEM_E_INVALID_SUPERCLASS", 0x8004100D, "When putting a class, the server did not find the parent class "
                                              "specified for the new class to be added."),
    ("WBEM_E_INVALID_NAMESPACE", 0x8004100E, "When connecting to WMI, the namespace specified is not found."),
    ("WBEM_E_INVALID_OBJECT", 0x8004100F, "The CIM instance passed to the server doesn't have required information."),
    ("WBEM_E_INVALID_CLASS", 0x80041010, "The class name is invalid."),
    ("WBEM_E_PROVIDER_NOT_FOUND", 0x80041011, "The server has encountered an implementation-specific error."),
    ("WBEM_E_INVALID_PROVIDER_REGISTRATION", 0x80041012,
     "The server has encountered an implementation-specific error."),
    ("WBEM_E_PROVIDER_LOAD_FAILURE", 0x80041013, "The server has encountered an implementation-specific error."),
    ("WBEM_E_INITIALIZATION_FAILURE", 0x80041014, "The server has encountered failure during its initialization."),
    ("WBEM_E_TRANSPORT_FAILURE", 0x80041015, "There is a network problem detected in reaching the server."),
    ("WBEM_E_INVALID_OPERATION", 0x80041016, "The operation performed is not valid."),
    ("WBEM_E_INVALID_QUERY", 0x80041017, "The query sent to the server doesn't semantically conform to the rules "
                                         "specified in section 2.2.1."),
    ("WBEM_E_INVALID_QUERY_TYPE", 0x80041018, "The query language specified is invalid."),
    ("WBEM_E_ALREADY_EXISTS", 0x80041019, "When a Put method is called for a CIM object with the flag "
                                          "WBEM_FLAG_CREATE_ONLY and the object already exists, "
                                          "WBEM_E_ALREADY_EXISTS is returned."),
    ("WBEM_E_UNEXPECTED", 0x8004101D, "An unspecified error has occurred."),
    ("WBEM_E_INCOMPLETE_CLASS", 0x80041020, "The object passed doesn't correspond to any of classes registered "
                                            "with WMI."),
    ("WBEM_E_PROVIDER_NOT_CAPABLE", 0x80041024, "The server does not support the requested operation on the given "
                                                "CIM class."),
    ("WBEM_E_CLASS_HAS_CHILDREN", 0x80041025, "The class cannot be updated because it has derived classes."),
    ("WBEM_E_CLASS_HAS_INSTANCES", 0x80041026, "The class cannot be updated because it has instances."),
    ("WBEM_E_ILLEGAL_NULL", 0x80041028, "The server identifies that one of the non-nullable NULL properties was set "
                                        "to NULL in the Put operation."),
    ("WBEM_E_INVALID_CIM_TYPE", 0x8004102D, "The CIM type specified is not valid."),
    ("WBEM_E_INVALID_METHOD", 0x8004102E, "The CIM object does not implement the specified method."),
    ("WBEM_E_INVALID_METHOD_PARAMETERS", 0x8004102F, "One or more of the parameters passed to the CIM method are "
                                                     "not valid."),
    ("WBEM_E_INVALID_PROPERTY", 0x80041031, "The property for which the operation is made is no longer present in "
                                            "the CIM database."),
    ("WBEM_E_CALL_CANCELLED", 0x80041032, "The server canceled the execution of the request due to resource "
                                          "constraints. The client can try the call again."),
    ("WBEM_E_SHUTTING_DOWN", 0x80041033, "The server cannot process the requested operation as it is shutting down."),
    ("E_NOTIMPL", 0x80004001, "The attempted operation is not implemented. The value of this element is as "
                              "specified in [MS-ERREF] section 2.1."),
    ("WBEM_E_INVALID_OBJECT_PATH", 0x8004103A, "The object path is not syntactically valid."),
    ("WBEM_E_OUT_OF_DISK_SPACE", 0x8004103B, "Insufficient resources on the server to satisfy the client's request."),
    ("WBEM_E_UNSUPPORTED_PUT_EXTENSION", 0x8004103D, "The server has encountered an implementation-specific error."),
    ("WBEM_E_SERVER_TOO_BUSY", 0x80041045, "The server cannot complete the operation at this point."),
    ("WBEM_E_METHOD_NOT_IMPLEMENTED", 0x80041055, "An attempt was made to execute a method not marked with "
                                                  "\"implemented\" in this class or any of its derived classes."),
    ("WBEM_E_METHOD_DISABLED", 0x80041056, "An attempt was made to execute a method marked with \"disabled\" "
                                           "qualifier in MOF."),
    ("WBEM_E_UNPARSABLE_QUERY", 0x80041058, "The query sent to the server doesn't syntactically conform to the "
                                            "rules specified in section 2.2.1."),
    ("WBEM_E_NOT_EVENT_CLASS", 0x80041059, "The FROM clause of WQL Event Query (section 2.2.1.2) represents a class "
                                           "that is not derived from Event."),
    ("WBEM_E_MISSING_GROUP_WITHIN", 0x8004105A, "The GROUP BY clause of WQL query does not have WITHIN specified."),
    ("WBEM_E_MISSING_AGGREGATION_LIST", 0x8004105B, "The GROUP BY clause was used with aggregation, which is not "
                                                    "supported."),
    ("WBEM_E_PROPERTY_NOT_AN_OBJECT", 0x8004105C, "The GROUP BY clause references an object that is an embedded "
                                                  "object without using Dot notation."),
    ("WBEM_E_AGGREGATING_BY_OBJECT", 0x8004105D, "The GROUP BY clause references an object that is an embedded "
                                                 "object without using Dot notation."),
    ("WBEM_E_BACKUP_RESTORE_WINMGMT_RUNNING", 0x80041060, "A request for backing up or restoring the CIM database "
                                                          "was sent while the server was using it."),
    ("WBEM_E_QUEUE_OVERFLOW", 0x80041061, "The EventQueue on the server has more events than can be consumed by the "
                                          "client."),
    ("WBEM_E_PRIVILEGE_NOT_HELD", 0x80041062, "The server could not find the required privilege for performing "
                                              "operations on CIM classes or CIM instances."),
    ("WBEM_E_INVALID_OPERATOR", 0x80041063, "An operator in the WQL query is invalid for this property type."),
    ("WBEM_E_CANNOT_BE_ABSTRACT", 0x80041065, "The CIM class on the server had the abstract qualifier set to true, "
                                              "while its parent class does not have the abstract qualifier set to "
                                              "false."),
    ("WBEM_E_AMENDED_OBJECT", 0x80041066, "A CIM instance with amended qualifier set to true is being updated "
                                          "without WBEM_FLAG_USE_AMENDED_QUALIFIERS flag."),
    ("WBEM_E_QUOTA_VIOLATION", 0x8004106C, "Quota violation."),
    ("WBEM_E_VETO_PUT", 0x8004107A, "The server cannot perform a PUT operation because it is not supported for the "
                                    "given CIM class."),
    ("WBEM_E_PROVIDER_SUSPENDED", 0x80041081, "The server has encountered an implementation-specific error."),
    ("WBEM_E_ENCRYPTED_CONNECTION_REQUIRED", 0x80041087, "The server has encountered an implementation-specific "
                                                         "error."),
    ("WBEM_E_PROVIDER_TIMED_OUT", 0x80041088, "The provider did not respond in time."),
    ("WBEM_E_NO_KEY", 0x80041089, "The IWbemServices::PutInstance or IWbemServices::PutInstanceAsync operation was "
                                  "attempted with no value set for the key properties."),
    ("WBEM_E_PROVIDER_DISABLED", 0x8004108A, "The server has encountered an implementation-specific error."),
    ("WBEM_E_REGISTRATION_TOO_BROAD", 0x80042001, "The server has encountered an implementation-specific error."),
    ("WBEM_E_REGISTRATION_TOO_PRECISE", 0x80042002, "The WQL query for intrinsic events for a class issued without "
                                                    "a WITHIN clause."),
]

# Appendix C: defined by WMI, local-only or unused on the wire (name, value, use).
APPENDIX_C: list[tuple[str, int, str]] = [
    (n, v, u) for n, v, u in (
        ("WBEM_E_INVALID_STREAM", 0x8004100B, "local"), ("WBEM_E_OVERRIDE_NOT_ALLOWED", 0x8004101A, "local"),
        ("WBEM_E_PROPAGATED_QUALIFIER", 0x8004101B, "local"), ("WBEM_E_PROPAGATED_PROPERTY", 0x8004101C, "local"),
        ("WBEM_E_ILLEGAL_OPERATION", 0x8004101E, "local"), ("WBEM_E_CANNOT_BE_KEY", 0x8004101F, "local"),
        ("WBEM_E_INVALID_SYNTAX", 0x80041021, "local"), ("WBEM_E_NONDECORATED_OBJECT", 0x80041022, "unused"),
        ("WBEM_E_READ_ONLY", 0x80041023, "local"), ("WBEM_E_QUERY_NOT_IMPLEMENTED", 0x80041027, "unused"),
        ("WBEM_E_INVALID_PROPERTY_TYPE", 0x8004102A, "local"), ("WBEM_E_CANNOT_BE_SINGLETON", 0x8004102C, "local"),
        ("WBEM_E_SYSTEM_PROPERTY", 0x80041030, "local"), ("WBEM_E_PROPAGATED_METHOD", 0x80041034, "local"),
        ("WBEM_E_UNSUPPORTED_PARAMETER", 0x80041035, "unused"), ("WBEM_E_MISSING_PARAMETER_ID", 0x80041036, "local"),
        ("WBEM_E_INVALID_PARAMETER_ID", 0x80041037, "local"),
        ("WBEM_E_NONCONSECUTIVE_PARAMETER_IDS", 0x80041038, "local"),
        ("WBEM_E_PARAMETER_ID_ON_RETRVAL", 0x80041039, "local"), ("WBEM_E_BUFFER_TOO_SMALL", 0x8004103C, "local"),
        ("WBEM_E_UNKNOWN_OBJECT_TYPE", 0x8004103E, "local"), ("WBEM_E_UNKNOWN_PACKET_TYPE", 0x8004103F, "local"),
        ("WBEM_E_MARSHAL_VERSION_MISMATCH", 0x80041040, "local"),
        ("WBEM_E_MARSHAL_INVALID_SIGNATURE", 0x80041041, "local"), ("WBEM_E_INVALID_QUALIFIER", 0x80041042, "local"),
        ("WBEM_E_INVALID_DUPLICATE_PARAMETER", 0x80041043, "local"), ("WBEM_E_TOO_MUCH_DATA", 0x80041044, "unused"),
        ("WBEM_E_INVALID_FLAVOR", 0x80041046, "local"), ("WBEM_E_CIRCULAR_REFERENCE", 0x80041047, "local"),
        ("WBEM_E_UNSUPPORTED_CLASS_UPDATE", 0x80041048, "unused"),
        ("WBEM_E_CANNOT_CHANGE_KEY_INHERITANCE", 0x80041049, "unused"),
        ("WBEM_E_CANNOT_CHANGE_INDEX_INHERITANCE", 0x80041050, "unused"),
        ("WBEM_E_TOO_MANY_PROPERTIES", 0x80041051, "local"), ("WBEM_E_UPDATE_TYPE_MISMATCH", 0x80041052, "local"),
        ("WBEM_E_UPDATE_OVERRIDE_NOT_ALLOWED", 0x80041053, "local"),
        ("WBEM_E_UPDATE_PROPAGATED_METHOD", 0x80041054, "local"), ("WBEM_E_REFRESHER_BUSY", 0x80041057, "local"),
        ("WBEM_E_LOCAL_ONLY_CREDENTIALS", 0x80041064, "local"), ("WBEM_E_CLIENT_TOO_SLOW", 0x80041067, "unused"),
        ("WBEM_E_NULL_SECURITY_DESCRIPTOR", 0x80041068, "unused"),
        ("WBEM_E_INVALID_ASSOCIATION", 0x8004106A, "unused"), ("WBEM_E_AMBIGUOUS_OPERATION", 0x8004106B, "unused"),
        ("WBEM_E_RESERVED_001", 0x8004106D, "unused"), ("WBEM_E_RESERVED_002", 0x8004106E, "unused"),
        ("WBEM_E_UNSUPPORTED_LOCAL_ONLY", 0x8004106F, "unused"), ("WBEM_E_HANDLE_OUT_OF_DATE", 0x80041070, "unused"),
        ("WBEM_E_CONNECTION_FAILED", 0x80041071, "unused"), ("WBEM_E_INVALID_HANDLE_REQUEST", 0x80041072, "unused"),
        ("WBEM_E_PROPERTY_NAME_TOO_WIDE", 0x80041073, "unused"), ("WBEM_E_CLASS_NAME_TOO_WIDE", 0x80041074, "unused"),
        ("WBEM_E_METHOD_NAME_TOO_WIDE", 0x80041075, "unused"),
        ("WBEM_E_QUALIFIER_NAME_TOO_WIDE", 0x80041076, "unused"), ("WBEM_E_RERUN_COMMAND", 0x80041077, "unused"),
        ("WBEM_E_DATABASE_VER_MISMATCH", 0x80041078, "unused"), ("WBEM_E_VETO_DELETE", 0x80041079, "unused"),
        ("WBEM_E_INVALID_LOCAL_ONLY", 0x80041080, "unused"),
        ("WBEM_E_SYNCHRONIZATION_REQUIRED", 0x80041082, "unused"), ("WBEM_E_NO_SCHEMA", 0x80041083, "unused"),
        ("WBEM_E_PROVIDER_ALREADY_REGISTERED", 0x80041084, "local"),
        ("WBEM_E_PROVIDER_NOT_REGISTERED", 0x80041085, "local"), ("WBEM_E_FATAL_TRANSPORT_ERROR", 0x80041086, "unused"),
        ("WBEM_S_ALREADY_EXISTS", 0x00040001, "unused"), ("WBEM_S_RESET_TO_DEFAULT", 0x00040002, "local"),
        ("WBEM_S_DIFFERENT", 0x00040003, "local"), ("WBEM_S_NO_MORE_DATA", 0x00040005, "local"),
        ("WBEM_S_OPERATION_CANCELLED", 0x00040006, "local"), ("WBEM_S_PENDING", 0x00040007, "unused"),
        ("WBEM_S_DUPLICATE_OBJECTS", 0x00040008, "unused"), ("WBEM_S_ACCESS_DENIED", 0x00040009, "local"),
        ("WBEM_S_SOURCE_NOT_AVAILABLE", 0x00040017, "local"),
    )
]
# the MOF compiler's WBEMMOF_E_* codes 0x80044001-0x80044031 (Appendix C): local only
_WBEMMOF_FIRST, _WBEMMOF_LAST = 0x80044001, 0x80044031

# MS-ERREF HRESULTs that COM/DCOM calls return besides WBEMSTATUS (2.1.1; Win32 codes as
# HRESULT_FROM_WIN32, 2.1.2 / 2.2).
ERREF: list[tuple[str, int, str]] = [
    ("S_OK", 0x00000000, "Operation successful."),
    ("S_FALSE", 0x00000001, "Operation successful but returned no results."),
    ("E_NOTIMPL", 0x80004001, "Not implemented."),
    ("E_NOINTERFACE", 0x80004002, "No such interface supported."),
    ("E_POINTER", 0x80004003, "Invalid pointer."),
    ("E_ABORT", 0x80004004, "Operation aborted."),
    ("E_FAIL", 0x80004005, "Unspecified error."),
    ("E_UNEXPECTED", 0x8000FFFF, "Catastrophic failure."),
    ("E_ACCESSDENIED", 0x80070005, "General access denied error."),
    ("E_HANDLE", 0x80070006, "Invalid handle."),
    ("E_OUTOFMEMORY", 0x8007000E, "Ran out of memory."),
    ("E_INVALIDARG", 0x80070057, "One or more arguments are invalid."),
    ("CO_E_ACCESSCHECKFAILED", 0x8001012A, "The access check failed on the server."),
    ("CO_E_FAILEDTOIMPERSONATE", 0x80010123, "Unable to impersonate DCOM client."),
    ("CO_E_FAILEDTOGETSECCTX", 0x80010124, "Unable to obtain server's security context."),
    ("CO_E_FAILEDTOOPENTHREADTOKEN", 0x80010125, "Unable to open the access token of the current thread."),
    ("CO_E_NOTINITIALIZED", 0x800401F0, "CoInitialize has not been called."),
    ("CO_E_CLASSSTRING", 0x800401F3, "Invalid class string."),
    ("CO_E_OBJNOTCONNECTED", 0x800401FD, "Object is not connected to server."),
    ("CO_E_RUNAS_LOGON_FAILURE", 0x8000401A, "The server process could not be started because the configured "
                                             "identity is incorrect."),
    ("CO_E_LAUNCH_PERMSSION_DENIED", 0x8000401B, "The client is not allowed to launch this server."),
    ("CO_E_SERVER_EXEC_FAILURE", 0x80080005, "Server execution failed."),
    ("CO_E_SERVER_STOPPING", 0x80080008, "The object exporter specified was not found or is stopping."),
    ("REGDB_E_CLASSNOTREG", 0x80040154, "Class not registered."),
    ("CLASS_E_NOAGGREGATION", 0x80040110, "Class does not support aggregation."),
    ("RPC_E_CALL_REJECTED", 0x80010001, "Call was rejected by callee."),
    ("RPC_E_CALL_CANCELED", 0x80010002, "Call was canceled by the message filter."),
    ("RPC_E_CONNECTION_TERMINATED", 0x80010006, "The connection terminated or is in a bogus state and can no longer "
                                                "be used."),
    ("RPC_E_SERVER_DIED", 0x80010007, "The callee is not available and disappeared; all connections are invalid. "
                                      "The call may have executed."),
    ("RPC_E_CLIENT_DIED", 0x80010008, "The caller is not available and disappeared."),
    ("RPC_E_INVALID_DATAPACKET", 0x80010009, "The data packet with the marshaled parameter data is incorrect."),
    ("RPC_E_CANTTRANSMIT_CALL", 0x8001000A, "The call was not transmitted properly; the message queue was full."),
    ("RPC_E_CLIENT_CANTMARSHAL_DATA", 0x8001000B, "The client could not marshal the parameter data."),
    ("RPC_E_CLIENT_CANTUNMARSHAL_DATA", 0x8001000C, "The client could not unmarshal the return data."),
    ("RPC_E_SERVER_CANTMARSHAL_DATA", 0x8001000D, "The server could not marshal the return data."),
    ("RPC_E_SERVER_CANTUNMARSHAL_DATA", 0x8001000E, "The server could not unmarshal the parameter data."),
    ("RPC_E_INVALID_DATA", 0x8001000F, "Received data is invalid."),
    ("RPC_E_INVALID_PARAMETER", 0x80010010, "A particular parameter is invalid and cannot be unmarshaled."),
    ("RPC_E_SERVER_DIED_DNE", 0x80010012, "The callee is not available and disappeared; all connections are "
                                          "invalid. The call did not execute."),
    ("RPC_E_SYS_CALL_FAILED", 0x80010100, "System call failed."),
    ("RPC_E_OUT_OF_RESOURCES", 0x80010101, "Could not allocate some required resource."),
    ("RPC_E_NOT_REGISTERED", 0x80010103, "The requested interface is not registered on the server object."),
    ("RPC_E_FAULT", 0x80010104, "RPC could not call the server or could not return the results of calling the "
                                "server."),
    ("RPC_E_SERVERFAULT", 0x80010105, "The server threw an exception."),
    ("RPC_E_CHANGED_MODE", 0x80010106, "Cannot change thread mode after it is set."),
    ("RPC_E_INVALIDMETHOD", 0x80010107, "The method called does not exist on the server."),
    ("RPC_E_DISCONNECTED", 0x80010108, "The object invoked has disconnected from its clients."),
    ("RPC_E_RETRY", 0x80010109, "The object invoked chose not to process the call now. Try again later."),
    ("RPC_E_SERVERCALL_RETRYLATER", 0x8001010A, "The message filter indicated that the application is busy."),
    ("RPC_E_SERVERCALL_REJECTED", 0x8001010B, "The message filter rejected the call."),
    ("RPC_E_INVALID_CALLDATA", 0x8001010C, "A call control interface was called with invalid data."),
    ("RPC_E_WRONG_THREAD", 0x8001010E, "The application called an interface that was marshaled for a different "
                                       "thread."),
    ("RPC_E_THREAD_NOT_INIT", 0x8001010F, "CoInitialize has not been called on the current thread."),
    ("RPC_E_VERSION_MISMATCH", 0x80010110, "The version of OLE on the client and server machines does not match."),
    ("RPC_E_INVALID_HEADER", 0x80010111, "OLE received a packet with an invalid header."),
    ("RPC_E_INVALID_EXTENSION", 0x80010112, "OLE received a packet with an invalid extension."),
    ("RPC_E_INVALID_IPID", 0x80010113, "The requested object or interface does not exist."),
    ("RPC_E_INVALID_OBJECT", 0x80010114, "The requested object does not exist."),
    ("RPC_E_CALL_COMPLETE", 0x80010117, "Call context cannot be accessed after call completed."),
    ("RPC_E_UNSECURE_CALL", 0x80010118, "Impersonate on unsecure calls is not supported."),
    ("RPC_E_TOO_LATE", 0x80010119, "Security must be initialized before any interfaces are marshaled or "
                                   "unmarshaled. It cannot be changed once initialized."),
    ("RPC_E_NO_GOOD_SECURITY_PACKAGES", 0x8001011A, "No security packages are installed on this machine or the "
                                                    "user is not logged on or there are no compatible security "
                                                    "packages between the client and server."),
    ("RPC_E_ACCESS_DENIED", 0x8001011B, "Access is denied."),
    ("RPC_E_REMOTE_DISABLED", 0x8001011C, "Remote calls are not allowed for this process."),
    ("RPC_E_INVALID_OBJREF", 0x8001011D, "The marshaled interface data packet (OBJREF) has an invalid or unknown "
                                         "format."),
    ("RPC_E_NO_CONTEXT", 0x8001011E, "No context is associated with this call."),
    ("RPC_E_TIMEOUT", 0x8001011F, "This operation returned because the time-out period expired."),
    ("RPC_E_UNEXPECTED", 0x8001FFFF, "An internal error occurred."),
    ("HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE)", 0x800706BA, "The RPC server is unavailable."),
    ("HRESULT_FROM_WIN32(RPC_S_CALL_FAILED)", 0x800706BE, "The remote procedure call failed."),
    ("HRESULT_FROM_WIN32(RPC_S_CALL_FAILED_DNE)", 0x800706BF, "The remote procedure call failed and did not execute."),
    ("HRESULT_FROM_WIN32(RPC_S_PROCNUM_OUT_OF_RANGE)", 0x800706D1, "The procedure number is out of range."),
    ("HRESULT_FROM_WIN32(RPC_S_SEC_PKG_ERROR)", 0x80070721, "A security package-specific error occurred."),
    ("HRESULT_FROM_WIN32(ERROR_LOGON_FAILURE)", 0x8007052E, "The user name or password is incorrect."),
]

# ---------------------------------------------------------------------------------------
# lookups for status codes: WBEMSTATUS first (it names 0 and 1 the way WMI methods mean them)

_HRESULTS: dict[int, tuple[str, str]] = {}
for _n, _v, _t in ERREF:
    _HRESULTS[_v] = (_n, _t)
for _n, _v, _u in APPENDIX_C:
    _HRESULTS[_v] = (_n, "Defined by WMI for local use; not expected on the wire (MS-WMI Appendix C)."
                     if _u == "local" else "Defined by WMI but unused (MS-WMI Appendix C).")
for _n, _v, _t in WBEMSTATUS:
    _HRESULTS[_v] = (_n, _t)


def hresult_name(value: int) -> str | None:
    return hresult(value)["name"]


def hresult(value: int) -> dict:
    """{"value", "name", "text"} of a status code (value as an unsigned 32-bit number).

    Codes no table names keep name None and a text that says what the bits say
    (severity, facility), as [MS-ERREF] 2.1 reads them."""
    v = value & 0xFFFFFFFF
    e = _HRESULTS.get(v)
    if e is not None:
        return {"value": v, "name": e[0], "text": e[1]}
    if _WBEMMOF_FIRST <= v <= _WBEMMOF_LAST:
        return {"value": v, "name": "WBEMMOF_E_*", "text": "MOF compiler error, local only (MS-WMI Appendix C)."}
    sev = "failure" if v & 0x80000000 else "success"
    facility = (v >> 16) & 0x7FF
    if v & 0x80000000 and facility == 7:
        text = f"Unknown Value (failure, Win32 error {v & 0xFFFF})"
    else:
        text = f"Unknown Value ({sev}, facility {facility}, code 0x{v & 0xFFFF:04X})"
    return {"value": v, "name": None, "text": text}


# ---------------------------------------------------------------------------------------
# flag sets and enumerations: kind "flags" (bits OR-ed) or "enum" (one value); values are
# (name, value, description); "masks" are multi-bit reserved ranges named as a whole.

ENUMS: dict[str, dict] = {
    "WBEM_CHANGE_FLAG_TYPE": {"spec": "MS-WMI 2.2.5", "kind": "flags", "values": [
        ("WBEM_FLAG_CREATE_OR_UPDATE", 0x00, "Update the class or instance if it exists, create it otherwise."),
        ("WBEM_FLAG_UPDATE_ONLY", 0x01, "The class or instance must exist."),
        ("WBEM_FLAG_CREATE_ONLY", 0x02, "The class or instance must not exist."),
        ("WBEM_FLAG_UPDATE_SAFE_MODE", 0x20, "Update classes with children when no conflict arises."),
        ("WBEM_FLAG_UPDATE_FORCE_MODE", 0x40, "Update classes even when child classes conflict."),
    ]},
    "WBEM_GENERIC_FLAG_TYPE": {"spec": "MS-WMI 2.2.6", "kind": "flags", "values": [
        ("WBEM_FLAG_RETURN_WBEM_COMPLETE", 0x0, "Synchronous operation (the default)."),
        ("WBEM_FLAG_RETURN_IMMEDIATELY", 0x10, "Semisynchronous: return at once with an IWbemCallResult."),
        ("WBEM_FLAG_FORWARD_ONLY", 0x20, "Return a forward-only enumerator."),
        ("WBEM_FLAG_NO_ERROR_OBJECT", 0x40, "MUST NOT be set."),
        ("WBEM_FLAG_SEND_STATUS", 0x80, "Report intermediate status through IWbemObjectSink::SetStatus."),
        ("WBEM_FLAG_ENSURE_LOCATABLE", 0x100, "Returned objects carry __PATH, __RELPATH and __SERVER."),
        ("WBEM_FLAG_DIRECT_READ", 0x200, "Access the class directly, without parent class or subclasses."),
        ("WBEM_FLAG_USE_AMENDED_QUALIFIERS", 0x20000, "Return localized (amended) qualifiers."),
        ("WBEM_FLAG_STRONG_VALIDATION", 0x100000, "MUST NOT be set."),
    ], "masks": [("WBEM_MASK_RESERVED_FLAGS", 0x1F000, "Reserved: MUST NOT be set.")]},
    "WBEM_STATUS_TYPE": {"spec": "MS-WMI 2.2.7", "kind": "enum", "values": [
        ("WBEM_STATUS_COMPLETE", 0, "Indicates the end of the asynchronous operation."),
        ("WBEM_STATUS_REQUIREMENTS", 0x01, "MUST NOT be set."),
        ("WBEM_STATUS_PROGRESS", 2, "Indicates the progress state of the asynchronous operation."),
    ]},
    "WBEM_TIMEOUT_TYPE": {"spec": "MS-WMI 2.2.8", "kind": "enum", "unit": "ms", "values": [
        ("WBEM_NO_WAIT", 0, "Call returns immediately, regardless of whether any objects are available."),
        ("WBEM_INFINITE", 0xFFFFFFFF, "Call blocks until objects are available."),
    ]},
    "WBEM_QUERY_FLAG_TYPE": {"spec": "MS-WMI 2.2.9", "kind": "flags", "values": [
        ("WBEM_FLAG_DEEP", 0, "Whole class hierarchy."),
        ("WBEM_FLAG_SHALLOW", 1, "Immediate subclasses / instances of this class only."),
        ("WBEM_FLAG_PROTOTYPE", 2, "Do not run the query: return the prototype result object."),
    ]},
    "WBEM_BACKUP_RESTORE_FLAGS": {"spec": "MS-WMI 2.2.10", "kind": "flags", "values": [
        ("WBEM_FLAG_BACKUP_RESTORE_FORCE_SHUTDOWN", 1, "Connected clients are forcibly disconnected."),
    ]},
    "WBEM_CONNECT_OPTIONS": {"spec": "MS-WMI 2.2.12", "kind": "flags", "values": [
        ("WBEM_FLAG_CONNECT_REPOSITORY_ONLY", 0x40, "Reserved for local use."),
        ("WBEM_FLAG_CONNECT_PROVIDERS", 0x100, "Reserved for local use."),
    ]},
    "WBEM_INSTANCE_BLOB_TYPE": {"spec": "MS-WMI 2.2.17", "kind": "enum", "values": [
        ("WBEM_BLOB_TYPE_ALL", 2, "The object is a single CIM object."),
        ("WBEM_BLOB_TYPE_ERROR", 3, "Represents an error condition. In this case the object is NULL."),
        ("WBEM_BLOB_TYPE_ENUM", 4, "The object is an enumeration of objects of a specific CIM type."),
    ]},
    "WBEM_RECONNECT_TYPE": {"spec": "MS-WMI 2.2.24", "kind": "enum", "values": [
        ("WBEM_RECONNECT_TYPE_OBJECT", 0, "The refresher MUST connect to refresh an object."),
        ("WBEM_RECONNECT_TYPE_ENUM", 1, "The refresher MUST connect to refresh an enumeration."),
        ("WBEM_RECONNECT_TYPE_LAST", 2, "Used only by the server; MUST NOT be used by the client."),
    ]},
    "WBEM_REFRESH_TYPE": {"spec": "MS-WMI 2.2.25", "kind": "enum", "values": [
        ("WBEM_REFRESH_TYPE_INVALID", 0, "The server uses this value internally. The server MUST NOT return it."),
        ("WBEM_REFRESH_TYPE_REMOTE", 3, "m_Info contains a _WBEM_REFRESH_INFO_REMOTE structure."),
        ("WBEM_REFRESH_TYPE_NON_HIPERF", 6, "m_Info contains a _WBEM_REFRESH_INFO_NON_HIPERF structure."),
    ]},
    "WBEM_REFR_VERSION_NUMBER": {"spec": "MS-WMI 6", "kind": "enum", "values": [
        ("WBEM_REFRESHER_VERSION", 2, "The refresher version of this protocol."),
    ]},
}

# (interface, method, parameter) -> the enumerations read together, first ones first ("*"
# as method: every method of the interface). A bit is named by the first set that has it:
# the change flags of a Put go before the generic ones (0x20 / 0x40 mean different things).
_G, _Q, _C = "WBEM_GENERIC_FLAG_TYPE", "WBEM_QUERY_FLAG_TYPE", "WBEM_CHANGE_FLAG_TYPE"
_T = ("WBEM_TIMEOUT_TYPE",)
PARAM_ENUMS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("IWbemLevel1Login", "NTLMLogin", "lFlags"): ("WBEM_CONNECT_OPTIONS",),
    ("IWbemObjectSink", "SetStatus", "lFlags"): ("WBEM_STATUS_TYPE",),
    ("IWbemServices", "*", "lFlags"): (_G,),
    ("IWbemServices", "PutClass", "lFlags"): (_C, _G),
    ("IWbemServices", "PutClassAsync", "lFlags"): (_C, _G),
    ("IWbemServices", "PutInstance", "lFlags"): (_C, _G),
    ("IWbemServices", "PutInstanceAsync", "lFlags"): (_C, _G),
    ("IWbemServices", "CreateClassEnum", "lFlags"): (_G, _Q),
    ("IWbemServices", "CreateClassEnumAsync", "lFlags"): (_G, _Q),
    ("IWbemServices", "CreateInstanceEnum", "lFlags"): (_G, _Q),
    ("IWbemServices", "CreateInstanceEnumAsync", "lFlags"): (_G, _Q),
    ("IWbemServices", "ExecQuery", "lFlags"): (_G, _Q),
    ("IWbemServices", "ExecQueryAsync", "lFlags"): (_G, _Q),
    ("IEnumWbemClassObject", "Next", "lTimeout"): _T,
    ("IEnumWbemClassObject", "Skip", "lTimeout"): _T,
    ("IWbemCallResult", "*", "lTimeout"): _T,
    ("IWbemCallResult", "GetCallStatus", "plStatus"): ("HRESULT",),
    ("IWbemWCOSmartEnum", "Next", "lTimeout"): _T,
    ("IWbemBackupRestore", "*", "lFlags"): ("WBEM_BACKUP_RESTORE_FLAGS",),
    ("IWbemBackupRestoreEx", "*", "lFlags"): ("WBEM_BACKUP_RESTORE_FLAGS",),
    ("IWbemRefreshingServices", "*", "lFlags"): (_G,),
    ("IWbemRefreshingServices", "*", "dwClientRefrVersion"): ("WBEM_REFR_VERSION_NUMBER",),
    ("IWbemRefreshingServices", "*", "pdwSvrRefrVersion"): ("WBEM_REFR_VERSION_NUMBER",),
    ("IWbemRemoteRefresher", "*", "lFlags"): (_G,),
}

# (structure, field) -> enumerations; HRESULT-typed fields are named as status codes anyway.
FIELD_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("_WBEM_REFRESH_INFO", "m_lType"): ("WBEM_REFRESH_TYPE",),
    ("WBEM_REFRESHED_OBJECT", "m_lBlobType"): ("WBEM_INSTANCE_BLOB_TYPE",),
    ("_WBEM_RECONNECT_INFO", "m_lType"): ("WBEM_RECONNECT_TYPE",),
}


def annotation(interface: str, method: str, param: str) -> tuple[str, ...] | None:
    """The enumerations a method parameter is read with, or None."""
    return PARAM_ENUMS.get((interface, method, param)) or PARAM_ENUMS.get((interface, "*", param))


def field_annotation(struct: str, field: str) -> tuple[str, ...] | None:
    return FIELD_ENUMS.get((struct, field))


_VALUES: dict[str, int] = {n: v for n, v, _ in ERREF}
_VALUES.update((n, v) for n, v, _ in APPENDIX_C)
_VALUES.update((n, v) for n, v, _ in WBEMSTATUS)
_VALUES.update((n, v) for e in ENUMS.values() for n, v, _ in e["values"])


def value_of(name: str) -> int:
    """The number of a named status code, flag or enumeration value (KeyError if none):
    the decoders take their constants from these tables, not from copies of their own."""
    return _VALUES[name]


def enum_value(v) -> int:
    """The number inside a described value ({"value": n} / {"flags": n}) or the number itself."""
    if isinstance(v, dict):
        return int(v.get("value", v.get("flags", 0)) or 0)
    return int(v or 0)


def describe(names: tuple[str, ...], value: int) -> dict:
    """A number read as the given enumerations: {"value", "name", "text"} for an
    enumeration or a status code, {"flags", "names"} for flag sets (bits no set names
    listed as hex; a zero value has no names)."""
    if names[0] == "HRESULT":
        return hresult(value)
    first = ENUMS[names[0]]
    u = value & 0xFFFFFFFF
    if first["kind"] == "enum":
        for n, v, t in first["values"]:
            if v == u:
                return {"value": value, "name": n, "text": t}
        unit = first.get("unit")
        return {"value": value, "name": None, "text": f"{value} {unit}" if unit else "Unknown Value"}
    left = u
    out: list[str] = []
    for enum in names:
        e = ENUMS[enum]
        for n, v, _ in e["values"]:
            if v and left & v == v:
                out.append(n)
                left &= ~v
        for n, v, _ in e.get("masks", ()):
            if left & v:
                out.append(n)
                left &= ~v
    if left:
        out.append(f"0x{left:X}")
    return {"flags": value, "names": out}
