// kvstore console: browse, edit and watch keys through the public HTTP API
// (/v1/kv, /v1/watch) and the console's login (/ui/login, /ui/session).
// A plain ES module: no build step, no library, nothing loaded from elsewhere.

const PAGE = 1000;          // keys per list request (the API's most)
const FEED_KEEP = 200;      // changes kept in the live panel
const SHOW_BYTES = 64 * 1024; // hex and base64 views show at most this much
const RETRY_MS = 3000;      // between checks while the server is unreachable
const MIN_NEW_ROWS = 100;   // a "page" of the list shows at least this many more rows
const MAX_REQUESTS = 20;    // ... or stops after this many list requests
// After a folder's last key on a page, skip the rest of that folder: its row is shown.
const AFTER_ALL = "\u{10FFFF}";

const $ = (id) => document.getElementById(id);
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const state = {
  session: null,      // {access_control, token, read: [], write: []}
  prefix: "",
  rows: new Map(),    // name within the folder -> row
  next: null,         // `after` of the next page; null: no more
  listRevision: 0,
  filter: "",
  open: null,         // {key, bytes, meta: {mod_revision, create_revision, version}, deleted}
  mode: null,         // how the open value is shown
  editing: null,      // {key, isNew, base: revision | 0 (must be absent), binary, theirs}
  lastId: null,       // the newest revision the feed has seen
  revision: 0,
  feed: null,         // the EventSource
  feedTimer: null,
  feedPaused: false,
  feedWaiting: [],
  unreachable: false,
  retryTimer: null,
  loadSeq: 0,
  listedPrefix: null, // the folder the list shows
  versions: null,     // {key, events: [], next, shown}: the open key's history
};

// ---------- HTTP ----------

class ApiError extends Error {
  constructor(status, code, message, revision) {
    super(message);
    this.status = status;
    this.code = code;
    this.revision = revision;
  }
}

class Unreachable extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  // Marks the console's own calls: the server takes its cookie for a write only then.
  headers.set("x-kv-console", "1");
  let res;
  try {
    res = await fetch(path, { ...options, headers, credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    setUnreachable(true);
    throw new Unreachable("server unreachable");
  }
  setUnreachable(false);
  if (res.ok) return res;
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  const err = body && body.error ? body.error : { code: "http_" + res.status, message: res.statusText };
  if (res.status === 401 && state.session) showLogin("The server no longer accepts your token; log in again.");
  throw new ApiError(res.status, err.code, err.message, err.revision);
}

const keyPath = (key) => "/v1/kv/" + encodeURIComponent(key);

function metaOf(res) {
  const n = (name) => Number(res.headers.get(name) || 0);
  return { mod_revision: n("x-kv-mod-revision"), create_revision: n("x-kv-create-revision"), version: n("x-kv-version") };
}

async function fetchValue(key) {
  try {
    const res = await api(keyPath(key));
    return { key, bytes: new Uint8Array(await res.arrayBuffer()), meta: metaOf(res), deleted: false };
  } catch (e) {
    if (e instanceof ApiError && e.code === "key_not_found") return { key, bytes: new Uint8Array(), meta: null, deleted: true };
    throw e;
  }
}

// ---------- values ----------

function decodeText(bytes) {
  try { return strictUtf8.decode(bytes); } catch (_) { return null; }
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text.replace(/\s+/g, ""));
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// A value as the watch frames carry it: a string, or base64 with "encoding".
function frameBytes(frame) {
  return frame.encoding === "base64" ? fromBase64(frame.value) : utf8.encode(frame.value);
}

// The size of a listed entry's (or a frame's) value, without decoding it.
function entrySize(entry) {
  if (entry.encoding === "base64") {
    const v = entry.value;
    return Math.floor((v.length * 3) / 4) - (v.endsWith("==") ? 2 : v.endsWith("=") ? 1 : 0);
  }
  return utf8.encode(entry.value).length;
}

function hexDump(bytes) {
  const lines = [];
  const end = Math.min(bytes.length, SHOW_BYTES);
  for (let off = 0; off < end; off += 16) {
    const chunk = bytes.subarray(off, Math.min(off + 16, end));
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(off.toString(16).padStart(8, "0") + "  " + hex.padEnd(47) + "  |" + ascii + "|");
  }
  return lines.join("\n");
}

function prettyJson(text) {
  if (text === null) return null;
  const t = text.trim();
  if (!(t.startsWith("{") || t.startsWith("["))) return null;
  try { return JSON.stringify(JSON.parse(t), null, 2); } catch (_) { return null; }
}

const plural = (n, one, many) => `${n.toLocaleString("en")} ${n === 1 ? one : many}`;

function formatSize(n) {
  if (n < 1024) return plural(n, "byte", "bytes");
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

// ---------- access ----------

const canWrite = (key) => state.session.write.some((p) => key.startsWith(p));
const canWriteUnder = (prefix) => state.session.write.some((p) => p.startsWith(prefix) || prefix.startsWith(p));

// ---------- notices ----------

function setUnreachable(on) {
  if (state.unreachable === on) return;
  state.unreachable = on;
  $("notice-unreachable").hidden = !on;
  setConn();
  clearTimeout(state.retryTimer);
  if (on) state.retryTimer = setTimeout(probe, RETRY_MS);
}

async function probe() {
  try {
    const res = await fetch("/healthz", { cache: "no-store" });
    if (res.ok) {
      setUnreachable(false);
      await refresh();
      if (!state.feed) connectFeed();
      return;
    }
  } catch (_) { /* still down */ }
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(probe, RETRY_MS);
}

function setFeedDropped(on, text) {
  $("notice-feed").hidden = !on;
  $("feed-state").textContent = on ? "dropped" : state.feedPaused ? "paused" : "live";
  if (text) $("notice-feed-text").textContent = text;
  setConn();
}

function setConn() {
  const badge = $("conn");
  let s = "live", label = "Live";
  if (state.unreachable) { s = "offline"; label = "Offline"; }
  else if (!$("notice-feed").hidden) { s = "reconnecting"; label = "Reconnecting…"; }
  else if (!state.feed || state.feed.readyState !== EventSource.OPEN) { s = "connecting"; label = "Connecting…"; }
  badge.dataset.state = s;
  badge.textContent = label;
}

function say(text, kind = "info") {
  $("notice-message-text").textContent = text;
  $("notice-message").dataset.kind = kind;
  $("notice-message").hidden = false;
}

function failed(what, e) {
  if (e instanceof Unreachable) return; // the banner says it
  if (e instanceof ApiError && e.status === 401) return; // the login form says it
  say(`${what}: ${e.message}${e.code ? ` (${e.code})` : ""}`, "error");
}

function seeRevision(rev) {
  if (rev > state.revision) {
    state.revision = rev;
    $("revision").textContent = "revision " + rev.toLocaleString("en");
  }
}

// ---------- session ----------

function showLogin(message) {
  closeFeed();
  // Nothing read with the previous token stays on the page.
  closeEditor();
  closeDetail();
  state.session = null;
  state.listedPrefix = null;
  state.rows = new Map();
  state.lastId = null;
  $("rows").replaceChildren();
  $("feed-list").replaceChildren();
  state.feedWaiting = [];
  $("feed-empty").hidden = false;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  $("readonly").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  let session;
  try {
    session = await (await api("/ui/session")).json();
  } catch (e) {
    if (e instanceof Unreachable) { state.retryTimer = setTimeout(start, RETRY_MS); return; }
    if (e instanceof ApiError && e.status === 401) { showLogin(); return; }
    failed("Loading the session", e);
    return;
  }
  enter(session);
}

function enter(session) {
  state.session = session;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = !session.access_control;
  $("who").hidden = !session.token;
  $("who").textContent = session.token ? "token " + session.token : "";
  $("readonly").hidden = session.write.length > 0;
  route();
  connectFeed();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const res = await api("/ui/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: $("token").value }),
    });
    $("token").value = "";
    enter(await res.json());
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) $("login-error").textContent = "That token is not known to this server.";
    else if (!(e instanceof Unreachable)) $("login-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("/ui/logout", { method: "POST" }); } catch (e) { failed("Logging out", e); return; }
  showLogin("Logged out.");
});

// ---------- routing: #?p=PREFIX&k=KEY ----------

function here() {
  const q = new URLSearchParams(location.hash.replace(/^#\??/, ""));
  return { prefix: q.get("p") || "", key: q.get("k") };
}

function link(prefix, key) {
  const q = new URLSearchParams();
  if (prefix) q.set("p", prefix);
  if (key != null) q.set("k", key);
  const s = q.toString();
  return s ? "#?" + s : "#";
}

function go(prefix, key) { location.hash = link(prefix, key); }

window.addEventListener("hashchange", () => { if (state.session) route(); });

async function route() {
  const { prefix, key } = here();
  if (prefix !== state.listedPrefix) {
    state.prefix = prefix;
    // A filter is for one folder's names.
    state.filter = "";
    $("filter").value = "";
    renderCrumbs();
    await loadList();
  }
  markOpenRow(key);
  const ed = state.editing;
  if (ed) {
    // The editor stays until it is saved or cancelled: nothing typed is dropped.
    if (key != null && key !== ed.key) say(`You are editing${ed.key ? " “" + ed.key + "”" : " a new key"}: save or cancel first.`);
    return;
  }
  if (key == null) closeDetail();
  else if (!state.open || state.open.key !== key) await openKey(key);
  else renderOpen();
}

// ---------- the list ----------

// The folder holding `key`, with its trailing "/" ("" at the top).
const dirOf = (key) => key.slice(0, key.lastIndexOf("/") + 1);

function folderOf(name) {
  const i = name.indexOf("/");
  return i >= 0 ? name.slice(0, i + 1) : null;
}

function addEntry(entry) {
  const name = entry.key.slice(state.prefix.length);
  const folder = folderOf(name);
  if (folder) {
    if (!state.rows.has(folder)) state.rows.set(folder, { kind: "folder", name: folder });
  } else {
    state.rows.set(name, {
      kind: "key", name, key: entry.key,
      mod_revision: entry.mod_revision, version: entry.version, size: entrySize(entry),
    });
  }
}

async function loadList() {
  const seq = ++state.loadSeq;
  state.rows = new Map();
  state.next = null;
  state.listedPrefix = state.prefix;
  $("list-status").textContent = "Loading…";
  renderRows();
  await loadPage(seq);
}

// Reads list pages until at least MIN_NEW_ROWS more rows show (a page of keys
// deep in a few folders adds only those folders' rows) or the folder ends.
async function loadPage(seq = state.loadSeq) {
  const before = state.rows.size;
  for (let requests = 0; requests < MAX_REQUESTS; requests++) {
    const q = new URLSearchParams({ prefix: state.prefix, limit: String(PAGE) });
    if (state.next) q.set("after", state.next);
    let page;
    try {
      const res = await api("/v1/kv?" + q);
      page = await res.json();
    } catch (e) {
      failed("Listing " + (state.prefix || "all keys"), e);
      $("list-status").textContent = "Could not list this folder.";
      return;
    }
    if (seq !== state.loadSeq) return; // another folder was opened meanwhile
    for (const entry of page.entries) addEntry(entry);
    state.listRevision = page.revision;
    seeRevision(page.revision);
    if (page.next) {
      const folder = folderOf(page.next.slice(state.prefix.length));
      state.next = folder ? state.prefix + folder + AFTER_ALL : page.next;
    } else {
      state.next = null;
    }
    if (state.next == null || state.rows.size - before >= MIN_NEW_ROWS) break;
  }
  renderRows();
}

$("more").addEventListener("click", async () => {
  $("more").disabled = true;
  await loadPage();
  $("more").disabled = false;
  if ($("more").hidden) $("list-region").focus();
});

// Whether `name` sorts within what the list has loaded (later names come with later pages).
function loaded(name) {
  if (state.next == null) return true;
  return state.prefix + name <= state.next;
}

function sortedRows() {
  return [...state.rows.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

// Live changes re-render the list at most once a frame, flashing the rows they touched.
let renderPending = null;
function scheduleRender(name) {
  if (!renderPending) {
    renderPending = new Set();
    requestAnimationFrame(() => { const changed = renderPending; renderPending = null; renderRows(changed); });
  }
  if (name != null) renderPending.add(name);
}

function renderRows(changed) {
  const focused = document.activeElement && document.activeElement.closest("#rows tr");
  const focusName = focused ? focused.dataset.name : null;
  const filter = state.filter.toLowerCase();
  const rows = sortedRows();
  const shown = filter ? rows.filter((r) => r.name.toLowerCase().includes(filter)) : rows;
  const body = $("rows");
  const frag = document.createDocumentFragment();
  const openKey = state.open ? state.open.key : here().key;
  for (const row of shown) {
    const tr = document.createElement("tr");
    tr.dataset.name = row.name;
    tr.dataset.kind = row.kind;
    if (changed && changed.has(row.name)) tr.classList.add("changed");
    const name = document.createElement("td");
    name.className = "name";
    const a = document.createElement("a");
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    if (row.kind === "folder") {
      a.href = link(state.prefix + row.name);
      icon.textContent = "▸";
      a.setAttribute("aria-label", "folder " + row.name);
    } else {
      a.href = link(state.prefix, row.key);
      icon.textContent = "•";
      if (row.key === openKey) tr.setAttribute("aria-current", "true");
    }
    a.append(icon, row.name);
    name.append(a);
    tr.append(name);
    for (const v of row.kind === "folder"
      ? ["", "", ""]
      : [row.mod_revision.toLocaleString("en"), row.version.toLocaleString("en"), formatSize(row.size)]) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = v;
      tr.append(td);
    }
    frag.append(tr);
  }
  body.replaceChildren(frag);
  if (focusName != null) {
    const again = [...body.querySelectorAll("tr")].find((tr) => tr.dataset.name === focusName);
    if (again) again.querySelector("a").focus();
  }
  const more = state.next != null;
  $("more").hidden = !more;
  let status;
  if (rows.length === 0) {
    status = state.prefix ? "This folder is empty: it exists once a key is in it." : "No keys yet.";
  } else if (filter) {
    status = `${plural(shown.length, "item", "items")} of ${rows.length.toLocaleString("en")} match “${state.filter}”` +
      (more ? "; load more keys to search further." : ".");
  } else {
    status = plural(rows.length, "item", "items") + (more ? " loaded; more below." : ".");
  }
  $("list-status").textContent = status;
  const writable = canWriteUnder(state.prefix);
  $("new-key").hidden = !writable;
  $("new-folder").hidden = !writable;
}

function markOpenRow(key) {
  for (const tr of $("rows").querySelectorAll("tr")) {
    if (tr.dataset.kind === "key" && state.prefix + tr.dataset.name === key) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
  }
}

function renderCrumbs() {
  const ol = $("crumbs");
  ol.replaceChildren();
  const parts = state.prefix.split("/").slice(0, -1);
  const crumbs = [["All keys", ""]];
  let acc = "";
  for (const part of parts) { acc += part + "/"; crumbs.push([part + "/", acc]); }
  crumbs.forEach(([label, prefix], i) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = link(prefix);
    a.textContent = label;
    if (i === crumbs.length - 1) a.setAttribute("aria-current", "page");
    li.append(a);
    ol.append(li);
  });
  // A prefix that does not end in "/" (typed into the address) shows as its own step.
  const rest = state.prefix.slice(acc.length);
  if (rest) {
    const li = document.createElement("li");
    li.textContent = rest + "…";
    ol.append(li);
  }
}

$("filter").addEventListener("input", () => { state.filter = $("filter").value; renderRows(); });

// Up and down arrows move between the rows' links.
$("rows").addEventListener("keydown", (ev) => {
  if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
  const links = [...$("rows").querySelectorAll("a")];
  const i = links.indexOf(document.activeElement);
  if (i < 0) return;
  const next = links[i + (ev.key === "ArrowDown" ? 1 : -1)];
  if (next) { next.focus(); ev.preventDefault(); }
});

// ---------- the open value ----------

function closeDetail() {
  state.open = null;
  $("view").hidden = true;
  $("view-key").textContent = "";
  $("view-meta").replaceChildren();
  $("view-value").textContent = "";
  $("editor").hidden = true;
  $("detail-empty").hidden = false;
  $("detail-title").textContent = "Value";
  state.versions = null;
  $("versions").hidden = true;
}

async function openKey(key) {
  let open;
  try { open = await fetchValue(key); } catch (e) { failed("Reading " + key, e); return; }
  if (here().key !== key) return; // another key was chosen meanwhile
  state.open = open;
  state.mode = null;
  renderOpen();
  await loadVersions(key);
}

function modesFor(bytes) {
  const text = decodeText(bytes);
  if (text === null) return { text, modes: ["hex", "base64"], preferred: "hex" };
  const json = prettyJson(text);
  return json !== null
    ? { text, json, modes: ["json", "text", "hex", "base64"], preferred: "json" }
    : { text, modes: ["text", "hex", "base64"], preferred: "text" };
}

const MODE_LABELS = { text: "Text", json: "JSON", hex: "Hex", base64: "Base64" };

function renderOpen() {
  const open = state.open;
  if (!open) return;
  $("detail-empty").hidden = true;
  $("editor").hidden = true;
  $("view").hidden = false;
  $("detail-title").textContent = "Value";
  $("view-key").textContent = open.key;
  const meta = $("view-meta");
  meta.replaceChildren();
  const notice = $("view-notice");
  const writable = canWrite(open.key);
  if (open.deleted) {
    notice.hidden = false;
    notice.textContent = open.deletedAt
      ? `This key was deleted at revision ${open.deletedAt.toLocaleString("en")}.`
      : "This key does not exist.";
    $("view-modes").replaceChildren();
    $("view-value").textContent = "";
    $("view-value").hidden = true;
    $("edit").hidden = true;
    $("delete").hidden = true;
    return;
  }
  notice.hidden = !open.updatedAt;
  notice.classList.toggle("info", !!open.updatedAt);
  if (open.updatedAt) notice.textContent = `Updated live at revision ${open.updatedAt.toLocaleString("en")}.`;
  const { text, json, modes, preferred } = modesFor(open.bytes);
  if (!state.mode || !modes.includes(state.mode)) state.mode = preferred;
  const facts = [
    ["Revision", open.meta.mod_revision.toLocaleString("en")],
    ["Created at", open.meta.create_revision.toLocaleString("en")],
    ["Version", open.meta.version.toLocaleString("en")],
    ["Size", formatSize(open.bytes.length)],
    ["Kind", text === null ? "binary" : json !== undefined ? "JSON text" : "text"],
  ];
  for (const [k, v] of facts) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    div.append(dt, dd);
    meta.append(div);
  }
  const group = $("view-modes");
  group.replaceChildren();
  for (const m of modes) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.mode = m;
    b.textContent = MODE_LABELS[m];
    b.setAttribute("aria-pressed", String(m === state.mode));
    b.addEventListener("click", () => { state.mode = m; renderOpen(); group.querySelector(`[data-mode="${m}"]`).focus(); });
    group.append(b);
  }
  const pre = $("view-value");
  pre.hidden = false;
  pre.className = state.mode === "hex" ? "hex" : "";
  const clipped = open.bytes.length > SHOW_BYTES ? open.bytes.subarray(0, SHOW_BYTES) : open.bytes;
  const more = open.bytes.length > SHOW_BYTES ? `\n… (first ${formatSize(SHOW_BYTES)} shown)` : "";
  pre.textContent = {
    text: () => text,
    json: () => json,
    hex: () => hexDump(open.bytes) + more,
    base64: () => toBase64(clipped) + more,
  }[state.mode]();
  $("edit").hidden = !writable;
  $("delete").hidden = !writable;
}

$("edit").addEventListener("click", () => startEdit());

$("delete").addEventListener("click", async () => {
  const open = state.open;
  if (!open || open.deleted) return;
  $("confirm-text").textContent = `Delete “${open.key}” (revision ${open.meta.mod_revision})? This cannot be undone.`;
  const dialog = $("confirm");
  dialog.returnValue = "";
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") { $("delete").focus(); return; }
  try {
    // Only the revision the user looked at: a change made meanwhile is not deleted unseen.
    await api(keyPath(open.key), { method: "DELETE", headers: { "if-match": `"${open.meta.mod_revision}"` } });
    say(`Deleted “${open.key}”.`);
    if (state.rows.delete(open.key.slice(state.prefix.length))) scheduleRender();
    go(state.prefix);
  } catch (e) {
    if (e instanceof ApiError && e.code === "precondition_failed") {
      say(`Not deleted: “${open.key}” changed meanwhile (now revision ${e.revision}). Look at it again first.`, "error");
      await openKey(open.key);
    } else if (e instanceof ApiError && e.code === "key_not_found") {
      say(`“${open.key}” was already deleted.`);
      go(state.prefix);
    } else failed("Deleting " + open.key, e);
  }
});

// ---------- editing ----------

function startEdit(isNew = false, prefill = "") {
  const open = state.open;
  let binary = false, value = "";
  if (!isNew) {
    const text = decodeText(open.bytes);
    binary = text === null;
    value = binary ? toBase64(open.bytes) : text;
  }
  state.editing = { key: isNew ? null : open.key, isNew, base: isNew ? 0 : open.meta.mod_revision, binary, theirs: null };
  $("view").hidden = true;
  $("detail-empty").hidden = true;
  $("editor").hidden = false;
  $("conflict").hidden = true;
  $("editor-notice").hidden = true;
  $("save").textContent = "Save";
  $("detail-title").textContent = isNew ? "New key" : "Edit " + open.key;
  $("editor-key-row").hidden = !isNew;
  $("editor-key").value = prefill;
  $("editor-value").value = value;
  $("editor-value-label").textContent = binary ? "Value (binary, as base64)" : "Value";
  $("editor-hint").textContent = isNew
    ? "Saved only if no key of that name exists yet."
    : `Saved only if the key is still at revision ${open.meta.mod_revision}; if someone changed it meanwhile you see both versions.`;
  if (isNew) { const k = $("editor-key"); k.focus(); k.setSelectionRange(k.value.length, k.value.length); }
  else $("editor-value").focus();
}

function closeEditor() {
  state.editing = null;
  $("editor").hidden = true;
}

function cancelEdit() {
  const wasNew = state.editing && state.editing.isNew;
  closeEditor();
  if (state.open && !wasNew) { renderOpen(); $("edit").focus(); }
  else { closeDetail(); $("new-key").focus(); }
}

$("cancel").addEventListener("click", cancelEdit);

$("editor-value").addEventListener("input", () => {
  if (!$("conflict").hidden) $("conflict-mine").textContent = $("editor-value").value;
});

$("editor").addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") { ev.preventDefault(); cancelEdit(); }
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("editor").requestSubmit(); }
});

$("new-key").addEventListener("click", () => {
  startEdit(true, state.prefix);
});

$("new-folder").addEventListener("click", () => {
  const dialog = $("folder-dialog");
  $("folder-name").value = "";
  $("folder-error").textContent = "";
  dialog.returnValue = "";
  dialog.showModal();
});

$("folder-cancel").addEventListener("click", () => $("folder-dialog").close());

$("folder-form").addEventListener("submit", (ev) => {
  const name = $("folder-name").value.trim().replace(/^\/+|\/+$/g, "");
  if (!name) { ev.preventDefault(); $("folder-error").textContent = "Give the folder a name."; return; }
  const prefix = state.prefix + name + "/";
  // Wait for the dialog to close, then go into the (still empty) folder and start its first key.
  setTimeout(() => {
    go(prefix);
    startEdit(true, prefix);
    $("editor-hint").textContent = `The folder ${prefix} exists once this key is saved.`;
  });
});

function editedBytes() {
  const text = $("editor-value").value;
  return state.editing.binary ? fromBase64(text) : utf8.encode(text);
}

$("editor").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const ed = state.editing;
  if (!ed) return;
  const key = ed.isNew ? $("editor-key").value : ed.key;
  if (!key) { say("Give the key a name.", "error"); $("editor-key").focus(); return; }
  if (key.endsWith("/") && ed.isNew) { say("A key name cannot end in “/”: that is a folder.", "error"); return; }
  let body;
  try { body = editedBytes(); } catch (_) { say("The value is not valid base64.", "error"); return; }
  // Compare-and-swap: the revision the user started from, or "must not exist yet".
  const condition = ed.base ? { "if-match": `"${ed.base}"` } : { "if-none-match": "*" };
  $("save").disabled = true;
  try {
    const res = await api(keyPath(key), {
      method: "PUT",
      headers: { ...condition, "content-type": "application/octet-stream" },
      body,
    });
    const put = await res.json();
    seeRevision(put.revision);
    closeEditor();
    say(`Saved “${key}” at revision ${put.revision}.`);
    const folder = dirOf(key);
    state.open = { key, bytes: body, meta: { mod_revision: put.revision, create_revision: put.create_revision, version: put.version }, deleted: false };
    if (folder !== state.prefix) go(folder, key);
    else {
      upsertKeyRow(key, { revision: put.revision, version: put.version, size: body.length });
      go(state.prefix, key);
      renderOpen();
    }
    $("edit").focus();
  } catch (e) {
    if (e instanceof ApiError && e.code === "precondition_failed") await showConflict(key, e);
    else failed("Saving " + key, e);
  } finally {
    $("save").disabled = false;
  }
});

// A save refused with 412: show the server's version beside the user's, keep the
// user's text, and make the next save a compare-and-swap against what is shown.
async function showConflict(key, err) {
  const ed = state.editing;
  let theirs;
  try { theirs = await fetchValue(key); } catch (e) { failed("Reading " + key, e); return; }
  ed.key = key;
  ed.theirs = theirs;
  $("conflict").hidden = false;
  $("editor-key-row").hidden = true;
  $("detail-title").textContent = "Edit " + key;
  $("conflict-mine").textContent = $("editor-value").value;
  if (theirs.deleted) {
    ed.base = 0;
    $("conflict-title").textContent = "Deleted by someone else";
    $("conflict-text").textContent = `While you were editing, “${key}” was deleted. Nothing was saved. Save again to create it with your version.`;
    $("conflict-theirs-title").textContent = "On the server now: no such key";
    $("conflict-theirs").textContent = "";
    $("save").textContent = "Save mine (create it again)";
  } else {
    ed.base = theirs.meta.mod_revision;
    const text = decodeText(theirs.bytes);
    $("conflict-title").textContent = ed.isNew ? "That key already exists" : "Changed by someone else";
    $("conflict-text").textContent = ed.isNew
      ? `A key named “${key}” already exists (revision ${theirs.meta.mod_revision}). Nothing was saved.`
      : `While you were editing, “${key}” changed to revision ${theirs.meta.mod_revision}. Nothing was saved: compare the two, then save yours over it or take theirs.`;
    $("conflict-theirs-title").textContent = `On the server now (revision ${theirs.meta.mod_revision}, version ${theirs.meta.version})`;
    $("conflict-theirs").textContent = ed.binary || text === null ? toBase64(theirs.bytes) : text;
    $("save").textContent = `Save mine over revision ${theirs.meta.mod_revision}`;
  }
  ed.isNew = false;
  $("editor-notice").hidden = true;
  $("conflict-title").setAttribute("tabindex", "-1");
  $("conflict-title").focus();
}

$("conflict-take").addEventListener("click", () => {
  const ed = state.editing;
  if (!ed || !ed.theirs) return;
  const theirs = ed.theirs;
  closeEditor();
  state.open = theirs;
  state.mode = null;
  go(dirOf(theirs.key), theirs.key);
  renderOpen();
  $("edit").focus();
});

// ---------- live feed ----------

function closeFeed() {
  clearTimeout(state.feedTimer);
  if (state.feed) state.feed.close();
  state.feed = null;
}

function connectFeed() {
  closeFeed();
  // The browser resumes a dropped stream by itself with Last-Event-ID; a stream we
  // open again ourselves resumes from the revision after the last one seen.
  const url = state.lastId != null ? `/v1/watch?start_revision=${state.lastId + 1}` : "/v1/watch";
  const es = new EventSource(url);
  state.feed = es;
  setConn();
  es.addEventListener("open", () => setFeedDropped(false));
  es.addEventListener("progress", (ev) => {
    const frame = JSON.parse(ev.data);
    state.lastId = frame.revision;
    seeRevision(frame.revision);
  });
  es.addEventListener("put", onChange);
  es.addEventListener("delete", onChange);
  es.addEventListener("error", (ev) => {
    if (ev.data) return onFeedError(JSON.parse(ev.data)); // the server's last frame
    if (es !== state.feed) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (401, 403, 429, ...) or broken: the browser gave up; try again later.
      setFeedDropped(true, "Changes are not shown until it reconnects; it resumes where it stopped.");
      state.feed = null;
      state.feedTimer = setTimeout(async () => {
        try { await api("/ui/session"); connectFeed(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) state.feedTimer = setTimeout(connectFeed, RETRY_MS); }
      }, RETRY_MS);
    } else {
      setFeedDropped(true, "Changes are not shown until it reconnects; it resumes where it stopped.");
    }
    // Is it the feed, or the whole server?
    fetch("/healthz", { cache: "no-store" }).then((r) => setUnreachable(!r.ok && r.status >= 500), () => setUnreachable(true));
  });
}

async function onFeedError(frame) {
  if (frame.code === "compacted") {
    // The history to resume from is gone: read everything again, then follow from there.
    setFeedDropped(true, "The feed fell behind the kept history; the page reloaded the keys.");
    closeFeed();
    state.lastId = null;
    await refresh();
    state.lastId = state.listRevision;
    connectFeed();
  } else {
    setFeedDropped(true, frame.code === "shutting_down"
      ? "The server is restarting; the feed resumes where it stopped."
      : "Changes are not shown until it reconnects; it resumes where it stopped.");
  }
}

function onChange(ev) {
  const frame = JSON.parse(ev.data);
  state.lastId = frame.revision;
  seeRevision(frame.revision);
  addToFeed(frame);
  applyToList(frame);
  applyToOpen(frame);
}

function addToFeed(frame) {
  if (state.feedPaused) {
    state.feedWaiting.push(frame);
    if (state.feedWaiting.length > FEED_KEEP) state.feedWaiting.shift();
    $("feed-state").textContent = `paused, ${plural(state.feedWaiting.length, "change", "changes")} waiting`;
    return;
  }
  const list = $("feed-list");
  const li = document.createElement("li");
  li.dataset.revision = frame.revision;
  li.dataset.kind = frame.type;
  li.dataset.key = frame.key;
  const rev = document.createElement("span");
  rev.className = "rev";
  rev.textContent = "#" + frame.revision.toLocaleString("en");
  const kind = document.createElement("span");
  kind.className = "kind-" + frame.type;
  kind.textContent = frame.type;
  const a = document.createElement("a");
  a.href = link(dirOf(frame.key), frame.key);
  a.textContent = frame.key;
  li.append(rev, kind, a);
  list.prepend(li);
  while (list.children.length > FEED_KEEP) list.lastElementChild.remove();
  $("feed-empty").hidden = true;
}

$("feed-pause").addEventListener("click", () => {
  state.feedPaused = !state.feedPaused;
  $("feed-pause").setAttribute("aria-pressed", String(state.feedPaused));
  $("feed-pause").textContent = state.feedPaused ? "Resume" : "Pause";
  if (!state.feedPaused) {
    const waiting = state.feedWaiting;
    state.feedWaiting = [];
    for (const frame of waiting) addToFeed(frame);
  }
  $("feed-state").textContent = state.feedPaused ? "paused" : "live";
});

$("feed-clear").addEventListener("click", () => {
  $("feed-list").replaceChildren();
  state.feedWaiting = [];
  $("feed-empty").hidden = false;
});

function upsertKeyRow(key, { revision, version, size }) {
  const name = key.slice(state.prefix.length);
  state.rows.set(name, { kind: "key", name, key, mod_revision: revision, version, size });
  scheduleRender(name);
}

async function applyToList(frame) {
  if (!state.session || !frame.key.startsWith(state.prefix)) return;
  const name = frame.key.slice(state.prefix.length);
  const folder = folderOf(name);
  if (frame.type === "put") {
    if (folder) {
      if (state.rows.has(folder) || !loaded(folder)) return;
      state.rows.set(folder, { kind: "folder", name: folder });
      scheduleRender(folder);
    } else if (state.rows.has(name) || loaded(name)) {
      upsertKeyRow(frame.key, { revision: frame.revision, version: frame.version, size: entrySize(frame) });
    }
  } else if (folder) {
    if (!state.rows.has(folder)) return;
    // The folder goes once its last key does.
    try {
      const q = new URLSearchParams({ prefix: state.prefix + folder, limit: "1" });
      const page = await (await api("/v1/kv?" + q)).json();
      if (page.entries.length === 0 && !page.next) { state.rows.delete(folder); scheduleRender(); }
    } catch (_) { /* the banner says it if the server is gone */ }
  } else if (state.rows.delete(name)) {
    scheduleRender();
  }
}

function applyToOpen(frame) {
  const open = state.open;
  // (A revision already shown is our own save coming back.)
  if (open && open.key === frame.key && !(open.meta && frame.revision <= open.meta.mod_revision)) {
    state.open = frame.type === "put"
      ? {
        key: open.key, bytes: frameBytes(frame), deleted: false, updatedAt: frame.revision,
        meta: { mod_revision: frame.revision, create_revision: frame.create_revision, version: frame.version },
      }
      : { key: open.key, bytes: new Uint8Array(), meta: null, deleted: true, deletedAt: frame.revision };
    if (!state.editing) renderOpen();
  }
  const v = state.versions;
  // A change after the versions shown (when they run to the present).
  if (v && v.key === frame.key && !v.next && !(v.events.length && frame.revision <= v.events[v.events.length - 1].revision)) {
    v.events.push(frame);
    renderVersions();
  }
  const ed = state.editing;
  if (ed && ed.key === frame.key) {
    // The editor keeps what was typed; the save (still against the revision the
    // edit started from) will show both versions.
    const n = $("editor-notice");
    n.hidden = false;
    n.textContent = frame.type === "put"
      ? `Someone changed this key (revision ${frame.revision}) while you edit: saving will show both versions first.`
      : `Someone deleted this key (revision ${frame.revision}) while you edit: saving will show you first.`;
  }
}

// ---------- versions ----------

// The open key's changes within the kept history (GET /v1/history/KEY), oldest first.
async function loadVersions(key, more = false) {
  const q = new URLSearchParams({ limit: "100" });
  if (more && state.versions && state.versions.next) q.set("after", String(state.versions.next));
  let page;
  try {
    page = await (await api("/v1/history/" + encodeURIComponent(key) + "?" + q)).json();
  } catch (e) {
    if (e instanceof ApiError && e.code === "compacted" && !more) {
      // Compacted between two pages: the whole history again.
      return loadVersions(key);
    }
    failed("Reading the versions of " + key, e);
    return;
  }
  if (here().key !== key) return;
  if (!more || !state.versions || state.versions.key !== key) {
    state.versions = { key, events: [], next: null, shown: null, oldest: page.oldest_revision };
  }
  state.versions.events.push(...page.events);
  state.versions.next = page.next ?? null;
  renderVersions();
}

function renderVersions() {
  const v = state.versions;
  $("versions").hidden = !v;
  if (!v) return;
  const events = v.events;
  $("versions-notice").textContent = events.length === 0
    ? `No change of this key since revision ${Number(v.oldest).toLocaleString("en")}, the oldest kept.`
    : `${events.length.toLocaleString("en")} change${events.length === 1 ? "" : "s"} since revision ${Number(v.oldest).toLocaleString("en")}, the oldest kept.`;
  const rows = $("versions-rows");
  rows.replaceChildren();
  events.forEach((ev, i) => {
    const tr = document.createElement("tr");
    tr.dataset.revision = String(ev.revision);
    if (i === events.length - 1 && !v.next) tr.className = "current";
    const cells = [
      ev.revision.toLocaleString("en"),
      ev.type,
      ev.type === "put" ? ev.version.toLocaleString("en") : "",
      ev.type === "put" ? formatSize(entrySize(ev)) : "",
    ];
    cells.forEach((text, c) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (c === 1) td.className = "kind-" + ev.type;
      tr.append(td);
    });
    const actions = document.createElement("td");
    const view = document.createElement("button");
    view.type = "button";
    view.className = "version-view";
    view.textContent = "View";
    view.setAttribute("aria-label", `View revision ${ev.revision}`);
    view.addEventListener("click", () => showVersion(i, false));
    actions.append(view);
    if (i > 0) {
      const diff = document.createElement("button");
      diff.type = "button";
      diff.className = "version-diff";
      diff.textContent = "Diff";
      diff.setAttribute("aria-label", `Difference between revision ${events[i - 1].revision} and ${ev.revision}`);
      diff.addEventListener("click", () => showVersion(i, true));
      actions.append(diff);
    }
    tr.append(actions);
    rows.append(tr);
  });
  $("versions-more").hidden = !v.next;
  if (v.shown) showVersion(v.shown.index, v.shown.diff);
  else $("version-shown").hidden = true;
}

$("versions-more").addEventListener("click", () => {
  if (state.versions) loadVersions(state.versions.key, true);
});

// The bytes a change left (nothing for a delete).
const versionBytes = (ev) => (ev && ev.type === "put" ? frameBytes(ev) : new Uint8Array());

// Shows version `i`, or the difference between the one before it and it.
function showVersion(i, diff) {
  const v = state.versions;
  const ev = v && v.events[i];
  if (!ev) return;
  v.shown = { index: i, diff };
  const pre = $("version-value");
  pre.className = "";
  pre.replaceChildren();
  $("version-shown").hidden = false;
  const what = ev.type === "put" ? `put, version ${ev.version}` : "delete";
  if (!diff) {
    $("version-title").textContent = `Revision ${ev.revision.toLocaleString("en")} (${what})`;
    if (ev.type === "delete") { pre.textContent = "The key was deleted at this revision."; return; }
    const bytes = versionBytes(ev);
    const text = decodeText(bytes);
    if (text === null) { pre.className = "hex"; pre.textContent = hexDump(bytes); }
    else pre.textContent = prettyJson(text) ?? text;
    return;
  }
  const before = v.events[i - 1];
  $("version-title").textContent =
    `Revision ${before.revision.toLocaleString("en")} → ${ev.revision.toLocaleString("en")} (${what})`;
  const [a, b] = [versionBytes(before), versionBytes(ev)];
  const [ta, tb] = [decodeText(a), decodeText(b)];
  if (ta === null || tb === null) {
    pre.textContent = `Binary values: ${formatSize(a.length)} → ${formatSize(b.length)}` +
      (a.length === b.length && a.every((x, k) => x === b[k]) ? ", the same bytes." : ", different bytes.");
    return;
  }
  for (const [kind, line] of lineDiff(ta, tb)) {
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = (kind === "added" ? "+ " : kind === "removed" ? "- " : "  ") + line;
    pre.append(span);
  }
}

// The lines of `a` and `b` as ["same" | "removed" | "added", line], in order (a
// longest common subsequence; values over 2,000 lines are compared as wholes).
function lineDiff(a, b) {
  const x = a === "" ? [] : a.split("\n");
  const y = b === "" ? [] : b.split("\n");
  if (x.length * y.length > 4_000_000) {
    return a === b ? x.map((l) => ["same", l]) : [...x.map((l) => ["removed", l]), ...y.map((l) => ["added", l])];
  }
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push(["same", x[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(["removed", x[i++]]);
    else out.push(["added", y[j++]]);
  }
  while (i < n) out.push(["removed", x[i++]]);
  while (j < m) out.push(["added", y[j++]]);
  return out;
}

// Reads the folder and the open key again (after the server came back).
async function refresh() {
  if (!state.session) { await start(); return; }
  const key = here().key;
  await loadList();
  if (key != null && !state.editing) await openKey(key);
}

// ---------- keyboard ----------

document.addEventListener("keydown", (ev) => {
  const typing = ev.target.closest("input, textarea, [contenteditable]") || document.querySelector("dialog[open]");
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "/") { ev.preventDefault(); $("filter").focus(); }
});

// The skip link moves the focus itself: the address's "#" holds the folder and key.
document.querySelector(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  $("list-region").focus();
});
$("notice-message-close").addEventListener("click", () => { $("notice-message").hidden = true; });
$("retry").addEventListener("click", () => { clearTimeout(state.retryTimer); probe(); });

start();
