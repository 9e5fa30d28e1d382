-- ---------------------------------------------------------------------------------------
-- The hand-written runtime. Everything it knows of WMI methods is in G (generated above).
--
-- How it works, on both Wireshark 4.0 (Lua 5.2) and 4.4 (Lua 5.4):
--  * the plugin stands in front of DCE/RPC over TCP (see "the entry point" at the end): it
--    hands each TCP payload of a DCE/RPC connection to Wireshark's own DCE/RPC dissector,
--    then reads the PDUs of that payload from the same bytes, and reassembles fragmented
--    stubs itself. No field extractor and no postdissector: a frame that is not DCE/RPC
--    costs nothing and no tree is forced. Sealed stubs come decrypted from 4.4's claiming
--    dissector, or from `dcerpc.decrypted_stub_data` when the user gave Wireshark keys;
--  * bind contexts (per connection) and IPIDs (global: an IPID learned on port 135 or on
--    another connection names the calls made on it) are tracked on the first pass only,
--    and what each frame needs is cached per frame, so one-pass tshark, two-pass tshark and
--    the GUI show the same;
--  * an NDR interpreter walks G.TYPES for the method's parameters (G.IFACES), and an
--    MS-WMIO reader decodes the objects inside IWbemClassObject interface pointers;
--  * on 4.4 (which has pidl dissectors of its own for some WMI interfaces, that stop at
--    "Long frame" or "Malformed") the WMI interface UUIDs are registered in `dcerpc.uuid`
--    with a dissector that only claims the stub, so the built-ins stay out of the way.
-- Bytes are read with string.byte (Lua 5.2 has no string.unpack), no bit operators.
-- ---------------------------------------------------------------------------------------

local sbyte, schar, sformat, ssub, concat = string.byte, string.char, string.format, string.sub, table.concat
local floor = math.floor

local MAJOR, MINOR = 0, 0
do
    local v = (get_version and get_version()) or "0.0"
    MAJOR, MINOR = v:match("^(%d+)%.(%d+)")
    MAJOR, MINOR = tonumber(MAJOR) or 0, tonumber(MINOR) or 0
end

local proto = Proto("wmi", "MS-WMI (wmiscope)")

-- Lua 5.4 (Wireshark 4.4): most of what the plugin allocates (field infos, ranges, header
-- tables, decoded nodes) dies with its frame, which a generational collector reclaims for
-- less (measured: some 8% of the first pass); 5.2's generational mode was experimental.
-- On 5.2 the incremental collector waits for the heap to grow 4x, not 2x, between cycles:
-- some 10% of the plugin's own time in `tshark -r` (measured on 60 MB of WMI sessions), and
-- the heap the plugin keeps is small beside Wireshark's (the same peak RSS, 350 MB)
if _VERSION == "Lua 5.4" then collectgarbage("generational") else collectgarbage("setpause", 400) end

-- ---------------------------------------------------------------------------------------
-- fields

local F = {
    interface = ProtoField.string("wmi.interface", "Interface"),
    method = ProtoField.string("wmi.method", "Method"),
    opnum = ProtoField.uint16("wmi.opnum", "Opnum"),
    direction = ProtoField.string("wmi.direction", "Direction"),
    namespace = ProtoField.string("wmi.namespace", "Namespace"),
    class = ProtoField.string("wmi.class", "Class"),
    operation = ProtoField.string("wmi.operation", "Operation"),
    ipid = ProtoField.string("wmi.ipid", "IPID"),
    call_id = ProtoField.uint32("wmi.call_id", "Call ID"),
    request_in = ProtoField.framenum("wmi.request_in", "Request in frame"),
    response_in = ProtoField.framenum("wmi.response_in", "Response in frame"),
    encrypted = ProtoField.bool("wmi.encrypted", "Encrypted"),
    hresult = ProtoField.uint32("wmi.hresult", "ReturnValue", base.HEX, G.HRESULTS),
    status = ProtoField.string("wmi.status", "Status"),
    flag = ProtoField.string("wmi.flag", "Flag"),
    item = ProtoField.string("wmi.item", "Item"),
    objref = ProtoField.string("wmi.objref", "OBJREF"),
    obj_class = ProtoField.string("wmi.obj.class", "Object class"),
    obj_kind = ProtoField.string("wmi.obj.kind", "Object kind"),
    obj_super = ProtoField.string("wmi.obj.superclass", "Superclass"),
    obj_method = ProtoField.string("wmi.obj.method", "Method"),
    prop_name = ProtoField.string("wmi.prop.name", "Property"),
    prop_value = ProtoField.string("wmi.prop.value", "Value"),
    ctx_name = ProtoField.string("wmi.context.name", "Context value"),
    stub = ProtoField.bytes("wmi.stub", "Stub"),
}
local function make_field(abbr, kind, label)
    if kind == "uint" then return ProtoField.uint32(abbr, label, base.DEC) end
    if kind == "int" then return ProtoField.int32(abbr, label, base.DEC) end
    return ProtoField.string(abbr, label)
end
local PF = {}             -- parameter fields: wmi.<IDL name>
for name, spec in pairs(G.FIELDS) do PF[name] = make_field("wmi." .. name, spec[1], spec[2]) end
local SF = {}             -- structure member fields: wmi.<member> (m_lCancelId, m_lRequestId, ...)
for name, spec in pairs(G.SFIELDS) do SF[name] = make_field("wmi." .. name, spec[1], spec[2]) end
local PROPF = {}          -- wmi.prop.<Name>, by lower-case name
local PROPF_NAME = {}     -- and the name each was registered with
for _, name in ipairs(G.PROPS) do
    PROPF[name:lower()] = ProtoField.string("wmi.prop." .. name, name)
    PROPF_NAME[name:lower()] = name
end
local all = {}
for _, f in pairs(F) do all[#all + 1] = f end
for _, f in pairs(PF) do all[#all + 1] = f end
for _, f in pairs(PROPF) do all[#all + 1] = f end
for _, f in pairs(SF) do all[#all + 1] = f end
proto.fields = all

local E = {
    malformed = ProtoExpert.new("wmi.malformed", "Malformed WMI stub", expert.group.MALFORMED, expert.severity.ERROR),
    encrypted = ProtoExpert.new("wmi.encrypted.expert", "Stub sealed (give Wireshark the keys to decrypt it)",
        expert.group.SECURITY, expert.severity.NOTE),
    process = ProtoExpert.new("wmi.exec", "WMI method execution", expert.group.SECURITY, expert.severity.WARN),
}
proto.experts = {E.malformed, E.encrypted, E.process}

-- A field extractor makes Wireshark build the tree of every frame (its filter is primed for
-- each), which alone cost 1.06-1.44x tshark's time. The plugin reads the PDUs from the TCP
-- payload itself (below); the one thing only a field has is the plaintext of a sealed stub
-- Wireshark decrypted, so that extractor exists only when Wireshark was given keys: on
-- tshark's command line (`-o ntlmssp.nt_password:...`, `-o kerberos.decrypt:TRUE`), in the
-- preferences file, or WMISCOPE_DECRYPTED=1 (after giving keys in the GUI: reload the Lua
-- plugins).
local function keys_configured()
    local env = os.getenv("WMISCOPE_DECRYPTED")
    if env then return env ~= "0" and env ~= "" end
    local function has_keys(text, sep)
        if not text then return false end
        local pw = text:match("ntlmssp%.nt_password" .. sep .. "%s*([^\n\0]*)")
        if pw and pw:match("%S") then return true end
        local krb = text:match("kerberos%.decrypt" .. sep .. "%s*(%a+)")
        return krb ~= nil and krb:upper() == "TRUE"
    end
    local function slurp(path)
        local f = path and io.open(path, "rb")
        if not f then return nil end
        local t = f:read("*a")
        f:close()
        return t
    end
    if has_keys(slurp("/proc/self/cmdline"), ":") then return true end
    local ok, path = pcall(function() return Dir.personal_config_path("preferences") end)
    local prefs = ok and slurp(path)
    -- only uncommented lines count
    return prefs ~= nil and has_keys(("\n" .. prefs):gsub("\n#[^\n]*", ""), ":")
end
local f_decrypted = keys_configured() and Field.new("dcerpc.decrypted_stub_data") or nil

-- ---------------------------------------------------------------------------------------
-- bytes

local function u16(s, o) local a, b = sbyte(s, o + 1, o + 2) return a + b * 256 end
local function u32(s, o) local a, b, c, d = sbyte(s, o + 1, o + 4) return a + b * 256 + c * 65536 + d * 16777216 end
local function s32(s, o) local v = u32(s, o) if v >= 2147483648 then v = v - 4294967296 end return v end
-- GUIDs as text, by their 16 octets: the same IPIDs and IIDs come back in every PDU, and
-- formatting one is costlier than looking it up (the table is emptied when it grows large)
local GUIDS, nguids = {}, 0
local function guid(s, o)
    local key = ssub(s, o + 1, o + 16)
    local text = GUIDS[key]
    if text then return text end
    local b1, b2, b3, b4, b5, b6, b7, b8 = sbyte(s, o + 9, o + 16)
    text = sformat("%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", u32(s, o), u16(s, o + 4), u16(s, o + 6),
        b1, b2, b3, b4, b5, b6, b7, b8)
    if nguids >= 65536 then GUIDS, nguids = {}, 0 end
    GUIDS[key], nguids = text, nguids + 1
    return text
end
local function hex64(s, o) return sformat("0x%08x%08x", u32(s, o + 4), u32(s, o)) end

-- a 64-bit integer in decimal, exactly (a Lua 5.2 number holds only 53 bits): long division
-- of hi:lo by 10, each step small enough for a double
local function dec64(s, o, signed)
    local lo, hi = u32(s, o), u32(s, o + 4)
    local sign = ""
    if signed and hi >= 2147483648 then
        -- two's complement: the magnitude is 2^64 - hi:lo
        sign = "-"
        lo, hi = (4294967296 - lo) % 4294967296, 4294967295 - hi + (lo == 0 and 1 or 0)
    end
    if hi == 0 then return sign .. sformat("%d", lo) end
    local digits = {}
    while hi > 0 or lo > 0 do
        local r = hi % 10
        hi = floor(hi / 10)
        local cur = r * 4294967296 + lo
        digits[#digits + 1] = cur % 10
        lo = floor(cur / 10)
    end
    return sign .. concat(digits):reverse()
end

local function utf8char(c)
    if c < 0x80 then return schar(c) end
    if c < 0x800 then return schar(0xC0 + floor(c / 64), 0x80 + c % 64) end
    if c < 0x10000 then return schar(0xE0 + floor(c / 4096), 0x80 + floor(c / 64) % 64, 0x80 + c % 64) end
    return schar(0xF0 + floor(c / 262144), 0x80 + floor(c / 4096) % 64, 0x80 + floor(c / 64) % 64, 0x80 + c % 64)
end

-- whether s is all ASCII. s:find("[\128-\255]") starts a match at every octet (8 ms for a
-- value of 900 kB, and real sessions carry such values: files in properties); one anchored
-- match with a one-range class runs through it in a tight loop (2.5 ms), and on a long
-- string 128 plain finds, each a memchr, are faster still (1.2 ms)
local HIGH = {}
for c = 128, 255 do HIGH[#HIGH + 1] = schar(c) end
local function ascii(s)
    if #s < 4096 then return s:match("^[\0-\127]*()") > #s end
    for i = 1, 128 do if s:find(HIGH[i], 1, true) then return false end end
    return true
end

-- UTF-16LE s[o, o+2n) as UTF-8, a terminating NUL dropped
local function utf16(s, o, n)
    local last = o + 2 * n
    if n > 3 then
        -- ASCII text (every high octet zero, every low one below 0x80) in two pattern passes
        local raw = ssub(s, o + 1, last)
        local high = raw:gsub(".(.)", "%1")
        if high:match("^\0*()") > #high then
            local low = raw:gsub("(.).", "%1")
            if ascii(low) then return (low:gsub("%z$", "")) end
        end
    end
    local out, i = {}, 0
    local p = o
    while p + 2 <= last do
        local c = u16(s, p)
        p = p + 2
        if c >= 0xD800 and c < 0xDC00 and p + 2 <= last then
            local c2 = u16(s, p)
            if c2 >= 0xDC00 and c2 < 0xE000 then
                c = 0x10000 + (c - 0xD800) * 1024 + (c2 - 0xDC00)
                p = p + 2
            end
        end
        if c == 0 and p >= last then break end
        i = i + 1
        out[i] = c < 0x80 and schar(c) or utf8char(c)
    end
    return concat(out)
end

local function latin1(s)
    if ascii(s) then return s end
    return (s:gsub("[\128-\255]", function(ch) return utf8char(sbyte(ch)) end))
end

local function fail(pos, msg) error({ off = pos, msg = msg }, 0) end

-- ---------------------------------------------------------------------------------------
-- the NDR interpreter (NDR 2.0, little-endian; C706 chapter 14)

local R = {}
R.__index = R

local function reader(s, pos, lim)
    return setmetatable({ s = s, pos = pos or 0, base = pos or 0, lim = lim or #s, q = {}, depth = 0, objrefs = {} }, R)
end

function R:need(n)
    if n < 0 or self.pos + n > self.lim then fail(self.pos, sformat("need %d bytes, %d left", n, self.lim - self.pos)) end
end
function R:align(n)
    local r = (self.pos - self.base) % n
    if r ~= 0 then
        self.pos = self.pos + n - r
        if self.pos > self.lim then fail(self.pos, "alignment runs past the end") end
    end
end
function R:u8() self:need(1) local v = sbyte(self.s, self.pos + 1) self.pos = self.pos + 1 return v end
function R:u16() self:align(2) self:need(2) local v = u16(self.s, self.pos) self.pos = self.pos + 2 return v end
function R:u32()
    -- align(4), need(4) and u32 in one: the interpreter's most frequent read
    local pos, lim = self.pos, self.lim
    local r = (pos - self.base) % 4
    if r ~= 0 then pos = pos + 4 - r self.pos = pos end
    if pos + 4 > lim then
        if pos > lim then fail(pos, "alignment runs past the end") end
        fail(pos, sformat("need %d bytes, %d left", 4, lim - pos))
    end
    local a, b, c, d = sbyte(self.s, pos + 1, pos + 4)
    self.pos = pos + 4
    return a + b * 256 + c * 65536 + d * 16777216
end
function R:count(elem)
    local at = self.pos
    local n = self:u32()
    if n * math.max(elem, 1) > self.lim - self.pos then fail(at, sformat("count %d exceeds the %d bytes left", n, self.lim - self.pos)) end
    return n
end
function R:defer(fn) self.q[#self.q + 1] = fn end
function R:flush()
    local q = self.q
    if #q == 0 then return end
    self.depth = self.depth + 1
    if self.depth > 32 then fail(self.pos, "pointers nested too deep") end
    self.q = {}
    for _, fn in ipairs(q) do
        fn()
        self:flush()
    end
    self.depth = self.depth - 1
end

-- node: what the tree shows for one value. {l=label, o=offset, n=length, v=value, c=children,
-- t=type string, f=parameter field, obj=decoded MS-WMIO object, objref=...}
local function child(node, label)
    local c = { l = label }
    node.c = node.c or {}
    node.c[#node.c + 1] = c
    return c
end

local read_type
local parse_objref

local function prim(rd, t, node)
    local w = t.w
    rd:align(w)
    rd:need(w)
    local s, p = rd.s, rd.pos
    local v
    if w == 1 then v = sbyte(s, p + 1)
    elseif w == 2 then v = u16(s, p); if t.s and v >= 32768 then v = v - 65536 end
    elseif w == 4 then
        if t.f then v = sformat("<real 0x%08x>", u32(s, p)) else v = t.s and s32(s, p) or u32(s, p) end
    else v = t.f and sformat("<real 0x%s>", hex64(s, p)) or hex64(s, p) end
    rd.pos = p + w
    node.v = v
end

local function mip(rd, node, iface)
    local at = rd.pos
    local n = rd:count(1)
    local cnt = rd:u32()
    if cnt ~= n then fail(at, sformat("ulCntData %d does not match the conformance %d", cnt, n)) end
    local p = rd.pos
    rd.pos = p + n
    node.o = node.o or at
    local ok, o = pcall(parse_objref, rd.s, p, p + n, iface, rd.objmax)
    if ok then
        node.objref = o
        node.v = o.text
        rd.objrefs[#rd.objrefs + 1] = o
    else
        node.err = o
        node.v = "OBJREF (not decoded)"
    end
end

local function single_pointer_form(rd)
    local p = rd.pos + (-(rd.pos - rd.base)) % 4
    local s = rd.s
    return p + 12 <= rd.lim and ssub(s, p + 9, p + 12) == "MEOW" and ssub(s, p + 1, p + 4) == ssub(s, p + 5, p + 8)
        and ssub(s, p + 1, p + 4) ~= "\0\0\0\0"
end

local KIND = {}
KIND.prim = prim
KIND.guid = function(rd, t, node) rd:align(4) rd:need(16) node.v = guid(rd.s, rd.pos) rd.pos = rd.pos + 16 end
KIND.filetime = function(rd, t, node)
    rd:align(4) rd:need(8)
    local lo, hi = u32(rd.s, rd.pos), u32(rd.s, rd.pos + 4)
    rd.pos = rd.pos + 8
    local secs = (hi * 4294967296 + lo) / 1e7 - 11644473600
    node.v = (secs > 0 and secs < 4e9) and os.date("!%Y-%m-%d %H:%M:%S UTC", floor(secs)) or sformat("0x%08x%08x", hi, lo)
end
-- [string] wchar_t* / char*: max count, offset, actual count (characters of `width` octets)
local function string_count(rd, width)
    local n = rd:count(0)
    local at = rd.pos
    rd:u32()
    local actual = rd:u32()
    if actual > n or width * actual > rd.lim - rd.pos then fail(at, "string actual count exceeds the bytes left") end
    return actual
end
KIND.wstring = function(rd, t, node)
    local actual = string_count(rd, 2)
    node.v = utf16(rd.s, rd.pos, actual)
    rd.pos = rd.pos + 2 * actual
end
KIND.string = function(rd, t, node)
    local actual = string_count(rd, 1)
    local v = ssub(rd.s, rd.pos + 1, rd.pos + actual)
    rd.pos = rd.pos + actual
    node.v = latin1((v:gsub("%z$", "")))
end
KIND.bstr = function(rd, t, node)
    local ref = rd:u32()
    if ref == 0 then node.v = nil node.null = true return end
    rd:defer(function()
        rd:align(4)
        local at = rd.pos
        rd:need(12)
        local n, cbytes, cl = u32(rd.s, at), u32(rd.s, at + 4), u32(rd.s, at + 8)
        rd.pos = at + 12
        if 2 * n > rd.lim - rd.pos then fail(at, sformat("FLAGGED_WORD_BLOB count %d exceeds the bytes left", n)) end
        if cl > n then fail(at + 8, "clSize exceeds the conformance") end
        local chars = cl
        if cbytes ~= 0xFFFFFFFF and cbytes < 2 * cl then chars = floor(cbytes / 2) end
        if cbytes == 0xFFFFFFFF then node.null = true else node.v = utf16(rd.s, rd.pos, chars) end
        rd.pos = rd.pos + 2 * cl
    end)
end
KIND.unique = function(rd, t, node)
    local ref = rd:u32()
    if ref == 0 then node.null = true return end
    rd:defer(function()
        local inner = G.TYPES[t.e]
        if inner.k == "iface" and single_pointer_form(rd) then
            mip(rd, node, inner.i)
        else
            read_type(rd, t.e, node)
        end
    end)
end
KIND.iface = function(rd, t, node)
    local ref = rd:u32()
    if ref == 0 then node.null = true return end
    rd:defer(function() rd:align(4) mip(rd, node, t.i) end)
end
KIND.mip = function(rd, t, node) mip(rd, node, nil) end
local function elements(rd, t, node, n)
    local e = G.TYPES[t.e]
    if t.e == "byte" then
        rd:need(n)
        node.v = sformat("%d bytes", n)
        node.bytes = { rd.pos, n }
        rd.pos = rd.pos + n
        return
    end
    node.v = sformat("%d elements", n)
    for i = 1, n do
        local c = child(node, sformat("[%d]", i - 1))
        read_type(rd, t.e, c)
    end
    node.count = n
end
KIND.array = function(rd, t, node) elements(rd, t, node, rd:count(G.TYPES[t.e].m or 1)) end
KIND.varray = function(rd, t, node)
    local mx = rd:u32()
    local at = rd.pos
    rd:u32()
    local n = rd:u32()
    if n > mx or n * (G.TYPES[t.e].m or 1) > rd.lim - rd.pos then fail(at, "varying array count exceeds the bytes left") end
    elements(rd, t, node, n)
end
KIND.struct = function(rd, t, node)
    rd:align(t.a)
    local values = {}
    for _, f in ipairs(t.f) do
        local c = child(node, f[1])
        c.t, c.m, c.e = f[2], f[1], f[3]
        local ft = G.TYPES[f[2]]
        if ft.k == "union" then
            -- non-encapsulated union: its discriminant is on the wire, then the arm
            local sw = {}
            read_type(rd, ft.sw, sw)
            local arm = ft.arms[sw.v]
            if arm then
                c.l = f[1] .. "." .. arm[1]
                read_type(rd, arm[2], c)
            else
                c.v = sformat("union arm %s", tostring(sw.v))
            end
        else
            read_type(rd, f[2], c)
        end
        values[f[1]] = c.v
    end
    node.fields = values
end
KIND.union = function(rd, t, node) fail(rd.pos, "a union outside a structure") end
KIND.opaque = function(rd, t, node) fail(rd.pos, "structure not in the interface table: not decoded") end

read_type = function(rd, tname, node)
    local t = G.TYPES[tname]
    if not t then fail(rd.pos, "type " .. tname .. " unknown") end
    rd:align(t.a)
    node.o = node.o or rd.pos
    node.t = node.t or tname
    KIND[t.k](rd, t, node)
    if not node.n or rd.pos - node.o > node.n then node.n = rd.pos - node.o end
end

-- ---------------------------------------------------------------------------------------
-- names for numbers

local function hresult_text(v)
    local n = G.HRESULTS[v]
    if n then return n end
    return sformat("0x%08X", v)
end

local function describe(names, v)
    if not names or v == nil or type(v) ~= "number" then return nil end
    if names[1] == "HRESULT" then return { hresult_text(v % 4294967296) } end
    local first = G.ENUMS[names[1]]
    if not first then return nil end
    local u = v % 4294967296
    if first.kind == "enum" then
        for _, e in ipairs(first.v) do if e[2] == u then return { e[1] } end end
        return nil
    end
    local out, left = {}, u
    for _, name in ipairs(names) do
        local e = G.ENUMS[name]
        for _, f in ipairs(e.v) do
            local bitv = f[2]
            if bitv ~= 0 and left % (bitv * 2) >= bitv then
                out[#out + 1] = f[1]
                left = left - bitv
            end
        end
    end
    if left ~= 0 then out[#out + 1] = sformat("0x%X", left) end
    return out
end

-- ---------------------------------------------------------------------------------------
-- MS-WMIO (MS-WMIO 2.2): classes and instances, read from a Lua string

local WMIO = {}
local CELL = { [16] = 1, [17] = 1, [2] = 2, [18] = 2, [3] = 4, [19] = 4, [20] = 8, [21] = 8, [4] = 4, [5] = 8,
    [11] = 2, [103] = 2 }

local function encoded_string(s, p, lim)
    if p >= lim then fail(p, "Encoded-String: no flag octet") end
    local flag = sbyte(s, p + 1)
    if flag == 0 then
        local z = s:find("\0", p + 2, true)
        if not z or z > lim then fail(p, "Encoded-String: no NUL terminator") end
        return latin1(ssub(s, p + 2, z - 1))
    elseif flag == 1 then
        -- the first NUL character: two zero octets at an even distance from the text's
        -- start (found by string.find, not character by character: command lines and
        -- scripts run to kilobytes)
        local init = p + 2
        while true do
            local z = s:find("\0\0", init, true)
            if not z or z + 1 > lim then break end
            if (z - p) % 2 == 0 then return utf16(s, p + 1, (z - p - 2) / 2) end
            init = z + 1
        end
        fail(p, "Encoded-String: no UTF-16 NUL terminator")
    end
    fail(p, "Encoded-String: bad flag " .. tostring(flag))
end

local function heap_string(s, heap, ref)
    if ref == 0xFFFFFFFF then return nil end
    if ref >= 2147483648 then return G.DICTIONARY[ref - 2147483648 + 1] or "?" end
    if ref >= heap.len then fail(heap.at, "HeapRef past the heap") end
    return encoded_string(s, heap.at + ref, heap.at + heap.len)
end

local function read_heap(s, p, lim)
    if p + 4 > lim then fail(p, "Heap: truncated HeapLength") end
    local n = u32(s, p)
    if n >= 2147483648 then n = n - 2147483648 end
    if p + 4 + n > lim then fail(p, "Heap runs past the object") end
    return { at = p + 4, len = n }, p + 4 + n
end

local function cim_value(s, heap, typ, p)
    local base = typ % 8192
    local is_array = typ % 16384 >= 8192
    if is_array then
        local ref = u32(s, p)
        if ref == 0xFFFFFFFF then return nil end
        local at = heap.at + ref
        if ref + 4 > heap.len then fail(at, "array HeapRef past the heap") end
        local n = u32(s, at)
        local out = {}
        local size = CELL[base] or 4
        if n * size > heap.len - ref then fail(at, "array count exceeds the heap") end
        for i = 1, math.min(n, 64) do
            out[i] = tostring(cim_value(s, heap, base, at + 4 + (i - 1) * size))
        end
        if n > 64 then out[#out + 1] = "..." end
        return "{" .. concat(out, ", ") .. "}"
    end
    if base == 8 or base == 101 or base == 102 then
        return heap_string(s, heap, u32(s, p))
    elseif base == 13 then
        return "(embedded object)"
    elseif base == 11 then
        return u16(s, p) ~= 0 and "TRUE" or "FALSE"
    elseif base == 16 then local v = sbyte(s, p + 1) return v >= 128 and v - 256 or v
    elseif base == 17 then return sbyte(s, p + 1)
    elseif base == 2 then local v = u16(s, p) return v >= 32768 and v - 65536 or v
    elseif base == 18 or base == 103 then return u16(s, p)
    elseif base == 3 then return s32(s, p)
    elseif base == 19 then return u32(s, p)
    elseif base == 20 or base == 21 then
        -- sint64 / uint64 in decimal, as wmiscope writes them
        local lo, hi = u32(s, p), u32(s, p + 4)
        if hi == 0 then return lo end
        return dec64(s, p, base == 20)
    end
    return sformat("<cimtype %d>", typ)
end

local function qualifier_set(s, p, lim, heap)
    if p + 4 > lim then fail(p, "QualifierSet: truncated") end
    local n = u32(s, p)
    local q, stop = p + 4, p + n
    if stop > lim or n < 4 then fail(p, "QualifierSet runs past the object") end
    local out = {}
    while q + 9 <= stop do
        local name = heap and heap_string(s, heap, u32(s, q)) or "?"
        local typ = u32(s, q + 5)
        local base = typ % 8192
        local size = (typ % 16384 >= 8192) and 4 or (CELL[base] or 4)
        local value = heap and cim_value(s, heap, typ % 16384, q + 9) or nil
        out[#out + 1] = { name = name, value = value }
        q = q + 9 + size
    end
    return out, stop
end

-- ClassPart (2.2.15) at p: its header, derivation, qualifiers, properties and default values
local function decode_class_part(s, p, lim)
    if p + 13 > lim then fail(p, "ClassPart: truncated ClassHeader") end
    local len = u32(s, p)
    local stop = p + len
    if stop > lim or len < 13 then fail(p, "ClassPart: EncodingLength runs past the object") end
    local name_ref, ndv_len = u32(s, p + 5), u32(s, p + 9)
    local q = p + 13
    -- DerivationList
    local dlen = u32(s, q)
    local deriv, d, dstop = {}, q + 4, q + dlen
    while d < dstop do
        local name = encoded_string(s, d, dstop)
        local flag = sbyte(s, d + 1)
        local skip
        if flag == 0 then skip = #name + 2 else skip = nil end
        -- the EncodingLength after each name says how long it was
        local e = d + 1
        if flag == 0 then e = s:find("\0", d + 2, true) else
            e = d + 1
            while u16(s, e) ~= 0 do e = e + 2 end
            e = e + 1
        end
        deriv[#deriv + 1] = name
        d = e + 4
    end
    q = dstop
    local quals_at = q
    local _, qend = qualifier_set(s, q, stop, nil)
    q = qend
    local count = u32(s, q)
    local lookups = {}
    for i = 1, count do
        local at = q + 4 + (i - 1) * 8
        lookups[i] = { u32(s, at), u32(s, at + 4) }
    end
    q = q + 4 + 8 * count
    local nd_at = q
    local nd_len = floor((count + 3) / 4)
    local values_at = q + nd_len
    q = q + ndv_len
    local heap = read_heap(s, q, stop)
    local cls = { name = heap_string(s, heap, name_ref), derivation = deriv, props = {},
        nd_len = nd_len, vt_len = ndv_len - nd_len, count = count }
    cls.qualifiers = qualifier_set(s, quals_at, stop, heap)
    cls.superclass = deriv[1]
    for i, lk in ipairs(lookups) do
        local info = heap.at + lk[2]
        if lk[2] + 14 > heap.len then fail(info, "PropertyInfo past the heap") end
        local typ = u32(s, info)
        local prop = { name = heap_string(s, heap, lk[1]), type = typ % 16384, inherited = typ >= 16384,
            order = u16(s, info + 4), vt = u32(s, info + 6), origin = u32(s, info + 10) }
        -- a class's default value: NdTable bit 0 clear means it has one
        local nd = sbyte(s, nd_at + floor(prop.order / 4) + 1) or 0
        local bits = floor(nd / 4 ^ (prop.order % 4)) % 4
        if bits % 2 == 0 and values_at + prop.vt < values_at + cls.vt_len then
            local ok, v = pcall(cim_value, s, heap, prop.type, values_at + prop.vt)
            if ok then prop.default = v end
        end
        local okq, quals = pcall(qualifier_set, s, info + 14, heap.at + heap.len, heap)
        if okq then prop.qualifiers = quals end
        cls.props[i] = prop
    end
    return cls, stop
end

-- Decoded class parts and methods parts, by their octets. Every instance carries its class's
-- part and real traffic repeats a few classes (and their methods' signatures) over and over;
-- what these parts decode to depends on their octets alone (no offsets kept), so the decoded
-- tables are shared and never changed. Bounded: emptied when the octets kept pass PART_BYTES.
-- PARTS: "class" -> class parts; a depth -> methods parts read at that depth (what a methods
-- part decodes to depends on it: signatures nest up to 4)
local PARTS, part_bytes = {}, 0
local PART_BYTES = 4 * 1024 * 1024
local function remember(slot, key, value)
    if part_bytes + #key > PART_BYTES then PARTS, part_bytes = {}, 0 end
    part_bytes = part_bytes + #key
    local cache = PARTS[slot]
    if not cache then cache = {} PARTS[slot] = cache end
    cache[key] = value
end

local function class_part(s, p, lim)
    local len = p + 4 <= lim and u32(s, p)
    if not len or len < 13 or p + len > lim then return decode_class_part(s, p, lim) end
    local key = ssub(s, p + 1, p + len)
    local cls = PARTS.class and PARTS.class[key]
    if cls then return cls, p + len end
    cls = decode_class_part(s, p, lim)
    remember("class", key, cls)
    return cls, p + len
end

local function cim_type_name(t)
    local base = t % 8192
    local name = G.CIMTYPES[base] or sformat("type %d", base)
    if t % 16384 >= 8192 then name = name .. "[]" end
    return name
end

local object_block
local instance_part

-- MethodsPart (2.2.38): names, and the in / out signatures as nested objects; whether
-- every signature lay inside the part (then the part's octets are all it was read from)
local function decode_methods_part(s, p, lim, depth)
    if p + 8 > lim then fail(p, "MethodsPart: truncated") end
    local len = u32(s, p)
    local stop = p + len
    if stop > lim then fail(p, "MethodsPart runs past the object") end
    local n = u16(s, p + 4)
    local heap = read_heap(s, p + 8 + 24 * n, stop)
    local out, inside = {}, true
    for i = 1, n do
        local at = p + 8 + (i - 1) * 24
        local m = { name = heap_string(s, heap, u32(s, at)) }
        for _, side in ipairs({ { "in", 16 }, { "out", 20 } }) do
            local ref = u32(s, at + side[2])
            if ref ~= 0xFFFFFFFF and ref + 4 <= heap.len then
                local blen = u32(s, heap.at + ref)
                if blen > 0 and depth < 4 then
                    if heap.at + ref + 4 + blen > stop then inside = false end
                    local ok, sig = pcall(object_block, s, heap.at + ref + 4, heap.at + ref + 4 + blen, depth + 1)
                    if ok then m[side[1]] = sig end
                end
            end
        end
        out[i] = m
    end
    return out, stop, inside
end

local function methods_part(s, p, lim, depth)
    local len = p + 8 <= lim and u32(s, p)
    if not len or p + len > lim then return decode_methods_part(s, p, lim, depth) end
    local key = ssub(s, p + 1, p + len)
    local methods = PARTS[depth] and PARTS[depth][key]
    if methods then return methods, p + len end
    local out, stop, inside = decode_methods_part(s, p, lim, depth)
    if inside then remember(depth, key, out) end
    return out, stop
end

-- ObjectFlags and Decoration (2.2.5 - 2.2.9) at p: (flags, namespace, server, where the encoding starts)
local function block_head(s, p, lim)
    local flags = sbyte(s, p + 1)
    if not flags then fail(p, "ObjectBlock: empty") end
    local q = p + 1
    local names = {}
    if flags % 8 >= 4 then
        for i = 1, 2 do
            names[i] = encoded_string(s, q, lim)
            if sbyte(s, q + 1) == 0 then q = s:find("\0", q + 2, true)
            else
                q = q + 1
                while u16(s, q) ~= 0 do q = q + 2 end
                q = q + 2
            end
        end
    end
    return flags, names[2], names[1], q
end

-- ObjectBlock (2.2.5)
object_block = function(s, p, lim, depth)
    local flags, namespace, server, q = block_head(s, p, lim)
    local obj = { namespace = namespace, server = server }
    if flags % 2 == 1 then
        -- ClassType: the parent's ClassAndMethodsPart, then the class's own
        local parent, e1 = class_part(s, q, lim)
        local _, e2 = methods_part(s, e1, lim, depth)
        local own, e3 = class_part(s, e2, lim)
        local methods = methods_part(s, e3, lim, depth)
        -- the class part is shared (decoded once per octets): the object is a copy of it
        local cls = {}
        for k, v in pairs(own) do cls[k] = v end
        cls.kind = "class"
        cls.methods = methods
        cls.parent = parent
        for k, v in pairs(obj) do cls[k] = v end
        return cls
    end
    -- InstanceType (2.2.53): the class part, then the instance's values
    local cls, e = class_part(s, q, lim)
    return instance_part(s, e, lim, cls, obj)
end

-- NdTable, InstanceData, InstanceQualifierSet and InstanceHeap of an instance of cls, from
-- nd_at to stop: what an InstanceType (2.2.53) and a RefreshedSingleInstance (MS-WMI 2.2.19)
-- both carry
local function instance_values(s, nd_at, stop, cls, obj)
    local values_at = nd_at + cls.nd_len
    local r = values_at + cls.vt_len
    local _, qend = qualifier_set(s, r, stop, nil)
    r = qend
    local flag = sbyte(s, r + 1)
    r = r + 1
    if flag == 2 then
        for _ = 1, cls.count do
            local _, qe = qualifier_set(s, r, stop, nil)
            r = qe
        end
    end
    local heap = read_heap(s, r, stop)
    local inst = { kind = "instance", name = cls.name, class = cls, values = {}, namespace = obj.namespace,
        server = obj.server }
    for i, prop in ipairs(cls.props) do
        local nd = sbyte(s, nd_at + floor(prop.order / 4) + 1) or 0
        local bits = floor(nd / 4 ^ (prop.order % 4)) % 4
        local v
        if bits % 2 == 1 then
            v = nil
        elseif bits >= 2 then
            v = prop.default
        else
            local ok, x = pcall(cim_value, s, heap, prop.type, values_at + prop.vt)
            v = ok and x or "(not decoded)"
        end
        inst.values[i] = v
    end
    return inst
end

-- the instance fields after CurrentClass (2.2.53, and 2.2.3 without the class), at e
instance_part = function(s, e, lim, cls, obj)
    local len = u32(s, e)
    local stop = e + len
    if stop > lim then fail(e, "InstanceType: EncodingLength runs past the object") end
    return instance_values(s, e + 9, stop, cls, obj)
end

-- MS-WMI 2.2.15 - 2.2.19: the blob of a WBEM_REFRESHED_OBJECT at p (until lim), read against
-- the template its request id was added with (a class, or an instance whose class is used):
-- the instances it refreshes, each {at, len, obj}. Only the values travel; where the objects
-- come from (Decoration) stays the template's.
local BLOB_ALL, BLOB_ERROR, BLOB_ENUM = 2, 3, 4
local function refreshed_single(s, p, lim, template)
    if p + 8 > lim then fail(p, "RefreshedSingleInstance: truncated") end
    local cls = template.kind == "instance" and template.class or template
    return instance_values(s, p + 4, lim, cls, template)
end
function WMIO.refreshed(s, p, lim, blob_type, template)
    if blob_type == BLOB_ERROR then
        if lim > p then fail(p, "WBEM_BLOB_TYPE_ERROR with a blob") end
        return {}
    elseif blob_type == BLOB_ALL then
        return { { at = p, len = lim - p, obj = refreshed_single(s, p, lim, template) } }
    elseif blob_type ~= BLOB_ENUM then
        fail(p, sformat("m_lBlobType %s is not 2, 3 or 4", tostring(blob_type)))
    end
    -- WBEM_INSTANCE_BLOB (2.2.16): Version 1, numObjects, then each a blobSize and an instance
    if p + 8 > lim or u32(s, p) ~= 1 then fail(p, "WBEM_INSTANCE_BLOB: Version is not 1") end
    local n = u32(s, p + 4)
    if n * 12 > lim - p - 8 then fail(p + 4, sformat("WBEM_INSTANCE_BLOB: %d objects cannot fit", n)) end
    local out, q = {}, p + 8
    for i = 1, n do
        local size = u32(s, q)
        if q + 4 + size > lim then fail(q, sformat("RefreshedInstances[%d].blobSize runs past the blob", i - 1)) end
        out[i] = { at = q, len = 4 + size, obj = refreshed_single(s, q + 4, q + 4 + size, template) }
        q = q + 4 + size
    end
    return out
end

-- MS-WMI 2.2.14 ObjectArray at p: its objects, classes of WBEMOBJECT_INSTANCEs kept in cache
-- (classID -> class) for the WBEMOBJECT_INSTANCE_NOCLASS of later calls
function WMIO.object_array(s, p, lim, cache)
    if p + 46 > lim or ssub(s, p + 5, p + 12) ~= "WBEMDATA" then fail(p, "ObjectArray: no WBEMDATA header") end
    local size1, ptype, count = u32(s, p + 16), sbyte(s, p + 26), u32(s, p + 42)
    local stop = p + 26 + size1
    if stop > lim then fail(p + 16, "ObjectArray: dwDataSize1 runs past the buffer") end
    local out = { packet = ptype == 0 and "Indicate" or "Next", count = count, objects = {}, at = p, len = stop - p }
    local q = p + 46
    for i = 1, count do
        if q + 9 > stop then fail(q, "ObjectArray: fewer objects than dwNumObjects") end
        local size, kind = u32(s, q + 4), sbyte(s, q + 9)
        local body, obj_end = q + 9, q + 9 + size
        if obj_end > stop then fail(q + 4, "WBEM_DATAPACKET_OBJECT: dwSizeOfData runs past the ObjectArray") end
        local item = { kind = kind, at = q, len = obj_end - q }
        local ok, err = pcall(function()
            if kind == 1 then
                item.obj = object_block(s, body + 8, obj_end, 0)
            elseif kind == 2 or kind == 3 then
                local cid = guid(s, body + 8)
                item.class_id = cid
                if kind == 2 then
                    item.obj = object_block(s, body + 24, obj_end, 0)
                    if cache and item.obj.class then cache[cid] = item.obj.class end
                else
                    local cls = cache and cache[cid]
                    if not cls then fail(body + 8, "classID " .. cid .. " names no class seen before") end
                    local flags, ns, server, e = block_head(s, body + 24, obj_end)
                    item.obj = instance_part(s, e, obj_end, cls, { namespace = ns, server = server })
                end
            else
                fail(q + 8, "bObjectType " .. tostring(kind) .. " is not 1, 2 or 3")
            end
        end)
        if not ok then item.err = type(err) == "table" and err or { off = q, msg = tostring(err) } end
        out.objects[i] = item
        q = obj_end
    end
    return out
end

function WMIO.encoding_unit(s, p, lim)
    if lim - p < 8 or u32(s, p) ~= 0x12345678 then fail(p, "EncodingUnit: signature is not 0x12345678") end
    local n = u32(s, p + 4)
    if p + 8 + n > lim then fail(p + 4, "ObjectEncodingLength runs past the buffer") end
    return object_block(s, p + 8, p + 8 + n, 0)
end

-- the name of the class an EncodingUnit holds (or is an instance of), found by skipping
-- blocks by their EncodingLength rather than decoding them
local function class_part_name(s, p, lim)
    local name_ref = u32(s, p + 5)
    local q = p + 13
    q = q + u32(s, q)                          -- DerivationList
    q = q + u32(s, q)                          -- ClassQualifierSet
    q = q + 4 + 8 * u32(s, q)                  -- PropertyLookupTable
    q = q + u32(s, p + 9)                      -- NdTable and default values
    local heap = read_heap(s, q, lim)
    return heap_string(s, heap, name_ref)
end

function WMIO.class_name(s, p, lim)
    if lim - p < 9 or u32(s, p) ~= 0x12345678 then fail(p, "EncodingUnit: signature is not 0x12345678") end
    local flags, _, _, q = block_head(s, p + 8, lim)
    if flags % 2 == 1 then
        q = q + u32(s, q)                      -- the parent's ClassPart
        q = q + u32(s, q)                      -- and its MethodsPart
    end
    return class_part_name(s, q, lim)
end

-- IWbemContextBuffer (MS-WMI 2.2.13.1): its named values, as "Name = value" texts.
-- Scalars sit in 8-octet slots (VT_R8 in its own 8), strings are IWbemContextStrings (a count
-- of UTF-16 units, no NUL), VT_UNKNOWN an MS-WMIO EncodingUnit (or a whole OBJREF_CUSTOM).
local VT_SCALAR = { [2] = { 2, true }, [3] = { 4, true }, [16] = { 1, true }, [17] = { 1 }, [18] = { 2 },
    [19] = { 4 }, [11] = { 2 } }
local VT_NAMES = { [1] = "VT_NULL", [2] = "VT_I2", [3] = "VT_I4", [4] = "VT_R4", [5] = "VT_R8", [8] = "VT_BSTR",
    [11] = "VT_BOOL", [13] = "VT_UNKNOWN", [16] = "VT_I1", [17] = "VT_UI1", [18] = "VT_UI2", [19] = "VT_UI4" }

local function context_string(s, q, lim)
    local n = u32(s, q)
    if q + 4 + 2 * n > lim then fail(q, "IWbemContextString: count runs past the buffer") end
    return utf16(s, q + 4, n), q + 4 + 2 * n
end

local function context_values(s, p, lim)
    local out = {}
    local q = p + 4 + 16 * u32(s, p)                   -- NumGuids, Guids
    if q + 4 > lim then fail(p, "IWbemContextBuffer: NumGuids runs past the buffer") end
    local count = u32(s, q)
    q = q + 4
    for i = 1, count do
        if i > 256 then out[#out + 1] = "..." break end
        local name
        name, q = context_string(s, q, lim)
        local vt = u16(s, q + 4)
        q = q + 6
        local base, text = vt % 4096, nil
        if vt >= 0x2000 then
            local n, size = u32(s, q), u32(s, q + 4)
            text = sformat("%s array of %d", VT_NAMES[base] or tostring(base), n)
            if base == 8 then
                q = q + 8
                for _ = 1, n do local _, e = context_string(s, q, lim) q = e end
            else
                q = q + 8 + n * size
            end
        elseif base == 1 then
            text = "NULL"
        elseif base == 8 then
            text, q = context_string(s, q, lim)
        elseif base == 5 then
            text = "<real>"
            q = q + 8
        elseif base == 4 then
            text = "<real>"
            q = q + 8
        elseif base == 13 then
            local e = q
            if ssub(s, q + 1, q + 4) == "MEOW" then e = q + 48 end
            local obj = WMIO.class_name(s, e, lim)
            text = "object " .. tostring(obj)
            q = e + 8 + u32(s, e + 4)
        elseif VT_SCALAR[base] then
            local w, signed = VT_SCALAR[base][1], VT_SCALAR[base][2]
            local v = w == 1 and sbyte(s, q + 1) or w == 2 and u16(s, q) or u32(s, q)
            if signed and v >= 2 ^ (8 * w - 1) then v = v - 2 ^ (8 * w) end
            text = base == 11 and (v ~= 0 and "TRUE" or "FALSE") or tostring(floor(v))
            q = q + 8
        else
            fail(q - 2, sformat("PropertyType 0x%04X is not one MS-WMI 2.2.13.2 allows", vt))
        end
        if q > lim then fail(q, "IWbemContextProperty runs past the buffer") end
        out[#out + 1] = name .. " = " .. text
    end
    return out
end

-- ---------------------------------------------------------------------------------------
-- OBJREF (MS-DCOM 2.2.18)

parse_objref = function(s, p, lim, declared, objmax)
    if p + 24 > lim then fail(p, "OBJREF: need 24 bytes") end
    if ssub(s, p + 1, p + 4) ~= "MEOW" then fail(p, "OBJREF: signature is not MEOW") end
    local flags = u32(s, p + 4)
    local iid = guid(s, p + 8)
    local info = G.IFACES[iid]
    local o = { flags = flags, iid = iid, iface = info and info.name or declared, at = p, len = lim - p }
    if flags == 1 or flags == 2 or flags == 8 then
        if p + 64 > lim then fail(p, "STDOBJREF: truncated") end
        o.oxid = hex64(s, p + 32)
        o.ipid = guid(s, p + 48)
        o.text = sformat("OBJREF_STANDARD %s IPID %s", o.iface or iid, o.ipid)
    elseif flags == 4 then
        if p + 48 > lim then fail(p, "OBJREF_CUSTOM: truncated") end
        o.clsid = guid(s, p + 24)
        o.payload = p + 48
        o.text = sformat("OBJREF_CUSTOM %s", o.iface or iid)
        if o.clsid == G.WMIO_CLSID and lim - o.payload > (objmax or math.huge) then
            -- the first pass wants the class name only (wmi.class); a tree that is not shown
            -- gets the objects a filter is likely to look into (method parameters, instances
            -- being put), not whole class definitions; a tree that is shown gets everything
            local ok, name = pcall(WMIO.class_name, s, o.payload, lim)
            if ok then o.obj = { name = name, light = true } end
        elseif o.clsid == G.WMIO_CLSID then
            local ok, obj = pcall(WMIO.encoding_unit, s, o.payload, lim)
            if ok then o.obj = obj else o.obj_err = obj end
        elseif o.clsid == G.CONTEXT_CLSID then
            -- a context's values are shown in the tree only: the first pass (objmax 0) skips them
            if objmax ~= 0 then
                local ok, values = pcall(context_values, s, o.payload, lim)
                if ok then o.context = values else o.obj_err = values end
            end
        else
            -- activation properties and other custom blobs: the standard OBJREFs inside
            o.nested = {}
            local q = o.payload
            while true do
                local a = s:find("MEOW", q + 1, true)
                if not a or a + 63 > lim then break end
                local ok, inner = pcall(parse_objref, s, a - 1, lim, nil, objmax)
                if ok and inner.ipid then o.nested[#o.nested + 1] = inner end
                q = a + 3
            end
        end
    else
        fail(p + 4, sformat("OBJREF flags 0x%x unknown", flags))
    end
    return o
end

-- ---------------------------------------------------------------------------------------
-- a stub decoded: the parameters as nodes

local ORPC_SIZE = { ORPCTHIS = 32, ORPCTHAT = 8 }

-- the parameters read in order; `out.cur` is the one being read when it fails. One pcall
-- for the whole stub, not one closure per parameter: this runs for every WMI PDU.
local function read_params(rd, info, m, plist, out, objmax)
    local s, lim, params = rd.s, rd.lim, out.params
    for _, p in ipairs(plist) do
        local node = { l = p.d, p = p, t = p.t }
        params[#params + 1] = node
        out.cur = node
        -- the first pass skips the implicit ORPC header when it has no extensions (its
        -- usual form): a fixed 32 (ORPCTHIS) or 8 (ORPCTHAT) octets, nothing it needs
        local skip = objmax == 0 and ORPC_SIZE[p.t]
        if skip and rd.pos + skip <= lim and u32(s, rd.pos + skip - 4) == 0 then
            node.o, node.n = rd.pos, skip
            rd.pos = rd.pos + skip
        else
            rd:align(G.TYPES[p.t].a)
            local start = rd.pos
            read_type(rd, p.t, node)
            rd:flush()
            node.o, node.n = start, rd.pos - start
            if node.bytes and G.SPECIAL[info.name .. "." .. m.n .. "." .. p.n] == "object_array" then
                node.oa = { node.bytes[1], node.bytes[1] + node.bytes[2] }
            end
        end
    end
    out.cur = nil
end

local function decode_stub(s, base, lim, info, opnum, response, objmax)
    local m = info.m[opnum]
    local out = { params = {}, objrefs = {} }
    if not m or not m.q then out.err = { off = base, msg = "method not decoded" } return out end
    local rd = reader(s, base, lim)
    rd.objmax = objmax
    local ok, err = pcall(read_params, rd, info, m, response and m.r or m.q, out, objmax)
    if not ok then
        local node = out.cur
        out.cur = nil
        local special = G.SPECIAL[info.name .. "." .. m.n .. "." .. node.p.n]
        local at = special == "indicate" and s:find("WBEMDATA", (node.o or base) + 1, true)
        if at then
            -- an optimized Indicate (MS-WMI 3.1.4.2.1): an ObjectArray in place of the
            -- IDL's array of interface pointers
            node.o = at - 5
            node.n = lim - node.o
            node.oa = { at - 5, lim }
            node.v = "ObjectArray"
            node.err = nil
            return out
        end
        node.err = type(err) == "table" and err or { off = rd.pos, msg = tostring(err) }
        out.err = node.err
    elseif response then
        local at = rd.pos + (-(rd.pos - rd.base)) % 4
        if at + 4 <= lim then
            out.ret = { o = at, n = 4, v = u32(s, at) }
        elseif at > lim then
            out.err = { off = at, msg = "alignment runs past the end" }
        else
            out.err = { off = at, msg = sformat("need 4 bytes, %d left", lim - at) }
        end
    end
    out.objrefs = rd.objrefs
    return out
end

local function param(dec, name)
    local by = dec.by
    if not by then
        by = {}
        for _, n in ipairs(dec.params) do by[n.p.n] = n end
        dec.by = by
    end
    return by[name]
end

-- ---------------------------------------------------------------------------------------
-- state: bind contexts per TCP stream, calls per stream, IPIDs across the capture

local S = {}
local function reset()
    S.ctx = {}          -- stream -> ctx_id -> interface uuid
    S.calls = {}        -- stream -> call_id -> call
    S.ipids = {}        -- ipid -> {iid, ns, op}
    S.frags = {}        -- stream:call_id:ptype -> list of stub pieces
    S.frames = {}       -- frame number -> list of PDU records (false: none)
    S.classes = {}      -- smart enumerator / sink IPID -> ObjectArray classID -> class (2.2.14.4)
    S.templates = {}    -- IWbemRemoteRefresher IPID -> request id -> _WBEM_REFRESH_INFO template
    S.latest = {}       -- request id -> the template most recently added under it (any refresher)
    S.ntemplates = 0
end
reset()

local function derives(uuid, ancestor)
    local info = G.IFACES[uuid]
    if not info then return false end
    for _, a in ipairs(info.anc) do if a == ancestor then return true end end
    return false
end

local function join_namespace(parent, child)
    if not child or child == "" then return parent end
    if not parent or child:sub(1, 2) == "\\\\" or child:sub(1, 2) == "//" then return child end
    return (parent:gsub("[\\/]+$", "")) .. "\\" .. (child:gsub("^[\\/]+", ""))
end

local function class_of_path(path)
    if not path then return nil end
    local p = path:gsub("^.*:", "")
    return p:match("^([%w_]+)")
end

local function class_of_query(q)
    if not q then return nil end
    return q:match("[Ff][Rr][Oo][Mm]%s+([%w_]+)")
end

local function learn(o, ns, op, frame)
    if o.ipid then
        S.ipids[o.ipid] = { iid = o.iid, ns = ns, op = op, frame = frame }
    end
    for _, n in ipairs(o.nested or {}) do learn(n, ns, op, frame) end
end

-- what a decoded request / response tells the registry; the call's analyst fields
local function observe(call, dec, response, frame)
    local info = G.IFACES[call.iid]
    local mname = info and info.m[call.opnum] and info.m[call.opnum].n
    if not response then
        local path = param(dec, "strObjectPath")
        local cls = param(dec, "strClass") or param(dec, "strSuperclass") or param(dec, "strSuperClass")
        local q = param(dec, "strQuery")
        call.class = class_of_path(path and path.v) or (cls and cls.v) or class_of_query(q and q.v)
        for _, n in ipairs({ "pObject", "pInst" }) do
            local o = param(dec, n)
            if o and o.objref and o.objref.obj then call.class = call.class or o.objref.obj.name end
        end
        local res = param(dec, "wszNetworkResource")
        if res then call.login_ns = res.v end
        local sub = param(dec, "strNamespace")
        if sub then call.login_ns = join_namespace(call.ns, sub.v) end
        local iids = param(dec, "iids")
        if iids and iids.c then
            call.qi = {}
            for i, c in ipairs(iids.c) do call.qi[i] = c.v end
        end
        local queried = param(dec, "ripid")
        if queried then call.qi_of = queried.v end
    end
    local ns = call.login_ns or call.ns
    for _, o in ipairs(dec.objrefs) do
        -- an interface pointer names its IPID; one returned by NTLMLogin / OpenNamespace
        -- is the namespace it opened
        if o.iface == "IWbemServices" and response then learn(o, ns, call.op, frame) else learn(o, call.ns, call.op, frame) end
    end
    if response and call.qi then
        -- RemQueryInterface: REMQIRESULT i answers the request's IID i
        local results = param(dec, "ppQIResults")
        for i, c in ipairs(results and results.c or {}) do
            local std = c.c and c.c[2]
            local ipid
            for _, f in ipairs(std and std.c or {}) do if f.l == "ipid" then ipid = f.v end end
            if ipid and call.qi[i] and c.fields and c.fields.hResult == 0 then
                -- the new pointer is another interface of the object queried: its namespace
                -- and operation carry over
                local of = call.qi_of and S.ipids[call.qi_of] or call
                S.ipids[ipid] = { iid = call.qi[i], ns = of.ns, op = of.op, frame = frame }
            end
        end
    end
end

-- _WBEM_REFRESH_INFO (MS-WMI 2.2.20) in an AddObjectToRefresher / AddEnumToRefresher reply:
-- its m_pTemplate is what the refreshed blobs of request id m_lCancelId are read against
-- (2.2.19 carries only values), kept under the IWbemRemoteRefresher it names
local MAX_TEMPLATES = 4096
local function keep_template(node, stub)
    local cancel = node.fields and node.fields.m_lCancelId
    if type(cancel) ~= "number" then return end
    local template, refresher
    local function walk(n)
        local o = n.objref
        if o and o.clsid == G.WMIO_CLSID and o.payload then
            local ok, obj = pcall(WMIO.encoding_unit, stub, o.payload, o.at + o.len)
            if ok then template = obj end
        elseif o and o.iface == "IWbemRemoteRefresher" then
            refresher = o.ipid
        end
        for _, c in ipairs(n.c or {}) do walk(c) end
    end
    walk(node)
    if not template then return end
    -- bounded: a capture that adds more objects than this starts the tables again
    S.ntemplates = S.ntemplates + 1
    if S.ntemplates > MAX_TEMPLATES then S.templates, S.latest, S.ntemplates = {}, {}, 1 end
    local key = refresher or "?"
    S.templates[key] = S.templates[key] or {}
    S.templates[key][cancel] = template
    S.latest[cancel] = template
    return true
end

-- the methods whose reply carries WBEM_REFRESHED_OBJECTs (G.SPECIAL), and which parameter: looked
-- up once here, not by name for every PDU
for _, info in pairs(G.IFACES) do
    for _, m in pairs(info.m) do
        for _, p in ipairs(m.r or {}) do
            if G.SPECIAL[info.name .. "." .. m.n .. "." .. p.n] == "refreshed_objects" then m.refreshed = p.n end
        end
    end
end

-- the templates of a RemoteRefresh reply's WBEM_REFRESHED_OBJECTs, by request id, resolved
-- on the first pass (a later pass sees the tables as the capture left them)
local function templates_for(call, node)
    local out, mine = {}, S.templates[call.ipid or "?"] or {}
    for _, c in ipairs(node.c or {}) do
        local rid = c.fields and c.fields.m_lRequestId
        if rid then out[rid] = mine[rid] or S.latest[rid] end
    end
    return out
end

-- ---------------------------------------------------------------------------------------
-- one frame, first pass: the PDUs, their calls, the stubs

local PTYPE = { [0] = "Request", [2] = "Response", [3] = "Fault" }

-- the PDU types the first pass reads: request, response, fault, bind, alter_context
local READ = { [0] = true, [2] = true, [3] = true, [11] = true, [14] = true }

-- the PDU header (C706 12.6) from its first octets `s` (up to 40). The PDU is rlen octets
-- long; its auth trailer is read by auth_trailer, only for the PDUs whose stub or sealing
-- matters. This runs for every PDU of the capture, and what it returns is used before the
-- next PDU is read: one table, filled again each time
local H = {}
local function pdu_header(s, rlen)
    if #s < 16 then return nil end
    -- the common header's octets in one call
    local ver, _, ptype, flags, drep, _, _, _, f1, f2, a1, a2, c1, c2, c3, c4, h1, h2, h3, h4, x1, x2, o1, o2 = sbyte(s, 1, 24)
    if ver ~= 5 then return nil end
    local frag_len = f1 + f2 * 256
    local h = H
    h.ptype, h.flags, h.little, h.frag_len = ptype, flags, drep >= 16, frag_len
    h.auth_len, h.call_id = a1 + a2 * 256, c1 + c2 * 256 + c3 * 65536 + c4 * 16777216
    h.stub_end = rlen < frag_len and rlen or frag_len
    h.alloc_hint, h.ctx_id, h.opnum, h.hdr, h.ipid, h.status, h.auth_level, h.pad = nil, nil, nil, nil, nil, nil, nil, nil
    if drep < 16 then return h end
    if h4 then h.alloc_hint = h1 + h2 * 256 + h3 * 65536 + h4 * 16777216 end
    if ptype == 0 and o2 then
        h.ctx_id, h.opnum = x1 + x2 * 256, o1 + o2 * 256
        h.hdr = 24
        if flags % 256 >= 128 and #s >= 40 then
            h.ipid = guid(s, 24)
            h.hdr = 40
        end
    elseif (ptype == 2 or ptype == 3) and #s >= 24 then
        h.ctx_id = x1 + x2 * 256
        h.hdr = 24
        if ptype == 3 and #s >= 28 then h.status = u32(s, 24) end
    end
    return h
end

-- Tvb's methods, looked up once: `tvb:raw()` goes through the class's __index function at
-- each call, which costs about as much as the call itself (measured inside tshark 4.0: 0.16
-- against 0.10 us for raw, 0.12 against 0.07 us for len). Set by the entry point at the
-- first payload (a Tvb exists only during dissection)
local TVB_RAW, TVB_LEN, TVB_BYTES

-- the auth trailer (C706 13.2.6.1) of the PDU at `off` in tvb: its level, and where the stub
-- ends (before the auth padding)
local function auth_trailer(h, tvb, off, rlen)
    if h.auth_len > 0 and h.frag_len >= h.auth_len + 8 then
        local a = h.frag_len - h.auth_len - 8
        if a + 3 <= rlen then
            local _, level, pad = sbyte(TVB_RAW(tvb, off + a, 3), 1, 3)
            h.auth_level, h.pad = level, pad
            h.stub_end = math.max((h.hdr or 24), a - pad)
        end
    end
end

local function value_text(node)
    if node.null then return "NULL" end
    if node.v == nil then return "" end
    return tostring(node.v)
end

local function summary(info, rec, dec)
    local m = info and info.m[rec.call.opnum]
    local head = sformat("%s:%s %s", info and info.name or "?", m and m.n or ("opnum " .. rec.call.opnum),
        PTYPE[rec.ptype] or "?")
    local items = {}
    if dec then
        for _, n in ipairs(dec.params) do
            if n.p.s and not n.err then items[#items + 1] = n.p.d .. "=" .. value_text(n) end
        end
        if dec.ret then items[#items + 1] = "ReturnValue=" .. hresult_text(dec.ret.v) end
    end
    if rec.sealed then items[#items + 1] = "(encrypted)" end
    if rec.ptype == 3 then items[#items + 1] = sformat("Fault 0x%08x", rec.status or 0) end
    if #items > 0 then head = head .. ", " .. concat(items, " ") end
    return head
end

-- sealed PDUs met so far in the frame being dissected: the index of the next one's
-- dcerpc.decrypted_stub_data (TCP may hand the frame's PDUs over in several calls)
local SEALED = { frame = -1, n = 0 }

-- 4.4: the stubs its DCE/RPC dissector handed to the claiming dissector (below) during the
-- current call, in PDU order: the last fragment of each request and response on a context
-- bound to a WMI interface, decrypted when Wireshark could (no dcerpc.decrypted_stub_data
-- field is made for those). Copied only when Wireshark has keys.
local CLAIMS, NCLAIMS = {}, 0
local CLAIMING = MAJOR > 4 or (MAJOR == 4 and MINOR >= 2)

local OPERATION = { IWbemServices = true, IWbemLevel1Login = "Login", IWbemLoginClientID = "Login",
    IWbemLoginClientIDEx = "Login", IWbemRefreshingServices = "Refresher", IWbemRemoteRefresher = "Refresher" }

-- Stubs decoded on the first pass, by method, direction and octets: WMI traffic repeats
-- itself (the same queries and objects asked for again, RemQueryInterface of the same
-- interfaces, enumerators' Next calls), and what the first pass decodes depends on the
-- stub's octets alone once its ORPCTHIS / ORPCTHAT is the usual fixed one without
-- extensions, which it skips (a request's ORPCTHIS carries a causality ID that differs from
-- call to call). The decoded stub is read, never changed, by what uses it (the registry, the
-- Info column, the values kept for a tree nobody looks at). A stub of up to 256 octets after
-- that header is its own key; a longer one is found by its length and first and last 64
-- octets, and then compared whole. Bounded: emptied when the octets kept pass MEMO_BYTES.
local MEMO, memo_bytes, memo_key, memo_slot = {}, 0, nil, nil
local MEMO_BYTES, MEMO_STUB = 4 * 1048576, 65536

local function memo_find(stub, info, opnum, ptype)
    memo_key = nil
    local skip = ptype == 2 and 8 or 32
    local n = #stub
    if n < skip or n > MEMO_STUB or u32(stub, skip - 4) ~= 0 then return nil end
    -- (only a method whose parameters begin with that header: the key leaves it out)
    local m = info.m[opnum]
    local first = m and (ptype == 2 and m.r or m.q)
    first = first and first[1]
    if not first or first.t ~= (ptype == 2 and "ORPCTHAT" or "ORPCTHIS") then return nil end
    local by = MEMO[info]
    if not by then by = {} MEMO[info] = by end
    local slot = opnum * 4 + ptype
    memo_slot = by[slot]
    if not memo_slot then memo_slot = {} by[slot] = memo_slot end
    local body = ssub(stub, skip + 1)
    if n - skip <= 256 then
        memo_key = body
        return memo_slot[body]
    end
    memo_key = n .. ssub(body, 1, 64) .. ssub(body, -64)
    local e = memo_slot[memo_key]
    if e and e.body == body then return e end
    memo_key = { memo_key, body }
    return nil
end

-- keep what decode_stub gave for the stub memo_find was last asked about (and did not have)
local function memo_keep(dec)
    if not memo_key then return nil end
    local e = { dec = dec }
    local key = memo_key
    if type(key) == "table" then key, e.body = key[1], key[2] end
    memo_bytes = memo_bytes + #key + (e.body and #e.body or 0) + 64
    memo_key = nil
    if memo_bytes > MEMO_BYTES then
        MEMO, memo_bytes = {}, 0
    else
        memo_slot[key] = e
    end
    return e
end

-- the whole PDUs of the payload being dissected, as front found them: where each starts in
-- the tvb, its length and its first octets (up to 40: the header, the object UUID). Scratch
-- arrays, filled again for each payload (entries past the count are stale)
local OFFS, LENS, HEADS = {}, {}, {}

-- the npdus PDUs (OFFS, LENS, HEADS) of `tvb` that TCP handed over in one call, in frame
-- `number`, on the connection `stream`
local function first_pass(number, tvb, npdus, stream)
    local decrypted      -- dcerpc.decrypted_stub_data, read at the first sealed PDU
    if SEALED.frame ~= number then SEALED.frame, SEALED.n = number, 0 end
    local nclaimed = 0
    local out
    local ctx, calls = S.ctx[stream], S.calls[stream]
    if not ctx then
        ctx, calls = {}, {}
        S.ctx[stream], S.calls[stream] = ctx, calls
    end
    for idx = 1, npdus do
        local off, rlen = OFFS[idx], LENS[idx]
        local head = HEADS[idx]
        local h = READ[sbyte(head, 3)] and pdu_header(head, rlen)
        if h and h.little then
            if h.ptype == 11 or h.ptype == 14 then
                -- bind / alter_context: p_cont_list (C706 12.6.3.1)
                local s = TVB_RAW(tvb, off, rlen)
                if #s >= 28 then
                    local n, p = sbyte(s, 25), 28
                    for _ = 1, n do
                        if p + 24 > #s then break end
                        local id, nts = u16(s, p), sbyte(s, p + 2)
                        ctx[id] = guid(s, p + 4)
                        p = p + 24 + 20 * nts
                    end
                end
            elseif h.ptype == 0 or h.ptype == 2 or h.ptype == 3 then
                local call
                if h.ptype == 0 then
                    call = calls[h.call_id]
                    if not call or call.req_done then
                        call = { call_id = h.call_id, opnum = h.opnum, ipid = h.ipid }
                        calls[h.call_id] = call
                        local bound = ctx[h.ctx_id]
                        local e = h.ipid and S.ipids[h.ipid]
                        local iid = bound
                        if e and e.iid and G.IFACES[e.iid] then
                            iid = e.iid
                            if bound and bound ~= iid and derives(bound, iid) then iid = bound end
                        end
                        call.iid = iid
                        local ci = iid and G.IFACES[iid]
                        local cm = ci and ci.m[h.opnum]
                        if not (ci and (ci.g == "wmi" or (cm and (cm.lq or cm.lr)))) then
                            -- neither a WMI call nor one the registry learns from (RemRelease,
                            -- pings, the resolver...): nothing to keep of it, on either side
                            calls[h.call_id] = nil
                            call = nil
                        else
                            call.ns = e and e.ns
                            -- the operation (what the analyst thinks of as one request): every
                            -- IWbemServices call starts one; the objects it returns carry it
                            call.op = OPERATION[ci.name]
                            if call.op == true then call.op = cm and cm.n end
                            if not call.op then call.op = e and e.op end
                        end
                    end
                else
                    call = calls[h.call_id]
                end
                local info = call and call.iid and G.IFACES[call.iid]
                local m = info and info.m[call.opnum]
                -- decoded on this pass: a WMI call (its Info column), or what the
                -- registry learns from (RemQueryInterface, activation, ...)
                local needed = m and (info.g == "wmi" or m[h.ptype == 2 and "lr" or "lq"]) and h.ptype ~= 3
                -- the auth trailer matters for a call's stub, or to count sealed PDUs against
                -- the decrypted_stub_data fields of the frame
                if call or f_decrypted then auth_trailer(h, tvb, off, rlen) end
                local sealed = h.auth_level == 6
                local stub, from_decrypted
                local kept      -- a reassembled stub's ByteArray, what its record keeps
                local last = h.flags % 4 >= 2
                local first = h.flags % 2 == 1
                local key = (sealed or needed) and (stream .. ":" .. h.call_id .. ":" .. h.ptype)
                local bound = CLAIMING and last and h.ctx_id and ctx[h.ctx_id]
                local claimed = bound and (h.ptype == 0 or h.ptype == 2) and G.IFACES[bound] and G.IFACES[bound].g == "wmi"
                if claimed then nclaimed = nclaimed + 1 end
                if sealed then
                    -- the plaintext: handed to the claiming dissector (4.4), or a
                    -- decrypted_stub_data field, when Wireshark has keys
                    local piece, d
                    if claimed then
                        piece = nclaimed <= NCLAIMS and CLAIMS[nclaimed]
                        if type(piece) ~= "string" then piece = nil end
                    elseif f_decrypted then
                        SEALED.n = SEALED.n + 1
                        decrypted = decrypted or { f_decrypted() }
                        d = decrypted[SEALED.n]
                        piece = needed and d and d.range:raw()
                    end
                    if piece and first and last then
                        if d then stub, from_decrypted = piece, SEALED.n else stub = piece end
                    elseif piece then
                        -- Wireshark's reassembly of decrypted fragments keeps the auth padding
                        -- of all but the last one: reassemble the fragments' own plaintext
                        local buf = S.frags[key]
                        if first or not buf then buf = {} S.frags[key] = buf end
                        if last then
                            local own = (h.stub_end or 0) - (h.hdr or 0)
                            buf[#buf + 1] = ssub(piece, #piece - own + 1)
                            stub = concat(buf)
                            S.frags[key] = nil
                        else
                            buf[#buf + 1] = piece
                        end
                    end
                elseif h.hdr and needed then
                    -- the plugin reassembles fragmented stubs itself, each fragment's stub
                    -- without its auth padding, whatever their size
                    local n = h.stub_end - h.hdr
                    if first and last then
                        stub = n > 0 and TVB_RAW(tvb, off + h.hdr, n) or ""
                    else
                        -- gathered in a ByteArray, outside Lua's heap: a Lua string per
                        -- fragment and table.concat (whose buffer grows by copies) cost more
                        -- (measured on 4.0, 40 MB of fragmented replies: 0.15-0.19 s against
                        -- 0.11-0.13 s). The ByteArray is what the record keeps (see front)
                        local buf = S.frags[key]
                        -- (no first fragment seen: the capture began inside the PDU)
                        if first or type(buf) ~= "userdata" then buf = ByteArray.new() S.frags[key] = buf end
                        -- (Tvb:bytes: no TvbRange made for it)
                        if n > 0 then buf:append(TVB_BYTES(tvb, off + h.hdr, n)) end
                        if last then
                            S.frags[key] = nil
                            stub = buf:raw()
                            kept = buf
                        end
                    end
                end
                if call and (last or h.ptype == 3) then
                    if h.ptype == 0 then call.req_frame = number call.req_done = true
                    else call.resp_frame = number end
                    local dec, added, seen
                    if needed and stub then
                        local ok, d
                        seen = memo_find(stub, info, call.opnum, h.ptype)
                        if seen then
                            ok, d = true, seen.dec
                        else
                            ok, d = pcall(decode_stub, stub, 0, #stub, info, call.opnum, h.ptype == 2, 0)
                            if ok then seen = memo_keep(d) end
                        end
                        if ok then
                            dec = d
                            observe(call, dec, h.ptype == 2, number)
                            for _, n in ipairs(dec.params) do
                                if n.t == "_WBEM_REFRESH_INFO" and keep_template(n, stub) then added = true end
                                if n.oa then
                                    -- the classes later ObjectArrays of this enumeration (or sink) refer to
                                    local key = call.ipid or "?"
                                    S.classes[key] = S.classes[key] or {}
                                    pcall(WMIO.object_array, stub, n.oa[1], n.oa[2], S.classes[key])
                                end
                            end
                        end
                    end
                    if info and info.g == "wmi" then
                        -- what the Info column and the tree need of a WMI call (the other calls
                        -- only taught the registry)
                        local rec = { ptype = h.ptype, call = call, sealed = sealed and not stub, call_id = h.call_id,
                            whole = stub and not from_decrypted and not (first and last and not sealed) and stub or nil,
                            single = stub and first and last and not sealed and { idx, h.hdr, #stub } or nil,
                            dec = from_decrypted, status = h.status, ipid = call.ipid, kept = kept }
                        rec.ns, rec.op, rec.class = call.ns, call.op, call.class
                        -- the Info column, kept so that a pass without a tree decodes nothing
                        -- (with a stub decoded, it depends on the decode alone: kept with it)
                        if seen and seen.info then rec.info = seen.info
                        else
                            rec.info = summary(info, rec, dec)
                            if seen then seen.info = rec.info end
                        end
                        if dec then
                            -- what a tree nobody looks at needs (tshark -Y / -T fields): the
                            -- parameters' plain values; objects only in small stubs (method
                            -- parameters, instances put), where a filter may look for them.
                            -- Read-only, so shared by the calls whose stubs decode the same
                            local vals = seen and seen.vals
                            if not vals then
                                vals = {}
                                for _, n in ipairs(dec.params) do
                                    if not n.c and not n.objref and (n.v ~= nil or n.null) then
                                        vals[#vals + 1] = { n.p.n, n.null and "NULL" or n.v, n.p.e }
                                    end
                                    if n.objref and n.objref.obj then vals.objects = true end
                                end
                                if seen then seen.vals = vals end
                            end
                            if vals.objects and #stub <= 16384 then rec.deep = true end
                            rec.vals = vals
                            -- a refresher reply's structures (m_lCancelId, m_lRequestId) and objects
                            -- are fields a filter may want, as a small stub's objects are
                            if added and #stub <= 16384 then rec.deep = true end
                            local refreshed = m.refreshed and h.ptype == 2 and param(dec, m.refreshed)
                            if refreshed then
                                rec.templates = templates_for(call, refreshed)
                                if #stub <= 16384 then rec.deep = true end
                            end
                            rec.ret = dec.ret and dec.ret.v
                            rec.err = dec.err
                        end
                        if h.ptype ~= 0 and call.login_ns then rec.ns = call.login_ns end
                        out = out or {}
                        out[#out + 1] = rec
                    end
                end
            end
        end
    end
    return out or false
end

-- ---------------------------------------------------------------------------------------
-- tree and columns

-- Tree items are added in one call each: TreeItem:add(field, range, value, label) sets the
-- label as set_text would (one Lua -> C call and one TreeItem fewer per item).

-- a line of text in the tree (filterable as wmi.item)
local function line(tree, r, text)
    return tree:add(F.item, r, text, text)
end

-- Wireshark keeps the first ITEM_LABEL_LENGTH (240) octets of a label and marks it
-- truncated when it was longer: a value of megabytes (a file carried in a property) need
-- not be copied whole into a label that shows 240 octets of it
local LABEL_MAX = 1024
local function label_text(text)
    if #text > LABEL_MAX then return ssub(text, 1, LABEL_MAX) end
    return text
end

-- The label Wireshark gives a string item added without one when "Name: value" overflows
-- its 240-octet label (ITEM_LABEL_LENGTH, the NUL included): the name, a truncation mark,
-- ": " and as much of the value as fits. Wireshark makes it by formatting the whole value
-- (format_text: a copy of every octet, to keep some 200 of them), which for a file carried
-- in a property (wmimplant: 867 kB, three items) cost more than the rest of its tree.
-- Given here for a value whose first 240 octets are printable ASCII (which format_text
-- copies unchanged; no NUL that would end the value sooner), under the two versions whose
-- mark and length were checked (4.0: " [truncated]", 238 octets; 4.4: " […]", 239); nil
-- otherwise. The -V and PDML output is the same either way.
local TRUNCATED, TRUNCATED_LEN
if MAJOR == 4 and MINOR == 0 then TRUNCATED, TRUNCATED_LEN = " [truncated]: ", 238
elseif MAJOR == 4 and MINOR == 4 then TRUNCATED, TRUNCATED_LEN = " [\226\128\166]: ", 239 end
local function overflow_label(name, text)
    if not TRUNCATED or #text < LABEL_MAX then return nil end
    if ssub(text, 1, 240):find("[^\32-\126]") then return nil end
    local head = name .. TRUNCATED
    return head .. ssub(text, 1, TRUNCATED_LEN - #head)
end

-- a string item of a long value, labelled as Wireshark would without formatting all of it
local function add_long(t, field, name, tvbr, text)
    local label = overflow_label(name, text)
    if label then t:add(field, tvbr, text, label) else t:add(field, tvbr, text) end
end

-- what a class part's property shows (shared, decoded once per octets): its type and name
-- before the value, and whether it is inherited after it
local function prop_label_parts(prop)
    local head = prop.label_head
    if not head then
        head = cim_type_name(prop.type) .. " " .. tostring(prop.name) .. " = "
        prop.label_head, prop.label_tail = head, prop.inherited and " (inherited)" or ""
    end
    return head, prop.label_tail
end

-- a property's label with its value's text
local function prop_label(prop, text)
    local head, tail = prop_label_parts(prop)
    return head .. label_text(text) .. tail
end

local function qualifier_label(q)
    local text = q.label
    if not text then
        text = "Qualifier [" .. tostring(q.name) .. " = " .. tostring(q.value) .. "]"
        q.label = text
    end
    return text
end

local function add_object(tree, tvbr, obj)
    if obj.light then
        tree:add(F.obj_class, tvbr, obj.name or "")
        return
    end
    local kind = obj.kind == "class" and "Class" or "Instance"
    local t = tree:add(proto, tvbr, sformat("%s %s", kind, obj.name or "?"))
    t:add(F.obj_kind, tvbr, obj.kind)
    t:add(F.obj_class, tvbr, obj.name or "")
    local cls = obj.kind == "class" and obj or obj.class
    if cls.superclass then t:add(F.obj_super, tvbr, cls.superclass) end
    if cls.derivation and #cls.derivation > 0 then line(t, tvbr, "Derivation: " .. concat(cls.derivation, " <- ")) end
    if obj.namespace then line(t, tvbr, "Decoration: \\\\" .. tostring(obj.server) .. "\\" .. obj.namespace) end
    for _, q in ipairs(cls.qualifiers or {}) do
        line(t, tvbr, qualifier_label(q))
    end
    local is_class = obj.kind == "class"
    local values = obj.values
    for i, prop in ipairs(cls.props) do
        local v
        local text, label
        if is_class then
            -- a class's default and its label are the shared class part's: made once
            v, text, label = prop.default, prop.default_text, prop.default_label
            if not text then
                text = v == nil and "NULL" or tostring(v)
                label = prop_label(prop, text)
                prop.default_text, prop.default_label = text, label
            end
        else
            v = values[i]
            text = v == nil and "NULL" or tostring(v)
            label = prop_label(prop, text)
        end
        local pt = t:add(F.prop_name, tvbr, prop.name or "?", label)
        if is_class then
            -- a class shows its properties' qualifiers (CIMTYPE, key, In / Out, ValueMap, ...)
            for _, q in ipairs(prop.qualifiers or {}) do
                line(pt, tvbr, qualifier_label(q))
            end
        end
        if v ~= nil or not is_class then
            local pf = prop.pfield
            if pf == nil then
                local lower = prop.name and prop.name:lower()
                pf = lower and PROPF[lower] or false
                prop.pfield, prop.pfield_name = pf, pf and PROPF_NAME[lower]
            end
            if #text < LABEL_MAX then
                pt:add(F.prop_value, tvbr, text)
                if pf then pt:add(pf, tvbr, text) end
            else
                add_long(pt, F.prop_value, "Value", tvbr, text)
                if pf then add_long(pt, pf, prop.pfield_name, tvbr, text) end
            end
        end
    end
    for _, m in ipairs(cls.methods or {}) do
        -- (a method's signature is read only: its label is made once per decoded methods part)
        local label = m.label
        if not label then
            local sig = {}
            for _, side in ipairs({ "in", "out" }) do
                local s = m[side]
                if s then
                    for _, p in ipairs(s.props or {}) do sig[#sig + 1] = side .. " " .. cim_type_name(p.type) .. " " .. tostring(p.name) end
                end
            end
            label = sformat("Method %s(%s)", tostring(m.name), concat(sig, ", "))
            m.label = label
        end
        t:add(F.obj_method, tvbr, m.name or "?", label)
    end
end

-- the length of the tvb the last range was taken from (every node of a call asks)
local range_tvb, range_len
local function tvb_range(tvb, o, n)
    if not tvb then return nil end
    if not rawequal(tvb, range_tvb) then range_tvb, range_len = tvb, tvb:len() end
    local len = range_len
    if o >= len then return tvb(len > 0 and len - 1 or 0, 0) end
    if o + n > len then n = len - o end
    return tvb(o, n)
end

local function add_node(tree, tvb, node, field, pinfo)
    local r = tvb_range(tvb, node.o or 0, node.n or 0)
    local text = value_text(node)
    local item
    local spec = field and G.FIELDS[node.p.n]
    if not field and node.m and SF[node.m] and node.v ~= nil and not node.c then
        field, spec = SF[node.m], G.SFIELDS[node.m]
    end
    -- (a NUL in text ends the label in Wireshark's C string as it ended sformat's)
    local label = node.l .. ": " .. label_text(text)
    if field then
        local kind = spec[1]
        if (kind == "uint" or kind == "int") and type(node.v) == "number" then
            item = tree:add(field, r, node.v, label)
        else
            item = tree:add(field, r, text, label)
        end
    else
        item = tree:add(F.item, r, text, label)
    end
    local names = describe(node.p and node.p.e or node.e, node.v)
    if names then
        for _, n in ipairs(names) do item:add(F.flag, r, n) end
        if #names > 0 then item:append_text(" (" .. concat(names, " | ") .. ")") end
    end
    if node.objref then
        local o = node.objref
        if o.ipid then item:add(F.ipid, r, o.ipid) end
        if o.obj then add_object(item, r, o.obj) end
        if o.obj_err then item:add_proto_expert_info(E.malformed, sformat("malformed MS-WMIO object: %s at offset %s", tostring(o.obj_err.msg or o.obj_err), tostring(o.obj_err.off))) end
        for _, n in ipairs(o.context or {}) do item:add(F.ctx_name, r, n) end
        for _, n in ipairs(o.nested or {}) do item:add(F.objref, r, n.text) end
    end
    for _, x in ipairs(node.refreshed or {}) do add_object(item, tvb_range(tvb, x.at, x.len), x.obj) end
    if node.untemplated then
        -- not malformed: the AddObjectToRefresher / AddEnumToRefresher reply was not seen
        line(item, r, sformat("no template seen for request id %s: values not decoded", tostring(node.untemplated)))
    end
    if node.oa_dec then
        -- the ObjectArray's offsets are in the stub; the node's were moved to the tvb's
        local oa, delta = node.oa_dec, (node.o or 0) - (node.oa_o or node.o or 0)
        local ot = line(item, tvb_range(tvb, oa.at + delta, oa.len),
            sformat("ObjectArray (%s): %d objects", oa.packet, oa.count))
        local kinds = { "WBEMOBJECT_CLASS", "WBEMOBJECT_INSTANCE", "WBEMOBJECT_INSTANCE_NOCLASS" }
        for i, o in ipairs(oa.objects) do
            local r2 = tvb_range(tvb, o.at + delta, o.len)
            local it = line(ot, r2, sformat("[%d] %s%s", i - 1, kinds[o.kind] or "?",
                o.class_id and (" classID " .. o.class_id) or ""))
            if o.obj then add_object(it, r2, o.obj) end
            if o.err then it:add_proto_expert_info(E.malformed, sformat("malformed stub: %s at offset %d", o.err.msg or "?", o.err.off or -1)) end
        end
    end
    if node.c then
        local shown = 0
        for _, c in ipairs(node.c) do
            shown = shown + 1
            if shown > 256 then line(item, r, "...") break end
            add_node(item, tvb, c, nil, pinfo)
        end
    end
    if node.err then
        item:add_proto_expert_info(E.malformed, sformat("malformed stub: %s at offset %d", node.err.msg or "?", node.err.off or -1))
    end
    return item
end

-- offsets are relative to the stub; the tvb may hold it at `base`
local function shift_offsets(n, base)
    if n.o then n.o = n.o + base end
    local c = n.c
    if c then for i = 1, #c do shift_offsets(c[i], base) end end
end

-- a request to run a method (Win32_Process.Create): an expert info whether or not the tree
-- is shown (tshark -z expert, the GUI's expert dialog)
local function process_expert(tree, rec, m, method)
    if m and (m.n == "ExecMethod" or m.n == "ExecMethodAsync") and rec.ptype == 0 then
        tree:add_proto_expert_info(E.process, "ExecMethod " .. tostring(rec.class) .. "." .. method)
    end
end

-- the first pass's value of a parameter, as value_text shows it
local function first_pass_text(rec, name)
    for _, v in ipairs(rec.vals) do
        if v[1] == name then return tostring(v[2]) end
    end
    return ""
end

-- one call's subtree: the stub decoded again, objects included
local function call_tree(rec, info, pinfo, tree, frame, visible)
    local call = rec.call
    -- the stub bytes: in the frame, reassembled (kept from the first pass), or decrypted
    local s, stvb, base
    if rec.single then
        local r = frame.pdus[rec.single[1]]
        if r then
            s = r:raw(rec.single[2], rec.single[3])
            stvb, base = r:tvb(), rec.single[2]
        end
    elseif rec.whole then
        s = rec.whole
        if type(s) == "userdata" then s = s:raw() end
    elseif rec.dec and f_decrypted then
        frame.decrypted = frame.decrypted or { f_decrypted() }
        local d = frame.decrypted[rec.dec]
        if d then s = d.range:raw() stvb = d.range:tvb() base = 0 end
    end
    local dec
    local shallow = not visible and not rec.deep
    if s and info.m[call.opnum] and rec.ptype ~= 3 and not shallow then
        local ok, d = pcall(decode_stub, s, 0, #s, info, call.opnum, rec.ptype == 2, not visible and 16384 or nil)
        if ok then dec = d end
    end
    local m = info.m[call.opnum]
    local t = tree:add(proto, rec.info)
    t:add(F.interface, info.name):set_generated()
    t:add(F.method, m and m.n or ""):set_generated()
    t:add(F.opnum, call.opnum):set_generated()
    t:add(F.direction, PTYPE[rec.ptype] or "?"):set_generated()
    t:add(F.call_id, rec.call_id):set_generated()
    if call.ipid then t:add(F.ipid, call.ipid):set_generated() end
    if rec.ns then t:add(F.namespace, rec.ns):set_generated() end
    if rec.class then t:add(F.class, rec.class):set_generated() end
    if rec.op then t:add(F.operation, rec.op):set_generated() end
    if rec.ptype == 0 and call.resp_frame then t:add(F.response_in, call.resp_frame):set_generated() end
    if rec.ptype ~= 0 and call.req_frame then t:add(F.request_in, call.req_frame):set_generated() end
    if rec.sealed then
        t:add(F.encrypted, true):set_generated()
        t:add_proto_expert_info(E.encrypted)
    end
    if shallow then
        for _, v in ipairs(rec.vals or {}) do
            local field = PF[v[1]]
            local kind = G.FIELDS[v[1]][1]
            local item
            if (kind == "uint" or kind == "int") and type(v[2]) == "number" then item = t:add(field, v[2])
            else item = t:add(field, tostring(v[2])) end
            for _, n in ipairs(describe(v[3], v[2]) or {}) do item:add(F.flag, n) end
        end
        if rec.ret then
            t:add(F.hresult, rec.ret)
            t:add(F.status, hresult_text(rec.ret))
        end
        if rec.err then t:add_proto_expert_info(E.malformed, sformat("malformed stub: %s at offset %d", rec.err.msg or "?", rec.err.off or -1)) end
        if rec.vals then process_expert(t, rec, m, first_pass_text(rec, "strMethodName")) end
        return
    end
    if dec then
        if not stvb and s then stvb = ByteArray.new(s, true):tvb("WMI stub") base = 0 end
        local shift = base ~= 0 and shift_offsets or function() end
        for _, n in ipairs(dec.params) do
            if n.oa then
                n.oa_o = n.o
                local ok, oa = pcall(WMIO.object_array, s, n.oa[1], n.oa[2], S.classes[call.ipid or "?"] or {})
                if ok then n.oa_dec = oa else n.err = type(oa) == "table" and oa or { off = n.oa[1], msg = tostring(oa) } end
            end
            if rec.templates and n.p.n == m.refreshed then
                -- the refreshed objects, each read against its request id's template
                for _, c in ipairs(n.c or {}) do
                    local blob = c.c and c.c[4]
                    local template = c.fields and rec.templates[c.fields.m_lRequestId]
                    if blob and blob.bytes and template then
                        local ok, list = pcall(WMIO.refreshed, s, blob.bytes[1], blob.bytes[1] + blob.bytes[2],
                            c.fields.m_lBlobType, template)
                        if ok then
                            for _, r in ipairs(list) do r.at = r.at + base end
                            blob.refreshed = list
                        else
                            blob.err = type(list) == "table" and list or { off = blob.bytes[1], msg = tostring(list) }
                        end
                    elseif blob and blob.bytes and blob.bytes[2] > 0 then
                        blob.untemplated = c.fields and c.fields.m_lRequestId
                    end
                end
            end
            do
                shift(n, base)
                add_node(t, stvb, n, PF[n.p.n], pinfo)
            end
        end
        if dec.ret then
            local r = tvb_range(stvb, dec.ret.o + base, 4)
            t:add(F.hresult, r, dec.ret.v)
            t:add(F.status, r, hresult_text(dec.ret.v)):set_generated()
        end
        if dec.err and not dec.params[#dec.params].err then
            t:add_proto_expert_info(E.malformed, sformat("malformed stub: %s at offset %d", dec.err.msg or "?", dec.err.off or -1))
        end
        process_expert(t, rec, m, value_text(param(dec, "strMethodName") or {}))
    end
end

-- the plugin's own dissector handle: a tree is referenced for it when it is shown or when
-- a filter, a column or -e names any wmi.* field (Wireshark primes a field's protocol too)
local HANDLE

-- tshark 4.0 makes every tree visible under -T fields (it needs "full tree info" to find the
-- fields), so there tree.visible is true and tree:referenced() true for every field: Lua
-- cannot learn from the tree that nothing of it is printed. What -T fields prints and
-- filters is on tshark's command line, which the plugin reads once: `nil` when the tree
-- may be printed or tapped (not tshark, no -T fields, -V / -O / -P / -x / -z, a custom
-- column), else what the filters and fields name of the plugin: "none", "call" (only the
-- call's own fields and parameters of plain types, which the tree not shown carries as it
-- does on 4.4) or "all". Any "wmi" in a filter, a field or an argument not known to be a
-- file counts as naming it (a quoted string too); "expert" as naming all (the ExecMethod
-- expert needs the whole tree).
local CALL_FIELDS = { interface = true, method = true, opnum = true, direction = true, call_id = true,
    namespace = true, class = true, operation = true, request_in = true, response_in = true,
    encrypted = true, hresult = true, status = true }
local function fields_only_wants(args)
    if not args[1] then return nil end
    -- 4.4 here runs through its loader: the program is the first argument named tshark
    local i = 1
    while args[i] and not args[i]:match("tshark$") do i = i + 1 end
    if not args[i] then return nil end
    local fields, wants = false, "none"
    local function name(text)
        local lower = text:lower()
        -- (a display filter macro, ${name}, may expand to anything)
        if lower:find("expert", 1, true) or text:find("${", 1, true) then wants = "all" return end
        for tail in text:gmatch("%f[%w_.]wmi([%w_.]*)") do
            if wants == "none" then wants = "call" end
            local f = tail:match("^%.([%w_]+)$")
            if not (f and (CALL_FIELDS[f] or G.FIELDS[f] and G.FIELDS[f][1] ~= "none")) then wants = "all" end
        end
        if wants == "none" and lower:find("wmi", 1, true) then wants = "all" end
    end
    i = i + 1
    while args[i] do
        local a = args[i]
        local opt, attached = a:match("^%-(%a)(.*)$")
        if a == "-T" or opt == "T" and attached ~= "" then
            local v = attached ~= "" and attached or args[i + 1]
            if v ~= "fields" then return nil end
            fields = true
            if attached == "" then i = i + 1 end
        elseif opt == "r" or opt == "X" or opt == "w" or opt == "o" then
            -- a file, a plugin path or a preference: "wmi" there names no field
            if attached == "" then i = i + 1 end
        elseif opt == "V" or opt == "O" or opt == "P" or opt == "x" or opt == "z" or opt == "G" then
            return nil
        elseif opt == "e" then
            local v = attached ~= "" and attached or args[i + 1] or ""
            if attached == "" then i = i + 1 end
            -- a column may be a custom one, on any field
            if v:match("^_ws%.col%.") and v ~= "_ws.col.Info" and v ~= "_ws.col.Protocol" then return nil end
            name(v)
        else
            name(a)
        end
        i = i + 1
    end
    if not fields then return nil end
    return wants
end
local FIELDS_ONLY
do
    local f = io.open("/proc/self/cmdline", "rb")
    local text = f and f:read("*a")
    if f then f:close() end
    local args = {}
    for a in (text or ""):gmatch("([^\0]*)\0") do args[#args + 1] = a end
    local ok, w = pcall(fields_only_wants, args)
    FIELDS_ONLY = ok and w or nil
end

-- what a tree nobody looks at still carries: the expert infos (tshark -z expert, the GUI's
-- expert dialog read them without a tree)
local function experts_only(rec, info, tree)
    if rec.sealed then tree:add_proto_expert_info(E.encrypted) end
    if rec.err then tree:add_proto_expert_info(E.malformed, sformat("malformed stub: %s at offset %d", rec.err.msg or "?", rec.err.off or -1)) end
    if rec.vals then process_expert(tree, rec, info.m[rec.call.opnum], first_pass_text(rec, "strMethodName")) end
end

-- the columns name every WMI call of the frame (`all`: the records of its calls so far, in
-- order), set again after each call TCP makes in the frame (DCE/RPC sets them too)
local function columns(all, pinfo)
    local infos = {}
    for _, list in ipairs(all) do
        for _, rec in ipairs(list) do infos[#infos + 1] = rec.info end
    end
    if #infos > 0 then
        local cols = pinfo.cols
        cols.protocol = "WMI"
        cols.info:clear_fence()
        cols.info = concat(infos, "; ")
    end
end

-- the records of the PDUs TCP handed over in one call (`pdus`)
local function render(recs, pdus, pinfo, tree)
    local frame = { pdus = pdus }
    -- no tree at all, or one in which no wmi field is wanted (tshark without -V, -Y wmi...
    -- or -e wmi...; the GUI's packet list): the columns are all there is to do
    if HANDLE == nil then
        local ok, h = pcall(Dissector.get, "wmi")
        HANDLE = ok and h or false
    end
    local visible = tree.visible
    local want_tree = not tostring(tree):find("has item=false", 1, true)
        and (not HANDLE or visible or tree:referenced(HANDLE))
    local fields_only = visible and FIELDS_ONLY
    if fields_only then
        -- tshark 4.0 -T fields: a visible tree that is never printed
        want_tree = want_tree and fields_only ~= "none"
    end
    for _, rec in ipairs(recs) do
        local info = rec.call.iid and G.IFACES[rec.call.iid]
        if info and info.g == "wmi" then
            -- (a stub that did not decode gets the whole tree: the parameter it failed in
            -- is an empty field there, and absent from the tree not shown)
            if fields_only then visible = fields_only == "all" or rec.err ~= nil end
            if want_tree then call_tree(rec, info, pinfo, tree, frame, visible) else experts_only(rec, info, tree) end
        end
    end
end

-- ---------------------------------------------------------------------------------------
-- the entry point: in front of DCE/RPC over TCP
--
-- The plugin is the TCP dissector of DCE/RPC connections: it hands each TCP payload to
-- Wireshark's own DCE/RPC dissector (every built-in field stays, TCP reassembly included),
-- then reads the PDUs of that payload from the same bytes. Frames that are not DCE/RPC cost
-- nothing and no tree is forced. How it gets the connections (found by experiment on 4.0
-- and 4.4):
--  * the `tcp.port` table, for 135, and on 4.0 for every port from 1024 that no dissector
--    has: TCP asks it before its heuristics. On 4.0 a TCP heuristic alone loses: Wireshark
--    moves the heuristic that last succeeded to the head of the list, and DCE/RPC's (called
--    by ours there) then claims every later connection before ours is asked;
--  * a TCP heuristic, for DCE/RPC on a port another dissector has, and on 4.4 on every port
--    but 135 (it then owns the connection: `pinfo.conversation`);
--  * on 4.4 the built-in is called through its handle `dcerpc.tcp`; 4.0 registers no handle
--    for it, so there the TCP heuristics are tried again with ours stepping aside (which
--    finds DCE/RPC's). Either way one more layer stands between TCP and DCE/RPC, and TCP's
--    desegmentation offer (`pinfo.can_desegment`) counts layers: it is raised by one for the
--    call, or DCE/RPC could not ask for the rest of a PDU split over segments.

local DCERPC_TCP
do
    local ok, h = pcall(Dissector.get, "dcerpc.tcp")
    if ok then DCERPC_TCP = h end
end
local inside = false      -- our own heuristic steps aside while 4.0's list is tried again

-- Wireshark's DCE/RPC over TCP on this payload: the octets it took (0: not DCE/RPC)
local function call_dcerpc(tvb, len, pinfo, tree)
    local can = pinfo.can_desegment
    if can > 0 then pinfo.can_desegment = can + 1 end
    inside = true
    -- (the claims of the previous call are dropped by their count: no table per call)
    NCLAIMS = 0
    local ok, r
    if DCERPC_TCP then
        ok, r = pcall(DCERPC_TCP.call, DCERPC_TCP, tvb, pinfo, tree)
        r = ok and r or 0
    else
        ok, r = pcall(DissectorTable.try_heuristics, "tcp", tvb, pinfo, tree)
        r = (ok and r) and len or 0
    end
    inside = false
    pinfo.can_desegment = can
    return r
end

-- the connection, both directions alike (a key of the tables, as tcp.stream was). Its text is
-- made for every call: finding it again by the ports and comparing the Address objects costs
-- more (measured: 0.10 s against 0.08 s on 60 MB, 4.0)
local function stream_key(pinfo)
    local a, b = tostring(pinfo.src) .. "/" .. pinfo.src_port, tostring(pinfo.dst) .. "/" .. pinfo.dst_port
    if a < b then return a .. " " .. b end
    return b .. " " .. a
end

local function front(tvb, pinfo, tree)
    if not TVB_RAW then TVB_RAW, TVB_LEN, TVB_BYTES = tvb.raw, tvb.len, tvb.bytes end
    local len = TVB_LEN(tvb)
    if len < 10 then return 0 end
    -- a DCE/RPC connection-oriented PDU: version 5.0 or 5.1, a PDU type, the data
    -- representation's integer and character formats, a fragment length (C706 12.6.3.1,
    -- 14.1); on 4.4 the handle called does not check this itself (SOCKS5 begins 05 01 too).
    -- The first 40 octets are the first PDU's header (and object UUID) for the first pass.
    local s = TVB_RAW(tvb, 0, len < 40 and len or 40)
    local ver, minor, ptype, _, drep, drep2, _, _, f1, f2 = sbyte(s, 1, 10)
    if ver ~= 5 or minor > 1 or ptype > 20 or (drep ~= 0 and drep ~= 16 and drep ~= 1 and drep ~= 17)
        or drep2 > 3 or f1 + f2 * 256 < 16 then
        return 0
    end
    local taken = call_dcerpc(tvb, len, pinfo, tree)
    if taken == 0 then return 0 end
    local n = pinfo.number
    local fr = S.frames[n]
    local visited = pinfo.visited
    -- a frame dissected again that had no WMI call: nothing to show
    if visited and not fr then return taken end
    -- the whole PDUs of this payload: what DCE/RPC dissected now (one cut short at the end
    -- comes again, reassembled by TCP); their positions and first octets, no TvbRange each
    local npdus, off = 0, 0
    local head = s
    local read = false
    while off + 10 <= len do
        if off > 0 then head = TVB_RAW(tvb, off, len - off < 40 and len - off or 40) end
        local g1, g2 = sbyte(head, 9, 10)
        local fl = g1 + g2 * 256
        if fl < 16 or off + fl > len then break end
        -- (a PDU shorter than 40 octets: its own octets only)
        if fl < #head then head = ssub(head, 1, fl) end
        read = read or READ[sbyte(head, 3)]
        npdus = npdus + 1
        OFFS[npdus], LENS[npdus], HEADS[npdus] = off, fl, head
        off = off + fl
    end
    if npdus == 0 then
        if fr then columns(fr.all, pinfo) end
        return taken
    end
    -- the records of this call, by what identifies it within its frame
    local key, recs
    if fr then
        key = len .. ":" .. npdus .. ":" .. sbyte(s, 3) .. ":" .. ssub(s, 13, 16)
        recs = fr.by[key]
    end
    -- (payloads of binds' acknowledgements, AUTH3 and the like teach the first pass nothing)
    if recs == nil and not visited and read then
        local ok, r = pcall(first_pass, n, tvb, npdus, stream_key(pinfo))
        if not ok then
            -- a defect of the plugin, never the user's: said once on stderr, so that the
            -- tests (which read tshark's stderr) see it
            io.stderr:write(sformat("wmiscope plugin: frame %d: %s\n", n, tostring(r)))
        end
        -- only calls with WMI records are kept: a frame dissected again is `visited`
        if ok and r then
            if not fr then fr = { by = {}, all = {} } S.frames[n] = fr end
            key = key or (len .. ":" .. npdus .. ":" .. sbyte(s, 3) .. ":" .. ssub(s, 13, 16))
            fr.by[key] = r
            fr.all[#fr.all + 1] = r
            recs = r
        end
    end
    if recs then
        -- the PDUs as ranges, for the tree
        local pdus = {}
        for i = 1, npdus do pdus[i] = tvb(OFFS[i], LENS[i]) end
        local ok, err = pcall(render, recs, pdus, pinfo, tree)
        if not ok then
            io.stderr:write(sformat("wmiscope plugin: frame %d: %s\n", n, tostring(err)))
            tree:add_proto_expert_info(E.malformed, "wmiscope plugin error: " .. tostring(err))
        end
        -- A reassembled stub is kept for later passes as its ByteArray, outside Lua's heap:
        -- kept as a string (tens of MB on a large capture), it made Lua 5.4's collector run
        -- full collections as the heap grew. The string made on this pass (the first pass's
        -- decode, this pass's tree) becomes garbage here.
        for _, rec in ipairs(recs) do
            if rec.kept then rec.whole, rec.kept = rec.kept, nil end
        end
    end
    if fr then columns(fr.all, pinfo) end
    return taken
end

function proto.dissector(tvb, pinfo, tree)
    if inside then return 0 end
    return front(tvb, pinfo, tree)
end

function proto.init()
    reset()
end

-- The free ports are registered only where the heuristic alone loses (4.0, which reaches
-- DCE/RPC through the TCP heuristics: see above). Registering them is most of the plugin's
-- start-up (on 4.0 under callgrind: 0.42 G instructions, of which 0.17 G finding the free
-- ports and 0.20 G adding them, Wireshark searching the table's list of handles once per
-- port); on 4.4, which calls DCE/RPC's handle, the heuristic takes every connection on a
-- port no dissector has (the same output on every capture), once per connection: then
-- `pinfo.conversation` brings the rest of it straight to the plugin.
do
    local ports = DissectorTable.get("tcp.port")
    -- (the method looked up once: through the table's __index it cost as much as the lookup)
    local get = ports.get_dissector
    if not get(ports, 135) then ports:add(135, proto) end
    if not DCERPC_TCP then
        local free, lo = {}, nil
        for port = 1024, 65536 do
            local open = port <= 65535 and not get(ports, port)
            if open and not lo then lo = port
            elseif not open and lo then free[#free + 1] = lo .. "-" .. (port - 1) lo = nil end
        end
        if #free > 0 then ports:add(concat(free, ","), proto) end
    end
end

proto:register_heuristic("tcp", function(tvb, pinfo, tree)
    if inside then return false end
    if front(tvb, pinfo, tree) == 0 then return false end
    pinfo.conversation = proto
    return true
end)

-- 4.4 has dissectors of its own for some WMI interfaces; they stop at "Long frame" or
-- "Malformed" on real traffic. A dissector that only claims the stub keeps them away (the
-- plugin reads the PDUs itself); 4.0 cannot register Lua dissectors for DCE/RPC UUIDs.
if MAJOR > 4 or (MAJOR == 4 and MINOR >= 2) then
    local claim = Proto("wmi_stub", "MS-WMI stub (wmiscope)")
    function claim.dissector(tvb, pinfo, tree)
        NCLAIMS = NCLAIMS + 1
        CLAIMS[NCLAIMS] = f_decrypted and tvb:raw() or true
        return tvb:len()
    end
    local ok, table_ = pcall(DissectorTable.get, "dcerpc.uuid")
    if ok and table_ then
        for uuid, info in pairs(G.IFACES) do
            if info.g == "wmi" then pcall(function() table_:add(uuid, claim) end) end
        end
    end
end
