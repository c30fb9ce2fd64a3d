// hashsearch web page: plain JavaScript, no build step, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// One line from an error body: FastAPI gives `detail` as a string, or a list of {loc, msg}.
function detailText(body, resp) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((x) => `${(x.loc || []).slice(1).join(".") || "request"}: ${x.msg}`).join("; ");
  return `HTTP ${resp.status} ${resp.statusText}`.trim();
}

// What a result shows of its file: its key relative to the collection, never an absolute path
// (a key that looks absolute, or a missing key, shows the id instead).
function shownKey(r) {
  const k = r.key;
  if (typeof k !== "string" || !k || /^([\\/]|[A-Za-z]:|[A-Za-z][A-Za-z0-9+.-]*:\/\/)/.test(k)) return `image ${r.id}`;
  return k;
}

function params() {
  const p = new URLSearchParams({ k: $("k").value });
  const mode = $("mode").value;
  if (mode === "radius") p.set("radius", $("radius").value);
  if (mode === "rerank") { p.set("rerank", $("rerank").value); p.set("radius", $("radius").value); }
  if ($("label").value) p.set("label", $("label").value);
  return p;
}

// ---- search: only the latest request may change the page ----
// Every search gets the next sequence number and its own AbortController; starting one aborts
// the one before, and an answer whose number is not the latest is dropped. The query box and the
// results are replaced together, in one synchronous step, from the same answer, so the query
// shown and the results shown always belong together, whatever order the answers arrive in.
let seq = 0;
let inflight = null;
let current = null;  // the latest query asked for; a change of mode, k, ... runs it again
let shownBlob = null;  // the object URL of the file shown as the query (revoked when replaced)

function fileQuery(file) {
  return {
    kind: "file", name: file.name || "upload", label: null, file,
    request: (p) => {
      const form = new FormData();
      form.append("image", file);
      return [`/search?${p}`, { method: "POST", body: form }];
    },
  };
}

function idQuery(id, label) {
  return {
    kind: `id:${id}`, name: `image ${id}`, label: label || null, id,
    request: (p) => [`/search/${id}?${p}`, {}],
  };
}

async function run(q) {
  if (inflight) inflight.abort();
  const ctl = new AbortController();
  inflight = ctl;
  const n = ++seq;
  current = q;
  $("results").setAttribute("aria-busy", "true");
  status(`searching ${q.name}…`);
  const [url, init] = q.request(params());
  let resp, body;
  try {
    resp = await fetch(url, { ...init, signal: ctl.signal });
    body = await resp.json().catch(() => null);
  } catch (e) {
    if (n !== seq) return;  // superseded: a later search owns the page
    showAnswer(q, null, `${q.name}: the server could not be reached (${e.message}); try again`);
    return;
  }
  if (n !== seq) return;
  if (!resp.ok || !body || !Array.isArray(body.results)) {
    const detail = detailText(body, resp);
    showAnswer(q, null, detail.includes(q.name) ? detail : `${q.name}: ${detail}`);
    return;
  }
  showAnswer(q, body);
}

function ms(x) { return typeof x === "number" ? `${x < 10 ? x.toFixed(1) : Math.round(x)} ms` : "?"; }

function queryFigure(q) {
  const img = el("img");
  if (q.kind === "file") {
    if (shownBlob) URL.revokeObjectURL(shownBlob);
    shownBlob = img.src = URL.createObjectURL(q.file);
  } else {
    img.src = `/thumbs/${q.id}`;
  }
  img.alt = `query: ${q.name}`;
  // A file the browser cannot draw (the status line says why) shows an empty frame.
  img.addEventListener("error", () => img.replaceWith(el("div", "no-preview", "no preview")));
  return [img, el("figcaption", "", q.label ? `${q.name} · ${q.label}` : q.name)];
}

function resultCard(r, q) {
  const b = el("button", "result" + (q.label && r.label === q.label ? " match" : ""));
  b.type = "button";
  b.dataset.id = r.id;
  b.dataset.label = r.label ?? "";
  const name = shownKey(r);
  b.title = name;
  const img = el("img");
  img.src = `/thumbs/${r.id}`;
  img.alt = "";  // the button's text names it; the picture adds nothing a screen reader can use
  const d = r.rerank_distance !== undefined
    ? `d=${r.hamming} · ${r.rerank_distance.toFixed(2)}` : `d=${r.distance}`;
  b.setAttribute("aria-label", `${r.label ?? "no label"}, ${d}, ${name}: search like this`);
  b.append(img, el("span", "label", r.label ?? "(no label)"), el("span", "dist", d));
  b.addEventListener("click", () => run(idQuery(r.id, r.label)));
  return b;
}

// The query box and the results from one answer (or one error), replaced together.
function showAnswer(q, body, error) {
  const cards = body ? body.results.map((r) => resultCard(r, q)) : [];
  $("query").replaceChildren(...queryFigure(q));
  $("query").dataset.kind = q.kind;
  $("results").replaceChildren(...cards);
  $("results").dataset.kind = q.kind;
  $("results").removeAttribute("aria-busy");
  if (error) status(error, true);
  else status(`${q.name}: ${body.results.length} results (${body.mode}) in ${ms(body.took_ms)}`);
}

function pick(files) {
  if (files && files.length) run(fileQuery(files[0]));
}

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  pick(e.dataTransfer.files);
});
$("file").addEventListener("change", () => {
  pick($("file").files);
  $("file").value = "";  // choosing the same file again is a new search
});
for (const id of ["mode", "k", "radius", "rerank", "label"])
  $(id).addEventListener("change", () => current && run(current));

async function loadStats() {
  try {
    const resp = await fetch("/stats");
    const s = await resp.json();
    if (!resp.ok) throw new Error(detailText(s, resp));
    $("stats").textContent = `${s.count} images · ${s.n_bits} bits · ${s.method} · ${s.backbone}`;
    for (const lab of Object.keys(s.labels).sort()) {
      if (lab === "None" || lab === "null") continue;
      const o = document.createElement("option"); o.value = o.textContent = lab; $("label").append(o);
    }
    $("radius").max = s.n_bits;
  } catch (e) {
    $("stats").textContent = `collection details unavailable (${e.message})`;
  }
}

// ---- evaluation view: SVG plots and a table of a benchmark JSON ----
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
const NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Drawn at the width the page gives the plot (a phone's 358 px or a desktop's 460 px), in
// user units equal to CSS pixels, so the text keeps its size; redrawn when that width changes.
function plot(svg, series, xlab, ylab, xs) {
  svg.draw = () => drawPlot(svg, series, xlab, ylab, xs);
  svg.draw();
}

function drawPlot(svg, series, xlab, ylab, xs) {
  svg.replaceChildren();
  const W = Math.round(svg.getBoundingClientRect().width) || 460, H = 320, m = { l: 50, r: 12, t: 10, b: 40 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 12 }, "no data"));
    return;
  }
  const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  const y1 = Math.max(...all.map((p) => p[1])) * 1.05 || 1;
  const X = (x) => m.l + (x - x0) / ((x1 - x0) || 1) * (W - m.l - m.r);
  const Y = (y) => H - m.b - y / y1 * (H - m.t - m.b);
  svg.append(svgEl("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, stroke: "#333" }));
  svg.append(svgEl("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, stroke: "#333" }));
  for (let i = 0; i <= 4; i++) {
    const y = y1 * i / 4;
    svg.append(svgEl("text", { x: m.l - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 10 }, y.toFixed(2)));
  }
  for (const x of xs || [x0, (x0 + x1) / 2, x1])
    svg.append(svgEl("text", { x: X(x), y: H - m.b + 14, "text-anchor": "middle", "font-size": 10 }, +x.toFixed(2)));
  svg.append(svgEl("text", { x: (W + m.l) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11 }, xlab));
  svg.append(svgEl("text", { x: 12, y: H / 2, "text-anchor": "middle", "font-size": 11, transform: `rotate(-90 12 ${H / 2})` }, ylab));
  series.forEach((s, i) => {
    const pts = s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ");
    svg.append(svgEl("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 2, "data-method": s.name }));
    for (const p of s.points) svg.append(svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color }));
  });
}

function redrawPlots() {
  for (const svg of document.querySelectorAll("svg.plot")) if (svg.draw) svg.draw();
}
let resizeFrame = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(resizeFrame);
  resizeFrame = requestAnimationFrame(redrawPlots);
});

const TABLE_COLUMNS = [
  ["mAP", (m) => m.map], ["P@100", (m) => m["p@100"]], ["P@1000", (m) => m["p@1000"]],
  ["precision r≤2", (m) => m.precision_r2], ["recall r≤2", (m) => m.recall_r2],
];

function metricsTable(rows) {
  const head = el("tr");
  for (const h of ["method", "bits", ...TABLE_COLUMNS.map((c) => c[0])]) head.append(el("th", "", h));
  const body = rows.map((r) => {
    const tr = el("tr");
    tr.append(el("th", "", r.method), el("td", "", r.bits));
    for (const [, get] of TABLE_COLUMNS) {
      const v = get(r.metrics || {});
      tr.append(el("td", "", typeof v === "number" ? v.toFixed(3) : "–"));
    }
    return tr;
  });
  const thead = el("thead"); thead.append(head);
  const tbody = el("tbody"); tbody.append(...body);
  $("eval-table").replaceChildren(thead, tbody);
}

let evalLoaded = null;  // loaded once; the tab shows the same benchmark until the page reloads
function loadEval() {
  evalLoaded ??= fetchEval().catch((e) => {
    evalLoaded = null;  // try again next time the tab opens
    $("eval-status").textContent = `the benchmark could not be loaded (${e.message})`;
    $("eval-status").className = "error";
  });
  return evalLoaded;
}

async function fetchEval() {
  const resp = await fetch("/evaluation");
  const body = await resp.json().catch(() => null);
  if (!resp.ok || !body) throw new Error(detailText(body, resp));
  const rows = (body.rows || body).filter((r) => r && r.metrics);
  $("eval-status").textContent = body.title || "";
  $("eval-status").className = "";
  const methods = [...new Set(rows.map((r) => r.method))];
  const color = (m) => COLORS[methods.indexOf(m) % COLORS.length];
  const bits = [...new Set(rows.map((r) => r.bits))].sort((a, b) => a - b);
  plot($("map-plot"), methods.map((m) => ({ name: m, color: color(m),
    points: rows.filter((r) => r.method === m).map((r) => [r.bits, r.metrics.map]).sort((a, b) => a[0] - b[0]) })),
    "bits", "mAP", bits);
  $("legend").replaceChildren(...methods.map((m) => { const s = el("span", "", `■ ${m}`); s.style.color = color(m); return s; }));
  const sel = $("pr-bits");
  sel.replaceChildren(...bits.map((b) => { const o = document.createElement("option"); o.value = o.textContent = b; return o; }));
  const drawPR = () => plot($("pr-plot"), methods.map((m) => {
    const r = rows.find((r) => r.method === m && r.bits === +sel.value);
    const pr = r && r.metrics.pr_curve;
    return { name: m, color: color(m), points: pr ? pr.recall.map((x, j) => [x, pr.precision[j]]) : [] };
  }).filter((s) => s.points.length), "recall", "precision");
  sel.onchange = drawPR;
  drawPR();
  metricsTable(rows);
}

function tab(name) {
  $("view-search").hidden = name !== "search";
  $("view-eval").hidden = name !== "eval";
  for (const [id, on] of [["tab-search", name === "search"], ["tab-eval", name === "eval"]]) {
    $(id).className = on ? "on" : "";
    $(id).setAttribute("aria-pressed", on);
  }
  if (name === "eval") { redrawPlots(); loadEval(); }
}
$("tab-search").addEventListener("click", () => tab("search"));
$("tab-eval").addEventListener("click", () => tab("eval"));
loadStats();
