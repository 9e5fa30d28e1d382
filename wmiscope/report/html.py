"""The report as one self-contained HTML page: inline CSS, JS and SVG, nothing fetched.

Summary (hosts, principals, techniques, counts), a timeline per host pair with the
findings marked, the findings table sorted by time (filterable by host, technique and
confidence; a click opens the finding's reasons, values and transcript excerpt),
the sealed connections with the key that would open them, and the sessions (login,
calls, operations).
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from itertools import chain
from typing import Iterator

_SEVERITY_COLOUR = {"high": "#c0392b", "medium": "#d68910", "low": "#2e86c1"}


def _e(v) -> str:
    return escape("" if v is None else str(v), quote=True)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _host(h: dict) -> str:
    names = h.get("names") or []
    return f"{h['ip']} ({', '.join(names)})" if names else h["ip"]


def render_html(r: dict) -> str:
    parts: list[str] = []
    write_html(r, parts.append)
    return "".join(parts)


def write_html(r: dict, write) -> None:
    """The page, written a piece at a time: the sections that grow with the capture (the
    timeline's ticks, findings, sealed connections, sessions) are made as they are written,
    the sessions read from disk one at a time (r["sessions"]: output.StreamedSessions)."""
    s = r["summary"]
    write("\n".join([_HEAD, "<body>", "<header><h1>wmiscope forensics report</h1>",
                     f"<p class=sub>{_e(', '.join(c['name'] for c in r['captures']))} &middot; generated "
                     f"{_e(r['generated'])} &middot; wmiscope {_e(r['wmiscope'])}</p></header>", "<main>",
                     _summary(r)]))
    if s["no_wmi"]:
        write("\n<p id=no-wmi class=notice>No WMI traffic was found in the capture(s): no findings. "
              f"{sum((c['stats'] or {}).get('calls', 0) for c in r['captures'])} DCE/RPC calls were "
              "decoded, none on a WMI interface.</p>")
    for section in (_timeline, _findings, _sealed, _sessions):
        write("\n")
        for piece in section(r):
            write(piece)
    write("\n" + _captures(r))
    write(f"\n</main>\n<script>{_JS}</script></body></html>\n")


def _summary(r: dict) -> str:
    s = r["summary"]
    cards = [("findings", s["findings"]), ("observed", s["by_basis"].get("observed", 0)),
             ("inferred", s["by_basis"].get("inferred", 0)), ("high severity", s["by_severity"].get("high", 0)),
             ("WMI sessions", s["sessions"]), ("WMI calls", s["wmi_calls"]), ("hosts", s["hosts"]),
             ("errors", s["errors"])]
    out = ["<section id=summary><h2>Summary</h2><div class=cards>"]
    out += [f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in cards]
    out.append("</div>")
    if s["first_time"]:
        out.append(f"<p>Activity from {_e(s['first_time'])} to {_e(s['last_time'])}.</p>")
    out.append("<div class=cols><div><h3>Hosts</h3><ul id=hosts>")
    for h in r["hosts"]:
        names = ", ".join(f"{_e(n['name'])} <small>({_e(n['source'])})</small>" for n in h["names"])
        out.append(f"<li><code>{_e(h['ip'])}</code> {_e('/'.join(h['roles']))} {names}</li>")
    out.append("</ul></div><div><h3>Principals</h3><ul id=principals>")
    out += [f"<li>{_e(p)}</li>" for p in s["principals"]] or ["<li>none seen</li>"]
    out.append("</ul></div><div><h3>Techniques</h3><ul id=techniques>")
    for t in s["techniques"]:
        out.append(f"<li><a href='{_e(t['reference'])}'>{_e(t['id'])}</a> {_e(t['name'])} "
                   f"<small>({_e(t['tactic'])})</small> &times;{t['count']}</li>")
    out.append("</ul></div></div></section>")
    return "".join(out)


def _findings(r: dict) -> Iterator[str]:
    findings, n = r["findings"], r["summary"]["findings"]
    hosts, techs = set(), set()
    for f in findings:      # read twice: the filters' choices first, then the rows
        hosts.update((f["source"]["ip"], f["destination"]["ip"]))
        techs.update(t["id"] for t in f["techniques"])
    hosts, techs = sorted(hosts), sorted(techs)
    out = ["<section id=findings><h2>Findings</h2><form id=filters>",
           "<label>Host <select id=f-host><option value=''>all</option>"]
    out += [f"<option value='{_e(h)}'>{_e(h)}</option>" for h in hosts]
    out.append("</select></label> <label>Technique <select id=f-tech><option value=''>all</option>")
    out += [f"<option value='{_e(t)}'>{_e(t)}</option>" for t in techs]
    out.append("</select></label> <label>Confidence <select id=f-conf><option value=''>all</option>"
               "<option value=observed>observed only</option><option value=inferred>inferred only</option>"
               "<option value=0.8>0.8 and above</option></select></label> "
               f"<span id=shown>{n} of {n} findings shown</span></form>")
    out.append("<table id=findings-table><thead><tr><th>id</th><th>time (UTC)</th><th>source &rarr; target</th>"
               "<th>principal</th><th>technique</th><th>what happened</th><th>how known</th><th>frames</th>"
               "</tr></thead><tbody>")
    yield "".join(out)
    for f in findings:
        tids = " ".join(t["id"] for t in f["techniques"])
        tech = "<br>".join(f"<a href='{_e(t['reference'])}' title='{_e(t['name'])} ({_e(t['tactic'])})'>"
                           f"{_e(t['id'])}</a> <small>{_e(t['name'])}</small>" for t in f["techniques"])
        basis = f"{f['basis']} {f['confidence']:.2f}" if f["basis"] == "inferred" else "observed"
        frames = _frames(f["frames"])
        colour = _SEVERITY_COLOUR[f["severity"]]
        yield (
            f"<tr class='finding sev-{f['severity']}' id='{_e(f['id'])}' data-hosts='{_e(f['source']['ip'])} "
            f"{_e(f['destination']['ip'])}' data-tech='{_e(tids)}' data-basis='{_e(f['basis'])}' "
            f"data-conf='{f['confidence']}'>"
            f"<td><span class=dot style='background:{colour}'></span>{_e(f['id'])}</td>"
            f"<td>{_e((f['first_time'] or '')[:23].replace('T', ' '))}</td>"
            f"<td class=who>{_e(_host(f['source']))} &rarr; {_e(_host(f['destination']))}</td>"
            f"<td class=who>{_e((f['principal'] or {}).get('text') or '-')}</td><td>{tech}</td>"
            f"<td class=what>{_e(f['title'])}</td><td class='basis {_e(f['basis'])}'>{_e(basis)}</td>"
            f"<td>{_e(frames)}</td></tr>")
        yield f"<tr class=detail data-for='{_e(f['id'])}' hidden><td colspan=8>{_detail(f)}</td></tr>"
    yield "</tbody></table>"
    if not n:
        yield "<p class=empty>No findings.</p>"
    yield "</section>"


def _frames(frames: list[int]) -> str:
    if not frames:
        return ""
    runs, start, prev = [], frames[0], frames[0]
    for x in frames[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        runs.append(f"{start}-{prev}" if prev != start else str(start))
        if x is not None:
            start = prev = x
    return ", ".join(runs)


def _detail(f: dict) -> str:
    rows = [("rule", f["rule"]), ("namespace", f["namespace"]), ("operation", f["operation"]),
            ("session", f["session"]), ("capture", f["capture"]), ("client machine", f["client_machine"]),
            ("client pid", f["client_pid"]), ("command line", f["command_line"]), ("outcome", f["outcome"])]
    if f["tool"]:
        rows.append(("tool", f"{f['tool']['name']}: {f['tool']['evidence']}"))
    if f.get("registry"):
        rows.append(("registry", json.dumps(f["registry"], ensure_ascii=False)))
    for e in f.get("evidence") or ():
        rows.append((f"frames in {e['file']}", _frames(e["frames"])))
    for k, v in f["wmi"].items():
        if v not in (None, {}, []):
            rows.append((f"wmi.{k}", v if isinstance(v, (str, int, float)) else json.dumps(v, ensure_ascii=False)))
    out = ["<div class=grid>"]
    out += [f"<span>{_e(k)}</span><code>{_e(v)}</code>" for k, v in rows if v not in (None, "")]
    out.append("</div><p><b>Reasons</b></p><ul>")
    out += [f"<li>{_e(x)}</li>" for x in f["reasons"]]
    out.append("</ul>")
    if f["decoded_command"]:
        out.append(f"<p><b>Decoded command / script</b></p><pre>{_e(f['decoded_command'])}</pre>")
    if f.get("excerpt"):
        out.append("<p><b>Transcript excerpt</b> <small>(wmiscope transcript --frames)</small></p>"
                   f"<pre class=transcript>{_e(chr(10).join(f['excerpt']))}</pre>")
    return "".join(out)


def _call_times(s: dict) -> list[float]:
    return [_epoch(c["time"]) for c in s["calls"] if c["time"]]


def _widen(span: list, times: list) -> list:
    """[first, last] of a span ([] when empty) and more times."""
    return [min(times + span[:1]), max(times + span[1:])]


def _timeline(r: dict) -> Iterator[str]:
    # One lane per pair of hosts, whichever side opened the connection: the server's
    # callbacks to an async client's sink belong beside the calls that asked for them.
    # The lane is named client -> server as the login (or the first connection) shows it:
    # the first session of the pair by (no clear login, first time).
    # The sessions are read twice, one at a time: for each pair its span and how many
    # calls, then each pair's sessions again for its ticks.
    pairs: dict[tuple, dict] = {}
    direction: dict[tuple, tuple] = {}
    first: dict[tuple, tuple] = {}
    for s in r["sessions"]:
        ends = (s["client"]["ip"], s["server"]["ip"])
        key = tuple(sorted(ends))
        rank = (not s["login"].get("namespace"), s["first_time"] or "")
        if key not in first or rank < first[key]:
            first[key] = rank
            direction[key] = ends
        p = pairs.setdefault(key, {"calls": 0, "span": [], "sessions": [], "findings": []})
        times = _call_times(s)
        if times:
            p["calls"] += len(times)
            p["span"] = _widen(p["span"], times)
            p["sessions"].append(s["id"])
    for i, f in enumerate(r["findings"]):
        key = tuple(sorted((f["source"]["ip"], f["destination"]["ip"])))
        direction.setdefault(key, (f["source"]["ip"], f["destination"]["ip"]))
        p = pairs.setdefault(key, {"calls": 0, "span": [], "sessions": [], "findings": []})
        p["findings"].append((f["first_epoch"] or 0, i))     # the marks' order, and where to read them
        if f["first_epoch"] is not None:
            p["span"] = _widen(p["span"], [f["first_epoch"]])
    out = ["<section id=timeline><h2>Timeline by host pair</h2>"
           "<p class=sub>ticks: WMI calls; circles: findings (filled observed, hollow inferred; colour is "
           "severity). Hover for details, click to open the finding.</p>"]
    if not pairs:
        out.append("<p class=empty>No WMI activity.</p>")
    width, left, right = 960, 10, 10
    names = {h["ip"]: _host({"ip": h["ip"], "names": [n["name"] for n in h["names"]]}) for h in r["hosts"]}
    for key, p in sorted(pairs.items(), key=lambda kv: direction[kv[0]]):
        src, dst = direction[key]
        if not p["span"]:
            continue
        t0, t1 = p["span"]
        span = max(t1 - t0, 1e-3)

        def x(t):
            return left + (t - t0) / span * (width - left - right)
        yield "".join(out)
        out = []
        yield (f"<div class=pair><h3>{_e(names.get(src, src))} &rarr; {_e(names.get(dst, dst))} "
               f"<small>({len(p['findings'])} findings, {p['calls']} calls)</small></h3>"
               f"<svg class=lane width='{width}' height='76' viewBox='0 0 {width} 76' role=img "
               f"data-pair='{_e(src)} {_e(dst)}'><line x1='{left}' y1='52' x2='{width - right}' y2='52' "
               "stroke='#999'/>")
        for sid in p["sessions"]:
            yield "".join(f"<line class=tick x1='{x(t):.1f}' y1='46' x2='{x(t):.1f}' y2='58' stroke='#777'/>"
                          for t in _call_times(r["sessions"].read(sid)))
        svg = []
        rows: list[list[float]] = [[], [], []]     # marks closer than 16 px stack in up to three rows
        for _, i in sorted(p["findings"]):
            f = r["findings"].at(i)
            if f["first_epoch"] is None:
                continue
            cx = x(f["first_epoch"])
            row = next((i for i, xs in enumerate(rows) if all(abs(cx - o) >= 16 for o in xs)), len(rows) - 1)
            rows[row].append(cx)
            c = _SEVERITY_COLOUR[f["severity"]]
            fill = c if f["basis"] == "observed" else "white"
            tids = " ".join(t["id"] for t in f["techniques"])
            svg.append(f"<circle class=mark data-finding='{_e(f['id'])}' data-tech='{_e(tids)}' "
                       f"data-basis='{_e(f['basis'])}' data-conf='{f['confidence']}' cx='{cx:.1f}' "
                       f"cy='{36 - 14 * row}' r='6.5' fill='{fill}' stroke='{c}' stroke-width='2.5'><title>"
                       f"{_e(f['id'])} {_e(f['first_time'])} {_e(tids)}: {_e(f['title'])}</title></circle>")
        svg.append(f"<text x='{left}' y='72' class=axis>{_e(r_time(t0))}</text>"
                   f"<text x='{width - right}' y='72' text-anchor='end' class=axis>{_e(r_time(t1))}</text></svg>")
        yield "".join(svg) + "</div>"
    out.append("</section>")
    yield "".join(out)


def r_time(t: float) -> str:
    from wmiscope.dissectors.jsonl import iso
    return (iso(t) or "")[:23].replace("T", " ")


def _sealed(r: dict) -> Iterator[str]:
    conns = iter(r["sealed_connections"])
    first = next(conns, None)
    if first is None:
        yield "<section id=sealed><h2>Sealed connections</h2><p class=empty>None: every WMI stub was readable.</p>" \
              "</section>"
        return
    yield ("<section id=sealed><h2>Sealed connections</h2><table><thead><tr><th>session</th><th>client &rarr; "
           "server</th><th>principal</th><th>clear login</th><th>sealed calls (request/reply bytes)</th>"
           "<th>opened?</th><th>key that would open it</th></tr></thead><tbody>")
    for c in chain((first,), conns):
        login = c["login"]
        lg = ", ".join(f"{k}={v}" for k, v in login.items() if v is not None)
        yield (f"<tr><td>{_e(c['session'])}</td><td>{_e(c['client']['ip'])} &rarr; {_e(c['server']['ip'])}"
               f"</td><td>{_e(c['principal'])}</td><td>{_e(lg)}</td><td>{_e('; '.join(c['sequence']))}</td>"
               f"<td>{'decrypted' if c['opened'] else 'no'}</td><td>{_e(c['key'])}</td></tr>")
    yield "</tbody></table></section>"


def _sessions(r: dict) -> Iterator[str]:
    yield "<section id=sessions><h2>Sessions</h2>"
    if not r["summary"]["sessions"]:
        yield "<p class=empty>No WMI sessions.</p>"
    for s in r["sessions"]:
        out = []
        login = s["login"]
        lg = " ".join(f"{k}={v}" for k, v in login.items() if k != "frames" and v is not None)
        out.append(f"<details class=session data-session='{_e(s['id'])}'><summary><b>{_e(s['id'])}</b> "
                   f"{_e(s['client']['ip'])}:{s['client']['port']} &rarr; {_e(s['server']['ip'])}:{s['server']['port']}"
                   f" &middot; {_e(', '.join(s['principals']) or 'no authentication')} &middot; {_e(lg)} &middot; "
                   f"{s['call_count']} calls ({s['sealed']} sealed, {s['decrypted']} decrypted) &middot; "
                   f"{len(s['operations'])} operations</summary>"
                   f"<p class=sub>{_e(s['capture'])}, {_e(s['first_time'])} to {_e(s['last_time'])}; auth "
                   f"{_e(s['auth'])}</p>{_operations(s)}<table class=calls><thead><tr><th>req</th><th>resp</th><th>time</th>"
                   "<th>method</th><th>operation</th><th>outcome</th><th>summary</th><th>findings</th></tr></thead>"
                   "<tbody>")
        for c in s["calls"]:
            links = " ".join(f"<a href='#{_e(x)}' class=flink>{_e(x)}</a>" for x in c.get("findings", ()))
            out.append(f"<tr><td>{_e(c['req'])}</td><td>{_e(c['resp'])}</td><td>{_e((c['time'] or '')[11:23])}</td>"
                       f"<td>{_e(c['method'])}</td><td>{_e(c['operation'])}</td><td>{_e(c['outcome'])}</td>"
                       f"<td>{_e(c['summary'])}</td><td>{links}</td></tr>")
        out.append("</tbody></table></details>")
        yield "".join(out)
    yield "</section>"


def _operations(s: dict) -> str:
    if not s["operations"]:
        return ""
    out = ["<table class=ops><thead><tr><th>operation</th><th>kind</th><th>mode</th><th>namespace</th>"
           "<th>first frame</th><th>calls</th></tr></thead><tbody>"]
    out += [f"<tr><td>{_e(o['id'])}</td><td>{_e(o['kind'])}</td><td>{_e(o['mode'] or '')}</td>"
            f"<td>{_e(o['namespace'] or '')}</td><td>{_e(o['first_frame'])}</td><td>{o['calls']}</td></tr>"
            for o in s["operations"]]
    out.append("</tbody></table>")
    return "".join(out)


def _captures(r: dict) -> str:
    out = ["<section id=captures><h2>Captures</h2><table><thead><tr><th>capture</th><th>frames</th><th>calls</th>"
           "<th>WMI calls</th><th>errors</th><th>first errors</th></tr></thead><tbody>"]
    for c in r["captures"]:
        st = c["stats"] or {}
        errs = "; ".join(f"{e.get('stage')}: {e.get('reason')} (frame {e.get('frame')})" for e in c["errors"][:3])
        name = c["name"] + (" (interrupted: the report covers what was read)" if c.get("interrupted") else "")
        out.append(f"<tr><td>{_e(name)}</td><td>{st.get('frames')}</td><td>{st.get('calls')}</td>"
                   f"<td>{c['wmi_calls']}</td><td>{st.get('errors')}</td><td>{_e(errs)}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


_HEAD = """<!DOCTYPE html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content='width=device-width, initial-scale=1'>
<title>wmiscope forensics report</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:0;color:#1c2833;background:#f7f9fb}
header{background:#1b2631;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
.sub{color:#7f8c8d;font-size:12px;margin:2px 0 8px}header .sub{color:#aeb6bf}
main{padding:8px 24px 40px;max-width:1500px}
h2{border-bottom:2px solid #d5dbdb;padding-bottom:3px;margin-top:28px}h3{margin:10px 0 4px;font-size:15px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #d5dbdb;border-radius:6px;padding:8px 14px;min-width:92px}
.card b{display:block;font-size:22px}.card span{color:#566573;font-size:12px}
.cols{display:flex;gap:30px;flex-wrap:wrap}.cols>div{flex:1;min-width:260px}ul{margin:4px 0;padding-left:18px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #e5e8e8;padding:4px 6px;text-align:left;vertical-align:top}th{background:#eaecee}
tr.finding{cursor:pointer}tr.finding:hover{background:#eef6fc}td.who{min-width:150px;max-width:240px;overflow-wrap:anywhere}td.what{min-width:260px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
td.basis.inferred{color:#8e44ad;font-weight:600}.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:5px}
#filters{margin:6px 0 10px}#filters label{margin-right:14px}#shown{color:#566573}
.grid{display:grid;grid-template-columns:160px 1fr;gap:2px 10px}.grid code{white-space:pre-wrap;word-break:break-all}
pre{background:#17202a;color:#e5e8e8;padding:8px;overflow:auto;max-height:360px;font-size:12px;white-space:pre-wrap}
.notice{background:#fdebd0;border:1px solid #f0b27a;padding:10px;border-radius:5px;font-weight:600}
svg.lane{background:#fff;border:1px solid #e5e8e8;max-width:100%;height:auto}svg .axis{font-size:11px;fill:#566573}
circle.mark{cursor:pointer}circle.mark.dim{opacity:.12}details.session{background:#fff;border:1px solid #e5e8e8;margin:6px 0;padding:4px 8px}
details.session summary{cursor:pointer}table.ops{width:auto;margin:4px 0 8px}table.calls td{font-size:12px;overflow-wrap:anywhere}tr.flash{outline:2px solid #f1c40f}
</style></head>"""

_JS = r"""
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('tr.finding'));
  var marks = Array.prototype.slice.call(document.querySelectorAll('circle.mark'));
  var host = document.getElementById('f-host'), tech = document.getElementById('f-tech'),
      conf = document.getElementById('f-conf'), shown = document.getElementById('shown');
  function match(el, hosts){
    if (host.value && (' ' + hosts + ' ').indexOf(' ' + host.value + ' ') < 0) return false;
    if (tech.value && (' ' + el.dataset.tech + ' ').indexOf(' ' + tech.value + ' ') < 0) return false;
    var c = conf.value;
    if (c === 'observed' || c === 'inferred') { if (el.dataset.basis !== c) return false; }
    else if (c && parseFloat(el.dataset.conf) < parseFloat(c)) return false;
    return true;
  }
  function apply(){
    var n = 0;
    rows.forEach(function(r){
      var ok = match(r, r.dataset.hosts);
      r.hidden = !ok; if (ok) n++;
      var d = document.querySelector('tr.detail[data-for="' + r.id + '"]');
      if (d && !ok) d.hidden = true;
    });
    marks.forEach(function(m){
      var pair = m.closest('svg').dataset.pair;
      m.classList.toggle('dim', !match(m, pair));
    });
    shown.textContent = n + ' of ' + rows.length + ' findings shown';
  }
  [host, tech, conf].forEach(function(s){ if (s) s.addEventListener('change', apply); });
  function open(id){
    var d = document.querySelector('tr.detail[data-for="' + id + '"]');
    if (d) d.hidden = false;
  }
  rows.forEach(function(r){
    r.addEventListener('click', function(){
      var d = document.querySelector('tr.detail[data-for="' + r.id + '"]');
      if (d) d.hidden = !d.hidden;
    });
  });
  marks.forEach(function(m){
    m.addEventListener('click', function(){
      var id = m.dataset.finding, r = document.getElementById(id);
      open(id);
      if (r) { r.scrollIntoView({block: 'center'}); r.classList.add('flash');
               setTimeout(function(){ r.classList.remove('flash'); }, 1500); }
    });
  });
  Array.prototype.slice.call(document.querySelectorAll('a.flink')).forEach(function(a){
    a.addEventListener('click', function(){ open(a.getAttribute('href').slice(1)); });
  });
  if (rows.length) apply();
})();
"""
