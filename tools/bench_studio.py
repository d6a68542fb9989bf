#!/usr/bin/env python
"""Speed of the studio: `/api/analyze` per bundled architecture, and the page's first paint.

For every bundled architecture, at its default input (`studio.analysis.default_input`),
it sends `--requests` POSTs to a live server (uvicorn on a free port, in this process)
and reports p50 and p95 of the round-trip time in three cases:

- `new text`: a different text every time (a comment added), so the analysis cache
  misses; the diagram's SVG is cached by its DOT text, which does not change: this is
  what typing in the editor costs once the diagram has been drawn;
- `+ svg`: as `new text`, with the SVG cache cleared before every request (Graphviz runs
  each time: a change that alters the diagram);
- `same text`: the same text again (the analysis cache answers).

Then it loads the page `--loads` times in headless Chromium and reports, from the
Performance API, the first paint, the first contentful paint, and the time until the
first analysis is on screen (the page sets `data-ready` on <body>), medians.

    python tools/bench_studio.py                     # all bundled architectures
    python tools/bench_studio.py --arch unet --requests 50 --json studio-bench.json
    python tools/bench_studio.py --no-page           # without Chromium
    python tools/bench_studio.py --workbench         # data view, curve, analyses while training

Numbers from a shared or loaded machine are noisy: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import uvicorn

from stcnnt_dsl import list_architectures
from stcnnt_dsl.studio import analysis, server
from stcnnt_dsl.studio.app import create_app


def serve() -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = server._bind("127.0.0.1", 0)
    app = uvicorn.Server(
        uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=app.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not app.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", app, thread


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def timed_posts(client: httpx.Client, bodies: list[dict], before=None) -> list[float]:
    times = []
    for body in bodies:
        if before is not None:
            before()
        start = time.perf_counter()
        response = client.post("api/analyze", json=body)
        times.append((time.perf_counter() - start) * 1000)
        doc = response.json()
        if response.status_code != 200 or not doc["ok"]:
            raise SystemExit(f"analysis failed: {response.status_code} {doc.get('error')}")
    return times


def bench_api(url: str, names: list[str], requests: int) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name in names:
            text = analysis.bundled_text(name)
            shape = analysis.default_input(text)
            client.post("api/analyze", json={"text": text, "input": shape})  # warm
            fresh = [{"text": f"{text}\n# edit {k}\n", "input": shape} for k in range(requests)]
            redrawn = [{"text": f"{text}\n# redraw {k}\n", "input": shape} for k in range(requests)]
            cases = {
                "new text": timed_posts(client, fresh),
                "+ svg": timed_posts(client, redrawn, analysis.render_svg.cache_clear),
                "same text": timed_posts(client, [{"text": text, "input": shape}] * requests),
            }
            row = {"arch": name, "input": shape, "requests": requests}
            for case, times in cases.items():
                row[case] = {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 95)}
            rows.append(row)
            print(
                f"{name:<16} {shape:<14} "
                + "  ".join(
                    f"{case}: p50 {row[case]['p50_ms']:7.1f}  p95 {row[case]['p95_ms']:7.1f} ms"
                    for case in cases
                ),
                flush=True,
            )
    return rows


def bench_page(url: str, loads: int, chromium: str, driver_path: str) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="stcnnt-studio-bench-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,800"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    samples: dict[str, list[float]] = {"first-paint": [], "first-contentful-paint": [],
                                       "first-analysis": []}  # fmt: skip
    try:
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(url)
            deadline = time.monotonic() + 120
            while not driver.execute_script("return document.body.dataset.ready"):
                if time.monotonic() > deadline:
                    raise SystemExit("the page did not become ready")
                time.sleep(0.01)
            ready = driver.execute_script("return performance.now()")
            paints = driver.execute_script(
                "return performance.getEntriesByType('paint').map(e => [e.name, e.startTime])"
            )
            for entry, start in paints:
                samples[entry].append(start)
            samples["first-analysis"].append(ready)  # an upper bound: polled every 10 ms
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    result = {name: statistics.median(v) for name, v in samples.items() if v}
    print(f"page (median of {loads} loads): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in result.items()))  # fmt: skip
    return result


# --------------------------------------------------------------------------- data and training


def _chrome(chromium: str, driver_path: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _until(driver, script: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {script}")
        time.sleep(0.02)


def _serve_bench(data: Any, runs: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = server._bind("127.0.0.1", 0)
    app = uvicorn.Server(
        uvicorn.Config(
            create_app(data=str(data), runs=str(runs)),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    thread = threading.Thread(target=app.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not app.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", app, thread


def bench_workbench(chromium: str, driver_path: str, steps: int, requests: int) -> dict:
    """The data view and training: (1) a 128x128x16 case on screen after choosing it
    (the page's own measure, choice to image loaded; each case chosen once, so the server
    loads and renders it); (2) the curve's latency: metrics.csv written (its mtime) to
    the page's curve gaining points; (3) /api/analyze (unet, a new text each time) before,
    while and after a training of the plan's model runs in its own process."""
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from make_dataset import make_dataset

    work = Path(tempfile.mkdtemp(prefix="stcnnt-studio-bench-data-"))
    big = make_dataset(work / "big", kind="3d", cases=8, size=(128, 128), frames=(16, 16))
    shapes = make_dataset(work / "shapes", kind="2d+t")
    driver = _chrome(chromium, driver_path, str(work / "profile"))
    result: dict[str, Any] = {}
    try:
        url, app, thread = _serve_bench(big, work / "runs-big")
        driver.get(url)
        _until(driver, "return document.body.dataset.benchReady")
        shown = []
        for index in range(1, 8):
            Select(driver.find_element(By.CSS_SELECTOR, "[data-testid=cases]")).select_by_index(
                index
            )
            _until(
                driver,
                f"const v = document.querySelector('[data-testid=data]');"
                f"return v.textContent.includes('case_{index:03d}') && document.querySelector("
                "'[data-testid=case-image]').dataset.loaded === 'true'",
            )
            shown.append(
                float(
                    driver.find_element(By.CSS_SELECTOR, "[data-testid=data]").get_attribute(
                        "data-shown-ms"
                    )
                )
            )
        result["case_shown_ms"] = {"median": statistics.median(shown), "max": max(shown)}
        print(
            f"a 128x129x16 case on screen after choosing it: median {statistics.median(shown):.0f}"
            f" ms, max {max(shown):.0f} ms ({len(shown)} cases)",
            flush=True,
        )
        app.should_exit = True
        thread.join(10)

        url, app, thread = _serve_bench(shapes, work / "runs")
        text = analysis.bundled_text("unet")
        shape = analysis.default_input(text)
        with httpx.Client(base_url=url, timeout=120) as client:

            def analyses(tag: str) -> list[float]:
                return timed_posts(
                    client,
                    [{"text": f"{text}\n# {tag} {k}\n", "input": shape} for k in range(requests)],
                )

            client.post("api/analyze", json={"text": text, "input": shape})  # warm
            before = analyses("before")
            driver.get(url)
            _until(driver, "return document.body.dataset.benchReady")
            driver.find_element(By.CSS_SELECTOR, "[data-testid=train-steps]").send_keys(str(steps))
            driver.find_element(By.CSS_SELECTOR, "[data-testid=train-start]").click()
            _until(
                driver,
                "return document.querySelector('[data-testid=train-status]')"
                ".dataset.state === 'running'",
            )
            name = client.get("api/runs").json()["runs"][0]["name"]
            metrics = work / "runs" / name / "metrics.csv"
            during: list[float] = []
            latencies: list[float] = []
            seen_mtime = 0.0
            points = 0
            while (
                driver.execute_script(
                    "return document.querySelector('[data-testid=train-status]').dataset.state"
                )
                == "running"
            ):
                if len(during) < requests:
                    during += analyses("during")[:1]
                mtime = metrics.stat().st_mtime if metrics.exists() else 0.0
                now_points = int(
                    driver.find_element(By.CSS_SELECTOR, "[data-testid=train-curve]").get_attribute(
                        "data-points"
                    )
                    or 0
                )
                if mtime > seen_mtime and now_points > points:
                    latencies.append(time.time() - mtime)
                    seen_mtime, points = mtime, now_points
                time.sleep(0.02)
            after = analyses("after")
        app.should_exit = True
        thread.join(10)
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    result["curve_latency_s"] = (
        {"median": statistics.median(latencies), "max": max(latencies), "updates": len(latencies)}
        if latencies
        else None
    )
    for tag, times in (("before", before), ("during", during), ("after", after)):
        result[f"analyze_{tag}_training_ms"] = {
            "p50": statistics.median(times),
            "p95": percentile(times, 95),
            "n": len(times),
        }
    if latencies:
        print(
            "curve: metrics.csv written -> page shows it: median "
            f"{statistics.median(latencies):.2f} s, max {max(latencies):.2f} s "
            f"({len(latencies)} updates)"
        )
    for tag in ("before", "during", "after"):
        row = result[f"analyze_{tag}_training_ms"]
        print(
            f"/api/analyze unet {tag} training: p50 {row['p50']:.1f} ms, p95 {row['p95']:.1f} ms"
            f" (n={row['n']})"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="bundled architecture (repeatable)")
    parser.add_argument("--requests", type=int, default=20, help="per case (default: 20)")
    parser.add_argument("--loads", type=int, default=5, help="page loads (default: 5)")
    parser.add_argument("--no-page", action="store_true", help="skip the Chromium part")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--driver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--workbench",
        action="store_true",
        help="only the data view and training: case images, curve latency, analyses while training",
    )
    parser.add_argument("--steps", type=int, default=40, help="with --workbench: steps")
    args = parser.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          flush=True)  # fmt: skip
    if args.workbench:
        doc = bench_workbench(args.chromium, args.driver, args.steps, args.requests)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump({"machine": platform.platform(), "workbench": doc}, handle, indent=2)
        return 0
    names = args.arch or list_architectures()
    url, app, thread = serve()
    try:
        rows = bench_api(url, names, args.requests)
        page = None if args.no_page else bench_page(url, args.loads, args.chromium, args.driver)
    finally:
        app.should_exit = True
        thread.join(10)
    if args.json:
        doc = {"machine": platform.platform(), "python": sys.version.split()[0],
               "api": rows, "page": page}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
