// hashsearch web page: plain JavaScript, no build step, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
let queryLabel = null;

function params() {
  const p = new URLSearchParams({ k: $("k").value });
  const mode = $("mode").value;
  if (mode === "radius") p.set("radius", $("radius").value);
  if (mode === "rerank") { p.set("rerank", $("rerank").value); p.set("radius", $("radius").value); }
  if ($("label").value) p.set("label", $("label").value);
  return p;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function show(resp, what) {
  const body = await resp.json().catch(() => ({ detail: resp.statusText }));
  if (!resp.ok) { status(`${what}: ${body.detail}`, true); return; }
  const grid = $("results");
  grid.replaceChildren();
  for (const r of body.results) {
    const div = document.createElement("div");
    div.className = "result" + (queryLabel && r.label === queryLabel ? " match" : "");
    div.dataset.id = r.id;
    div.dataset.label = r.label ?? "";
    const img = document.createElement("img");
    img.src = `/thumbs/${r.id}`;
    img.alt = r.path;
    img.title = r.path;
    const d = r.rerank_distance !== undefined
      ? `d=${r.hamming} · ${r.rerank_distance.toFixed(2)}` : `d=${r.distance}`;
    div.append(img, el("div", "label", r.label ?? "(no label)"), el("div", "dist", d));
    div.addEventListener("click", () => searchId(r.id, r.label));
    grid.append(div);
  }
  status(`${what}: ${body.results.length} results (${body.mode}) in ${body.took_ms} ms`);
}

function el(tag, cls, text) { const e = document.createElement(tag); e.className = cls; e.textContent = text; return e; }

async function searchFile(file) {
  queryLabel = null;
  const q = document.createElement("img");
  q.src = URL.createObjectURL(file);
  $("query").replaceChildren(q);
  $("query").dataset.kind = "file";
  window.lastQuery = () => searchFile(file);
  const form = new FormData();
  form.append("image", file);
  status("searching…");
  await show(await fetch(`/search?${params()}`, { method: "POST", body: form }), file.name);
}

async function searchId(id, label) {
  queryLabel = label || null;
  const q = document.createElement("img");
  q.src = `/thumbs/${id}`;
  $("query").replaceChildren(q);
  $("query").dataset.kind = `id:${id}`;
  window.lastQuery = () => searchId(id, label);
  status("searching…");
  await show(await fetch(`/search/${id}?${params()}`), `image ${id}`);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", () => { if ($("file").files.length) searchFile($("file").files[0]); });
for (const id of ["mode", "k", "radius", "rerank", "label"])
  $(id).addEventListener("change", () => window.lastQuery && window.lastQuery());

async function loadStats() {
  const s = await (await fetch("/stats")).json();
  $("stats").textContent = `${s.count} images · ${s.n_bits} bits · ${s.method} · ${s.backbone}`;
  for (const lab of Object.keys(s.labels).sort()) {
    if (lab === "None") continue;
    const o = document.createElement("option"); o.value = o.textContent = lab; $("label").append(o);
  }
  $("radius").max = s.n_bits;
}

// ---- evaluation view: SVG plots of a benchmark JSON ----
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
const NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function plot(svg, series, xlab, ylab, xs) {
  svg.replaceChildren();
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), m = { l: 50, r: 10, t: 10, b: 40 };
  const all = series.flatMap((s) => s.points);
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
    svg.append(svgEl("polyline", { points: pts, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-method": s.name }));
    for (const p of s.points) svg.append(svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: COLORS[i % COLORS.length] }));
  });
}

async function loadEval() {
  const resp = await fetch("/evaluation");
  const body = await resp.json();
  if (!resp.ok) { $("eval-status").textContent = body.detail; return; }
  const rows = body.rows || body;
  $("eval-status").textContent = body.title || "";
  const methods = [...new Set(rows.map((r) => r.method))];
  const bits = [...new Set(rows.map((r) => r.bits))].sort((a, b) => a - b);
  plot($("map-plot"), methods.map((m) => ({ name: m,
    points: rows.filter((r) => r.method === m).map((r) => [r.bits, r.metrics.map]).sort((a, b) => a[0] - b[0]) })),
    "bits", "mAP", bits);
  $("legend").replaceChildren(...methods.map((m, i) => { const s = el("span", "", `■ ${m}`); s.style.color = COLORS[i % COLORS.length]; return s; }));
  const sel = $("pr-bits");
  sel.replaceChildren(...bits.map((b) => { const o = document.createElement("option"); o.value = o.textContent = b; return o; }));
  const drawPR = () => plot($("pr-plot"), methods.map((m) => {
    const r = rows.find((r) => r.method === m && r.bits === +sel.value);
    const pr = r && r.metrics.pr_curve;
    return { name: m, points: pr ? pr.recall.map((x, j) => [x, pr.precision[j]]) : [] };
  }).filter((s) => s.points.length), "recall", "precision");
  sel.onchange = drawPR;
  drawPR();
}

function tab(name) {
  $("view-search").hidden = name !== "search";
  $("view-eval").hidden = name !== "eval";
  $("tab-search").className = name === "search" ? "on" : "";
  $("tab-eval").className = name === "eval" ? "on" : "";
  if (name === "eval") loadEval();
}
$("tab-search").addEventListener("click", () => tab("search"));
$("tab-eval").addEventListener("click", () => tab("eval"));
loadStats();
