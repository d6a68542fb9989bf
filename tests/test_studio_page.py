"""The studio page in real headless Chromium (selenium), against a live server.

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver); the
tests skip, saying so, where they are not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the studio extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the studio extra (uvicorn) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

import stcnnt_dsl  # noqa: E402
from stcnnt_dsl.studio import analysis, server  # noqa: E402
from stcnnt_dsl.studio.app import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _find(*names: str) -> str | None:
    for name in names:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.exists(path):
            return path
    return None


CHROMIUM = _find("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = _find("/usr/bin/chromedriver", "chromedriver")
TINY = "name: tiny\nunet:\n  channels: [4, 8]\n  blocks: L1G1\n"
WAIT_S = 60  # generous: the test machine is shared


@pytest.fixture(scope="module")
def live_url():
    sock = server._bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not app_server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    app_server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    profile = tempfile.mkdtemp(prefix="stcnnt-studio-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,800"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, what: str, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = condition()
            if last:
                return last
        except WebDriverException:
            pass
        time.sleep(0.05)
    status = driver.find_element(By.CSS_SELECTOR, "[data-testid=status]").text
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}; status: {status!r})")


@pytest.fixture
def page(browser, live_url):
    browser.get(live_url)
    wait(browser, lambda: browser.execute_script("return document.body.dataset.ready"), "ready")
    return browser


def part(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[data-testid={name}]")


def set_text(driver, name: str, text: str) -> None:
    """Replace an editor's text the way a paste does (an input event)."""
    driver.execute_script(
        "const t = arguments[0]; t.focus(); t.value = arguments[1];"
        "t.dispatchEvent(new InputEvent('input', {bubbles: true}));",
        part(driver, name),
        text,
    )


def caret_to(driver, name: str, offset: int) -> None:
    driver.execute_script(
        "arguments[0].focus(); arguments[0].setSelectionRange(arguments[1], arguments[1]);",
        part(driver, name),
        offset,
    )


def params_shown(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "[data-testid=total-params] .sub").text


def analyzed(driver, text: str, input: str) -> dict:
    doc = analysis.analyze(text, input)
    expected = f"{doc['params']:,}"
    wait(driver, lambda: params_shown(driver) == expected, f"params {expected}")
    return doc


# --------------------------------------------------------------------------- tests


def test_a_typed_mistake_is_marked_at_its_line_and_the_fix_shows_results(page):
    set_text(page, "editor", TINY)
    part(page, "input-shape").clear()
    part(page, "input-shape").send_keys("1,1,1,32,32")
    analyzed(page, TINY, "1,1,1,32,32")
    end_of_line_4 = len("".join(TINY.splitlines(keepends=True)[:4])) - 1
    caret_to(page, "editor", end_of_line_4)
    part(page, "editor").send_keys("X1")  # "  blocks: L1G1X1": X is line 4, column 15
    mark = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "[data-testid=error-mark]"),
                "the error mark")[0]  # fmt: skip
    assert (mark.get_attribute("data-line"), mark.get_attribute("data-column")) == ("4", "15")
    assert mark.text == "X"
    error = part(page, "error")
    assert error.is_displayed()
    assert "Line 4, column 15" in error.text and "unknown cell letter 'X'" in error.text
    assert page.find_element(By.CSS_SELECTOR, "#pane-a .gutter .err").text == "4"
    assert part(page, "editor").get_attribute("aria-invalid") == "true"
    # The mark sits where the textarea draws that character (the layers line up).
    geometry = page.execute_script(
        """const t = arguments[0], m = arguments[1];
        const r = t.getBoundingClientRect(), s = getComputedStyle(t);
        const probe = document.getElementById('measure');
        const cw = probe.getBoundingClientRect().width / probe.textContent.length;
        const mr = m.getBoundingClientRect(), line = m.closest('.ln').getBoundingClientRect();
        return [mr.left - (r.left + parseFloat(s.paddingLeft) + 14 * cw - t.scrollLeft),
                line.top - (r.top + parseFloat(s.paddingTop) + 3 * parseFloat(s.lineHeight)
                          - t.scrollTop)];""",
        part(page, "editor"),
        mark,
    )
    assert abs(geometry[0]) < 2 and abs(geometry[1]) < 2, geometry
    # Fix it: the error goes, the totals and the diagram come back.
    part(page, "editor").send_keys(Keys.BACKSPACE, Keys.BACKSPACE)
    wait(page, lambda: not part(page, "error").is_displayed(), "the error to go")
    doc = analyzed(page, TINY, "1,1,1,32,32")
    assert page.find_elements(By.CSS_SELECTOR, "[data-testid=error-mark]") == []
    svg = wait(page, lambda: page.find_elements(By.CSS_SELECTOR,
                                                "[data-testid=diagram] svg:not(.stale)"),
               "a fresh diagram")  # fmt: skip
    assert svg
    rows = page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr")
    assert [r.get_attribute("data-stage") for r in rows] == [s["name"] for s in doc["stages"]]
    assert part(page, "total-output").find_element(By.CSS_SELECTOR, ".value").text == (
        "1×1×4×32×32"
    )


def test_a_yaml_typo_is_marked_and_explained(page):
    set_text(page, "editor", TINY.replace("  blocks", "  blocsk"))
    mark = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "[data-testid=error-mark]"),
                "the error mark")[0]  # fmt: skip
    assert mark.get_attribute("data-line") == "4"
    assert 'did you mean "blocks"' in part(page, "error").text


def test_typing_is_debounced(page):
    set_text(page, "editor", TINY)
    analyzed(page, TINY, "1,1,1,64,64")
    count = "return performance.getEntriesByName(location.origin + '/api/analyze').length"
    before = page.execute_script(count)
    caret_to(page, "editor", len(TINY))
    page.execute_script(  # ten keystrokes 10 ms apart, as a quick typist makes them
        """const t = arguments[0]; let k = 0;
        const timer = setInterval(() => {
          t.setRangeText('# comment'[k] || ' ', t.selectionStart, t.selectionStart, 'end');
          t.dispatchEvent(new InputEvent('input', {bubbles: true, data: 'x',
                                                   inputType: 'insertText'}));
          if (++k === 10) clearInterval(timer);
        }, 10);""",
        part(page, "editor"),
    )
    time.sleep(1.5)
    wait(page, lambda: "analyzed" in part(page, "status").text, "the analysis")
    assert 1 <= page.execute_script(count) - before <= 2


def test_clicking_a_stage_shows_its_resolved_options(page):
    set_text(page, "editor", TINY)
    analyzed(page, TINY, "1,1,1,64,64")
    panel = part(page, "explain")
    assert not panel.is_displayed()
    page.find_element(By.CSS_SELECTOR, "[data-testid=stages] tr[data-stage=bridge]").click()
    wait(page, lambda: "Options of bridge" in panel.text, "the bridge's options")
    table = part(page, "explain-table")
    header = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert header == ["option", "cell 0: L1", "cell 1: G1"]
    window = table.find_element(By.XPATH, ".//tbody/tr[th='window']")
    cells = window.find_elements(By.TAG_NAME, "td")
    values = [td.text.removesuffix(td.find_element(By.CLASS_NAME, "src").text) for td in cells]
    assert values == ["8", "8"]  # each value with its source (the library's default)
    # A diagram box does the same ...
    selector = "[data-testid=diagram] g.node[data-stage='encoder.0']"
    box = wait(page, lambda: page.find_element(By.CSS_SELECTOR, selector), "the encoder.0 box")
    box.click()
    wait(page, lambda: "Options of encoder.0" in panel.text, "encoder.0's options")
    # ... and so does the keyboard: a row takes focus, Enter or Space opens it.
    row = page.find_element(By.CSS_SELECTOR, "[data-testid=stages] tr[data-stage='decoder.1']")
    page.execute_script("arguments[0].focus()", row)
    row.send_keys(Keys.ENTER)
    wait(page, lambda: "Options of decoder.1" in panel.text, "decoder.1's options")
    assert row.get_attribute("aria-selected") == "true"
    row.send_keys(Keys.ARROW_UP)
    focused = page.switch_to.active_element
    assert focused.get_attribute("data-stage") == "bridge"  # the row above decoder.1
    focused.send_keys(Keys.SPACE)
    wait(page, lambda: "Options of bridge" in panel.text, "Space on a row")


def test_the_architecture_menu_loads_a_bundled_text(page):
    Select(part(page, "architectures")).select_by_value("bundled:llm")
    text = analysis.bundled_text("llm")
    wait(page, lambda: part(page, "editor").get_attribute("value") == text, "the llm text")
    default = analysis.default_input("llm")  # its smallest valid input
    assert part(page, "input-shape").get_attribute("value") == default
    analyzed(page, text, default)
    rows = page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr")
    assert [r.get_attribute("data-stage") for r in rows] == ["blocks.0", "blocks.1", "blocks.2"]
    # The first page shows the bundled unet with its comments.
    page.refresh()
    wait(page, lambda: page.execute_script("return document.body.dataset.ready"), "ready")
    assert part(page, "editor").get_attribute("value") == analysis.bundled_text("unet")


def test_compare_mode_shows_deltas(page):
    set_text(page, "editor", TINY)
    analyzed(page, TINY, "1,1,1,64,64")
    part(page, "compare-toggle").click()
    b_editor = part(page, "editor-b")
    wait(page, lambda: b_editor.is_displayed() and b_editor.get_attribute("value") == TINY,
         "B to start as a copy of A")  # fmt: skip
    wait(page, lambda: part(page, "delta-params").text.startswith("Δ ±0"), "zero deltas")
    b_text = TINY.replace("[4, 8]", "[8, 8]")
    set_text(page, "editor-b", b_text)
    expected = analysis.compare(TINY, "1,1,1,64,64", b_text)
    delta = expected["deltas"]["params"]["delta"]
    assert delta > 0
    wait(page, lambda: part(page, "delta-params").get_attribute("title") == f"B − A = {delta:,}",
         "the parameter delta")  # fmt: skip
    assert part(page, "delta-params").text.startswith("Δ +")
    stage_deltas = page.find_elements(By.CSS_SELECTOR, "[data-testid=stage-delta-params]")
    assert len(stage_deltas) == len(expected["stages"]) == 5
    first = expected["stages"][0]["delta"]["params"]["delta"]
    assert stage_deltas[0].get_attribute("title") == f"B − A = {first:,}"
    # The diagram shows A or B.
    tab_b = page.find_element(By.CSS_SELECTOR, ".tabs button[data-show=b]")
    tab_b.click()
    wait(page, lambda: "spec B" in page.find_element(By.CSS_SELECTOR, "[data-testid=diagram] svg")
         .get_attribute("aria-label"), "B's diagram")  # fmt: skip
    part(page, "compare-toggle").click()
    wait(page, lambda: not b_editor.is_displayed(), "single mode")


def test_completion_offers_the_keys_and_values_valid_at_the_caret(page):
    text = "name: x\nunet:\n  channels: [4, 8]\n  blocks: L1G1\n"
    set_text(page, "editor", text)
    editor = part(page, "editor")
    caret_to(page, "editor", len(text))
    editor.send_keys("  no")
    popup = part(page, "completion")
    wait(page, popup.is_displayed, "the completion list")
    labels = [li.text.split()[0] for li in popup.find_elements(By.TAG_NAME, "li")]
    assert labels == ["norm"]
    editor.send_keys(Keys.ENTER)
    assert editor.get_attribute("value").endswith("  norm: ")
    editor.send_keys("inst")
    wait(page, popup.is_displayed, "the value list")
    labels = [li.text for li in popup.find_elements(By.TAG_NAME, "li")]
    assert labels == ["instance2d", "instance3d"]
    editor.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
    assert editor.get_attribute("value").endswith("  norm: instance3d")
    # At the top level: keys not written yet, and no second topology.
    editor.send_keys(Keys.ENTER, Keys.BACKSPACE, Keys.BACKSPACE)  # a new line at column 1
    assert editor.get_attribute("value").endswith("instance3d\n")
    editor.send_keys(Keys.CONTROL, " ")
    wait(page, popup.is_displayed, "the top-level keys")
    labels = [li.text.split()[0] for li in popup.find_elements(By.TAG_NAME, "li")]
    assert "defaults" in labels and "in_channels" in labels
    assert not {"name", "unet", "hrnet", "llm"} & set(labels)
    editor.send_keys(Keys.ESCAPE)
    assert not popup.is_displayed()
    # Inside a block string's inline options.
    set_text(page, "editor", "unet(channels=[4, 8], blocks=L1[qk")
    caret_to(page, "editor", len("unet(channels=[4, 8], blocks=L1[qk"))
    editor.send_keys("v")
    wait(page, popup.is_displayed, "the inline options")
    labels = [li.text.split()[0] for li in popup.find_elements(By.TAG_NAME, "li")]
    assert labels == ["qkv", "qkv_kernel"]


def test_completion_under_heads_offers_task_head_keys(page):
    """`heads:` is the task heads: a head offers kind and its keys, with whole
    descriptions; the top-level key inserts no attention-heads value."""
    text = "name: x\nunet:\n  channels: [4, 8]\n  blocks: L1G1\nhe"
    set_text(page, "editor", text)
    editor = part(page, "editor")
    caret_to(page, "editor", len(text))
    editor.send_keys("a")
    popup = part(page, "completion")
    wait(page, popup.is_displayed, "the top-level keys")
    items = [li.text for li in popup.find_elements(By.TAG_NAME, "li")]
    assert len(items) == 1 and items[0].startswith("heads") and "task heads" in items[0]
    editor.send_keys(Keys.ENTER)
    assert editor.get_attribute("value").endswith("\nheads: ")  # no "auto" offered
    text += "ads: \n  seg:\n    "
    set_text(page, "editor", text)
    caret_to(page, "editor", len(text))
    editor.send_keys(Keys.CONTROL, " ")
    wait(page, popup.is_displayed, "a head's keys")
    labels = [li.text.split()[0] for li in popup.find_elements(By.TAG_NAME, "li")]
    assert labels[0] == "kind" and {"classes", "decoder", "out_channels"} <= set(labels)
    editor.send_keys(Keys.ENTER, "seg")
    wait(page, popup.is_displayed, "the head kinds")
    assert [li.text for li in popup.find_elements(By.TAG_NAME, "li")] == ["segmentation"]
    editor.send_keys(Keys.ENTER)
    assert editor.get_attribute("value").endswith("\n    kind: segmentation")


def test_keyboard_leaves_the_editor_and_reaches_the_rows(page):
    editor = part(page, "editor")
    editor.click()
    editor.send_keys(Keys.TAB)
    assert page.switch_to.active_element != editor  # Tab is not trapped
    rows = page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr")
    assert rows and all(r.get_attribute("tabindex") == "0" for r in rows)
    boxes = page.find_elements(By.CSS_SELECTOR, "[data-testid=diagram] g.node.stage")
    assert boxes and all(b.get_attribute("tabindex") == "0" for b in boxes)


def test_download_gives_the_canonical_yaml(page):
    text = "unet(channels=[4, 8], blocks=L1G1, name=tiny)"
    set_text(page, "editor", text)
    page.execute_script(  # capture the download instead of saving a file
        """window.__downloads = [];
        const click = HTMLAnchorElement.prototype.click;
        const blobs = new Map(), make = URL.createObjectURL;
        URL.createObjectURL = (blob) => {
          const url = make(blob);
          blobs.set(url, blob);
          return url;
        };
        HTMLAnchorElement.prototype.click = function () {
          if (!this.download) return click.call(this);
          window.__downloads.push(this.download);
          blobs.get(this.href).text().then((text) => window.__downloads.push(text));
        };"""
    )
    part(page, "download").click()
    script = "return window.__downloads.length == 2 && window.__downloads"
    downloads = wait(page, lambda: page.execute_script(script), "a download")
    assert downloads == ["tiny.yaml", stcnnt_dsl.dump_spec(text)]


def test_the_page_loads_only_from_the_server_without_errors(page, live_url):
    resources = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(url.startswith(live_url) for url in resources), resources
    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no CSP violation, no failed request, no script error
    paints = page.execute_script("return performance.getEntriesByType('paint').length")
    assert paints >= 1


def test_the_page_reads_well_at_1280x800_in_light_and_dark(page, tmp_path):
    for scheme in ("light", "dark"):
        feature = {"name": "prefers-color-scheme", "value": scheme}
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [feature]})
        colors = page.execute_script(
            """const s = getComputedStyle(document.body);
            const e = getComputedStyle(document.querySelector('[data-testid=editor]'));
            return [s.color, s.backgroundColor, e.caretColor];"""
        )
        fg, bg = (_rgb(c) for c in colors[:2])
        assert _contrast(fg, bg) >= 7, (scheme, colors)  # WCAG AAA for body text
        assert (sum(bg) < 300) == (scheme == "dark")
        # Nothing overflows the viewport sideways; the editor and totals are in view.
        width = page.execute_script("return document.documentElement.scrollWidth")
        assert width <= 1280
        for name in ("editor", "totals", "diagram"):
            rect = page.execute_script(
                "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.right];",
                part(page, name),
            )
            assert rect[0] >= 0 and rect[2] <= 1280 and rect[1] < 800, (name, rect)
        path = Path(tmp_path) / f"studio-{scheme}.png"
        assert page.save_screenshot(str(path)) and path.stat().st_size > 10_000
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    def luminance(rgb):
        parts = [c / 255 for c in rgb]
        parts = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in parts]
        return 0.2126 * parts[0] + 0.7152 * parts[1] + 0.0722 * parts[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# --------------------------------------------------------------------------- issue 23


def test_an_input_shape_error_is_the_inputs(page):
    set_text(page, "editor", TINY)
    analyzed(page, TINY, "1,1,1,64,64")
    box = part(page, "input-shape")
    box.clear()
    box.send_keys("1,1,1,33,32")  # the spec is fine; H=33 is not a multiple of 32
    error = part(page, "error")
    wait(page, lambda: error.is_displayed() and "Input shape:" in error.text, "the input's error")
    assert "unet.encoder" not in error.text and "encoder.0 cell 0" in error.text
    assert box.get_attribute("aria-invalid") == "true"
    assert part(page, "editor").get_attribute("aria-invalid") is None  # the text is fine
    assert page.find_elements(By.CSS_SELECTOR, "[data-testid=error-mark]") == []
    button = error.find_element(By.XPATH, ".//button[.='Edit input']")
    part(page, "editor").click()
    button.click()
    assert page.switch_to.active_element == box
    box.send_keys(Keys.BACKSPACE * 5, "32,32")
    wait(page, lambda: not error.is_displayed(), "the error to go")
    assert box.get_attribute("aria-invalid") == "false"


def test_a_half_typed_text_keeps_the_last_analysis_and_the_bar_still(page):
    set_text(page, "editor", TINY)
    doc = analyzed(page, TINY, "1,1,1,64,64")
    toggle = part(page, "compare-toggle")
    rect = "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width];"
    before = page.execute_script(rect, toggle)
    accepts = part(page, "accepts").text
    rows = len(page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr"))
    caret_to(page, "editor", TINY.index("L1G1") + 4)
    part(page, "editor").send_keys("X")  # "L1G1X": half a cell
    wait(page, lambda: part(page, "error").is_displayed(), "the error")
    wait(page, lambda: part(page, "totals").get_attribute("data-stale") == "true", "stale totals")
    assert params_shown(page) == f"{doc['params']:,}"  # the last valid numbers, dimmed
    assert "stale" in part(page, "totals").get_attribute("class")
    assert part(page, "stages").get_attribute("data-stale") == "true"
    assert len(page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr")) == rows
    assert part(page, "accepts").text == accepts
    assert page.execute_script(rect, toggle) == before  # the bar does not move
    part(page, "editor").send_keys(Keys.BACKSPACE)
    wait(page, lambda: part(page, "totals").get_attribute("data-stale") == "false", "fresh")
    assert page.execute_script(rect, toggle) == before


def test_compare_mode_keeps_the_last_valid_comparison_while_a_text_is_half_typed(page):
    set_text(page, "editor", TINY)
    analyzed(page, TINY, "1,1,1,64,64")
    part(page, "compare-toggle").click()
    b_text = TINY.replace("[4, 8]", "[8, 8]")
    set_text(page, "editor-b", b_text)
    delta = analysis.compare(TINY, "1,1,1,64,64", b_text)["deltas"]["params"]["delta"]
    title = f"B − A = {delta:,}"
    wait(page, lambda: part(page, "delta-params").get_attribute("title") == title, "the delta")
    rows = len(page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr"))
    shown = params_shown(page)
    for editor, text in (("editor-b", b_text), ("editor", TINY)):
        caret_to(page, editor, text.index("L1G1") + 4)
        part(page, editor).send_keys("X")  # "L1G1X": half a cell, in B and then in A
        error = "error-b" if editor == "editor-b" else "error"
        wait(page, lambda e=error: part(page, e).is_displayed(), f"the error of {editor}")
        wait(page, lambda: part(page, "totals").get_attribute("data-stale") == "true", "stale")
        assert "stale" in part(page, "totals").get_attribute("class")
        assert params_shown(page) == shown  # the last valid comparison, dimmed
        assert part(page, "delta-params").get_attribute("title") == title
        assert part(page, "stages").get_attribute("data-stale") == "true"
        assert len(page.find_elements(By.CSS_SELECTOR, "[data-testid=stages] tbody tr")) == rows
        part(page, editor).send_keys(Keys.BACKSPACE)
        wait(page, lambda: part(page, "totals").get_attribute("data-stale") == "false", "fresh")
    assert part(page, "delta-params").get_attribute("title") == title
    part(page, "compare-toggle").click()


def test_an_error_past_the_last_line_is_marked_at_the_end(page):
    text = TINY + "  defaults: {"  # YAML's end of stream: the line after the last
    set_text(page, "editor", text)
    mark = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "[data-testid=error-mark]"),
                "the error mark")[0]  # fmt: skip
    last = text.split("\n")
    assert (mark.get_attribute("data-line"), mark.get_attribute("data-column")) == (
        str(len(last)), str(len(last[-1]) + 1))  # fmt: skip
    assert f"Line {len(last)}, column {len(last[-1]) + 1}" in part(page, "error").text
    assert page.find_element(By.CSS_SELECTOR, "#pane-a .gutter .err").text == str(len(last))


def _completion(page, text: str) -> list[tuple[str, str]]:
    set_text(page, "editor", text)
    caret_to(page, "editor", len(text))
    part(page, "editor").send_keys(Keys.CONTROL, " ")
    popup = part(page, "completion")
    wait(page, popup.is_displayed, "the completion list")
    items = popup.find_elements(By.TAG_NAME, "li")
    pairs = [
        (li.find_element(By.CLASS_NAME, "k").text,
         li.find_element(By.CLASS_NAME, "d").get_attribute("textContent"))
        for li in items
    ]  # fmt: skip
    part(page, "editor").send_keys(Keys.ESCAPE)
    return pairs


def test_inline_options_are_the_ones_the_cell_reads_with_whole_descriptions(page):
    from stcnnt_dsl.language.options import OPTIONS

    reads = analysis.cell_options()
    local = _completion(page, "unet(channels=[4, 8], blocks=L1[qk")
    assert [k for k, _ in local] == [o for o in reads["L1"] if o.startswith("qk")]
    assert "qk_stride" not in dict(local)  # temporal cells only
    temporal = _completion(page, "unet(channels=[4, 8], blocks=T1[qk")
    assert "qk_stride" in dict(temporal)
    # Whole descriptions: not cut at the first ":" or ";"
    described = dict(_completion(page, "unet(channels=[4, 8], blocks=L1[win"))
    whole = OPTIONS["window"].schema["description"]
    assert ":" in whole.split("(default")[0] and described["window"] == whole


def test_start_from_says_when_the_text_is_no_longer_the_example(page):
    menu = Select(part(page, "architectures"))
    assert menu.first_selected_option.get_attribute("value") == "bundled:unet"
    set_text(page, "editor", TINY)  # all the text replaced
    wait(page, lambda: menu.first_selected_option.text == "your text", "'your text'")
    menu.select_by_value("bundled:unet")  # the example again
    text = analysis.bundled_text("unet")
    wait(page, lambda: part(page, "editor").get_attribute("value") == text, "the unet text")
    assert menu.first_selected_option.get_attribute("value") == "bundled:unet"


def test_texts_that_are_no_spec_get_short_true_messages(page):
    for text, words in (("/etc/passwd", "never read as a file path"),
                        ("[" * 20_000, "(20,000 characters)")):  # fmt: skip
        set_text(page, "editor", text)
        error = part(page, "error")
        wait(page, lambda e=error, w=words: e.is_displayed() and w in e.text, words)
        assert len(error.text) < 600 and "is not a file" not in error.text
