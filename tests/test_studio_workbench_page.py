"""The studio's data, training, prediction and export panels (issue 27) in real headless
Chromium, on the generated synthetic data set (examples/make_dataset.py), with the real
trainer in its own process.

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver) and the
data extra; the tests skip, saying so, where they are not installed.
"""

from __future__ import annotations

import base64
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel", reason="the data extra (nibabel) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the studio extra (uvicorn) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

import test_studio_page as page_tests  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from test_studio_page import part, wait  # noqa: E402

from stcnnt_dsl.studio import server  # noqa: E402
from stcnnt_dsl.studio.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_dataset import make_dataset  # noqa: E402

browser = page_tests.browser  # the same headless Chromium, one per module
WAIT_S = 120  # generous: the test machine is shared


class Live:
    """A studio on a free port, in this process, with `--data` and `--runs`."""

    def __init__(self, **kwargs) -> None:
        sock = server._bind("127.0.0.1", 0)
        self.app = create_app(**kwargs)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        self.runs_dir = Path(kwargs["runs"]) if kwargs.get("runs") else None

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Six 2D+T clips (T 5-9, about 40x40) with labels: small enough to train on."""
    return make_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Shapes", kind="2d+t")


@pytest.fixture(scope="module")
def studio(shapes, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    live = Live(data=str(shapes), runs=str(runs))
    live.runs = runs
    yield live
    for name in live.app.state.workbench.runs.running():  # leave no training behind
        live.app.state.workbench.runs.stop(name)
    live.close()


def open_page(driver, url: str):
    driver.get(url)
    wait(driver, lambda: driver.execute_script("return document.body.dataset.benchReady"),
         "the data panels")  # fmt: skip
    return driver


def frame_loaded(driver) -> bool:
    frame = driver.find_element(By.CSS_SELECTOR, "[data-testid=case-image]")
    return frame.get_attribute("data-loaded") == "true" and driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", frame
    )


def pixels(driver, testid: str) -> np.ndarray:
    """The image an <img> shows, read back from the page (a canvas copy)."""
    data = driver.execute_script(
        """const img = document.querySelector(`[data-testid=${arguments[0]}]`);
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        return c.toDataURL('image/png');""",
        testid,
    )
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(base64.b64decode(data.split(",", 1)[1]))))


# --------------------------------------------------------------------------- the data view


def test_the_data_view_shows_the_fingerprint_a_case_and_its_label(browser, studio, shapes):
    page = open_page(browser, studio.url)
    view = part(page, "data")
    assert "Cases" in view.text and "6" in view.text  # the fingerprint
    names = [o.text for o in Select(part(page, "cases")).options]
    assert names == [f"case_{i:03d}" for i in range(6)]
    wait(page, lambda: frame_loaded(page), "the first case's image")
    from stcnnt_dsl.data import open_dataset

    image, label = open_dataset(shapes).load(2)
    Select(part(page, "cases")).select_by_index(2)
    # (the select lists every case's name: wait for case 2's image itself)
    wait(page, lambda: "/cases/2/" in part(page, "case-image").get_attribute("src")
         and frame_loaded(page), "case 2")  # fmt: skip
    shown = pixels(page, "case-image")
    assert shown.shape[:2] == image.array.shape[2:]
    # The brightest pixels on screen are the disc and square of the label (labelled 1, 2).
    grey = shown[..., 0] if shown.ndim == 3 else shown
    assert (label[0, 0][grey > 200] > 0).mean() > 0.9
    # The T slider moves to another frame (the disc moves), and the overlay follows.
    src0 = part(page, "case-image").get_attribute("src")
    page.execute_script(
        "const s = arguments[0]; s.value = 3; s.dispatchEvent(new Event('input'));",
        part(page, "t-slider"),
    )
    wait(page, lambda: part(page, "case-image").get_attribute("src") != src0, "frame 3")
    assert "/image/3.png" in part(page, "case-image").get_attribute("src")
    assert "/label/3.png" in part(page, "case-label").get_attribute("src")
    page.execute_script(
        "const s = arguments[0]; s.value = 80; s.dispatchEvent(new Event('input'));",
        part(page, "opacity"),
    )
    assert part(page, "case-label").value_of_css_property("opacity") == "0.8"
    # A narrower window on the same level: more pixels saturate.
    wait(page, lambda: frame_loaded(page), "frame 3 loaded")
    before = (pixels(page, "case-image") == 255).mean()
    width = part(page, "window")
    narrower = float(width.get_attribute("value")) / 4
    page.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'));",
        width,
        str(narrower),
    )
    wait(page, lambda: "low=" in part(page, "case-image").get_attribute("src"), "the window")
    wait(page, lambda: frame_loaded(page), "the windowed frame")
    assert (pixels(page, "case-image") == 255).mean() > before


def test_a_128x128x16_case_shows_within_300_ms(browser, tmp_path):
    data = make_dataset(tmp_path / "big", kind="3d", cases=3, size=(128, 128), frames=(16, 16))
    live = Live(data=str(data), runs=str(tmp_path / "runs"))
    try:
        page = open_page(browser, live.url)
        wait(page, lambda: frame_loaded(page), "case 0")
        times = []
        for index in (1, 2):
            Select(part(page, "cases")).select_by_index(index)
            wait(page, lambda i=index: f"case_{i:03d}" in part(page, "data").text
                 and frame_loaded(page), f"case {index}")  # fmt: skip
            times.append(float(part(page, "data").get_attribute("data-shown-ms")))
        assert part(page, "t-slider").get_attribute("max") == "15"
        assert max(times) < 300, times
    finally:
        live.close()


def test_a_folder_that_is_not_a_data_set_says_so_on_the_page(browser, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("no images here")
    live = Live(data=str(tmp_path / "data"), runs=str(tmp_path / "runs"))
    try:
        page = open_page(browser, live.url)
        error = part(page, "data").find_element(By.CSS_SELECTOR, "[data-role=error]")
        assert error.is_displayed() and "Traceback" not in error.text
        assert str(tmp_path / "data") in error.text or "data set" in error.text
        part(page, "train-start").click()
        train_error = part(page, "train-error")
        wait(page, lambda: train_error.is_displayed(), "the training's refusal")
        assert "Traceback" not in train_error.text
    finally:
        live.close()


# --------------------------------------------------------------------------- training


def run_state(page) -> str | None:
    return part(page, "train-status").get_attribute("data-state")


def curve_points(page) -> int:
    return int(part(page, "train-curve").get_attribute("data-points") or 0)


def test_a_second_training_is_refused_while_one_runs_and_stop_keeps_it(browser, shapes, tmp_path):
    live = Live(data=str(shapes), runs=str(tmp_path / "runs"))
    try:
        page = open_page(browser, live.url)
        part(page, "train-steps").send_keys("1000")
        part(page, "train-start").click()
        wait(page, lambda: run_state(page) == "running", "the run to start", WAIT_S)
        part(page, "train-start").click()  # a second one while the first runs
        error = part(page, "train-error")
        wait(page, lambda: error.is_displayed(), "the refusal")
        assert "a training is running already" in error.text and "alongside" in error.text
        runs = live.app.state.workbench.runs
        assert len(runs.names()) == 1
        # The page closing does not stop it: a new page finds it running.
        page.get("about:blank")
        assert runs.status(runs.names()[0])["state"] == "running"
        page = open_page(browser, live.url)
        wait(page, lambda: run_state(page) == "running", "the run, seen again")
        part(page, "train-stop").click()
        wait(page, lambda: run_state(page) == "stopped", "the run to stop", WAIT_S)
        assert "stopped from the page" in runs.status(runs.names()[0])["message"]
    finally:
        for name in live.app.state.workbench.runs.running():
            live.app.state.workbench.runs.stop(name)
        live.close()


def test_a_training_that_fails_shows_its_message(browser, tmp_path):
    """A case's file damaged after the studio opened the data set: the training (its own
    process) fails reading it, and the page shows the data layer's message."""
    data = make_dataset(tmp_path / "data", kind="2d+t", cases=4)
    live = Live(data=str(data), runs=str(tmp_path / "runs"))
    try:
        page = open_page(browser, live.url)
        damaged = data / "imagesTr" / "case_002_0000.nii.gz"
        damaged.write_bytes(damaged.read_bytes()[:200])
        part(page, "train-start").click()
        wait(page, lambda: run_state(page) == "failed", "the run to fail", WAIT_S)
        error = part(page, "train-error")
        assert error.is_displayed() and "failed:" in error.text
        assert "case_002_0000.nii.gz" in error.text and "no checkpoint was written" in error.text
        assert "Traceback" not in error.text
    finally:
        live.close()


@pytest.mark.slow
def test_the_whole_path_look_train_watch_stop_predict_export(browser, shapes, tmp_path):
    """Open, look at a case, train the default model, the curve gains points, stop,
    predictions with a metric per case (worst first), export an ONNX file that ONNX
    Runtime runs with the trained model's output."""
    import onnxruntime as ort
    import torch

    import stcnnt_dsl

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})  # fmt: skip
    live = Live(data=str(shapes), runs=str(tmp_path / "runs"))
    try:
        page = open_page(browser, live.url)
        Select(part(page, "cases")).select_by_index(1)
        wait(page, lambda: "case_001" in part(page, "data").text and frame_loaded(page), "case 1")
        part(page, "train-steps").send_keys("12")
        part(page, "train-start").click()
        wait(page, lambda: curve_points(page) > 0, "the first points", WAIT_S * 3)
        first = curve_points(page)
        wait(page, lambda: curve_points(page) > first, "more points", WAIT_S * 3)
        assert "steps/s" in part(page, "train-status").text
        part(page, "train-stop").click()
        wait(page, lambda: run_state(page) == "stopped", "the run to stop", WAIT_S)
        part(page, "predictions-show").click()
        predictions = part(page, "predictions")
        wait(page, lambda: predictions.get_attribute("data-state") == "ready", "predictions",
             WAIT_S * 2)  # fmt: skip
        shown = predictions.find_elements(By.CSS_SELECTOR, "[data-testid=case-metric]")
        metrics = [float(m.text.split()[-1]) for m in shown]
        assert metrics and metrics == sorted(metrics) and all(0 <= m <= 1 for m in metrics)
        images = predictions.find_elements(By.CSS_SELECTOR, "img")
        wait(page, lambda: all(page.execute_script("return arguments[0].complete && "
             "arguments[0].naturalWidth > 0", i) for i in images), "prediction images")  # fmt: skip
        part(page, "export").click()
        # tracing for ONNX takes minutes on a loaded 2-core machine (over 10 on one at load 28)
        wait(page, lambda: list(downloads.glob("*.onnx")), "the ONNX download", 1500)
        onnx_file = next(downloads.glob("*.onnx"))
        name = live.app.state.workbench.runs.names()[0]
        checkpoint = live.runs_dir / name / "best.safetensors"
        model = stcnnt_dsl.load_model(checkpoint).eval()
        x = torch.randn(1, 8, 1, 32, 32)
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in model(x).items()}
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.allclose(got[0], next(iter(expected.values())), atol=1e-4)
    finally:
        for name in live.app.state.workbench.runs.running():
            live.app.state.workbench.runs.stop(name)
        live.close()
