// hashsearch web page: plain JavaScript, no build step, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function status(text, error, id = "status") {
  $(id).textContent = text;
  $(id).className = error ? "error" : "";
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

// A file's key, breakable after each "/" (a long path wraps at its folders, not mid-name).
function pathSpan(name, cls = "path") {
  const span = el("span", cls);
  name.split("/").forEach((part, i, parts) => {
    span.append(part + (i < parts.length - 1 ? "/" : ""));
    if (i < parts.length - 1) span.append(el("wbr"));
  });
  return span;
}

const info = { count: 0, nBits: 0, writable: false };  // from GET /stats

// ---- search settings: only the controls of the chosen mode are shown ----
const MODE_HELP = {
  hamming: "The k images whose codes are nearest the query's.",
  radius: "Every image within the radius (in bits) of the query's code, nearest first, at most k.",
  rerank: "The nearest codes (within the radius) as candidates, re-ranked by their features: slower, closer to the backbone's ranking.",
};
function showMode() {
  const mode = $("mode").value;
  for (const e of document.querySelectorAll("#settings [data-modes]")) e.hidden = !e.dataset.modes.split(" ").includes(mode);
  $("mode-help").textContent = MODE_HELP[mode];
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
// Several files dropped at once are one query of kind "batch": one search each, one group each.
let seq = 0;
let inflight = null;
let current = null;  // the latest query asked for; a change of mode, k, ... runs it again
let shown = null;  // the query whose answer is on the page
let lastParams = "";  // the settings `current` last ran with
let blobs = [];  // object URLs of the files shown as the query (revoked when replaced)
const MAX_BATCH = 12;

function fileQuery(file) {
  return {
    kind: "file", name: file.name || "pasted image", label: null, file,
    request: (p) => {
      const form = new FormData();
      form.append("image", file, file.name || "pasted image");
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

function batchQuery(files) {
  return { kind: "batch", name: `${files.length} images`, label: null, items: files.map(fileQuery) };
}

function busy(on, spinner = "spinner", box = "results") {
  $(spinner).hidden = !on;
  if (on) $(box).setAttribute("aria-busy", "true");
  else $(box).removeAttribute("aria-busy");
}

// One search's answer: {body} (the API's JSON), {error} (one line for the user) or {aborted}.
async function ask(q, p, signal) {
  const [url, init] = q.request(p);
  let resp, body;
  try {
    resp = await fetch(url, { ...init, signal });
    body = await resp.json().catch(() => null);
  } catch (e) {
    if (e.name === "AbortError") return { aborted: true };
    return { error: `${q.name}: the server could not be reached (${e.message}); try again` };
  }
  if (!resp.ok || !body || !Array.isArray(body.results)) {
    const detail = detailText(body, resp);
    return { error: detail.includes(q.name) ? detail : `${q.name}: ${detail}` };
  }
  return { body };
}

async function run(q) {
  if (inflight) inflight.abort();
  const ctl = new AbortController();
  inflight = ctl;
  const n = ++seq;
  current = q;
  const p = params();
  lastParams = p.toString();
  busy(true);
  status(`searching ${q.name}…`);
  if (q.items) return runBatch(q, p, n, ctl);
  const a = await ask(q, p, ctl.signal);
  if (n !== seq || a.aborted) return;  // superseded or cancelled: a later action owns the page
  inflight = null;
  showAnswer(q, a.body, a.error);
}

// Escape: the search in flight is dropped; the page keeps the query and results it shows.
function cancel() {
  if (!inflight) return false;
  inflight.abort();
  inflight = null;
  seq++;
  current = shown;
  lastParams = current ? params().toString() : "";
  busy(false);
  status("search cancelled");
  return true;
}

function ms(x) { return typeof x === "number" ? `${x < 10 ? x.toFixed(1) : Math.round(x)} ms` : "?"; }

function preview(q) {
  const img = el("img");
  if (q.kind === "file") {
    img.src = URL.createObjectURL(q.file);
    blobs.push(img.src);
  } else {
    img.src = `/thumbs/${q.id}`;
  }
  img.alt = `query: ${q.name}`;
  // A file the browser cannot draw (the status line says why) shows an empty frame.
  img.addEventListener("error", () => img.replaceWith(el("div", "no-preview", "no preview")));
  return img;
}

function queryFigure(q) {
  for (const u of blobs) URL.revokeObjectURL(u);
  blobs = [];
  if (q.items) {
    const strip = el("div", "strip");
    strip.append(...q.items.slice(0, 4).map(preview));
    return [strip, el("figcaption", "", q.name)];
  }
  return [preview(q), el("figcaption", "", q.label ? `${q.name} · ${q.label}` : q.name)];
}

function distanceText(r) {
  return r.rerank_distance !== undefined ? `d=${r.hamming} · ${r.rerank_distance.toFixed(2)}` : `d=${r.distance}`;
}

function resultCard(r, q) {
  const b = el("button", "result" + (q.label && r.label === q.label ? " match" : ""));
  b.type = "button";
  b.dataset.id = r.id;
  b.dataset.label = r.label ?? "";
  const name = shownKey(r);
  b.dataset.key = name;
  const img = el("img");
  img.src = `/thumbs/${r.id}`;
  img.alt = "";  // the button's label names it; the picture adds nothing a screen reader can use
  img.loading = "lazy";
  const d = distanceText(r);
  b.setAttribute("aria-label", `${r.label ?? "no label"}, ${d}, ${name}: search like this`);
  // Shown over the picture on hover and keyboard focus: where the file is, its label, how far.
  const details = el("span", "details");
  const bits = info.nBits ? ` of ${info.nBits} bits` : " bits";
  const far = r.rerank_distance !== undefined
    ? `Hamming ${r.hamming}${bits}; feature distance ${r.rerank_distance.toFixed(3)}` : `Hamming ${r.distance}${bits}`;
  details.append(pathSpan(name), el("span", "", `label: ${r.label ?? "(none)"}`),
    el("span", "", far), el("span", "", `id ${r.id}`));
  details.setAttribute("aria-hidden", "true");
  b.append(img, el("span", "label", r.label ?? "(no label)"), el("span", "dist", d), details);
  b.addEventListener("click", () => run(idQuery(r.id, r.label)));
  return b;
}

// What to try when a search finds nothing.
function emptyAdvice() {
  const label = $("label").value;
  const within = $("mode").value !== "hamming" ? ` within ${$("radius").value} bits` : "";
  const tries = within ? ["raise the radius", "use Hamming ranking"] : label ? ['choose "any" label'] : [];
  if (!tries.length) return "The collection is empty: add images with `hashsearch index` or POST /images.";
  return `No image${label ? ` labelled ${label}` : ""}${within}: ${tries.join(", or ")}.`;
}

function resultsOf(q, body, error) {
  if (error) return [el("p", "empty error-note", error)];
  if (!body.results.length) return [el("p", "empty", emptyAdvice())];
  return body.results.map((r) => resultCard(r, q));
}

// The query box and the results from one answer (or one error), replaced together.
function showAnswer(q, body, error) {
  const cards = body ? resultsOf(q, body) : [];
  $("query").replaceChildren(...queryFigure(q));
  $("query").dataset.kind = q.kind;
  $("results").replaceChildren(...cards);
  $("results").className = "grid";
  $("results").dataset.kind = q.kind;
  shown = q;
  busy(false);
  $("hint").hidden = true;
  $("more").hidden = !body || body.results.length < +$("k").value;
  if (error) status(error, true);
  else status(`${q.name}: ${body.results.length} results (${body.mode}) in ${ms(body.took_ms)}`);
}

// Several files: the query box shows them all and the results one group per file, each filled
// in as its answer comes (one search at a time, so a large drop does not fill the server's queue).
async function runBatch(q, p, n, ctl) {
  const figure = queryFigure(q);  // first: it revokes the previous previews
  const groups = q.items.map((item) => {
    const g = el("section", "group");
    g.dataset.kind = item.kind;
    g.dataset.name = item.name;
    const head = el("div", "group-head");
    head.append(preview(item), el("h2", "", item.name), el("span", "group-status", "waiting…"));
    const grid = el("div", "grid");
    g.append(head, grid);
    g.setAttribute("aria-label", `results for ${item.name}`);
    return g;
  });
  $("query").replaceChildren(...figure);
  $("query").dataset.kind = q.kind;
  $("results").replaceChildren(...groups);
  $("results").className = "groups";
  $("results").dataset.kind = q.kind;
  $("hint").hidden = true;
  $("more").hidden = true;
  shown = q;
  let full = false, failed = 0, found = 0;
  for (const [i, item] of q.items.entries()) {
    const g = groups[i];
    g.querySelector(".group-status").textContent = "searching…";
    const a = await ask(item, p, ctl.signal);
    if (n !== seq || a.aborted) return;
    g.dataset.done = "1";
    if (a.error) failed++;
    else { found += a.body.results.length; full ||= a.body.results.length >= +$("k").value; }
    g.querySelector(".grid").replaceChildren(...resultsOf(item, a.body, a.error));
    g.querySelector(".group-status").textContent = a.error ? "failed"
      : `${a.body.results.length} results (${a.body.mode}) in ${ms(a.body.took_ms)}`;
  }
  inflight = null;
  busy(false);
  $("more").hidden = !full;
  const note = q.dropped ? `; only the first ${MAX_BATCH} of ${q.dropped} files were searched` : "";
  status(`${q.items.length} queries: ${found} results${failed ? `, ${failed} failed (see its group)` : ""}${note}`, failed > 0);
}

function pick(files) {
  const all = [...(files || [])];
  if (!all.length) return;
  tab("search");
  if (all.length === 1) return run(fileQuery(all[0]));
  const q = batchQuery(all.slice(0, MAX_BATCH));
  if (all.length > MAX_BATCH) q.dropped = all.length;
  run(q);
}

// "More results": k grows by its first value each time (12, 24, 36, ...), up to the API's 1000.
const K_STEP = +$("k").value || 12;
$("more").addEventListener("click", () => {
  $("k").value = Math.min(1000, +$("k").value + K_STEP);
  if (current) run(current);
});

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
// Files can be dropped anywhere on the page (never opened by the browser in place of it); they
// are searched in the search view, whose box lights up while they are held over the page.
document.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
document.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  pick(e.dataTransfer.files);
});
$("file").addEventListener("change", () => {
  pick($("file").files);
  $("file").value = "";  // choosing the same file again is a new search
});
// An image pasted anywhere on the page (Ctrl+V, or the browser's Paste) is searched.
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
  if (!files.length) return;  // text pasted into a field stays there
  e.preventDefault();
  pick(files.slice(0, 1));
});

// A change of a setting runs the shown query again; Enter in a field runs it at once.
function rerun(force) {
  showMode();
  if (current && (force || params().toString() !== lastParams)) run(current);
}
for (const id of ["mode", "k", "radius", "rerank", "label"]) {
  $(id).addEventListener("change", () => rerun(false));
  $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); rerun(true); } });
}
showMode();

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (disarm()) return;  // a delete waiting for its confirmation is called off first
  if (!$("view-search").hidden) cancel();
});

// ---- deleting an image (browse and duplicates views): two presses, with the API key ----
let armed = null;  // the delete button pressed once, waiting for its confirmation
function disarm() {
  if (!armed) return false;
  armed.textContent = "Delete";
  armed.classList.remove("confirm");
  armed.setAttribute("aria-label", `delete image ${armed.dataset.id} from the collection`);
  armed = null;
  return true;
}

function apiKey() {
  return [...document.querySelectorAll(".api-key")].map((i) => i.value).find((v) => v) || "";
}
// The key sits in a form (where browsers want a password field); Enter there submits nothing.
for (const form of document.querySelectorAll("form.key-box")) form.addEventListener("submit", (e) => e.preventDefault());
// The key is typed once: the browse and duplicates views' fields show the same value.
for (const input of document.querySelectorAll(".api-key"))
  input.addEventListener("input", () => { for (const o of document.querySelectorAll(".api-key")) o.value = input.value; });

function deleteButton(id, statusId, onDeleted) {
  const b = el("button", "delete", "Delete");
  b.type = "button";
  b.dataset.id = id;
  b.setAttribute("aria-label", `delete image ${id} from the collection`);
  b.addEventListener("click", async () => {
    if (armed !== b) {
      disarm();
      armed = b;
      b.textContent = "Confirm delete";
      b.classList.add("confirm");
      b.setAttribute("aria-label", `confirm: delete image ${id} from the collection`);
      status(`Press "Confirm delete" again to remove image ${id} from the collection (Escape: keep it).`, false, statusId);
      return;
    }
    disarm();
    const key = apiKey();
    if (!key) {
      status("Type the server's API key first (the field above), then delete.", true, statusId);
      document.querySelector(`#${statusId}`).closest("main").querySelector(".api-key").focus();
      return;
    }
    b.disabled = true;
    let resp, body;
    try {
      resp = await fetch(`/images/${id}`, { method: "DELETE", headers: { "X-API-Key": key } });
      body = await resp.json().catch(() => null);
    } catch (e) {
      body = { detail: `the server could not be reached (${e.message}); try again` };
    }
    b.disabled = false;
    if (!resp || !resp.ok) {
      status(`image ${id} was not deleted: ${detailText(body, resp || {})}`, true, statusId);
      return;
    }
    info.count = body.count;
    showStats();
    const note = `image ${id} deleted; the collection holds ${body.count} images`;
    status(note, false, statusId);
    onDeleted(note);
  });
  return b;
}

// ---- browse: the collection page by page, through GET /entries?offset=&limit= ----
const PAGE = 24;
let pageAt = 0;
let browseSeq = 0;

async function loadPage(index, note) {
  const n = ++browseSeq;
  disarm();
  busy(true, "browse-spinner", "entries");
  status("loading…", false, "browse-status");
  let resp, body;
  try {
    resp = await fetch(`/entries?${new URLSearchParams({ offset: index * PAGE, limit: PAGE })}`);
    body = await resp.json().catch(() => null);
  } catch (e) {
    body = { detail: `the server could not be reached (${e.message})` };
  }
  if (n !== browseSeq) return;
  busy(false, "browse-spinner", "entries");
  if (!resp || !resp.ok || !body || !Array.isArray(body.entries)) {
    status(`the collection's entries could not be read (${detailText(body, resp || {})})`, true, "browse-status");
    return;
  }
  // A page past the end (images removed meanwhile, e.g. by another client) shows the last one.
  if (!body.entries.length && index > 0 && body.total > 0) return loadPage(Math.ceil(body.total / PAGE) - 1, note);
  if (body.total !== info.count) { info.count = body.total; showStats(); }
  pageAt = index;
  const found = body.entries;
  $("entries").replaceChildren(...found.map(entryCard));
  const before = body.offset;
  const last = before + found.length;
  $("page-info").textContent = found.length
    ? `${before + 1}–${last} of ${body.total}` : "no images";
  $("prev").disabled = index === 0;
  $("next").disabled = last >= body.total;
  status(note || (found.length ? "Click a picture to search like it." : "The collection is empty."), false, "browse-status");
}

function entryCard(e) {
  const card = el("figure", "entry");
  card.dataset.id = e.id;
  const open = el("button", "thumb");
  open.type = "button";
  const name = shownKey(e);
  open.setAttribute("aria-label", `${name}, ${e.label ?? "no label"}: search like this`);
  const img = el("img");
  img.src = `/thumbs/${e.id}`;
  img.alt = "";
  img.loading = "lazy";
  open.append(img);
  open.addEventListener("click", () => { tab("search"); run(idQuery(e.id, e.label)); });
  const cap = el("figcaption");
  cap.append(pathSpan(name), el("span", "", `${e.label ?? "(no label)"} · id ${e.id}`));
  card.append(open, cap);
  // After a delete the page is read again: the next image moves up to fill it.
  if (info.writable) cap.append(deleteButton(e.id, "browse-status", (note) => loadPage(pageAt, note)));
  return card;
}

$("prev").addEventListener("click", () => pageAt > 0 && loadPage(pageAt - 1));
$("next").addEventListener("click", () => loadPage(pageAt + 1));

// ---- duplicates: groups of near-duplicate images (GET /duplicates, docs/duplicates.md) ----
let dupSeq = 0;
let dupOffset = 0;
const DUP_LIMIT = 50;

async function loadDups(more) {
  const n = ++dupSeq;
  disarm();
  const p = new URLSearchParams({ keep: $("dup-keep").value, limit: DUP_LIMIT, offset: more ? dupOffset : 0 });
  if ($("dup-radius").value !== "") p.set("radius", $("dup-radius").value);
  if ($("dup-codes").checked) p.set("codes_only", "true");
  else if ($("dup-sim").value !== "") p.set("min_similarity", $("dup-sim").value);
  busy(true, "dup-spinner", "dup-groups");
  status("looking for duplicates…", false, "dup-status");
  let resp, body;
  try {
    resp = await fetch(`/duplicates?${p}`);
    body = await resp.json().catch(() => null);
  } catch (e) {
    body = null;
    resp = { ok: false, status: 0, statusText: `the server could not be reached (${e.message})` };
  }
  if (n !== dupSeq) return;
  busy(false, "dup-spinner", "dup-groups");
  $("dup-hint").hidden = true;
  if (!resp.ok || !body || !Array.isArray(body.groups)) {
    const why = resp.status === 404 && !(body && typeof body.detail === "string" && body.detail !== "Not Found")
      ? "this server has no duplicates route (GET /duplicates); update hashsearch" : detailText(body, resp);
    if (!more) $("dup-groups").replaceChildren();
    $("dup-more").hidden = true;
    status(why, true, "dup-status");
    return;
  }
  const cards = body.groups.map((g) => groupCard(g, body.narrow_below));
  if (more) $("dup-groups").append(...cards);
  else $("dup-groups").replaceChildren(...cards);
  if (!more && !cards.length) $("dup-groups").append(el("p", "empty",
    `No duplicates within ${body.radius} bits${body.min_similarity != null ? ` and similarity ${body.min_similarity}` : ""}: raise the radius to find looser copies.`));
  dupOffset = body.offset + body.groups.length;
  $("dup-more").hidden = dupOffset >= body.n_groups;
  $("dup-radius").placeholder = `${body.radius}`;
  if (body.min_similarity != null && !$("dup-codes").checked) $("dup-sim").placeholder = `${body.min_similarity}`;
  status(`${plural(body.n_groups, "group")}, ${plural(body.n_duplicates, "duplicate")} among ${plural(body.n_images, "image")} ` +
    `(radius ${body.radius} of ${body.n_bits} bits${body.min_similarity != null ? `, similarity ≥ ${body.min_similarity}` : ""}; ` +
    `keeping the ${body.keep.replace("-", " ")}) in ${ms(body.took_ms)}`, false, "dup-status");
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function size(m) {
  const parts = [];
  if (m.width && m.height) parts.push(`${m.width}×${m.height}`);
  if (typeof m.bytes === "number") parts.push(m.bytes >= 1e6 ? `${(m.bytes / 1e6).toFixed(1)} MB` : `${Math.round(m.bytes / 1e3)} kB`);
  return parts.join(" · ");
}

function groupCard(g, narrowBelow) {
  const sec = el("section", "dup-group" + (g.narrow ? " narrow" : ""));
  sec.dataset.group = g.group;
  const title = el("h2", "", `Group ${g.group + 1} · ${g.size} images`);
  sec.append(title);
  // A group that passes only narrowly may hold different photos that look alike: said before any delete.
  if (g.narrow) sec.append(el("p", "narrow-note",
    `Passes only narrowly (a similarity to the kept image below ${narrowBelow}): different photos that look alike pass there; look before deleting.`));
  const grid = el("div", "grid");
  // After a delete: how many are left, or that the group is resolved.
  const retitle = () => {
    const left = grid.childElementCount;
    title.textContent = `Group ${g.group + 1} · ` + (left > 1 ? `${left} images` : "resolved: one image left");
  };
  for (const m of g.members) {
    const card = el("figure", "entry" + (m.keep ? " keep" : ""));
    card.dataset.id = m.id;
    const open = el("button", "thumb");
    open.type = "button";
    const name = shownKey(m);
    open.setAttribute("aria-label", `${name}${m.keep ? ", kept" : ""}: search like this`);
    const img = el("img");
    img.src = `/thumbs/${m.id}`;
    img.alt = "";
    img.loading = "lazy";
    open.append(img);
    open.addEventListener("click", () => { tab("search"); run(idQuery(m.id, m.label)); });
    const cap = el("figcaption");
    const how = m.keep ? "keep" : m.exact ? "exact copy"
      : `d=${m.distance}${typeof m.similarity === "number" ? ` · sim ${m.similarity.toFixed(4)}` : ""}`;
    cap.append(el("span", m.keep ? "badge keep" : "badge", how), pathSpan(name));
    const s = size(m);
    if (s) cap.append(el("span", "", s));
    if (info.writable && !m.keep) cap.append(deleteButton(m.id, "dup-status", () => { card.remove(); retitle(); }));
    card.append(open, cap);
    grid.append(card);
  }
  sec.append(grid);
  return sec;
}

$("dup-find").addEventListener("click", () => loadDups(false));
$("dup-more").addEventListener("click", () => loadDups(true));
for (const id of ["dup-radius", "dup-sim"])
  $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") loadDups(false); });
$("dup-keep").addEventListener("change", () => loadDups(false));
// The feature check applies only when codes are not the only test.
$("dup-codes").addEventListener("change", () => { $("dup-sim").disabled = $("dup-codes").checked; loadDups(false); });

// ---- collection details ----
function showStats() {
  $("stats").textContent = `${info.count} images · ${info.nBits} bits · ${info.method} · ${info.backbone}`;
}

async function loadStats() {
  try {
    const resp = await fetch("/stats");
    const s = await resp.json();
    if (!resp.ok) throw new Error(detailText(s, resp));
    Object.assign(info, { count: s.count, nBits: s.n_bits, writable: !!s.mutations_enabled, method: s.method, backbone: s.backbone });
    showStats();
    for (const lab of Object.keys(s.labels).sort()) {
      if (lab === "None" || lab === "null") continue;
      const o = document.createElement("option"); o.value = o.textContent = lab; $("label").append(o);
    }
    $("radius").max = s.n_bits;
    $("dup-radius").max = s.n_bits;
    for (const box of document.querySelectorAll(".key-box")) box.hidden = !info.writable;
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


// ---- views ----
const VIEWS = ["search", "browse", "dups", "eval"];
let browsed = false;
function tab(name) {
  disarm();
  for (const v of VIEWS) {
    $(`view-${v}`).hidden = name !== v;
    $(`tab-${v}`).className = name === v ? "on" : "";
    $(`tab-${v}`).setAttribute("aria-pressed", name === v);
  }
  if (name === "eval") { redrawPlots(); loadEval(); }
  if (name === "browse" && !browsed) { browsed = true; stats.then(() => loadPage(0)); }
  if (name === "dups") $("dup-find").focus();  // a search of the whole collection starts on request
}
for (const v of VIEWS) $(`tab-${v}`).addEventListener("click", () => tab(v));
const stats = loadStats();
