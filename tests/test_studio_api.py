"""The studio's analysis, its HTTP API and the `stcnnt studio` command.

The API runs in-process through FastAPI's TestClient; concurrency and the command run
against a real uvicorn server (a thread, or the entry point in a subprocess).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the studio extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="TestClient needs httpx")
uvicorn = pytest.importorskip("uvicorn", reason="the studio extra (uvicorn) is not installed")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import stcnnt_dsl  # noqa: E402
from stcnnt_dsl import cli  # noqa: E402
from stcnnt_dsl.graph import build_graph, estimate  # noqa: E402
from stcnnt_dsl.studio import analysis, server  # noqa: E402
from stcnnt_dsl.studio.app import MAX_BODY_BYTES, create_app, host_name  # noqa: E402
from stcnnt_dsl.tools.flops import count_flops_analytic  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_DOT = shutil.which("dot") is not None
TINY = "name: tiny\nunet:\n  channels: [4, 8]\n  blocks: L1G1\n"
TINY_INPUT = "1,2,1,32,32"
CONTRACT_KEYS = {"ok", "error", "params", "flops", "activation_bytes", "output", "stages", "svg"}
STAGE_KEYS = {"name", "label", "block", "in_channels", "out_channels", "shape", "params", "flops",
              "activation_bytes"}  # fmt: skip
LOCAL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), base_url=LOCAL) as c:
        yield c


def post(client, text, input=TINY_INPUT):
    response = client.post("/api/analyze", json={"text": text, "input": input})
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- analysis


def test_analyze_answers_the_contract_with_the_library_numbers(client):
    doc = post(client, TINY)
    assert CONTRACT_KEYS <= set(doc) and doc["ok"] is True and doc["error"] is None
    shape = (1, 2, 1, 32, 32)
    plan = build_graph(TINY)
    est = estimate(plan, shape)
    assert doc["params"] == est.params
    assert doc["activation_bytes"] == est.activation_bytes
    assert doc["flops"] == count_flops_analytic(plan, shape).total
    assert (
        doc["output"] == list(stcnnt_dsl.infer_shapes(plan, shape)["output"]) == [1, 2, 4, 32, 32]
    )
    assert [s["name"] for s in doc["stages"]] == [s.name for s in plan.stages]
    for row in doc["stages"]:
        assert STAGE_KEYS <= set(row)
    bridge = next(s for s in doc["stages"] if s["name"] == "bridge")
    assert bridge["shape"] == [1, 2, 8, 8, 8] and bridge["block"] == "L1G1"
    # Stages plus what lies between them (resampling, gates) make the totals.
    for key in ("params", "flops", "activation_bytes"):
        assert sum(s[key] for s in doc["stages"]) + doc["other"][key] == doc[key]
        assert all(s[key] > 0 for s in doc["stages"])
    if HAS_DOT:
        assert doc["svg"].startswith("<svg")
        for s in plan.stages:  # every stage is a box the page can make clickable
            assert f"<title>{s.name}</title>" in doc["svg"]


def test_hrnet_per_stage_numbers_add_up():
    doc = analysis.analyze("hrnet(channels=[4, 8], blocks=L1G1)", "1,1,1,32,32")
    assert doc["ok"], doc["error"]
    names = [s["name"] for s in doc["stages"]]
    assert len(names) == len(set(names))  # HR-Net stages share spec paths, not names
    for key in ("params", "flops", "activation_bytes"):
        assert sum(s[key] for s in doc["stages"]) + doc["other"][key] == doc[key]


def test_a_whole_model_shows_its_heads(client):
    text = TINY + "heads:\n  seg: {kind: segmentation, classes: 3}\n  bad: {kind: classification}\n"
    err = post(client, text)["error"]
    assert (err["line"], err["path"]) == (7, "heads.bad.classes") and "needs classes" in err[
        "message"
    ]
    doc = post(client, text.replace("kind: classification}", "kind: classification, classes: 4}"))
    assert doc["ok"], doc["error"]
    assert doc["head_outputs"] == {"seg": [1, 2, 3, 32, 32], "bad": [1, 4]}
    rows = {s["name"]: s for s in doc["stages"]}
    model = stcnnt_dsl.build(
        text.replace("kind: classification}", "kind: classification, classes: 4}")
    )
    for name, head in model.heads.items():
        assert rows[f"heads.{name}"]["params"] == sum(p.numel() for p in head.parameters())
    assert doc["params"] == sum(p.numel() for p in model.parameters())
    for key in ("params", "flops", "activation_bytes"):
        assert sum(s[key] for s in doc["stages"]) + doc["other"][key] == doc[key]
    if HAS_DOT:
        assert "<title>heads.seg</title>" in doc["svg"]


def test_yaml_typo_is_located(client):
    doc = post(client, "name: x\nunet:\n  channels: [4, 8]\n  blocsk: L1G1\n")
    assert doc["ok"] is False and CONTRACT_KEYS <= set(doc)
    err = doc["error"]
    assert set(err) >= {"message", "line", "column", "path"}
    assert (err["line"], err["column"], err["path"]) == (4, 3, "unet.blocsk")  # at the key
    assert 'did you mean "blocks"' in err["message"]
    assert doc["params"] is None and doc["stages"] == [] and doc["svg"] is None


def test_yaml_syntax_error_is_located(client):
    err = post(client, "unet:\n  channels: [4, 8\n  blocks: L1\n")["error"]
    assert err["line"] == 3 and err["column"] >= 1 and "invalid YAML" in err["message"]


def test_block_string_syntax_error_points_at_the_bad_cell(client):
    text = "name: x\nunet:\n  channels: [4, 8]\n  blocks: L1X1\n"
    err = post(client, text)["error"]
    assert (err["line"], err["column"], err["path"]) == (4, 13, "unet.blocks")
    assert text.splitlines()[err["line"] - 1][err["column"] - 1] == "X"
    assert "unknown cell letter 'X'" in err["message"]


@pytest.mark.parametrize("text", ["unet(channels=[4, 8], blocks=L1Q1)",
                                  "\n\n   unet(channels=[4, 8], blocks=L1Q1)",
                                  "unet(\n  channels=[4, 8],\n  blocks=L1Q1)"])  # fmt: skip
def test_expression_syntax_error_is_located(client, text):
    err = post(client, text)["error"]
    assert text.splitlines()[err["line"] - 1][err["column"] - 1] == "Q"


def test_shape_error_keeps_the_spec_parts(client):
    doc = post(client, TINY, "1,1,1,36,36")
    assert doc["ok"] is False
    err = doc["error"]
    # the input's mistake (issue 23): labelled as the input's, not the text's
    assert err["path"] == "input" and err["line"] is None and "nearest" in err["message"]
    assert err["type"] == "ShapeError" and "encoder.0 cell 0" in err["message"]
    assert not err["message"].startswith("unet.")
    assert err["nearest"] == {"H": [32, 64], "W": [32, 64]}
    assert doc["params"] == estimate(TINY).params  # the model is fine, the input is not
    assert [s["shape"] for s in doc["stages"]] == [None] * len(doc["stages"])
    assert doc["flops"] is None and (doc["svg"] is not None or not HAS_DOT)


def test_bad_input_shape_is_reported_on_the_input(client):
    for bad in ("1,1,1,32", "a,b,c,d,e", "1,1,1,0,32"):
        err = post(client, TINY, bad)["error"]
        assert err["path"] == "input" and err["line"] is None, bad
    err = post(client, TINY, "1,1,3,32,32")["error"]  # channels, memory: the input's too
    assert err["path"] == "input" and "C=3" in err["message"]
    err = post(client, TINY, "100000,64,1,512,512")["error"]
    assert err["path"] == "input" and "max_memory" in err["message"]


def test_blank_input_uses_the_default_input(client):
    doc = post(client, "unet-2d-small", "")
    # the smallest input the architecture accepts
    assert doc["ok"] and doc["input"] == "1,1,1,16,16" == analysis.default_input("unet-2d-small")


def test_resource_guard_refuses_absurd_sizes_quickly(client):
    start = time.perf_counter()
    doc = post(client, "llm(channels=1000000000, blocks=L1)", "")
    assert doc["ok"] is False and doc["error"]["type"] == "ResourceError"
    assert "max_params" in doc["error"]["message"]
    doc = post(client, TINY, "100000,64,1,512,512")
    assert doc["ok"] is False and "max_memory" in doc["error"]["message"]
    assert time.perf_counter() - start < 10


def test_text_is_never_read_as_a_path(client, tmp_path, monkeypatch):
    spec = tmp_path / "arch.yaml"
    spec.write_text(TINY)
    plain = tmp_path / "arch"
    plain.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    for text in (str(spec), str(plain), "arch.yaml", "arch", f"  {spec}  "):
        assert stcnnt_dsl.load_spec(text.strip()).name == "tiny"  # load_spec *would* read it
        doc = post(client, text)
        assert doc["ok"] is False and doc["params"] is None, text
        explained = client.post("/api/explain", json={"text": text, "stage": "bridge"}).json()
        assert explained["ok"] is False, text
        assert client.post("/api/canonical", json={"text": text}).json()["ok"] is False
    with pytest.raises(stcnnt_dsl.STCNNTError):
        analysis.canonical(str(spec))


def test_empty_text_says_what_to_write(client):
    err = post(client, "  \n")["error"]
    assert "empty" in err["message"] and err["line"] is None


def test_a_text_naming_a_file_is_told_texts_are_never_paths(client):
    err = post(client, "/etc/passwd")["error"]
    assert "never read as a file path" in err["message"] and "is not a file" not in err["message"]
    # load_spec (which does read files) keeps its own words
    with pytest.raises(stcnnt_dsl.SpecError, match="is not a file, a bundled"):
        stcnnt_dsl.load_spec("no-such-arch")


@pytest.mark.parametrize("text", ["[" * 20_000, "[1, " * 5_000, "a" * 20_000])
def test_a_long_unreadable_text_is_quoted_as_an_excerpt(client, text):
    err = post(client, text)["error"]
    assert len(err["message"]) < 600 and f"({len(text.strip()):,} characters)" in err["message"]
    with pytest.raises(stcnnt_dsl.SpecError) as info:  # the library's message, not the page's
        stcnnt_dsl.load_spec(text)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("ending", ["  defaults: {", "x: [", "x: [1"])
def test_an_error_past_the_last_line_is_placed_at_the_end(client, ending):
    text = TINY + ending  # no newline after it: YAML reports the line after the last
    err = post(client, text)["error"]
    lines = text.split("\n")
    assert (err["line"], err["column"]) == (len(lines), len(lines[-1]) + 1), err


def test_a_parameter_error_names_the_path_it_carries(client):
    err = post(client, "name: x\nunet:\n  channels: [100000]\n  blocks: L1G1\n")["error"]
    assert err["type"] == "ResourceError" and err["path"] == "unet.encoder[0]"
    # decoder.0 is the largest stage; its cells are written at the path the error carries
    assert "decoder.0 (spec path unet.encoder[0]) alone has" in err["message"]


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [("/api/analyze", "{"), ("/api/analyze", "{}"), ("/api/analyze", '{"text": 5}'),
     ("/api/analyze", "[]"), ("/api/compare", '{"a": {"text": "unet"}}'),
     ("/api/explain", '{"text": "unet"}'), ("/api/canonical", "null")],
)  # fmt: skip
def test_a_malformed_body_gets_the_documented_error(client, endpoint, body):
    response = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    doc = response.json()
    assert set(doc) == {"ok", "error"} and doc["ok"] is False  # not FastAPI's {"detail"}
    assert set(doc["error"]) == {"message", "line", "column", "path", "type"}
    assert doc["error"]["type"] == "BadRequest" and endpoint in doc["error"]["message"]


@pytest.mark.parametrize(("method", "url", "status"), [("get", "/api/architectures/nope", 404),
                                                       ("get", "/api/nothing", 404),
                                                       ("get", "/api/analyze", 405)])  # fmt: skip
def test_http_errors_get_the_documented_shape(client, method, url, status):
    response = getattr(client, method)(url)
    assert response.status_code == status
    doc = response.json()
    assert doc["ok"] is False and set(doc["error"]) == {"message", "line", "column", "path", "type"}


def test_cells_endpoint_lists_the_options_each_cell_reads(client):
    from stcnnt_dsl.language.options import options_for_kind

    cells = client.get("/api/cells").json()
    assert set(cells) == {"L0", "L1", "G0", "G1", "T0", "T1", "V0", "V1", "C2", "C3"}
    assert cells["T1"] == list(options_for_kind("temporal", mixer=True))
    assert "qk_stride" in cells["T1"] and "qk_stride" not in cells["L1"]
    assert "mixer_ratio" in cells["L1"] and "mixer_ratio" not in cells["L0"]


def test_topologies_endpoint_lists_registered_ones_too(client):
    """Completion starts a spec with any topology, a plugin's included (none by hand)."""
    from stcnnt_dsl.registry import TOPOLOGIES, Topology, register_topology

    assert {"unet", "hrnet", "llm", "mixed_unetr"} <= set(client.get("/api/topologies").json()[
        "topologies"])  # fmt: skip
    unet = TOPOLOGIES["unet"]
    register_topology(Topology("unet_copy", unet.spec, unet.build, "a copy, for this test"))
    assert "unet_copy" in client.get("/api/topologies").json()["topologies"]


# --------------------------------------------------------------------------- endpoints


def test_explain_a_stage(client):
    doc = client.post("/api/explain", json={"text": TINY, "stage": "bridge"}).json()
    assert doc["ok"] and doc["stage"]["key"] == "bridge"
    cells = doc["stage"]["cells"]
    assert [c["token"] for c in cells] == ["L1", "G1"]
    assert cells[0]["options"]["window"] == {"value": 8, "source": "library"}
    assert doc["sources"]["library"]
    missing = client.post("/api/explain", json={"text": TINY, "stage": "bridg"}).json()
    assert missing["ok"] is False and 'did you mean "bridge"' in missing["error"]["message"]


def test_canonical_yaml_round_trips(client):
    text = "unet(channels=[4, 8], blocks=L1G1, name=tiny)"
    doc = client.post("/api/canonical", json={"text": text}).json()
    assert doc["ok"] and doc["filename"] == "tiny.yaml"
    assert stcnnt_dsl.load_spec(doc["yaml"]) == stcnnt_dsl.load_spec(text)
    assert doc["yaml"] == stcnnt_dsl.dump_spec(text)
    bad = client.post("/api/canonical", json={"text": "unet:\n  chanels: [4]\n"}).json()
    assert bad["ok"] is False and bad["error"]["line"] == 2


def compare(client, a_text, b_text):
    body = {"a": {"text": a_text, "input": TINY_INPUT}, "b": {"text": b_text, "input": TINY_INPUT}}
    response = client.post("/api/compare", json=body)
    assert response.status_code == 200
    return response.json()


def test_compare_gives_deltas_of_totals_and_stages(client):
    b_text = TINY.replace("[4, 8]", "[8, 8]")
    doc = compare(client, TINY, b_text)
    a, b = doc["a"], doc["b"]
    assert doc["ok"] and a["ok"] and b["ok"]
    for key in ("params", "flops", "activation_bytes"):
        d = doc["deltas"][key]
        assert (d["a"], d["b"], d["delta"]) == (a[key], b[key], b[key] - a[key])
        assert d["ratio"] == pytest.approx((b[key] - a[key]) / a[key])
    rows = {r["name"]: r for r in doc["stages"]}
    assert rows["encoder.0"]["delta"]["params"]["delta"] > 0
    # A stage in only one spec has no delta.
    three = compare(client, TINY, TINY.replace("[4, 8]", "[4, 8, 16]"))
    only_b = [r for r in three["stages"] if r["a"] is None]
    assert [r["name"] for r in only_b] == ["encoder.2", "decoder.2"]
    assert all(r["delta"] is None for r in only_b)


def test_architectures_and_bundled_text(client):
    doc = client.get("/api/architectures").json()
    assert [a["name"] for a in doc["architectures"]] == stcnnt_dsl.list_architectures()
    assert doc["initial"] is None
    unet = client.get("/api/architectures/unet").json()
    bundled = Path(stcnnt_dsl.__file__).parent.parent / "architectures" / "unet.yaml"
    if bundled.exists():  # a source checkout: the file itself, comments included
        assert unet["text"] == bundled.read_text()
    assert stcnnt_dsl.load_spec(unet["text"]) == stcnnt_dsl.load_spec("unet")
    assert unet["input"] == "1,1,1,32,32"
    for name in ("nope", "..%2Fspec", "unet.yaml"):
        assert client.get(f"/api/architectures/{name}").status_code == 404


def test_initial_text_from_the_command_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(TINY)
    initial = server._read_initial(str(path))
    assert initial == {"name": "mine.yaml", "text": TINY}
    assert server._read_initial("unet")["text"] == analysis.bundled_text("unet")
    assert server._read_initial("llm(channels=8, blocks=L1)")["name"] == "command line"
    with pytest.raises(stcnnt_dsl.STCNNTError, match="file not found"):
        server._read_initial(str(tmp_path / "missing.yaml"))
    with TestClient(create_app(initial=initial), base_url=LOCAL) as c:
        doc = c.get("/api/architectures").json()["initial"]
    assert doc == {"name": "mine.yaml", "text": TINY, "input": "1,1,1,32,32"}


def test_schema_endpoint_is_the_spec_schema(client):
    assert client.get("/api/schema").json() == stcnnt_dsl.language.spec.spec_json_schema()


def test_page_and_static_files_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200
    for testid in ("editor", "input-shape", "totals", "stages", "diagram", "error"):
        assert f'data-testid="{testid}"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    static = Path(analysis.__file__).parent / "static"
    for path in static.iterdir():
        text = client.get(f"/static/{path.name}").text
        assert text == path.read_text()
        assert "//cdn" not in text and "googleapis" not in text
        assert "https://" not in text and "http://" not in text, path.name


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("host", ["localhost", "localhost:8765", "127.0.0.1", "127.0.0.1:1",
                                  "[::1]", "[::1]:8765", "LOCALHOST:80"])  # fmt: skip
def test_loopback_hosts_are_answered(client, host):
    assert client.get("/api/schema", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example",
                                  "localhost.evil.example:80", "[::2]:80", "10.0.0.1", "",
                                  "localhost:80:80", "[::1]x"])  # fmt: skip
def test_other_hosts_are_refused(client, host):
    response = client.post("/api/analyze", json={"text": TINY, "input": TINY_INPUT},
                           headers={"host": host})  # fmt: skip
    assert response.status_code == 403
    assert "answers only to" in response.json()["error"]["message"]


def test_host_parsing():
    assert host_name("[::1]:8765") == "::1" and host_name("LocalHost:1") == "localhost"
    assert host_name("a:b") is None and host_name("[::1") is None


def test_cross_origin_requests_are_refused(client):
    body = {"text": TINY, "input": TINY_INPUT}
    ok = client.post("/api/analyze", json=body, headers={"origin": "http://localhost:8765"})
    assert ok.status_code == 200
    bad = client.post("/api/analyze", json=body, headers={"origin": "https://evil.example"})
    assert bad.status_code == 403


def test_bodies_over_one_mebibyte_are_refused(client):
    big = {"text": "#" * MAX_BODY_BYTES, "input": TINY_INPUT}
    assert client.post("/api/analyze", json=big).status_code == 413

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        yield b'{"text": "'
        for _ in range(20):
            yield b"#" * 65536
        yield b'", "input": ""}'

    response = client.post("/api/analyze", content=chunks(),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    lying = client.post("/api/analyze", content=b"{}", headers={"content-length": "99999999"})
    assert lying.status_code == 413


def test_an_analysis_over_the_time_limit_is_answered(monkeypatch):
    release = threading.Event()

    def slow(text, input):
        release.wait(10)
        return analysis.analyze(text, input)

    monkeypatch.setattr(analysis, "analyze", slow)
    with TestClient(create_app(timeout=0.3), base_url=LOCAL) as c:
        start = time.perf_counter()
        doc = c.post("/api/analyze", json={"text": TINY, "input": TINY_INPUT}).json()
        elapsed = time.perf_counter() - start
    release.set()
    assert doc["ok"] is False and doc["error"]["type"] == "TimeLimit" and CONTRACT_KEYS <= set(doc)
    assert "longer than 0.3 s" in doc["error"]["message"] and elapsed < 5


def test_a_bug_is_answered_as_an_internal_error(monkeypatch, capsys):
    def broken(text, input):
        raise RuntimeError("boom")

    monkeypatch.setattr(analysis, "analyze", broken)
    with TestClient(create_app(), base_url=LOCAL) as c:
        doc = c.post("/api/analyze", json={"text": TINY, "input": TINY_INPUT}).json()
    assert (
        doc["ok"] is False and doc["error"]["type"] == "InternalError" and CONTRACT_KEYS <= set(doc)
    )
    assert "RuntimeError: boom" in doc["error"]["message"]
    assert "Traceback" in capsys.readouterr().err


@pytest.fixture(scope="module")
def live_url():
    """A real uvicorn server in a thread."""
    sock = server._bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not app_server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    app_server.should_exit = True
    thread.join(10)
    sock.close()


def test_twenty_concurrent_requests_are_all_answered(live_url):
    texts = [f"llm(channels={4 + k}, blocks=L1G1, name=c{k})" for k in range(20)]

    def one(text):
        with httpx.Client(base_url=live_url, timeout=60) as c:
            return c.post("/api/analyze", json={"text": text, "input": "1,1,1,32,32"})

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(one, texts))
    assert [r.status_code for r in responses] == [200] * 20
    docs = [r.json() for r in responses]
    assert all(d["ok"] for d in docs), [d["error"] for d in docs if not d["ok"]]
    assert [d["name"] for d in docs] == [f"c{k}" for k in range(20)]  # each its own answer


def test_svg_rendering_is_cached_by_dot_text():
    if not HAS_DOT:
        pytest.skip("Graphviz's dot program is not installed")
    dot = stcnnt_dsl.to_dot("unet(channels=[4, 8], blocks=L1G1, name=cached)")
    first = analysis.render_svg(dot)
    hits = analysis.render_svg.cache_info().hits
    assert analysis.render_svg(dot) is first
    assert analysis.render_svg.cache_info().hits == hits + 1


# --------------------------------------------------------------------------- the command


def _args(**kw):
    return argparse.Namespace(**{"arch": None, "host": "127.0.0.1", "port": 0,
                                 "no_browser": True, **kw})  # fmt: skip


def test_missing_fastapi_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(stcnnt_dsl.STCNNTError, match=r'pip install "stcnnt-dsl\[studio\]"'):
        server.run_studio(_args())
    assert cli.main(["studio", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "stcnnt-dsl[studio]"' in err and "Traceback" not in err


def test_taken_port_and_bad_port_are_clear_messages(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        assert cli.main(["studio", "--no-browser", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"port {port} on 127.0.0.1 is already in use" in err and "--port 0" in err
    finally:
        taken.close()
    assert cli.main(["studio", "--no-browser", "--port", "70000"]) == 2
    assert "--port must be 0..65535" in capsys.readouterr().err
    assert cli.main(["studio", "--no-browser", "--host", "no-such-host.invalid"]) == 2
    assert "cannot listen on --host" in capsys.readouterr().err


def test_a_non_loopback_host_warns(monkeypatch, capsys):
    ran = {}

    def fake_run(self, sockets):
        ran["address"] = sockets[0].getsockname()[:2]

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert server.run_studio(_args(host="0.0.0.0")) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and ran["address"][0] == "0.0.0.0"
    assert server.run_studio(_args()) == 0
    assert "warning" not in capsys.readouterr().err


def test_browser_opens_only_with_a_desktop(monkeypatch):
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert server._can_open_browser() is False  # would start a text browser in the terminal
    monkeypatch.setenv("DISPLAY", ":0")
    assert server._can_open_browser() is True


def test_the_command_serves_quickly_and_stops_on_ctrl_c(tmp_path):
    arch = tmp_path / "mine.yaml"
    arch.write_text(TINY)
    entry = shutil.which("stcnnt", path=str(Path(sys.executable).parent))
    command = [entry] if entry else [sys.executable, "-m", "stcnnt_dsl.cli"]
    env = {**os.environ, "BROWSER": "false"}  # webbrowser would run `false`; must not be used
    start = time.perf_counter()
    proc = subprocess.Popen([*command, "studio", str(arch), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        line = proc.stdout.readline()
        ready = time.perf_counter() - start
        assert "stcnnt studio: serving http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("serving ")[1].split(" ")[0].rstrip(";")
        assert ready < 30  # under 2 s on a quiet machine; this one is shared
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and 'data-testid="editor"' in page.text
        initial = httpx.get(url + "api/architectures", timeout=60).json()["initial"]
        assert initial["name"] == "mine.yaml" and initial["text"] == TINY
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err and "stopped" in err


def test_without_graphviz_the_analysis_still_answers(monkeypatch):
    monkeypatch.setattr(analysis.shutil, "which", lambda name: None)
    analysis.render_svg.cache_clear()
    doc = analysis.analyze("llm(channels=4, blocks=L1, name=no_dot)", "1,1,1,32,32")
    analysis.render_svg.cache_clear()
    assert doc["ok"] and doc["svg"] is None and doc["dot"].startswith("digraph")
    assert "apt-get install graphviz" in doc["warnings"][0]
