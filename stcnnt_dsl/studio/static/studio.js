// stcnnt studio: the page. Plain JavaScript, no framework, no network beyond this server.
//
// The page sends the editor's text to /api/analyze (or /api/compare) 150 ms after the
// last keystroke and shows what comes back: the error at its line and column, totals,
// the stage table and the diagram. Clicking a stage (row or diagram box) asks
// /api/explain for its cells' resolved options. Completion reads the JSON Schema.
"use strict";

(() => {
  const DEBOUNCE_MS = 150;
  const MAX_TEXT = 1 << 20;
  const BLOCK_EXAMPLES = ["T1L1G1", "L1G1", "L1G1T1", "L0L1G0G1T1", "(L1G1)*2 T1", "T1", "C2", "C3", "V1"];
  const TOP_LEVEL_EXPRESSION_KEYS = ["name", "description", "in_channels", "input_size"];
  let TOPOLOGIES = []; // from /api/topologies: built-in and registered ones

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  // ------------------------------------------------------------------ formatting

  function fmtCount(n) {
    if (n == null) return "–";
    const a = Math.abs(n);
    for (const [unit, scale] of [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]]) {
      if (a >= scale) return `${(n / scale).toPrecision(3)}${unit}`;
    }
    return String(n);
  }
  function fmtFlops(n) {
    return n == null ? "–" : `${fmtCount(n).replace(/([kMGT])$/, " $1")}FLOPs`.replace(/(\d)FLOPs$/, "$1 FLOPs");
  }
  function fmtBytes(n) {
    if (n == null) return "–";
    const a = Math.abs(n);
    for (const [unit, scale] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
      if (a >= scale) return `${(n / scale).toPrecision(3)} ${unit}`;
    }
    return `${n} B`;
  }
  function fmtShape(shape) {
    return shape ? shape.join("×") : "–";
  }
  function fmtExact(n) {
    return n == null ? "" : n.toLocaleString("en-US");
  }
  const FORMAT = { params: fmtCount, flops: fmtFlops, activation_bytes: fmtBytes };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child == null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function deltaNode(d, format, testid) {
    if (!d || d.delta == null) return el("span", { class: "delta same", "data-testid": testid, text: "Δ –" });
    const sign = d.delta > 0 ? "+" : d.delta < 0 ? "−" : "±";
    const pct = d.ratio == null ? "" : ` (${sign}${Math.abs(d.ratio * 100).toFixed(1)}%)`;
    const cls = d.delta > 0 ? "up" : d.delta < 0 ? "down" : "same";
    const magnitude = format(Math.abs(d.delta));
    return el("span", { class: `delta ${cls}`, "data-testid": testid, title: `B − A = ${fmtExact(d.delta)}` },
      `Δ ${sign}${magnitude}${pct}`);
  }

  // ------------------------------------------------------------------ API

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || (data && data.detail) || response.statusText;
      throw new Error(`${response.status}: ${message}`);
    }
    return data;
  }

  // ------------------------------------------------------------------ highlighting

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ESCAPES[c]);

  // A class per character of one line (YAML or expression): keys, comments, strings,
  // numbers and booleans, punctuation.
  function lineClasses(line) {
    const cls = new Array(line.length).fill("");
    let quote = null;
    let end = line.length;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (quote) {
        cls[i] = "t-string";
        if (c === quote) quote = null;
        continue;
      }
      if ((c === '"' || c === "'") && (i === 0 || /[\s:[{,(=]/.test(line[i - 1]))) {
        quote = c;
        cls[i] = "t-string";
        continue;
      }
      if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) {
        for (let j = i; j < line.length; j++) cls[j] = "t-comment";
        end = i;
        break;
      }
    }
    const code = line.slice(0, end);
    const key = /^(\s*(?:-\s+)?)([A-Za-z_][\w.-]*)(\s*:)(?=\s|$)/.exec(code);
    if (key) {
      const start = key[1].length;
      for (let j = start; j < start + key[2].length; j++) cls[j] = "t-key";
    }
    const mark = (re, name) => {
      re.lastIndex = 0;
      let m;
      while ((m = re.exec(code))) {
        for (let j = m.index; j < m.index + m[0].length; j++) if (!cls[j]) cls[j] = name;
        if (m[0].length === 0) re.lastIndex++;
      }
    };
    mark(/([A-Za-z_]\w*)(?==)/g, "t-key");
    mark(/(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])|\b(?:true|false|null)\b/g, "t-number");
    mark(/[[\]{}(),:=*-]/g, "t-punct");
    return cls;
  }

  function lineHtml(line, errorColumn, lineNo) {
    const cls = lineClasses(line);
    let html = "";
    let i = 0;
    while (i < line.length) {
      if (errorColumn === i + 1) {
        html += `<span class="${cls[i]} err-char" data-testid="error-mark" data-line="${lineNo}" data-column="${i + 1}">${esc(line[i])}</span>`;
        i++;
        continue;
      }
      let j = i + 1;
      while (j < line.length && cls[j] === cls[i] && errorColumn !== j + 1) j++;
      const text = esc(line.slice(i, j));
      html += cls[i] ? `<span class="${cls[i]}">${text}</span>` : text;
      i = j;
    }
    if (errorColumn != null && errorColumn > line.length) {
      html += `<span class="err-char" data-testid="error-mark" data-line="${lineNo}" data-column="${errorColumn}"> </span>`;
    }
    return html;
  }

  // ------------------------------------------------------------------ the editor

  class Editor {
    constructor(pane, onChange) {
      this.pane = pane;
      this.ta = $("textarea", pane);
      this.code = $(".highlight code", pane);
      this.gutter = $(".gutter-inner", pane);
      this.error = null;
      this.lineCount = -1;
      this.onChange = onChange;
      this.ta.addEventListener("input", (event) => {
        this.render();
        this.onChange();
        completion.onInput(this, event);
      });
      this.ta.addEventListener("scroll", () => { this.sync(); completion.close(); });
      this.ta.addEventListener("keydown", (event) => this.keydown(event));
      this.ta.addEventListener("blur", () => setTimeout(() => completion.closeIfBlurred(this), 120));
      this.ta.addEventListener("click", () => completion.close());
    }

    get text() { return this.ta.value; }

    setText(text) {
      // Select everything and insert: the browser's undo (Ctrl+Z) brings the old text back.
      this.ta.focus({ preventScroll: true });
      this.ta.select();
      if (!document.execCommand("insertText", false, text)) this.ta.value = text;
      if (this.ta.value !== text) this.ta.value = text;
      this.ta.setSelectionRange(0, 0);
      this.ta.scrollTop = 0;
      this.ta.scrollLeft = 0;
      this.render();
    }

    setError(error) {
      let located = error && error.line != null ? { line: error.line, column: error.column || 1 } : null;
      const lines = this.text.split("\n");
      if (located && located.line > lines.length) {  // past the end: mark the text's end
        located = { line: lines.length, column: lines[lines.length - 1].length + 1 };
      }
      const same = JSON.stringify(located) === JSON.stringify(this.error);
      this.error = located;
      if (error) this.ta.setAttribute("aria-invalid", "true");
      else this.ta.removeAttribute("aria-invalid");
      if (!same) this.render();
    }

    render() {
      const lines = this.text.split("\n");
      const err = this.error;
      const big = this.text.length > 200000; // very long texts: no colours, still the error
      let html = "";
      for (let k = 0; k < lines.length; k++) {
        const no = k + 1;
        const isErr = err && err.line === no;
        const body = big && !isErr ? esc(lines[k]) : lineHtml(lines[k], isErr ? err.column : null, no);
        html += `<span class="ln${isErr ? " err-line" : ""}" data-line="${no}">${body}</span>`;
      }
      this.code.innerHTML = html;
      if (lines.length !== this.lineCount || this.gutterError !== (err && err.line)) {
        this.lineCount = lines.length;
        this.gutterError = err && err.line;
        let g = "";
        for (let k = 1; k <= lines.length; k++) {
          g += k === this.gutterError ? `<div><span class="err" title="error on this line">${k}</span></div>` : `<div>${k}</div>`;
        }
        this.gutter.innerHTML = g;
      }
      this.sync();
    }

    sync() {
      const { scrollTop, scrollLeft } = this.ta;
      this.code.style.transform = `translate(${-scrollLeft}px, ${-scrollTop}px)`;
      this.gutter.style.transform = `translateY(${-scrollTop}px)`;
    }

    offsetOf(line, column) {
      const lines = this.text.split("\n");
      let offset = 0;
      for (let k = 0; k < Math.min(line - 1, lines.length); k++) offset += lines[k].length + 1;
      const current = lines[Math.min(line, lines.length) - 1] || "";
      return offset + Math.min(Math.max(column - 1, 0), current.length);
    }

    goTo(line, column) {
      const offset = this.offsetOf(line, column);
      this.ta.focus();
      this.ta.setSelectionRange(offset, offset);
      const lh = lineHeight();
      const top = (line - 1) * lh;
      if (top < this.ta.scrollTop || top > this.ta.scrollTop + this.ta.clientHeight - 2 * lh) {
        this.ta.scrollTop = Math.max(0, top - this.ta.clientHeight / 3);
      }
      this.sync();
    }

    insert(text, from, to) {
      this.ta.setSelectionRange(from, to);
      if (!document.execCommand("insertText", false, text)) {
        this.ta.setRangeText(text, from, to, "end");
        this.ta.dispatchEvent(new Event("input"));
      }
    }

    keydown(event) {
      if (completion.keydown(this, event)) return;
      if (event.key === " " && event.ctrlKey) {
        event.preventDefault();
        completion.open(this, true);
        return;
      }
      if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.altKey && !event.metaKey) {
        // Keep the indentation (one level deeper after "key:").
        const { selectionStart: start, selectionEnd: end } = this.ta;
        const lineStart = this.text.lastIndexOf("\n", start - 1) + 1;
        const before = this.text.slice(lineStart, start);
        let indent = /^\s*/.exec(before)[0];
        const item = /^(\s*)-\s+/.exec(before);
        if (item) indent = item[1] + "  ";
        if (/:\s*$/.test(before.replace(/\s+#.*$/, ""))) indent += "  ";
        if (indent) {
          event.preventDefault();
          this.insert("\n" + indent, start, end);
        }
      }
    }

    caretPoint() {
      const pos = this.ta.selectionStart;
      const before = this.text.slice(0, pos);
      const row = before.split("\n").length - 1;
      const col = pos - (before.lastIndexOf("\n") + 1);
      const rect = this.ta.getBoundingClientRect();
      const style = getComputedStyle(this.ta);
      const x = rect.left + parseFloat(style.paddingLeft) + col * charWidth() - this.ta.scrollLeft;
      const y = rect.top + parseFloat(style.paddingTop) + (row + 1) * lineHeight() - this.ta.scrollTop;
      return { x: Math.min(Math.max(x, rect.left), rect.right - 40), y: Math.min(Math.max(y, rect.top), rect.bottom) };
    }
  }

  let measured = null;
  function measure() {
    if (!measured) {
      const probe = $("#measure");
      const ta = $("textarea");
      measured = {
        char: probe.getBoundingClientRect().width / probe.textContent.length,
        line: parseFloat(getComputedStyle(ta).lineHeight) || 20,
      };
    }
    return measured;
  }
  const charWidth = () => measure().char;
  const lineHeight = () => measure().line;

  // ------------------------------------------------------------------ completion (schema)

  const schemaTools = {
    schema: null,
    deref(s) {
      let guard = 0;
      while (s && s.$ref && guard++ < 20) s = this.schema.$defs[s.$ref.split("/").pop()];
      return s;
    },
    variants(s) {
      s = this.deref(s);
      if (!s) return [];
      if (!s.properties && !s.type && !s.enum && !("const" in s) && (s.anyOf || s.oneOf)) {
        return (s.anyOf || s.oneOf).flatMap((v) => this.variants(v));
      }
      return [s];
    },
    objectOf(s) {
      return this.variants(s).find((v) => v.properties || (v.additionalProperties && typeof v.additionalProperties === "object")) || null;
    },
    child(s, key) {
      if (key === "[]") {
        const list = this.variants(s).find((v) => v.type === "array" && v.items);
        return list ? list.items : null;
      }
      const o = this.objectOf(s);
      if (!o) return null;
      if (o.properties && key in o.properties) return o.properties[key];
      if (o.additionalProperties && typeof o.additionalProperties === "object") return o.additionalProperties;
      return null;
    },
    at(path) {
      let s = this.schema;
      for (const key of path) {
        s = this.child(s, key);
        if (!s) return null;
      }
      return s;
    },
    keys(s) {
      const o = this.objectOf(s);
      if (!o || !o.properties) return [];
      return Object.entries(o.properties).map(([name, prop]) => ({
        name,
        description: prop.description || (this.deref(prop) || {}).description || "",
      }));
    },
    values(s) {
      const out = [];
      for (const v of this.variants(s)) {
        if (v.enum) out.push(...v.enum);
        if ("const" in v) out.push(v.const);
        if (v.type === "boolean") out.push(true, false);
        if (v.type === "string" && /block string/.test(v.description || "")) out.push(...BLOCK_EXAMPLES);
        if (v.type === "array" && v.items && /block string/.test(v.items.description || "")) out.push(...BLOCK_EXAMPLES);
      }
      return [...new Set(out.map(String))];
    },
  };

  function parseYamlLine(raw) {
    const m = /^(\s*)(-\s+)?(?:([A-Za-z_][\w.-]*)\s*:(?=\s|$)(.*))?/.exec(raw);
    return { indent: m[1].length, dash: m[2] ? m[2].length : 0, key: m[3] || null, rest: m[4] || "" };
  }

  // The keys (and "[]" for list items) from the document's root to the mapping whose
  // keys start at column `keyCol` on the line after `lines` (YAML block style).
  function yamlParentPath(lines, keyCol, inItem, dashCol) {
    const path = [];
    for (let r = lines.length - 1; r >= 0; r--) {
      if (/^\s*(#|$)/.test(lines[r])) continue;
      const { indent, dash, key } = parseYamlLine(lines[r]);
      const col = indent + dash;
      if (!inItem) {
        if (col >= keyCol) {
          if (col === keyCol && dash) { inItem = true; dashCol = indent; }
          continue;
        }
        if (!key) continue;
        path.unshift(key);
      } else {
        if (col > dashCol) continue;
        if (!key) continue;
        path.unshift(key, "[]");
      }
      keyCol = col;
      inItem = dash > 0;
      dashCol = indent;
    }
    return path;
  }

  function yamlSiblings(lines, row, keyCol) {
    const keys = new Set();
    const scan = (from, step) => {
      for (let r = from; r >= 0 && r < lines.length; r += step) {
        if (/^\s*(#|$)/.test(lines[r])) continue;
        const { indent, dash, key } = parseYamlLine(lines[r]);
        const col = indent + dash;
        if (col < keyCol) break;
        if (col === keyCol && key) keys.add(key);
        if (dash && col === keyCol) break; // the start of this list item
      }
    };
    scan(row - 1, -1);
    scan(row + 1, +1);
    return keys;
  }

  function keyItems(s, present, partial, suffix) {
    return schemaTools.keys(s)
      .filter((k) => !present.has(k.name) && k.name.startsWith(partial))
      .map((k) => ({ label: k.name, insert: k.name + suffix, detail: k.description }));
  }

  function valueItems(s, partial) {
    return schemaTools.values(s)
      .filter((v) => v.startsWith(partial))
      .map((v) => ({ label: v, insert: /[\s#:,[\]{}*()]/.test(v) ? `"${v}"` : v, detail: "" }));
  }

  // The cell token and its open inline options before the caret ("L1[window=4, qk"):
  // the match with `.token` ("L1"), or null. The tokens come from /api/cells.
  function cellOptionsAt(prefix) {
    const tokens = Object.keys(schemaTools.cells || {}).sort((x, y) => y.length - x.length);
    if (!tokens.length) return null;
    const re = new RegExp(`(${tokens.map((t) => t.replace(/[^\w]/g, "\\$&")).join("|")})\\[([^\\]]*)$`);
    const m = re.exec(prefix);
    if (!m) return null;
    const found = [m[0], m[2]];
    found.token = m[1];
    return found;
  }

  // Suggestions at the caret: {items, from, to} or null.
  function suggestions(text, caret) {
    if (!schemaTools.schema) return null;
    const before = text.slice(0, caret);
    const lineStart = before.lastIndexOf("\n") + 1;
    const prefix = before.slice(lineStart);
    let m;

    // Inline options of a cell in a block string: L1[window=4, qk|
    if ((m = cellOptionsAt(prefix))) {
      const seg = m[1].split(",").pop();
      const reads = new Set(schemaTools.cells[m.token] || []);
      const all = schemaTools.schema.$defs.DefaultsSpec;
      const options = { properties: Object.fromEntries(Object.entries(all.properties).filter(([name]) => reads.has(name))) };
      let k;
      if ((k = /^\s*([A-Za-z_]\w*)?$/.exec(seg))) {
        const partial = k[1] || "";
        const used = new Set([...m[1].matchAll(/([A-Za-z_]\w*)\s*=/g)].map((x) => x[1]));
        return { items: keyItems(options, used, partial, "="), from: caret - partial.length, to: caret };
      }
      if ((k = /^\s*([A-Za-z_]\w*)\s*=\s*([\w.-]*)$/.exec(seg))) {
        const prop = schemaTools.child(options, k[1]);
        return prop && { items: valueItems(prop, k[2]), from: caret - k[2].length, to: caret };
      }
      return null;
    }

    // A one-line expression: unet(channels=[32, 64], bl|
    let expr = /^\s*([a-z_][a-z0-9_]*)\s*\(/.exec(text);
    if (expr && !TOPOLOGIES.includes(expr[1])) expr = null;
    if (expr) {
      const inside = before.slice(expr[0].length);
      let depth = 0;
      let segStart = 0;
      for (let i = 0; i < inside.length; i++) {
        const c = inside[i];
        if (c === "[" || c === "(" || c === "{") depth++;
        else if (c === "]" || c === ")" || c === "}") depth--;
        else if (c === "," && depth === 0) segStart = i + 1;
      }
      if (depth !== 0) return null;
      const seg = inside.slice(segStart);
      const topology = schemaTools.at([expr[1]]);
      let k;
      if ((k = /^\s*([A-Za-z_]\w*)?$/.exec(seg))) {
        const partial = k[1] || "";
        const used = new Set([...inside.matchAll(/([A-Za-z_]\w*)\s*=/g)].map((x) => x[1]));
        const root = { properties: Object.fromEntries(TOP_LEVEL_EXPRESSION_KEYS.map((n) => [n, schemaTools.schema.properties[n]])) };
        const items = [...keyItems(topology, used, partial, "="), ...keyItems(root, used, partial, "=")];
        return { items, from: caret - partial.length, to: caret };
      }
      if ((k = /^\s*([A-Za-z_]\w*)\s*=\s*([\w.-]*)$/.exec(seg))) {
        const prop = schemaTools.child(topology, k[1]) || schemaTools.child(schemaTools.schema, k[1]);
        return prop && { items: valueItems(prop, k[2]), from: caret - k[2].length, to: caret };
      }
      return null;
    }

    const lines = text.slice(0, lineStart).split("\n");
    lines.pop();
    const row = lines.length;
    const allLines = text.split("\n");

    // A flow mapping: bridge: {window: 4, gr|
    if ((m = /^(\s*)(-\s+)?([A-Za-z_][\w.-]*)\s*:\s*\{([^{}]*)$/.exec(prefix))) {
      const keyCol = m[1].length + (m[2] ? m[2].length : 0);
      const path = [...yamlParentPath(lines, keyCol, !!m[2], m[1].length), m[3]];
      const s = schemaTools.at(path);
      const seg = m[4].split(",").pop();
      let k;
      if ((k = /^\s*([A-Za-z_]\w*)?$/.exec(seg))) {
        const partial = k[1] || "";
        const used = new Set([...m[4].matchAll(/([A-Za-z_]\w*)\s*:/g)].map((x) => x[1]));
        return { items: keyItems(s, used, partial, ": "), from: caret - partial.length, to: caret };
      }
      if ((k = /^\s*([A-Za-z_]\w*)\s*:\s*([\w.-]*)$/.exec(seg))) {
        const prop = schemaTools.child(s, k[1]);
        return prop && { items: valueItems(prop, k[2]), from: caret - k[2].length, to: caret };
      }
      return null;
    }

    // A key: "  blo|" or "  - blo|"
    if ((m = /^(\s*)(-\s+)?([A-Za-z_][\w]*)?$/.exec(prefix))) {
      const keyCol = m[1].length + (m[2] ? m[2].length : 0);
      const path = yamlParentPath(lines, keyCol, !!m[2], m[1].length);
      const s = schemaTools.at(path);
      if (!s) return null;
      const present = yamlSiblings(allLines, row, keyCol);
      if (path.length === 0 && TOPOLOGIES.some((t) => present.has(t))) TOPOLOGIES.forEach((t) => present.add(t));
      const partial = m[3] || "";
      return { items: keyItems(s, present, partial, ": "), from: caret - partial.length, to: caret };
    }

    // A value: "  norm: inst|"
    if ((m = /^(\s*)(-\s+)?([A-Za-z_][\w.-]*)\s*:\s*([\w.-]*)$/.exec(prefix))) {
      const keyCol = m[1].length + (m[2] ? m[2].length : 0);
      const path = [...yamlParentPath(lines, keyCol, !!m[2], m[1].length), m[3]];
      const s = schemaTools.at(path);
      return s && { items: valueItems(s, m[4]), from: caret - m[4].length, to: caret };
    }
    return null;
  }

  const completion = {
    list: null,
    editor: null,
    items: [],
    index: 0,
    from: 0,
    to: 0,

    open(editor, explicit) {
      const found = suggestions(editor.text, editor.ta.selectionStart);
      if (!found || !found.items.length) return this.close();
      const typed = editor.text.slice(found.from, found.to);
      if (!explicit && found.items.length === 1 && found.items[0].label === typed) return this.close();
      Object.assign(this, { editor, items: found.items.slice(0, 60), index: 0, from: found.from, to: found.to });
      this.list.innerHTML = "";
      this.items.forEach((item, i) => {
        const li = el("li", { role: "option", id: `completion-${i}`, "aria-selected": String(i === 0) },
          el("span", { class: "k", text: item.label }), el("span", { class: "d", text: item.detail }));
        li.addEventListener("mousedown", (event) => { event.preventDefault(); this.index = i; this.accept(); });
        this.list.append(li);
      });
      const point = editor.caretPoint();
      this.list.hidden = false;
      const height = this.list.offsetHeight;
      const top = point.y + height + 8 > window.innerHeight ? point.y - height - lineHeight() - 4 : point.y + 2;
      this.list.style.left = `${Math.round(point.x)}px`;
      this.list.style.top = `${Math.round(Math.max(4, top))}px`;
      editor.ta.setAttribute("aria-expanded", "true");
      editor.ta.setAttribute("aria-activedescendant", "completion-0");
    },

    close() {
      if (!this.list || this.list.hidden) return;
      this.list.hidden = true;
      if (this.editor) {
        this.editor.ta.setAttribute("aria-expanded", "false");
        this.editor.ta.removeAttribute("aria-activedescendant");
      }
      this.editor = null;
    },

    closeIfBlurred(editor) {
      if (this.editor === editor && document.activeElement !== editor.ta) this.close();
    },

    move(step) {
      const n = this.items.length;
      this.index = (this.index + step + n) % n;
      $$("li", this.list).forEach((li, i) => li.setAttribute("aria-selected", String(i === this.index)));
      const active = this.list.children[this.index];
      active.scrollIntoView({ block: "nearest" });
      this.editor.ta.setAttribute("aria-activedescendant", active.id);
    },

    accept() {
      const { editor, items, index, from, to } = this;
      if (!editor) return;
      this.close();
      const caret = editor.ta.selectionStart;
      editor.insert(items[index].insert, from, Math.max(to, caret));
    },

    keydown(editor, event) {
      if (this.list.hidden || this.editor !== editor) return false;
      const keys = { ArrowDown: () => this.move(1), ArrowUp: () => this.move(-1), Enter: () => this.accept(), Tab: () => this.accept(), Escape: () => this.close() };
      const action = keys[event.key];
      if (!action || event.altKey || event.ctrlKey || event.metaKey) return false;
      event.preventDefault();
      event.stopPropagation();
      action();
      return true;
    },

    // Opens by itself while a word is typed, after "key: " or "key=", and after "[" or
    // "," in a cell's options; never on a new line (Enter must stay a line break).
    onInput(editor, event) {
      const typed = event.data || "";
      const before = editor.text.slice(0, editor.ta.selectionStart);
      const starts = /\w$/.test(typed) || /(:\s|=|\[|\[[^\]]*,\s?)$/.test(before);
      if (event.inputType === "insertText" && !typed.includes("\n") && starts) this.open(editor, false);
      else if (!this.list.hidden) this.open(editor, false);
    },
  };

  // ------------------------------------------------------------------ the diagram

  function sanitizeSvg(svgText) {
    const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
    const svg = doc.documentElement;
    if (!svg || svg.nodeName !== "svg" || doc.querySelector("parsererror")) return null;
    svg.querySelectorAll("script, foreignObject, iframe, object, embed").forEach((n) => n.remove());
    for (const node of [svg, ...svg.querySelectorAll("*")]) {
      for (const attr of Array.from(node.attributes)) {
        const name = attr.name.toLowerCase();
        if (name.startsWith("on") || name === "style") node.removeAttribute(attr.name);
        if ((name === "href" || name === "xlink:href") && !attr.value.startsWith("#")) node.removeAttribute(attr.name);
      }
    }
    // Graphviz wraps nodes in <a> for URLs; there are none, but keep titles as tooltips.
    return document.importNode(svg, true);
  }

  // ------------------------------------------------------------------ the page

  const state = {
    compare: false,
    show: "a",
    seq: 0,
    timer: null,
    result: null, // last /api/analyze (single) or /api/compare answer
    lastGood: null, // the last single analysis of a valid spec (shown dimmed while the text is not)
    lastCompare: null, // the last comparison of two valid specs (the same, in compare mode)
    svgs: { a: null, b: null },
    stale: { a: false, b: false },
    selected: null,
    explainSeq: 0,
    architectures: [],
  };

  let editorA;
  let editorB;
  const inputShape = () => $("#input-shape").value;

  function setStatus(text, busy) {
    const status = $("#status");
    status.textContent = text;
    status.title = text;
    status.classList.toggle("busy", !!busy);
  }

  function schedule() {
    clearTimeout(state.timer);
    setStatus("editing…", true);
    state.timer = setTimeout(analyzeNow, DEBOUNCE_MS);
  }

  async function analyzeNow() {
    clearTimeout(state.timer);
    const id = ++state.seq;
    const started = performance.now();
    setStatus("analyzing…", true);
    const input = inputShape();
    const texts = state.compare ? [editorA.text, editorB.text] : [editorA.text];
    if (texts.some((t) => t.length > MAX_TEXT)) {
      setStatus("the text is over 1 MiB", false);
      return;
    }
    try {
      const result = state.compare
        ? await api("/api/compare", { a: { text: texts[0], input }, b: { text: texts[1], input } })
        : await api("/api/analyze", { text: texts[0], input });
      if (id !== state.seq) return; // a newer request is on its way
      state.result = result;
      render();
      const ms = Math.round(performance.now() - started);
      setStatus(result.ok ? `analyzed in ${ms} ms` : `error (${ms} ms)`, false);
    } catch (err) {
      if (id !== state.seq) return;
      setStatus("the server did not answer", false);
      showError($("#error-a"), editorA, { message: `cannot reach the studio server: ${err.message}`, line: null }, "a");
    }
  }

  function analyses() {
    const r = state.result;
    if (!r) return { a: null, b: null };
    return state.compare && r.a ? { a: r.a, b: r.b } : { a: r, b: null };
  }

  function render() {
    const { a, b } = analyses();
    if (!a) return;
    showError($("#error-a"), editorA, a.error, "a");
    if (state.compare && b) showError($("#error-b"), editorB, b.error, "b");
    const inputError = [a, b].some((x) => x && x.error && x.error.path === "input");
    $("#input-shape").setAttribute("aria-invalid", String(inputError));
    // While a text has a mistake (no analysis at all), the last analysis of a valid spec
    // (in compare mode: the last comparison of two valid specs) stays, dimmed: half-typed
    // words do not empty the page.
    const valid = a.params != null && (!b || b.params != null);
    if (valid && b) state.lastCompare = state.result;
    else if (valid) state.lastGood = a;
    const last = b ? state.lastCompare : state.lastGood;
    const stale = !valid && last != null;
    const compared = stale && b ? last : state.result;
    const shown = stale ? (b ? last.a : last) : a;
    const shownB = b && (stale ? last.b : b);
    const accepts = $("#accepts");
    accepts.textContent = shown.accepts ? `accepts ${shown.accepts}` : "";
    accepts.classList.toggle("stale", stale);
    renderTotals(shown, shownB, stale, compared);
    renderDiagram(a, b);
    renderStages(shown, shownB, stale, compared);
    // Keep a stage's options open while the text has a mistake; refresh them once valid.
    const names = stageNames();
    if (state.selected && names.length && !names.includes(state.selected)) closeExplain();
    else if (state.selected && names.includes(state.selected)) explainStage(state.selected, false);
  }

  function showError(box, editor, error, which) {
    editor.setError(error && error.path !== "input" ? error : null);
    box.innerHTML = "";
    if (!error) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const where = error.path === "input" ? "Input shape"
      : error.line != null ? `Line ${error.line}, column ${error.column}` : "Error";
    box.append(el("span", { class: "where", text: where + ":" }), el("span", { class: "msg", text: error.message }));
    if (error.line != null) {
      box.append(el("button", { type: "button", onclick: () => editor.goTo(error.line, error.column), "aria-label": `Go to line ${error.line}, column ${error.column} of spec ${which.toUpperCase()}` }, "Go to"));
    } else if (error.path === "input") {
      box.append(el("button", { type: "button", onclick: () => $("#input-shape").focus() }, "Edit input"));
    }
  }

  // "13.4 GFLOPs" -> the number, then the unit in smaller type.
  function splitUnit(text) {
    const m = /^([-+−]?[\d.,]+[kMGT]?) (\S+)$/.exec(text);
    return m ? [m[1], el("span", { class: "unit", text: ` ${m[2]}` })] : [text];
  }

  function card(label, value, sub, extra, testid, title) {
    return el("div", { class: `total${testid === "total-output" ? " shape" : ""}`, "data-testid": testid },
      el("div", { class: "label", text: label }),
      el("div", { class: "value", title: title || value }, ...splitUnit(value)),
      extra,
      el("div", { class: "sub", text: sub || "", title: sub || "" }));
  }

  // Under the output: the input it came from, or a whole model's head outputs.
  function outputNote(a) {
    if (!a.output) return "needs a valid input";
    const heads = Object.entries(a.head_outputs || {});
    if (heads.length) return "heads: " + heads.map(([name, shape]) => `${name} ${fmtShape(shape)}`).join(", ");
    return `from input ${fmtShape((a.input || "").split(","))}`;
  }

  function renderTotals(a, b, stale, compared) {
    const box = $("[data-testid=totals]");
    box.innerHTML = "";
    box.dataset.stale = String(!!stale);
    box.title = stale ? "the last valid version: the text has a mistake" : "";
    if (!b) {
      box.append(
        card("Parameters", fmtCount(a.params), a.params != null ? fmtExact(a.params) : "", null, "total-params",
          a.params != null ? `${fmtExact(a.params)} parameters, ${fmtBytes(a.param_bytes)} as float32` : ""),
        card("FLOPs (one forward)", fmtFlops(a.flops), a.flops != null ? "2 per multiply-add" : "needs a valid input", null, "total-flops",
          a.flops != null ? `${fmtExact(a.flops)} FLOPs` : ""),
        card("Activation memory", fmtBytes(a.activation_bytes), a.activation_bytes != null ? "kept for backward" : "needs a valid input", null, "total-memory",
          a.activation_bytes != null ? `${fmtExact(a.activation_bytes)} bytes: the estimate of what a training forward keeps for backward; with the weights ${fmtBytes(a.memory_bytes)}` : ""),
        card("Output B×T×C×H×W", fmtShape(a.output), outputNote(a), null, "total-output"),
      );
      box.classList.remove("compare-totals");
      box.classList.toggle("stale", !a.ok || !!stale);
      return;
    }
    box.classList.add("compare-totals");
    box.classList.toggle("stale", !!stale);
    const d = compared.deltas;
    const vs = (key, format) => (a[key] == null ? "A: –" : `A: ${format(a[key])}`);
    box.append(
      card("Parameters, B", fmtCount(b.params), vs("params", fmtCount), deltaNode(d.params, fmtCount, "delta-params"), "total-params"),
      card("FLOPs, B", fmtFlops(b.flops), vs("flops", fmtFlops), deltaNode(d.flops, fmtCount, "delta-flops"), "total-flops"),
      card("Activation memory, B", fmtBytes(b.activation_bytes), vs("activation_bytes", fmtBytes), deltaNode(d.activation_bytes, fmtBytes, "delta-activation_bytes"), "total-memory"),
      card("Output, B", fmtShape(b.output), `A: ${fmtShape(a.output)}`, null, "total-output"),
    );
  }

  function renderDiagram(a, b) {
    for (const [key, r] of [["a", a], ["b", b]]) {
      if (!r) continue;
      if (r.svg) {
        state.svgs[key] = r.svg;
        state.stale[key] = false;
      } else {
        state.stale[key] = true; // keep the last good diagram, dimmed
      }
    }
    const tabs = $(".tabs");
    tabs.hidden = !state.compare;
    if (!state.compare) state.show = "a";
    $$("button", tabs).forEach((btn) => btn.setAttribute("aria-pressed", String(btn.dataset.show === state.show)));
    drawDiagram();
  }

  function drawDiagram() {
    const box = $("[data-testid=diagram]");
    const which = state.show;
    const text = state.svgs[which];
    const r = which === "b" ? analyses().b : analyses().a;
    box.innerHTML = "";
    if (!text) {
      const why = r && r.warnings && r.warnings.length ? r.warnings.join("; ") : "the diagram appears when the spec is valid";
      box.append(el("p", { class: "empty", text: why }));
      return;
    }
    const svg = sanitizeSvg(text);
    if (!svg) return;
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `Diagram of spec ${which.toUpperCase()}` + (state.stale[which] ? " (last valid version)" : ""));
    if (state.stale[which]) svg.classList.add("stale");
    box.append(svg);
    box.classList.toggle("stale", state.stale[which]);
    const names = new Set(((r && r.stages) || []).map((s) => s.name));
    for (const node of svg.querySelectorAll("g.node")) {
      const title = node.querySelector("title");
      const name = title && title.textContent;
      if (!names.has(name)) continue;
      node.classList.add("stage");
      node.setAttribute("tabindex", "0");
      node.setAttribute("role", "button");
      node.setAttribute("aria-label", `Stage ${name}: show its options`);
      node.dataset.stage = name;
      if (name === state.selected) node.classList.add("selected");
      node.addEventListener("click", () => selectStage(name));
      node.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectStage(name); }
      });
    }
  }

  function stageNames() {
    const { a, b } = analyses();
    return [...new Set([...(a ? a.stages : []), ...(b ? b.stages : [])].map((s) => s.name))];
  }

  function renderStages(a, b, stale, compared) {
    const table = $("[data-testid=stages]");
    table.classList.toggle("stale", !!stale);
    table.dataset.stale = String(!!stale);
    table.title = stale ? "the last valid version: the text has a mistake" : "";
    const head = $("thead", table);
    const body = $("tbody", table);
    const foot = $("tfoot", table);
    head.innerHTML = "";
    body.innerHTML = "";
    foot.innerHTML = "";
    const row = (name, cells) => {
      const tr = el("tr", { tabindex: "0", "data-stage": name, "aria-selected": String(name === state.selected) }, cells);
      tr.addEventListener("click", () => selectStage(name));
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectStage(name); }
        if (event.key === "ArrowDown" && tr.nextElementSibling) { event.preventDefault(); tr.nextElementSibling.focus(); }
        if (event.key === "ArrowUp" && tr.previousElementSibling) { event.preventDefault(); tr.previousElementSibling.focus(); }
      });
      return tr;
    };
    if (!b) {
      head.append(el("tr", {},
        el("th", { scope: "col", text: "Stage" }), el("th", { scope: "col", text: "Block" }),
        el("th", { scope: "col", text: "Channels" }), el("th", { scope: "col", text: "Output shape" }),
        el("th", { scope: "col", class: "num", text: "Params" }), el("th", { scope: "col", class: "num", text: "FLOPs" }),
        el("th", { scope: "col", class: "num", text: "Memory" })));
      for (const s of a.stages) {
        body.append(row(s.name, [
          el("td", { title: `${s.label} · ${s.path}` }, s.name),
          el("td", { class: "mono", text: s.block }),
          el("td", { class: "num", text: `${s.in_channels} → ${s.out_channels}` }),
          el("td", { class: "mono", text: fmtShape(s.shape) }),
          el("td", { class: "num", text: fmtCount(s.params), title: fmtExact(s.params) }),
          el("td", { class: "num", text: fmtFlops(s.flops), title: fmtExact(s.flops) }),
          el("td", { class: "num", text: fmtBytes(s.activation_bytes) }),
        ]));
      }
      if (a.other && a.stages.length) {
        foot.append(el("tr", {},
          el("td", { colspan: "4", text: "between stages: resampling, gates, fusion" }),
          el("td", { class: "num", text: fmtCount(a.other.params) }),
          el("td", { class: "num", text: fmtFlops(a.other.flops) }),
          el("td", { class: "num", text: fmtBytes(a.other.activation_bytes) })));
      }
      return;
    }
    head.append(el("tr", {},
      el("th", { scope: "col", text: "Stage" }), el("th", { scope: "col", text: "Block A / B" }),
      el("th", { scope: "col", class: "num", text: "Params A → B" }), el("th", { scope: "col", class: "num", text: "FLOPs A → B" }),
      el("th", { scope: "col", class: "num", text: "Memory A → B" })));
    for (const s of compared.stages) {
      const ra = s.a;
      const rb = s.b;
      const metric = (key) => {
        if (!ra || !rb) return el("td", { class: "num missing", text: ra ? `${FORMAT[key](ra[key])} (A only)` : `${FORMAT[key](rb[key])} (B only)` });
        return el("td", { class: "num" }, `${FORMAT[key](ra[key])} → ${FORMAT[key](rb[key])}`,
          deltaNode(s.delta[key], FORMAT[key], `stage-delta-${key}`));
      };
      const blocks = ra && rb && ra.block !== rb.block ? `${ra.block} / ${rb.block}` : (ra || rb).block;
      body.append(row(s.name, [
        el("td", {}, s.name), el("td", { class: "mono", text: blocks }),
        metric("params"), metric("flops"), metric("activation_bytes"),
      ]));
    }
  }

  // ------------------------------------------------------------------ explain

  function selectStage(name) {
    state.selected = name;
    $$("[data-testid=stages] tbody tr").forEach((tr) => tr.setAttribute("aria-selected", String(tr.dataset.stage === name)));
    $$(".diagram g.node.stage").forEach((g) => g.classList.toggle("selected", g.dataset.stage === name));
    explainStage(name, true);
  }

  function closeExplain() {
    state.selected = null;
    $("[data-testid=explain]").hidden = true;
    $$("[data-testid=stages] tbody tr").forEach((tr) => tr.setAttribute("aria-selected", "false"));
    $$(".diagram g.node.stage").forEach((g) => g.classList.remove("selected"));
  }

  async function explainStage(name, reveal) {
    const id = ++state.explainSeq;
    const { a, b } = analyses();
    const inA = a && a.stages.some((s) => s.name === name);
    const useB = state.compare && b && (state.show === "b" || !inA);
    const text = useB ? editorB.text : editorA.text;
    let result;
    try {
      result = await api("/api/explain", { text, stage: name });
    } catch (err) {
      result = { ok: false, error: { message: err.message } };
    }
    if (id !== state.explainSeq) return;
    const panel = $("[data-testid=explain]");
    const body = $(".explain-body", panel);
    body.innerHTML = "";
    panel.hidden = false;
    $("h2", panel).textContent = `Options of ${name}` + (state.compare ? ` (spec ${useB ? "B" : "A"})` : "");
    if (!result.ok) {
      body.append(el("p", { class: "muted", text: result.error ? result.error.message : "no options" }));
    } else {
      renderExplain(body, result.stage, result.sources);
    }
    if (reveal) panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function sourceLabel(option, stage) {
    if (option.source === "stage") return option.where || stage.path;
    if (option.source === "default") return "library";
    return option.source;
  }

  function renderExplain(body, stage, sources) {
    const scale = stage.scale > 1 ? `1/${stage.scale} resolution` : "full resolution";
    body.append(el("p", { class: "summary" },
      el("strong", { text: stage.label }), ` · block `, el("code", { text: stage.block }),
      ` · ${stage.in_channels} → ${stage.out_channels} channels · ${scale} · `, el("code", { text: stage.path })));
    const blockOpts = Object.entries(stage.block_options || {});
    if (blockOpts.length) {
      body.append(el("p", { class: "muted" }, "block options: " + blockOpts.map(([k, v]) => `${k}=${JSON.stringify(v.value)} (${sourceLabel(v, stage)})`).join(", ")));
    }
    const names = [];
    for (const cell of stage.cells) for (const key of Object.keys(cell.options)) if (!names.includes(key)) names.push(key);
    const isSet = (key) => stage.cells.some((c) => c.options[key] && c.options[key].source !== "default");
    names.sort((x, y) => Number(isSet(y)) - Number(isSet(x))); // set in the spec first (stable)
    const table = el("table", { "data-testid": "explain-table" });
    table.append(el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "option" }),
      stage.cells.map((c) => el("th", { scope: "col", text: `cell ${c.index}: ${c.token}`, title: `${c.kind}${c.mixer ? " + mixer" : ""}` })))));
    const tbody = el("tbody");
    for (const key of names) {
      tbody.append(el("tr", {}, el("th", { scope: "row", text: key }), stage.cells.map((c) => {
        const option = c.options[key];
        if (!option) return el("td", { class: "missing", text: "–" });
        let value = JSON.stringify(option.value);
        if (key === "heads" && option.value === "auto" && c.heads != null) value = `auto (${c.heads})`;
        return el("td", { class: option.source === "default" ? "" : "set" }, value, el("span", { class: "src", text: sourceLabel(option, stage) }));
      })));
    }
    table.append(tbody);
    body.append(table);
    if (sources) {
      body.append(el("p", { class: "muted legend" }, "bold: set in the spec; sources, weakest first: " +
        Object.entries(sources).map(([k, v]) => `${k === "default" ? "library" : k} = ${v}`).join("; ")));
    }
  }

  // ------------------------------------------------------------------ starting points

  function fillStarts(select, initial) {
    select.innerHTML = "";
    select.append(el("option", { value: "", text: "choose…" }));
    select.append(el("option", { value: "edited", text: "your text", hidden: true, disabled: true }));
    if (initial) {
      select.append(el("optgroup", { label: "Command line" }, el("option", { value: "initial", text: initial.name })));
    }
    select.append(el("optgroup", { label: "Bundled" }, state.architectures.map((a) =>
      el("option", { value: `bundled:${a.name}`, title: a.description, text: `${a.name} (${fmtCount(a.params)})` }))));
  }

  async function loadStart(select, editor, isA) {
    const value = select.value;
    if (!value) return;
    let text;
    let input;
    if (value === "initial") {
      ({ text, input } = state.initial);
    } else {
      const data = await api(`/api/architectures/${encodeURIComponent(value.slice("bundled:".length))}`);
      ({ text, input } = data);
    }
    editor.startText = text;
    editor.setText(text);
    if (isA && input) $("#input-shape").value = input;
    analyzeNow();
  }

  // The menu shows the example the text is, or "your text" once it differs from it
  // (choosing the example again then loads it again).
  function markStart(select, editor) {
    const edited = editor.startText != null && editor.text !== editor.startText;
    if (edited && select.value !== "edited") {
      select.dataset.example = select.value;
      select.value = "edited";
    } else if (!edited && select.value === "edited") {
      select.value = select.dataset.example || "";
    }
  }

  async function download(editor) {
    try {
      const r = await api("/api/canonical", { text: editor.text });
      if (!r.ok) {
        setStatus(`cannot download: ${r.error.message.split("\n")[0]}`, false);
        return;
      }
      const url = URL.createObjectURL(new Blob([r.yaml], { type: "application/x-yaml" }));
      const link = el("a", { href: url, download: r.filename });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
      setStatus(`downloaded ${r.filename}`, false);
    } catch (err) {
      setStatus(`cannot download: ${err.message}`, false);
    }
  }

  function setCompare(on) {
    state.compare = on;
    $("#pane-b").hidden = !on;
    $(".tag-a").hidden = !on;
    if (on && !editorB.text.trim()) {
      editorB.setText(editorA.text);
      editorB.startText = editorA.startText;  // B starts as A's copy: the same example
      const [sa, sb] = [$("#pane-a .starts"), $("#pane-b .starts")];
      sb.value = sa.value;
      sb.dataset.example = sa.dataset.example || "";
    }
    if (!on) state.show = "a";
    state.result = null;
    state.lastCompare = null;
    analyzeNow();
  }

  async function start() {
    completion.list = $("#completion");
    editorA = new Editor($("#pane-a"), schedule);
    editorB = new Editor($("#pane-b"), schedule);
    $("#input-shape").addEventListener("input", schedule);
    $("#compare-toggle").addEventListener("change", (event) => setCompare(event.target.checked));
    $$(".tabs button").forEach((btn) => btn.addEventListener("click", () => {
      state.show = btn.dataset.show;
      $$(".tabs button").forEach((b) => b.setAttribute("aria-pressed", String(b === btn)));
      drawDiagram();
    }));
    $(".zoom").addEventListener("click", (event) => {
      const natural = $("[data-testid=diagram]").classList.toggle("natural");
      event.target.setAttribute("aria-pressed", String(natural));
      event.target.textContent = natural ? "Fit" : "Actual size";
    });
    $("[data-testid=explain] .close").addEventListener("click", closeExplain);
    $("#pane-a .download").addEventListener("click", () => download(editorA));
    $("#pane-b .download").addEventListener("click", () => download(editorB));
    window.addEventListener("resize", () => completion.close());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("[data-testid=explain]").hidden && !completion.editor) closeExplain();
    });

    const [listing, schema, cells, names] = await Promise.all([
      api("/api/architectures"), api("/api/schema"), api("/api/cells"), api("/api/topologies"),
    ]);
    TOPOLOGIES = names.topologies;
    schemaTools.schema = schema;
    schemaTools.cells = cells;
    state.architectures = listing.architectures;
    state.initial = listing.initial;
    const selects = [$("#pane-a .starts"), $("#pane-b .starts")];
    selects.forEach((select) => fillStarts(select, state.initial));
    selects[0].addEventListener("change", () => loadStart(selects[0], editorA, true));
    selects[1].addEventListener("change", () => loadStart(selects[1], editorB, false));
    editorA.ta.addEventListener("input", () => markStart(selects[0], editorA));
    editorB.ta.addEventListener("input", () => markStart(selects[1], editorB));
    if (state.initial) {
      selects[0].value = "initial";
      editorA.ta.value = editorA.startText = state.initial.text;
      $("#input-shape").value = state.initial.input;
    } else {
      const first = state.architectures.find((a) => a.name === "unet") || state.architectures[0];
      selects[0].value = `bundled:${first.name}`;
      const data = await api(`/api/architectures/${encodeURIComponent(first.name)}`);
      editorA.ta.value = editorA.startText = data.text;
      $("#input-shape").value = data.input;
    }
    editorA.render();
    editorB.render();
    await analyzeNow();
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => setStatus(`the studio could not start: ${err.message}`, false));
  });
})();
