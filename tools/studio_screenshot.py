"""Screenshots of the studio page (1280x800) in headless Chromium, for the docs.

    python tools/studio_screenshot.py                      # docs/studio.png (light, unet)
    python tools/studio_screenshot.py --scheme dark -o /tmp/studio-dark.png
    python tools/studio_screenshot.py --stage encoder.1    # with a stage's options open
    python tools/studio_screenshot.py --compare "$(cat b.yaml)"  # Compare on, B's text

Starts the studio app in this process on a free port (no browser window), loads the
bundled architecture given by --arch, waits for its analysis, and saves a PNG. Needs
the studio extra, selenium, Chromium and chromedriver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from stcnnt_dsl.studio import server
from stcnnt_dsl.studio.app import create_app

ROOT = Path(__file__).resolve().parent.parent


def serve() -> tuple[str, uvicorn.Server]:
    sock = server._bind("127.0.0.1", 0)
    app = uvicorn.Server(
        uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off")
    )
    threading.Thread(target=app.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not app.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", app


def browser(chromium: str, driver: str, profile: str, height: int = 800) -> webdriver.Chrome:
    """Headless Chromium, 1280 px wide, with its own profile folder (the studio's
    screenshot tools share it)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return chrome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", default=str(ROOT / "docs" / "studio.png"))
    parser.add_argument("--scheme", choices=("light", "dark"), default="light")
    parser.add_argument("--arch", default="unet", help="a bundled architecture")
    parser.add_argument("--text", help="an architecture to type into the editor instead")
    parser.add_argument("--compare", metavar="TEXT", help="turn Compare on with this as spec B")
    parser.add_argument("--stage", help="open this stage's options (e.g. encoder.1)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--driver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    url, app = serve()
    profile = tempfile.mkdtemp(prefix="stcnnt-studio-shot-")
    chrome = browser(args.chromium, args.driver, profile)
    try:
        feature = {"name": "prefers-color-scheme", "value": args.scheme}
        chrome.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [feature]})
        chrome.get(url)
        deadline = time.monotonic() + 120
        while not chrome.execute_script("return document.body.dataset.ready"):
            if time.monotonic() > deadline:
                raise SystemExit("the page did not become ready")
            time.sleep(0.1)
        if args.arch != "unet":
            select = chrome.find_element(By.CSS_SELECTOR, "[data-testid=architectures]")
            chrome.execute_script(
                "arguments[0].value = arguments[1];"
                "arguments[0].dispatchEvent(new Event('change'));",
                select,
                f"bundled:{args.arch}",
            )
            time.sleep(2)
        if args.text:
            editor = chrome.find_element(By.CSS_SELECTOR, "[data-testid=editor]")
            chrome.execute_script(
                "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
                editor,
                args.text,
            )
            time.sleep(3)
        if args.compare is not None:
            chrome.find_element(By.CSS_SELECTOR, "[data-testid=compare-toggle]").click()
            deadline = time.monotonic() + 120  # B starts as A's copy: wait for that comparison
            while "analyzed" not in chrome.find_element(By.ID, "status").text:
                if time.monotonic() > deadline:
                    raise SystemExit("the comparison did not finish")
                time.sleep(0.1)
            editor = chrome.find_element(By.CSS_SELECTOR, "[data-testid=editor-b]")
            chrome.execute_script(
                "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
                editor,
                args.compare,
            )
            time.sleep(3)
        if args.stage:
            chrome.find_element(By.CSS_SELECTOR, f"tr[data-stage='{args.stage}']").click()
            time.sleep(1)
        chrome.execute_script("document.activeElement.blur()")
        time.sleep(0.3)
        chrome.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        chrome.quit()
        app.should_exit = True
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
