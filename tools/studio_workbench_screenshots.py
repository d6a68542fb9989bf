"""Screenshots of the studio's data, training and prediction views, for docs/studio.md.

    python tools/studio_workbench_screenshots.py              # docs/studio-*.png
    python tools/studio_workbench_screenshots.py --steps 60 --out-dir /tmp/shots

Writes the synthetic 2D+T data set (examples/make_dataset.py) to a temporary folder,
starts the studio on it in this process (no browser window), and in headless Chromium:
looks at a case (studio-data.png), starts a training of the plan's choice and waits for
its curve (studio-train.png), waits for it to end, shows the predictions
(studio-predictions.png). Needs the studio and data extras, selenium, Chromium and
chromedriver.
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
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from stcnnt_dsl.studio import server
from stcnnt_dsl.studio.app import create_app

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_dataset import make_dataset  # noqa: E402
from studio_screenshot import browser  # noqa: E402  (tools/, this script's folder)


def serve(data: Path, runs: Path) -> tuple[str, uvicorn.Server]:
    sock = server._bind("127.0.0.1", 0)
    app = create_app(data=str(data), runs=str(runs))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    served = uvicorn.Server(config)
    threading.Thread(target=served.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not served.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", served


def until(chrome: webdriver.Chrome, script: str, what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not chrome.execute_script(script):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def shot(chrome: webdriver.Chrome, panel: str, path: Path) -> None:
    element = chrome.find_element(By.CSS_SELECTOR, panel)
    chrome.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
    chrome.execute_script("document.activeElement.blur()")
    time.sleep(0.5)
    path.write_bytes(element.screenshot_as_png)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--driver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    work = Path(tempfile.mkdtemp(prefix="stcnnt-studio-shots-"))
    data = make_dataset(work / "Dataset001_Shapes", kind="2d+t", cases=8)
    url, served = serve(data, work / "runs")
    chrome = browser(args.chromium, args.driver, str(work / "profile"), height=1000)
    try:
        chrome.get(url)
        until(chrome, "return document.body.dataset.benchReady", "the page")
        Select(chrome.find_element(By.CSS_SELECTOR, "[data-testid=cases]")).select_by_index(1)
        until(chrome, "return document.querySelector('[data-testid=case-image]')"
              ".dataset.loaded === 'true'", "a case")  # fmt: skip
        slider = chrome.find_element(By.CSS_SELECTOR, "[data-testid=t-slider]")
        chrome.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent("
                              "new Event('input'));", slider)  # fmt: skip
        time.sleep(1)
        shot(chrome, "#data-panel", out / "studio-data.png")
        steps = chrome.find_element(By.CSS_SELECTOR, "[data-testid=train-steps]")
        steps.send_keys(str(args.steps))
        chrome.find_element(By.CSS_SELECTOR, "[data-testid=train-start]").click()
        until(chrome, "return Number(document.querySelector('[data-testid=train-curve]')"
              ".dataset.points) > 8", "the curve")  # fmt: skip
        shot(chrome, "#train-panel", out / "studio-train.png")
        until(chrome, "const s = document.querySelector('[data-testid=train-status]')"
              ".dataset.state; return s && s !== 'running'", "the training to end")  # fmt: skip
        chrome.find_element(By.CSS_SELECTOR, "[data-testid=predictions-show]").click()
        until(chrome, "return document.querySelector('[data-testid=predictions]')"
              ".dataset.state === 'ready'", "the predictions")  # fmt: skip
        time.sleep(1)
        shot(chrome, "#predictions-panel", out / "studio-predictions.png")
    finally:
        chrome.quit()
        served.should_exit = True
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
