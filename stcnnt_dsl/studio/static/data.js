// stcnnt studio: the data set, training, predictions and export (the page's lower panels).
//
// Talks to /api/data and /api/runs (stcnnt_dsl/studio/workbench.py). Images are PNGs the
// server renders; the label is a second, transparent image over the first, so opacity is
// CSS. While a run trains the page asks for its status and metrics every second and
// redraws the curve (an <svg>); a run keeps training when the page closes.
"use strict";

(() => {
  const POLL_MS = 1000;
  const COLOURS = ["#0a5bc4", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#0598bc"];
  const $ = (selector, root = document) => root.querySelector(selector);
  const role = (root, name) => root.querySelector(`[data-role=${name}]`);
  const state = { data: null, caseMeta: null, t: 0, runs: [], shown: new Set(), current: null, poll: null, metrics: {} };

  function el(tag, attrs = {}, ...children) {
    // SVG parts take the namespace of the page's own <svg> (no URL written here)
    const node = attrs.svg ? document.createElementNS(document.querySelector("svg").namespaceURI, tag) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "svg" || value == null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) if (child != null) node.append(child instanceof Node ? child : String(child));
    return node;
  }
  const svg = (tag, attrs = {}, ...children) => el(tag, { ...attrs, svg: true }, ...children);

  async function call(path, body) {
    const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
    const response = await fetch(path, init);
    let document_;
    try { document_ = await response.json(); } catch { document_ = { ok: false, error: { message: `${response.status} ${response.statusText}` } }; }
    if (!response.ok) throw new Error((document_.error && document_.error.message) || document_.detail || response.statusText);
    return document_;
  }
  function showError(box, message) {
    box.hidden = !message;
    box.textContent = message || "";
  }
  const fmtSeconds = (s) => (s == null ? "–" : s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`);
  const fmtNum = (v) => (v == null ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
  const fmtRange = (r) => (r ? `${r.median.join("×")} (${r.min.join("×")} – ${r.max.join("×")})` : "–");

  // ------------------------------------------------------------------ the data view

  function renderFingerprint(doc) {
    const dl = role($("[data-testid=data]"), "fingerprint");
    dl.replaceChildren();
    const fp = doc.fingerprint || {};
    const classes = Object.entries(doc.classes || {}).map(([v, n]) => `${v}: ${n}`).join(", ");
    const rows = [
      ["Cases", fp.cases], ["Task", doc.task], ["Layout", fp.layout], ["Channels", (doc.channels || []).join(", ")],
      ["Classes", classes || "–"], ["Shape T×H×W", fmtRange(fp.shape)],
      ["Spacing t×h×w", fp.spacing ? fp.spacing.median.map((v) => v.toPrecision(3)).join("×") : "–"],
    ];
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v == null ? "–" : String(v) }));
  }

  function imageUrl(meta, t) {
    const view = $("[data-testid=data]");
    const c = Number(role(view, "channel").value || 0);
    const w = Number(role(view, "window").value), l = Number(role(view, "level").value);
    const q = Number.isFinite(w) && Number.isFinite(l) && w > 0 ? `&low=${(l - w / 2).toPrecision(6)}&high=${(l + w / 2).toPrecision(6)}` : "";
    return `/api/data/cases/${meta.index}/image/${t}.png?c=${c}${q}`;
  }

  function showFrame() {
    const view = $("[data-testid=data]");
    const meta = state.caseMeta;
    if (!meta) return;
    const t = state.t;
    const frame = role(view, "frame");
    frame.dataset.loaded = "";
    frame.src = imageUrl(meta, t);
    role(view, "t-out").textContent = `${t + 1}/${meta.shape[0]}`;
    const overlay = role(view, "overlay");
    overlay.hidden = meta.label !== "map";
    if (meta.label === "map") overlay.src = `/api/data/cases/${meta.index}/label/${t}.png`;
  }

  function preload(meta) {
    for (let t = 0; t < meta.shape[0]; t++) {
      new Image().src = imageUrl(meta, t);
      if (meta.label === "map") new Image().src = `/api/data/cases/${meta.index}/label/${t}.png`;
    }
  }

  function setWindow(meta, channel) {
    const view = $("[data-testid=data]");
    const w = meta.windows[channel];
    role(view, "window").value = (w.high - w.low).toPrecision(4);
    role(view, "level").value = ((w.high + w.low) / 2).toPrecision(4);
  }

  async function chooseCase(index) {
    const view = $("[data-testid=data]");
    view.dataset.chosenAt = String(performance.now());
    try {
      const meta = await call(`/api/data/cases/${index}`);
      state.caseMeta = meta;
      const [T, C, H, W] = meta.shape;
      state.t = Math.min(state.t, T - 1);
      const slider = role(view, "t");
      slider.max = String(T - 1);
      slider.value = String(state.t);
      const channel = role(view, "channel");
      channel.replaceChildren(...Array.from({ length: C }, (_, c) => el("option", { value: c, text: (state.data.channels || [])[c] || `channel ${c}` })));
      role(view, "channel-field").hidden = C < 2;
      setWindow(meta, 0);
      const klass = meta.class_index == null ? "" : ` · class ${meta.class_index}`;
      role(view, "case-info").textContent = `${meta.name}: T=${T} (${meta.t_axis}), C=${C}, ${H}×${W}, spacing ${meta.spacing.map((s) => s.toPrecision(3)).join("×")}${klass}`;
      showError(role(view, "error"), "");
      showFrame();
      preload(meta);
    } catch (err) {
      showError(role(view, "error"), err.message);
    }
  }

  async function startData() {
    const view = $("[data-testid=data]");
    const doc = await call("/api/data");
    state.data = doc;
    $("#data-root").textContent = doc.root ? `${doc.root}${doc.runs ? ` · runs in ${doc.runs}` : ""}` : "";
    view.setAttribute("aria-busy", "false");
    if (!doc.ok) {
      showError(role(view, "error"), doc.error.message);
      view.dataset.state = "error";
      return;
    }
    renderFingerprint(doc);
    const list = $("[data-testid=cases]");
    list.replaceChildren(...doc.cases.map((c) => el("option", { value: c.index, text: c.labelled ? c.name : `${c.name} (no label)` })));
    role(view, "case-area").hidden = false;
    list.addEventListener("change", () => chooseCase(Number(list.value)));
    const frame = role(view, "frame");
    frame.addEventListener("load", () => {
      frame.dataset.loaded = "true";
      view.dataset.shownMs = String(Math.round(performance.now() - Number(view.dataset.chosenAt || 0)));
    });
    role(view, "t").addEventListener("input", (e) => { state.t = Number(e.target.value); showFrame(); });
    role(view, "opacity").addEventListener("input", (e) => { role(view, "overlay").style.opacity = String(e.target.value / 100); });
    role(view, "overlay").style.opacity = String(role(view, "opacity").value / 100);
    for (const name of ["window", "level"]) role(view, name).addEventListener("change", showFrame);
    role(view, "channel").addEventListener("change", (e) => { setWindow(state.caseMeta, Number(e.target.value)); showFrame(); });
    role(view, "auto-window").addEventListener("click", () => { setWindow(state.caseMeta, Number(role(view, "channel").value || 0)); showFrame(); });
    view.dataset.state = "ready";
    if (doc.cases.length) {
      list.value = "0";
      await chooseCase(0);
    }
  }

  // ------------------------------------------------------------------ training

  function drawCurves() {
    const box = $("[data-testid=train-curve]");
    const W = 640, H = 300, left = 48, right = 12, top = 10, mid = 150, bottom = 22;
    const names = [...state.shown].filter((n) => state.metrics[n]);
    const panels = [{ kind: "loss", y0: top, y1: mid - 14, title: "loss" }, { kind: "metric", y0: mid + 8, y1: H - bottom, title: "validation" }];
    let maxStep = 1;
    for (const n of names) {
      const m = state.metrics[n], s = m.columns.indexOf("step");
      for (const row of m.rows) if (row[s] != null) maxStep = Math.max(maxStep, row[s]);
    }
    const children = [];
    let points = 0;
    for (const panel of panels) {
      const series = [];
      names.forEach((n, i) => {
        const m = state.metrics[n], s = m.columns.indexOf("step");
        m.columns.forEach((col, c) => {
          if (m.kinds[col] !== panel.kind) return;
          const pts = m.rows.filter((r) => r[s] != null && r[c] != null).map((r) => [r[s], r[c]]);
          if (pts.length) series.push({ run: n, col, pts, colour: COLOURS[i % COLOURS.length], dash: series.filter((x) => x.run === n).length });
        });
      });
      const values = series.flatMap((x) => x.pts.map((p) => p[1]));
      let lo = Math.min(...values), hi = Math.max(...values);
      if (!values.length) { lo = 0; hi = 1; }
      if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
      const X = (v) => left + ((W - left - right) * v) / maxStep;
      const Y = (v) => panel.y1 - ((panel.y1 - panel.y0) * (v - lo)) / (hi - lo);
      children.push(svg("rect", { x: left, y: panel.y0, width: W - left - right, height: panel.y1 - panel.y0, class: "frame" }));
      children.push(svg("text", { x: left + 4, y: panel.y0 + 12, class: "title", text: panel.title }));
      children.push(svg("text", { x: left - 4, y: panel.y0 + 10, class: "tick", "text-anchor": "end", text: fmtNum(hi) }));
      children.push(svg("text", { x: left - 4, y: panel.y1, class: "tick", "text-anchor": "end", text: fmtNum(lo) }));
      let legendY = panel.y0 + 12;
      for (const line of series) {
        points += line.pts.length;
        const d = line.pts.map((p, k) => `${k ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
        children.push(svg("path", { d, class: "series", stroke: line.colour, "stroke-dasharray": line.dash ? "5 3" : null, "data-run": line.run, "data-column": line.col }));
        if (line.pts.length < 30) for (const p of line.pts) children.push(svg("circle", { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2, fill: line.colour, class: "point" }));
        const last = line.pts[line.pts.length - 1][1];
        children.push(svg("text", { x: W - right - 4, y: legendY, class: "legend", "text-anchor": "end", fill: line.colour, text: `${names.length > 1 ? `${line.run} ` : ""}${line.col} ${fmtNum(last)}` }));
        legendY += 13;
      }
    }
    children.push(svg("text", { x: left, y: H - 6, class: "tick", text: "0" }));
    children.push(svg("text", { x: W - right, y: H - 6, class: "tick", "text-anchor": "end", text: `step ${maxStep}` }));
    box.replaceChildren(...children);
    box.dataset.points = String(points);
  }

  function renderRuns() {
    const tbody = $("[data-testid=runs] tbody");
    tbody.replaceChildren(...state.runs.map((run) => {
      const m = state.metrics[run.name];
      let best = "–";
      if (m) {
        const col = Object.keys(m.kinds).find((k) => m.kinds[k] === "metric");
        if (col) {
          const c = m.columns.indexOf(col);
          const vals = m.rows.map((r) => r[c]).filter((v) => v != null);
          if (vals.length) best = `${col} ${fmtNum(/loss/i.test(col) ? Math.min(...vals) : Math.max(...vals))}`;
        }
      }
      const box = el("input", { type: "checkbox", "aria-label": `show ${run.name}`, checked: state.shown.has(run.name),
        onchange: (e) => { if (e.target.checked) state.shown.add(run.name); else state.shown.delete(run.name); refreshMetrics(); } });
      return el("tr", { "data-run": run.name, class: run.name === state.current ? "current" : null,
        onclick: (e) => { if (e.target !== box) select(run.name); } },
        el("td", {}, box), el("td", { text: run.name }), el("td", { text: `${run.spec || "–"} (${run.task || "?"})` }),
        el("td", { class: `state ${run.state}`, text: run.state }), el("td", { text: run.step == null ? "–" : `${run.step}/${run.steps ?? "?"}` }),
        el("td", { text: best }));
    }));
    for (const select_ of [$("[data-testid=predictions-run]"), $("[data-testid=train-init]")]) {
      const keep = select_.value;
      const usable = state.runs.filter((r) => r.checkpoints.last || r.checkpoints.best);
      const first = select_.dataset.testid === "train-init" ? [el("option", { value: "", text: "scratch" })] : [];
      select_.replaceChildren(...first, ...usable.map((r) => el("option", { value: r.name, text: r.name })));
      if ([...select_.options].some((o) => o.value === keep)) select_.value = keep;
      else if (select_.dataset.testid === "predictions-run" && state.current && usable.some((r) => r.name === state.current)) select_.value = state.current;
    }
    updateExport();
  }

  function showStatus() {
    const run = state.runs.find((r) => r.name === state.current);
    const line = $("[data-testid=train-status]");
    const stop = $("[data-testid=train-stop]"), resume = $("[data-testid=train-resume]");
    if (!run) {
      if (!line.textContent) line.textContent = "No run yet: Train starts one.";
      stop.disabled = true;
      resume.disabled = true;
      return;
    }
    const step = run.step != null ? `step ${run.step}/${run.steps ?? "?"}` : run.state === "running" ? "starting" : "no step done";
    const rate = run.rate ? ` · ${run.rate.toFixed(2)} steps/s` : "";
    const left = run.state === "running" && run.seconds_left != null ? ` · ${fmtSeconds(run.seconds_left)} left` : "";
    line.textContent = `${run.name}: ${run.state} · ${step}${rate}${left}`;
    line.dataset.state = run.state;
    stop.disabled = run.state !== "running";
    resume.disabled = run.state === "running" || run.state === "finished" || !run.checkpoints.last;
    const box = $("[data-testid=train-error]");
    if (run.state === "failed") {
      const good = run.checkpoints.best ? "best.safetensors" : run.checkpoints.last ? "last.safetensors" : null;
      showError(box, `${run.name} failed: ${run.message}${good ? ` · last good checkpoint: ${good} (download or resume below)` : " · no checkpoint was written"}`);
    } else if (run.state === "stopped" && run.message && /without saying/.test(run.message)) {
      showError(box, `${run.name}: ${run.message}`);
    } else if (box.dataset.sticky !== "true") {
      showError(box, "");
    }
  }

  async function refreshMetrics() {
    await Promise.all([...state.shown].map(async (name) => {
      const run = state.runs.find((r) => r.name === name);
      if (!run) return;
      if (state.metrics[name] && run.state !== "running" && state.metrics[name].final) return;
      const doc = await call(`/api/runs/${encodeURIComponent(name)}`);
      state.metrics[name] = { ...doc.metrics, final: doc.state !== "running" };
      Object.assign(run, doc);
    }));
    drawCurves();
    renderRuns();
    showStatus();
  }

  async function refreshRuns() {
    try {
      const doc = await call("/api/runs");
      state.runs = doc.runs;
      if (doc.error) $("[data-testid=train-status]").textContent = doc.error.message;
    } catch (err) {
      state.runs = [];
      showError($("[data-testid=train-error]"), err.message);
      return;
    }
    if (!state.current && state.runs.length) select(state.runs[state.runs.length - 1].name, false);
    await refreshMetrics();
    const running = state.runs.some((r) => r.state === "running");
    clearTimeout(state.poll);
    if (running) state.poll = setTimeout(refreshRuns, POLL_MS);
  }

  function select(name, refresh = true) {
    state.current = name;
    state.shown.add(name);
    if (refresh) refreshMetrics();
  }

  async function act(promise) {
    const box = $("[data-testid=train-error]");
    box.dataset.sticky = "false";
    try {
      const run = await promise;
      showError(box, "");
      select(run.name, false);
      await refreshRuns();
    } catch (err) {
      box.dataset.sticky = "true";
      showError(box, err.message);
    }
  }

  function startTraining() {
    const panel = $("#train-panel");
    const model = role(panel, "model").value;
    const body = {
      spec: model === "editor" ? $("[data-testid=editor]").value : null,
      memory: role(panel, "memory").value.trim() || null,
      steps: role(panel, "steps").value ? Number(role(panel, "steps").value) : null,
      init: role(panel, "init").value || null,
      adapt: role(panel, "adapt").value,
      alongside: role(panel, "alongside").checked,
    };
    return act(call("/api/runs", body));
  }

  // ------------------------------------------------------------------ predictions and export

  function updateExport() {
    const name = $("[data-testid=predictions-run]").value;
    const onnx = $("[data-testid=export]"), weights = $("[data-testid=export-weights]");
    for (const [link, file] of [[onnx, "model.onnx"], [weights, "model.safetensors"]]) {
      if (name) {
        link.href = `/api/runs/${encodeURIComponent(name)}/${file}`;
        link.setAttribute("download", `${name}.${file.split(".")[1]}`);
        link.setAttribute("aria-disabled", "false");
      } else {
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
      }
    }
  }

  async function showPredictions() {
    const panel = $("#predictions-panel");
    const box = $("[data-testid=predictions]");
    const name = $("[data-testid=predictions-run]").value;
    if (!name) { showError(role(panel, "error"), "no run with a checkpoint yet: train one first"); return; }
    box.setAttribute("aria-busy", "true");
    box.replaceChildren(el("p", { class: "muted", text: `predicting the held-out cases with ${name}…` }));
    try {
      const doc = await call(`/api/runs/${encodeURIComponent(name)}/predictions`);
      showError(role(panel, "error"), "");
      const cards = doc.cases.map((c) => {
        const image = `/api/data/cases/${c.index}/image/${c.t}.png`;
        const pair = (title, overlay) => el("figure", {},
          el("div", { class: "viewer small" }, el("img", { src: image, alt: "" }), overlay ? el("img", { src: overlay, alt: "", class: "overlay" }) : null),
          el("figcaption", { text: title }));
        const label = c.label ? `/api/data/cases/${c.index}/label/${c.t}.png` : null;
        const predicted = c.image ? `/api/runs/${encodeURIComponent(name)}/predictions/${c.index}/${c.t}.png?v=${doc.version}` : null;
        return el("div", { class: "card", "data-case": c.name },
          el("div", { class: "card-head" }, el("strong", { text: c.name }), el("span", { class: "metric", "data-testid": "case-metric", text: `${doc.metric} ${fmtNum(c.metric)}` }),
            c.predicted != null ? el("span", { class: "muted", text: ` predicted ${c.predicted} · true ${c.truth}` }) : null),
          el("div", { class: "pair" }, pair("label", label), pair("prediction", predicted)));
      });
      const head = el("p", { class: "muted", text: `${doc.checkpoint} · ${doc.cases.length} held-out cases · mean ${doc.metric} ${fmtNum(doc.mean)}` });
      box.replaceChildren(head, ...cards);
      box.dataset.state = "ready";
    } catch (err) {
      box.replaceChildren();
      showError(role(panel, "error"), err.message);
    } finally {
      box.setAttribute("aria-busy", "false");
    }
  }

  // ------------------------------------------------------------------ start

  async function start() {
    $("[data-testid=train-start]").addEventListener("click", startTraining);
    $("[data-testid=train-stop]").addEventListener("click", () => act(call(`/api/runs/${encodeURIComponent(state.current)}/stop`, {})));
    $("[data-testid=train-resume]").addEventListener("click", () => act(call(`/api/runs/${encodeURIComponent(state.current)}/resume`, { alongside: $("[data-testid=train-alongside]").checked })));
    $("[data-testid=train-init]").addEventListener("change", (e) => { $("[data-testid=train-adapt]").hidden = !e.target.value; });
    $("[data-testid=predictions-run]").addEventListener("change", updateExport);
    $("[data-testid=predictions-show]").addEventListener("click", showPredictions);
    for (const link of [$("[data-testid=export]"), $("[data-testid=export-weights]")]) {
      link.addEventListener("click", (e) => { if (link.getAttribute("aria-disabled") === "true") e.preventDefault(); });
    }
    drawCurves();
    showStatus();
    await startData();
    await refreshRuns();
    document.body.dataset.benchReady = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => showError(role($("[data-testid=data]"), "error"), `the data view could not start: ${err.message}`));
  });
})();
