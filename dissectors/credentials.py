"""The analyst's secrets, and the key provider that unseals packet-privacy stubs with them.

Secrets come from the command line (--user/--password, --nt-hash, --keytab) or
from a credentials file, one secret per line:

    # wmiscope credentials: '#' starts a comment; blank lines are ignored
    password  DOMAIN\\user   the password, to the end of the line (inner spaces kept)
    password  user@dns.domain  another form of the same thing
    password  *              a password to try for any user
    nthash    DOMAIN\\user   32 hex digits (NTOWFv1, as secretsdump prints it; LM:NT also accepted)
    key       host/srv.example.com@EXAMPLE.COM  aes256  64 hex digits  [kvno]
    keytab    path/to/service.keytab   (relative to the credentials file)

User names match case-insensitively; a domain in the secret must match the
NTLM domain (NetBIOS or the first label of a DNS name), and a secret without a
domain matches the user in any domain. NTLM tries every matching secret (the
captured NT response tells the right one); Kerberos tries the keys of the
ticket's principal first, then every other key of the ticket's etype (the
ticket's checksum tells the right one).

`ConnectionKeys` is what dissectors.auth.AuthContexts(key_provider=...) gets for
one TCP connection: on the first sealed (level 6) or signed (level 5) PDU of a
security context it derives that context's keys from the handshake the context
kept (NTLMSSP: MS-NLMP 3.3, 3.4, with the AUTHENTICATE message's MIC checked;
Kerberos: the ticket and AP-REP), then unseals every sealed PDU of the context
and verifies the signature of every signed one. When it cannot (no secret for
that user, a wrong one, a signature that does not verify), it says so once per
auth context, as an ErrorRecord of stage "auth" (a refusal to derive keys, once per
connection even when the same user opens several contexts on it); sealed stubs
stay encrypted, signed ones stay unverified (Call.req_verified / resp_verified
None, False for the PDU that failed), and nothing else changes. A MIC that does
not verify is said once too; the keys are still used.

No secret is ever logged or put in a message; `repr(Credentials)` counts them.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass

from .auth import AuthContext, inner_token
from .kerberos import ETYPE_NAMES, KerberosApRep, KerberosApReq
from .ntlmssp import MIC_LEN, NtlmAuthenticate, NtlmChallenge, NtlmNegotiate
from .crypto_kerberos import (AES_KEY_SIZES, ETYPE_AES128, ETYPE_AES256, ETYPE_RC4, Key, KerberosContextKeys,
                              KerberosCryptoError, KerberosDceSecurity, default_salt, parse_keytab,
                              recover_context_keys, string_to_key)
from .crypto_ntlm import (NtlmDceSecurity, NtlmKeyError, NtlmSession, UnsealError, authenticate_mic,
                          exported_session_key, lmowfv1, ntowfv1)
from .records import ErrorRecord

from ..formats.errors import DecodeError

ETYPE_BY_NAME = {
    "aes256": ETYPE_AES256, "aes256-cts-hmac-sha1-96": ETYPE_AES256, "18": ETYPE_AES256,
    "aes128": ETYPE_AES128, "aes128-cts-hmac-sha1-96": ETYPE_AES128, "17": ETYPE_AES128,
    "rc4": ETYPE_RC4, "rc4-hmac": ETYPE_RC4, "arcfour-hmac": ETYPE_RC4, "23": ETYPE_RC4,
}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_MAX_FILE = 1 << 20


class CredentialsError(ValueError):
    """A credentials file, keytab or option that cannot be used (the message names where, never the secret)."""


@dataclass(frozen=True, slots=True)
class UserName:
    """DOMAIN\\user, user@domain or user; None fields match anything."""
    user: str | None
    domain: str | None

    @classmethod
    def parse(cls, text: str | None) -> "UserName":
        if text is None or text.strip() in ("", "*"):
            return cls(None, None)
        text = text.strip()
        if "\\" in text:
            dom, _, user = text.partition("\\")
            return cls(user or None, dom or None)
        if "@" in text:
            user, _, dom = text.rpartition("@")
            return cls(user or None, dom or None)
        return cls(text, None)

    def matches(self, user: str, domain: str) -> bool:
        if self.user is not None and self.user.lower() != user.lower():
            return False
        if self.domain is None or not domain:
            return True
        mine, theirs = self.domain.lower(), domain.lower()
        return mine == theirs or mine.split(".")[0] == theirs.split(".")[0]

    def __str__(self) -> str:
        if self.user is None:
            return "*"
        return f"{self.domain}\\{self.user}" if self.domain else self.user


@dataclass(frozen=True, slots=True)
class _ServiceKey:
    realm: str | None
    components: tuple[str, ...] | None
    kvno: int | None
    key: Key


class Credentials:
    """Passwords per user, NT hashes, Kerberos keys (from keytabs or given directly)."""

    def __init__(self) -> None:
        self._passwords: list[tuple[UserName, str]] = []
        self._nt_hashes: list[tuple[UserName, bytes]] = []
        self._keys: list[_ServiceKey] = []
        self._derived: dict[tuple, Key] = {}

    def __repr__(self) -> str:
        return (f"Credentials({len(self._passwords)} passwords, {len(self._nt_hashes)} NT hashes, "
                f"{len(self._keys)} Kerberos keys)")

    def __bool__(self) -> bool:
        return bool(self._passwords or self._nt_hashes or self._keys)

    # ---- adding secrets

    def add_password(self, user: str | None, password: str) -> None:
        self._passwords.append((UserName.parse(user), password))

    def add_nt_hash(self, user: str | None, text: str) -> None:
        value = text.strip()
        if ":" in value:                 # LM:NT as secretsdump and pwdump print it
            value = value.rsplit(":", 1)[1]
        if len(value) != 32 or not _HEX.match(value):
            raise CredentialsError("an NT hash is 32 hex digits (or LM:NT)")
        self._nt_hashes.append((UserName.parse(user), bytes.fromhex(value)))

    def add_key(self, principal: str | None, etype: int | str, hex_key: str, kvno: int | None = None) -> None:
        et = ETYPE_BY_NAME.get(str(etype).lower()) if not isinstance(etype, int) else etype
        if et is None:
            raise CredentialsError(f"unknown Kerberos etype {etype!r} (aes256, aes128 or rc4)")
        size = AES_KEY_SIZES.get(et, 16)
        if len(hex_key) != 2 * size or not _HEX.match(hex_key):
            raise CredentialsError(f"a {ETYPE_NAMES.get(et, et)} key is {2 * size} hex digits")
        realm, comps = _split_principal(principal)
        self._keys.append(_ServiceKey(realm, comps, kvno, Key(et, bytes.fromhex(hex_key))))

    def add_keytab(self, path: str | os.PathLike) -> int:
        """Add every key of a keytab file; returns how many."""
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_FILE + 1)
        except OSError as exc:
            raise CredentialsError(f"{path}: {exc.strerror or exc}") from None
        if len(data) > _MAX_FILE:
            raise CredentialsError(f"{path}: larger than {_MAX_FILE} octets, not a keytab")
        try:
            entries = parse_keytab(data)
        except DecodeError as exc:
            raise CredentialsError(f"{path}: {exc}") from None
        if not entries:
            raise CredentialsError(f"{path}: a keytab with no key in it")
        for e in entries:
            self._keys.append(_ServiceKey(e.realm, tuple(e.components), e.kvno, e.key))
        return len(entries)

    def load(self, path: str | os.PathLike) -> None:
        """Read a credentials file (format in the module docstring)."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(_MAX_FILE + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
        base = os.path.dirname(os.fspath(path))
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            kind, _, rest = stripped.partition(" ")
            kind = kind.lower()
            rest = rest.strip()
            where = f"{path}:{lineno}"
            try:
                if kind == "password":
                    user, _, secret = rest.partition(" ")
                    secret = secret.strip()
                    if not user or not secret:
                        raise CredentialsError("expected: password USER PASSWORD")
                    self.add_password(user, secret)
                elif kind == "nthash":
                    parts = rest.split()
                    if len(parts) != 2:
                        raise CredentialsError("expected: nthash USER HASH")
                    self.add_nt_hash(parts[0], parts[1])
                elif kind == "key":
                    parts = rest.split()
                    if len(parts) not in (3, 4) or (len(parts) == 4 and not parts[3].isdigit()):
                        raise CredentialsError("expected: key PRINCIPAL ETYPE HEX [KVNO]")
                    self.add_key(parts[0], parts[1], parts[2], int(parts[3]) if len(parts) == 4 else None)
                elif kind == "keytab":
                    if not rest:
                        raise CredentialsError("expected: keytab PATH")
                    self.add_keytab(os.path.join(base, rest))
                else:
                    raise CredentialsError(f"unknown entry {kind!r} (password, nthash, key, keytab)")
            except CredentialsError as exc:
                raise CredentialsError(f"{where}: {exc}") from None

    # ---- looking secrets up

    def ntlm_secrets(self, user: str, domain: str) -> list[tuple[bytes, bytes | None]]:
        """(NT hash, LM hash or None) of every secret given for DOMAIN\\user, exact names first."""
        found: list[tuple[int, bytes, bytes | None]] = []
        for name, password in self._passwords:
            if name.matches(user, domain):
                found.append((name.user is None, ntowfv1(password), lmowfv1(password)))
        for name, nt in self._nt_hashes:
            if name.matches(user, domain):
                found.append((name.user is None, nt, None))
        found.sort(key=lambda t: t[0])
        return list(dict.fromkeys((nt, lm) for _, nt, lm in found))

    def kerberos_keys(self, realm: str, components: list[str], etype: int, kvno: int | None) -> list[Key]:
        """Keys that may open a ticket for components@realm: that principal's first, then any of the etype."""
        want = tuple(c.lower() for c in components)
        ranked: list[tuple[int, Key]] = []
        for sk in self._keys:
            if sk.key.etype != etype:
                continue
            same = (sk.components is not None and tuple(c.lower() for c in sk.components) == want
                    and (sk.realm is None or sk.realm.lower() == realm.lower()))
            rank = 0 if same and (kvno is None or sk.kvno in (None, kvno)) else 1 if same else 2
            ranked.append((rank, sk.key))
        if etype == ETYPE_RC4:
            ranked += [(3, Key(ETYPE_RC4, nt)) for _n, nt in self._nt_hashes]
            ranked += [(3, self._derive(ETYPE_RC4, pw, "")) for _n, pw in self._passwords]
        elif etype in AES_KEY_SIZES:
            for name, pw in self._passwords:
                # the default salt (RFC 4120 4): the account's realm and name; a NetBIOS domain is no realm
                r, comps = _split_principal(str(name)) if name.user else (realm, tuple(components))
                salt = default_salt(r if r and "." in r else realm, list(comps or components))
                ranked.append((3, self._derive(etype, pw, salt)))
        ranked.sort(key=lambda t: t[0])
        return list(dict.fromkeys(k for _, k in ranked))

    def _derive(self, etype: int, password: str, salt: str) -> Key:
        k = (etype, password, salt)
        key = self._derived.get(k)
        if key is None:
            key = self._derived[k] = string_to_key(etype, password, salt)
        return key


def _split_principal(text: str | None) -> tuple[str | None, tuple[str, ...] | None]:
    """'a/b@REALM' -> ('REALM', ('a', 'b')); None or '*' -> (None, None)."""
    if text is None or text.strip() in ("", "*"):
        return None, None
    name, sep, realm = text.strip().rpartition("@")
    if not sep:
        name, realm = text.strip(), None
    if "\\" in name:                       # DOMAIN\\user written for a Kerberos key
        realm_hint, _, name = name.partition("\\")
        realm = realm or realm_hint
    return realm or None, tuple(name.split("/"))


# --------------------------------------------------------------------------
# the key provider of one connection


class _NoKeys:
    """A context that cannot be unsealed; the reason was reported."""
    __slots__ = ()


NO_KEYS = _NoKeys()


class ConnectionKeys:
    """Unseals the packet-privacy PDUs and verifies the packet-integrity ones of one TCP connection
    (the AuthContexts key_provider)."""

    __slots__ = ("credentials", "conn", "emit", "_reported")

    def __init__(self, credentials: Credentials, conn: int | None, emit):
        self.credentials = credentials
        self.conn = conn
        self.emit = emit
        self._reported: set = set()      # auth context ids and refusals already said

    def unseal(self, ctx: AuthContext, direction: int, pdu_bytes: bytes, stub_span: tuple[int, int],
               verifier) -> bytes | None:
        """The clear stub of a packet-privacy PDU; None without keys or when it does not open."""
        return self._protected(ctx, True, direction, pdu_bytes, stub_span, verifier)[1]

    def verify(self, ctx: AuthContext, direction: int, pdu_bytes: bytes, stub_span: tuple[int, int],
               verifier) -> bool | None:
        """True / False for the signature of a packet-integrity PDU, None without keys (see AuthContext.verify)."""
        return self._protected(ctx, False, direction, pdu_bytes, stub_span, verifier)[0]

    def _protected(self, ctx: AuthContext, sealed: bool, direction: int, pdu_bytes: bytes,
                   stub_span: tuple[int, int], verifier) -> tuple[bool | None, object]:
        """Unseals (sealed) or verifies one PDU with the context's security state:
        (True, what the state returned), (False, None) once the failure is reported,
        (None, None) without keys. A damaged PDU is reported, never raised."""
        state = self._state(ctx, sealed)
        if state is NO_KEYS:
            return None, None
        try:
            if sealed:
                return True, state.unseal(direction, pdu_bytes, stub_span, verifier)
            return True, state.verify(direction, pdu_bytes, stub_span, verifier)
        except UnsealError as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - a damaged PDU is reported, never raised
            why = f"internal error {'unsealing' if sealed else 'verifying'}: {type(exc).__name__}: {exc}"
        self._report(ctx, f"{why} ({_which(pdu_bytes, direction)})", sealed)
        return False, None

    def _state(self, ctx: AuthContext, sealed: bool):
        """The context's security state, derived on its first protected PDU (NO_KEYS when it cannot be)."""
        state = ctx.security
        if state is None:
            try:
                state = ctx.security = self._establish(ctx, sealed)
            except Exception as exc:  # noqa: BLE001 - hostile handshakes must not stop the run
                self._report(ctx, f"internal error deriving the keys: {type(exc).__name__}: {exc}", sealed)
                state = ctx.security = NO_KEYS
        return state

    def _report(self, ctx: AuthContext, why: str, sealed: bool, refusal: bool = False) -> None:
        # a refusal (no keys) is said once per connection even when the same user opens several
        # contexts on it, as impacket does with one alter_context per interface
        key = why if refusal else ctx.ctx_id
        if key in self._reported or ctx.ctx_id in self._reported:
            return
        self._reported.update((key, ctx.ctx_id))
        if sealed:
            reason = f"cannot decrypt auth context {ctx.ctx_id}: {why}; its sealed stubs stay encrypted"
        else:
            reason = (f"cannot verify the signatures of auth context {ctx.ctx_id}: {why}; "
                      f"its signed stubs are decoded unverified")
        self.emit(ErrorRecord("auth", reason, ctx.frame, self.conn, "auth_value",
                              kind="auth.cannot_decrypt" if sealed else "auth.cannot_verify"))

    def _establish(self, ctx: AuthContext, sealed: bool = True):
        tokens = [(t.direction, inner_token(t.token)) for t in ctx.tokens if t.error is None]
        ntlm_auth = next((tok for d, tok in tokens if isinstance(tok, NtlmAuthenticate)), None)
        ap_req = next((tok for d, tok in tokens if isinstance(tok, KerberosApReq)), None)
        try:
            if ntlm_auth is not None:
                return self._ntlm(ctx, tokens, ntlm_auth)
            if ap_req is not None:
                security = self._kerberos(tokens, ap_req)
                # the client's name travels only inside the ticket, encrypted with the service's key
                keys = security.keys
                ctx.client_principal = keys.client
                if keys.authenticator_client not in (None, keys.client):
                    # RFC 4120 3.2.3: a server refuses an authenticator naming another client
                    # (KRB_AP_ERR_BADMATCH); the ticket, sealed by the KDC, is the one believed
                    self.emit(ErrorRecord("auth", f"auth context {ctx.ctx_id}: the AP-REQ's authenticator names "
                                          f"{keys.authenticator_client} but its ticket {keys.client} (RFC 4120 "
                                          f"3.2.3: a forged or altered AP-REQ); the ticket's client is reported",
                                          ctx.frame, self.conn, "Authenticator.cname"))
                return security
            if not ctx.tokens:
                raise _Refusal("no handshake of this context was captured (the capture starts after it), "
                               "so no session key can be derived")
            raise _Refusal(f"no {'decryption' if sealed else 'signature verification'} for "
                           f"{ctx.mechanism or f'auth type {ctx.auth_type}'} (only NTLMSSP and Kerberos are supported)")
        except _Refusal as exc:
            self._report(ctx, str(exc), sealed, refusal=True)
            return NO_KEYS

    def _ntlm(self, ctx: AuthContext, tokens, auth: NtlmAuthenticate) -> NtlmDceSecurity:
        who = f"NTLMSSP user {auth.principal}"
        challenge = next((tok for d, tok in tokens if isinstance(tok, NtlmChallenge)), None)
        if challenge is None:
            raise _Refusal(f"{who}: the CHALLENGE message was not captured")
        secrets = self.credentials.ntlm_secrets(auth.user, auth.domain)
        if not secrets:
            raise _Refusal(f"{who}: no password or NT hash given for this user")
        reasons = []
        for nt_hash, lm_hash in secrets:
            try:
                flags, key = exported_session_key(challenge, auth, nt_hash, lm_hash)
            except NtlmKeyError as exc:
                reasons.append(str(exc))
                continue
            self._check_mic(ctx, tokens, auth, key)
            return NtlmDceSecurity(NtlmSession(flags, key), auth.principal)
        what = "the password or NT hash given" if len(secrets) == 1 else f"none of the {len(secrets)} secrets given"
        raise _Refusal(f"{who}: {what} for this user does not verify ({'; '.join(dict.fromkeys(reasons))}), "
                       f"so no signature would verify")

    def _check_mic(self, ctx: AuthContext, tokens, auth: NtlmAuthenticate, exported: bytes) -> None:
        """MS-NLMP 3.1.5.1.2 / 3.2.5.1.2: when the client says it sent a MIC (MsvAvFlags 0x2), the MIC
        must be HMAC_MD5(ExportedSessionKey, NEGOTIATE | CHALLENGE | AUTHENTICATE with the MIC zeroed).
        A mismatch means the handshake messages are not those the client signed (a relay that
        removed a flag or the MIC itself); it is said once, and the keys are still used."""
        flags = auth.client_target_info.get("MsvAvFlags")
        if not isinstance(flags, int) or not flags & 0x2:
            return
        negotiate = next((tok for d, tok in tokens if isinstance(tok, NtlmNegotiate)), None)
        challenge = next((tok for d, tok in tokens if isinstance(tok, NtlmChallenge)), None)
        frame = next((t.frame for t in ctx.tokens if inner_token(t.token) is auth), ctx.frame)
        who = f"NTLMSSP user {auth.principal}"
        if auth.mic is None or len(auth.mic) != MIC_LEN:
            why = "announces a MIC (MsvAvFlags 0x2) but has no room for one"
        elif negotiate is None or not negotiate.raw or not challenge.raw or not auth.raw:
            return                      # the capture misses a message the MIC covers: nothing to say
        elif hmac.compare_digest(authenticate_mic(exported, negotiate.raw, challenge.raw, auth.raw), auth.mic):
            return
        else:
            why = ("carries a MIC that does not verify (MS-NLMP 3.1.5.1.2): the NEGOTIATE, CHALLENGE "
                   "or AUTHENTICATE message was altered on the way, e.g. by an NTLM relay")
        self.emit(ErrorRecord("auth", f"auth context {ctx.ctx_id}: the AUTHENTICATE message of {who} {why}",
                              frame, self.conn, "AUTHENTICATE_MESSAGE.MIC", kind="auth.mic_invalid"))

    def _kerberos(self, tokens, ap_req: KerberosApReq) -> KerberosDceSecurity:
        ap_rep = next((tok for d, tok in tokens if d == 1 and isinstance(tok, KerberosApRep)), None)
        etype = ETYPE_NAMES.get(ap_req.ticket_etype, f"etype {ap_req.ticket_etype}")
        who = (f"Kerberos service {ap_req.principal} (ticket {etype}"
               f"{f', kvno {ap_req.ticket_kvno}' if ap_req.ticket_kvno is not None else ''})")
        keys = self.credentials.kerberos_keys(ap_req.realm, ap_req.sname, ap_req.ticket_etype, ap_req.ticket_kvno)
        if not keys:
            raise _Refusal(f"{who}: no key for this principal")
        try:
            ctx_keys: KerberosContextKeys = recover_context_keys(ap_req, ap_rep, keys)
        except KerberosCryptoError as exc:
            raise _Refusal(f"{who}: {exc}") from None
        return KerberosDceSecurity(ctx_keys)


class _Refusal(Exception):
    pass


def _which(pdu_bytes: bytes, direction: int) -> str:
    """'call_id N, request' for a message about one PDU (call_id in the drep's byte order, C706 12.6.3.1)."""
    call_id = int.from_bytes(pdu_bytes[12:16], "little" if pdu_bytes[4] & 0x10 else "big")
    return f"call_id {call_id}, {'request' if direction == 0 else 'response'}"
