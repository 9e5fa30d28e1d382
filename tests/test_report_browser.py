"""The HTML report in a real headless Chromium, driven through WebDriver (chromedriver):
it renders offline, the findings table and the timeline show the expected rows and
marks, the filters work, a timeline mark opens its finding, and the console is clean."""

from __future__ import annotations

import pytest

from browser_util import chromium_driver, have_chromium
from tshark_util import CAPTURES, PCAPS
from wmiscope.cli import main

pytestmark = pytest.mark.skipif(not have_chromium(), reason="chromium and chromium-driver not installed "
                                                            "(scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    out = tmp / "report.html"
    assert main(["report", str(CAPTURES / "wmimplant.pcap"), str(PCAPS / "wmi-persistence-subscription.pcap"),
                 "-o", str(out)]) == 0
    with chromium_driver(str(tmp)) as driver:
        driver.get(out.as_uri())
        yield driver


def _visible_rows(driver) -> list[str]:
    return [r.get_attribute("id") for r in driver.find_elements("css selector", "tr.finding") if r.is_displayed()]


def _select(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def test_renders_the_summary_table_and_timeline(page):
    assert page.title == "wmiscope forensics report"
    rows = _visible_rows(page)
    assert rows == [f"F{i:03d}" for i in range(1, 12)]       # 9 WMImplant + 2 persistence findings, by time
    marks = page.find_elements("css selector", "svg.lane circle.mark")
    assert sorted(m.get_attribute("data-finding") for m in marks) == rows
    lanes = [s.get_attribute("data-pair") for s in page.find_elements("css selector", "svg.lane")]
    assert lanes == ["10.8.0.77 10.8.0.2", "192.168.1.46 192.168.1.195"]
    assert "11 of 11 findings shown" in page.find_element("id", "shown").text
    text = page.find_element("id", "findings-table").text
    assert "WMI event subscription persistence: SysUpdateFilter -> SysUpdateConsumer" in text
    assert "Likely remote method execution (Win32_Process.Create-shaped)" in text
    hosts = page.find_element("id", "hosts").text
    assert "192.168.1.46 client CHIP_DOUGLAS-PC" in hosts and "10.8.0.2 server DC01" in hosts


def test_filters_by_technique_confidence_and_host(page):
    _select(page, "f-tech", "T1546.003")
    rows = _visible_rows(page)
    assert len(rows) == 1 and "1 of 11 findings shown" in page.find_element("id", "shown").text
    lit = [m.get_attribute("data-finding") for m in page.find_elements("css selector", "circle.mark")
           if "dim" not in m.get_attribute("class")]
    assert lit == rows
    _select(page, "f-tech", "")
    _select(page, "f-conf", "inferred")
    (inferred,) = _visible_rows(page)
    assert "Win32_Process.Create-shaped" in page.find_element("id", inferred).text
    _select(page, "f-conf", "")
    _select(page, "f-host", "10.8.0.2")
    assert len(_visible_rows(page)) == 2
    _select(page, "f-host", "")
    assert len(_visible_rows(page)) == 11


def test_a_mark_opens_its_finding_with_the_transcript_excerpt(page):
    mark = next(m for m in page.find_elements("css selector", "circle.mark")
                if "persistence" in m.find_element("tag name", "title").get_attribute("textContent"))
    fid = mark.get_attribute("data-finding")
    page.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", mark)
    detail = page.find_element("css selector", f"tr.detail[data-for='{fid}']")
    assert detail.is_displayed()
    assert "- WMI: IWbemServices:PutInstance Request" in detail.text
    assert "SELECT * FROM __InstanceModificationEvent WITHIN 60" in detail.text


def test_console_has_no_error_and_nothing_was_fetched(page):
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []


def test_sessions_show_login_calls_and_operations(page):
    sessions = page.find_elements("css selector", "details.session")
    sub = next(d for d in sessions if "root\\subscription" in d.text)
    page.execute_script("arguments[0].open = true", sub)
    text = sub.text
    assert "client_machine=HELPDESK-07" in text and "client_pid=2960" in text
    ops = sub.find_element("css selector", "table.ops").text
    # one capture set (issue 10b): frames count across the set as on mergecap, the sample's
    # frame 32 after wmimplant's 787 frames; operation ids count across the set too
    assert "PutInstance synchronous \\\\DC01\\root\\subscription 819 1" in ops
    rows = sub.find_elements("css selector", "table.calls tbody tr")
    assert len(rows) == 9 and "IWbemServices::PutInstance" in rows[6].text


def test_a_capture_without_wmi_says_so(page, tmp_path):
    # last in the file: it takes the browser away from the report the other tests read
    out = tmp_path / "none.html"
    assert main(["report", str(CAPTURES / "impacket_dcomexec.pcapng"), "-o", str(out)]) == 0
    page.get(out.as_uri())
    assert "No WMI traffic was found in the capture(s)" in page.find_element("id", "no-wmi").text
    assert page.find_elements("css selector", "tr.finding") == []
    assert [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
