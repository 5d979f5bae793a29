// The viewer: sign-in (astation token, pairing, or a read-only link), the
// vault list, and one vault watched live.

import { api, ApiError, clientId, creds, seg } from "./api.js";
import { $, copyText, el, setTime, show } from "./dom.js";
import { VaultStream } from "./stream.js";

const VIEWS = ["loading", "signin-view", "error-view", "vaults-view", "vault-view"];
/** The name this browser shows in a vault's presence list. */
const ATEM_NAME = "viewer";
/** The hostname a browser session is opened with. */
const HOSTNAME = "web-viewer";
const PAIR_POLL_MS = 2000;

let page = null; // the open VaultPage
let pairing = null; // {id, timer}
let routeGeneration = 0;

// ---------------------------------------------------------------- chrome

function showView(id) {
  for (const view of VIEWS) show($(view), view === id);
}

function notice(text) {
  $("notice-text").textContent = text;
  show($("notice"), true);
}

function clearNotice() {
  show($("notice"), false);
  $("notice-text").textContent = "";
}

function setConn(state, detail = "") {
  const conn = $("conn");
  conn.dataset.state = state;
  $("conn-state").textContent = state;
  $("conn-detail").textContent = detail;
  conn.title = detail ? `${state} (${detail})` : state;
  document.body.dataset.conn = state;
}

function updateChrome() {
  const link = creds.link();
  const signedIn = Boolean(link || creds.session());
  show($("sign-out"), signedIn);
  $("sign-out").textContent = link ? "Close link" : "Sign out";
  show($("back-link"), !link);
}

function showError(title, text, reason) {
  showView("error-view");
  $("error-title").textContent = title;
  $("error-text").textContent = text;
  $("error-view").dataset.reason = reason;
  document.title = `${title} · vault-relay`;
}

/** The credential stopped working: a revoked or expired session or link. */
function credentialEnded(message) {
  const wasLink = Boolean(creds.link());
  leaveVault({ keepConn: true });
  setConn("offline", wasLink ? "link revoked" : "signed out");
  if (wasLink) {
    creds.clearLink();
    updateChrome();
    showError(
      "This link no longer works",
      "It was revoked or has expired. Ask whoever shared it for a new link.",
      "link-revoked",
    );
  } else {
    creds.clearSession();
    updateChrome();
    showSignin();
    notice(`You are signed out: ${message || "the session was revoked or has expired."}`);
  }
}

function failed(err) {
  if (err instanceof ApiError && err.status === 401) {
    credentialEnded(err.message);
  } else {
    notice(err.message || String(err));
  }
}

// --------------------------------------------------------------- routing

/** A link opened as `#vault=<id>&link=<secret>`: keep it, clear the bar. */
function takeLinkFromAddress() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const secret = params.get("link");
  if (!secret) return false;
  const vault = params.get("vault");
  history.replaceState(null, "", location.pathname + location.search);
  if (!vault) return false;
  creds.setLink(vault, secret);
  return true;
}

function hashVault() {
  return new URLSearchParams(location.hash.replace(/^#/, "")).get("vault");
}

function route() {
  routeGeneration += 1;
  leaveVault();
  stopPairing();
  updateChrome();
  const link = creds.link();
  if (link) return openVault(link.vault);
  if (!creds.session()) return showSignin();
  const vault = hashVault();
  if (vault) return openVault(vault);
  return showVaults();
}

// --------------------------------------------------------------- sign-in

function showSignin() {
  showView("signin-view");
  document.title = "Sign in · vault-relay";
  show($("pairing"), false);
  $("pair-start").disabled = false;
}

async function signInWithToken(event) {
  event.preventDefault();
  const input = $("token-input");
  const token = input.value.trim();
  // The token is used for this one request and then forgotten.
  input.value = "";
  if (!token) return;
  const button = $("token-submit");
  button.disabled = true;
  clearNotice();
  try {
    const reply = await api("POST", "/api/sessions", {
      body: { hostname: HOSTNAME },
      authorization: `Bearer ${token}`,
    });
    creds.setSession(reply.id);
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    route();
  } catch (err) {
    notice(
      err.status === 401
        ? "That token was not accepted. Check it and try again."
        : err.message,
    );
  } finally {
    button.disabled = false;
  }
}

function stopPairing() {
  if (pairing) clearInterval(pairing.timer);
  pairing = null;
}

async function startPairing() {
  stopPairing();
  clearNotice();
  const button = $("pair-start");
  button.disabled = true;
  let reply;
  try {
    reply = await api("POST", "/api/sessions", { body: { hostname: HOSTNAME }, authorization: false });
  } catch (err) {
    button.disabled = false;
    notice(err.message);
    return;
  }
  button.textContent = "Get a new code";
  button.disabled = false;
  $("pair-code").textContent = reply.otp;
  $("pair-session").textContent = reply.id;
  $("pair-command").textContent = `vault-relay session grant ${reply.id} ${reply.otp}`;
  const status = $("pair-status");
  status.dataset.status = "pending";
  const until = new Date(reply.expires_at);
  status.textContent = Number.isNaN(until.getTime())
    ? "Waiting for approval…"
    : `Waiting for approval… (the code works until ${until.toLocaleTimeString()})`;
  show($("pairing"), true);
  const id = reply.id;
  const poll = async () => {
    if (!pairing || pairing.id !== id) return;
    let state;
    try {
      state = (await api("GET", `/api/sessions/${seg(id)}/status`, { authorization: false })).status;
    } catch (err) {
      if (err.status === 0) return; // try again on the next tick
      state = "expired";
    }
    if (!pairing || pairing.id !== id) return;
    status.dataset.status = state;
    if (state === "granted") {
      stopPairing();
      creds.setSession(id);
      route();
    } else if (state !== "pending") {
      stopPairing();
      status.textContent =
        state === "denied"
          ? "The request was denied. Get a new code to try again."
          : `The request is ${state}. Get a new code to try again.`;
    }
  };
  pairing = { id, timer: setInterval(poll, PAIR_POLL_MS) };
}

async function signOut() {
  const link = creds.link();
  if (link) {
    creds.clearLink();
  } else {
    const id = creds.session();
    creds.clearSession();
    if (id) {
      api("DELETE", `/api/sessions/${seg(id)}`, { authorization: `session ${id}` }).catch(() => {});
    }
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  clearNotice();
  route();
}

// ------------------------------------------------------------ vault list

async function showVaults() {
  const generation = routeGeneration;
  showView("vaults-view");
  document.title = "Vaults · vault-relay";
  let vaults;
  try {
    vaults = await api("GET", "/api/vault");
  } catch (err) {
    if (generation === routeGeneration) failed(err);
    return;
  }
  if (generation !== routeGeneration) return;
  const list = $("vault-list");
  list.replaceChildren(
    ...vaults.map((v) =>
      el(
        "li",
        {},
        el(
          "a",
          { class: "vault-item", href: `#vault=${encodeURIComponent(v.vault_id)}`, "data-vault-id": v.vault_id },
          vaultSummaryNode(v.summary),
          el("code", { class: "vault-id", text: v.vault_id }),
        ),
      ),
    ),
  );
  show($("vaults-empty"), vaults.length === 0);
}

function vaultSummaryNode(summary) {
  const node = el("span", { class: "vault-summary" });
  setContent(node, summary, "(no summary)");
  return node;
}

// ------------------------------------------------------------- one vault

function openVault(vaultId) {
  page = new VaultPage(vaultId);
  page.open();
}

function leaveVault({ keepConn = false } = {}) {
  if (page) page.close();
  page = null;
  if (!keepConn) show($("conn"), false);
}

function flash(node) {
  node.classList.remove("flash");
  void node.offsetWidth; // restart the animation
  node.classList.add("flash");
}

/**
 * The key id of an envelope (`e1.<kid>.<payload>`), null for a value that
 * starts with `e1.` but is not one, undefined for plain text.
 */
function envelopeKid(text) {
  if (typeof text !== "string" || !text.startsWith("e1.")) return undefined;
  const m = /^e1\.([0-9a-f]{8})\./.exec(text);
  return m ? m[1] : null;
}

/**
 * Shows a stored value: text as text, an envelope as locked content with
 * its key id (never its base64: the atems hold the key, not the viewer).
 */
function setContent(node, text, placeholder = "") {
  const kid = envelopeKid(text);
  node.classList.toggle("locked", kid !== undefined);
  if (kid === undefined) {
    node.textContent = text || placeholder;
    delete node.dataset.kid;
    node.removeAttribute("title");
    return;
  }
  node.dataset.kid = kid || "";
  node.textContent = kid ? `🔒 encrypted · key ${kid}` : "🔒 encrypted · unreadable envelope";
  node.title = "Sealed by the atems; only they hold the key";
}

function entryNode(row) {
  const node = $("entry-template").content.firstElementChild.cloneNode(true);
  const id = node.querySelector(".entry-no");
  id.addEventListener("click", () => copyText(id.textContent, id));
  node.addEventListener("animationend", () => node.classList.remove("flash"));
  fillEntry(node, row);
  return node;
}

function fillEntry(node, row) {
  node.dataset.entryNo = row.entry_no;
  node.dataset.seq = row.seq;
  node.dataset.version = row.version;
  node.querySelector(".entry-no").textContent = `e${row.entry_no}`;
  const version = node.querySelector(".version");
  version.textContent = `v${row.version}`;
  version.classList.toggle("edited", row.version > 1);
  version.title = row.version > 1 ? `edited: version ${row.version}` : "first version";
  const writer = node.querySelector(".writer");
  writer.textContent = row.writer_id;
  writer.title = `written by ${row.writer_id}`;
  setTime(node.querySelector(".time"), row.created_at);
  setContent(node.querySelector(".content"), row.content);
}

function historyNode(row) {
  const id = el("button", { type: "button", class: "entry-no copy", title: "Copy the entry id", text: `e${row.entry_no}` });
  id.addEventListener("click", () => copyText(id.textContent, id));
  const time = el("time", { class: "time" });
  setTime(time, row.created_at);
  return el(
    "li",
    { class: "history-row", "data-seq": row.seq, "data-entry": row.entry_no, "data-version": row.version },
    el(
      "div",
      { class: "entry-head" },
      el("span", { class: "seq", title: "write sequence number", text: `#${row.seq}` }),
      id,
      el("span", { class: row.version > 1 ? "version edited" : "version", text: `v${row.version}` }),
      el("span", { class: "kind", text: row.version > 1 ? "edit" : "new" }),
      el("span", { class: "writer", text: row.writer_id }),
      time,
    ),
    contentNode(row.content),
  );
}

function contentNode(text) {
  const node = el("div", { class: "content" });
  setContent(node, text);
  return node;
}

class VaultPage {
  constructor(vaultId) {
    this.vaultId = vaultId;
    this.generation = routeGeneration;
    this.closed = false;
    this.stream = null;
    this.resetState();
    this.canManageLinks = false;
  }

  resetState() {
    this.epoch = this.epoch ?? null;
    this.lastSeq = 0;
    this.seen = new Set();
    this.rows = []; // every row, by seq
    this.byKey = new Map(); // "entry_no:version" -> {row, node} (history)
    this.current = new Map(); // entry_no -> newest row
    this.nodes = new Map(); // entry_no -> element
    $("entries").replaceChildren();
    $("history").replaceChildren();
    this.updateCounts();
  }

  live() {
    return !this.closed && page === this;
  }

  async open() {
    showView("vault-view");
    selectTab("current");
    $("summary").textContent = "";
    $("vault-id").textContent = this.vaultId;
    show($("read-only"), false);
    show($("share-toggle"), false);
    show($("share"), false);
    show($("share-result"), false);
    $("links").replaceChildren();
    this.setPresence({ watchers: [], count: 0 });
    show($("conn"), true);
    setConn("connecting");
    let info;
    let rows;
    try {
      info = await api("GET", `/api/vault/${seg(this.vaultId)}/info`);
      if (!this.live()) return;
      rows = await api("GET", `/api/vault/${seg(this.vaultId)}?history=true`);
    } catch (err) {
      if (!this.live()) return;
      if (err.status === 401) return credentialEnded(err.message);
      if (err.status === 403 || err.status === 404) {
        leaveVault();
        return showError("This vault is not available", err.message, "vault");
      }
      // The relay is unreachable for now: the stream keeps trying.
      notice(err.message);
    }
    if (!this.live()) return;
    if (info) {
      this.epoch = info.epoch;
      this.setSummary(info.summary);
      if (info.encryption) this.setEncryption(info.encryption);
      const readOnly = info.read_only_link || !info.can_write;
      show($("read-only"), readOnly);
      $("read-only").textContent = info.read_only_link ? "read-only link" : "read-only";
      this.canManageLinks = !info.read_only_link;
      show($("share-toggle"), this.canManageLinks);
    }
    for (const row of rows || []) this.apply(row, false);
    this.stream = new VaultStream(this.vaultId, ATEM_NAME, {
      // Always resume by seq: from 0 when nothing was loaded yet (the relay
      // was unreachable), so no row before the stream's head is missed.
      resume: () => ({ since: this.lastSeq, epoch: this.epoch }),
      onFrame: (frame) => this.onFrame(frame),
      onState: (state, detail) => {
        if (this.live()) setConn(state, detail);
      },
      onRevoked: (message) => {
        if (this.live()) credentialEnded(message);
      },
      onFatal: (message) => {
        if (!this.live()) return;
        leaveVault();
        showError("This vault is not available", message, "vault");
      },
    });
    this.stream.start();
  }

  close() {
    this.closed = true;
    if (this.stream) this.stream.stop();
    this.stream = null;
    $("entries").replaceChildren();
    $("history").replaceChildren();
    $("links").replaceChildren();
    $("summary").textContent = "";
  }

  onFrame(frame) {
    if (!this.live()) return;
    switch (frame.type) {
      case "hello":
        this.setSummary(frame.summary);
        if (!this.epoch) this.epoch = frame.epoch;
        break;
      case "entry":
        this.apply(frame, true);
        break;
      case "summary":
        this.setSummary(frame.summary);
        break;
      case "presence":
        this.setPresence(frame);
        break;
      case "encryption":
        this.setEncryption(frame);
        break;
      case "reset":
        // The store started over: drop everything; the relay replays from 0.
        this.epoch = frame.epoch;
        this.resetState();
        break;
      case "caught_up":
      default:
        break; // frame types we do not know are ignored
    }
  }

  setSummary(summary) {
    setContent($("summary"), summary, "(no summary)");
    $("summary").classList.toggle("placeholder", !summary);
    document.title = `${envelopeKid(summary) === undefined ? summary || "(no summary)" : "Encrypted vault"} · vault-relay`;
  }

  /** The work session's encryption mode, from the vault info or a frame. */
  setEncryption({ mode, kid }) {
    const badge = $("encryption");
    const names = { off: "not encrypted", enabling: "encrypting…", on: "encrypted", disabling: "decrypting…" };
    if (!(mode in names)) return;
    badge.dataset.mode = mode;
    badge.dataset.kid = kid || "";
    badge.textContent = kid ? `${names[mode]} · key ${kid}` : names[mode];
    badge.classList.toggle("badge-muted", mode === "off");
    badge.classList.toggle("badge-ok", mode !== "off");
    badge.title = `End-to-end encryption of this work session: ${mode}`;
  }

  setPresence(frame) {
    const count = Number(frame.count) || 0;
    const names = [];
    for (const w of frame.watchers || []) {
      if (w && typeof w.atem_id === "string" && !names.includes(w.atem_id)) names.push(w.atem_id);
    }
    const presence = $("presence");
    presence.dataset.count = count;
    $("presence-count").textContent = String(count);
    $("presence-label").textContent = "watching";
    const listed = names.slice(0, 5).join(", ");
    const more = count > names.slice(0, 5).length ? ` +${count - names.slice(0, 5).length}` : "";
    $("presence-names").textContent = listed ? `${listed}${more}` : "";
    presence.title = names.length ? `Watching now: ${names.join(", ")}` : "Nobody is watching";
  }

  /** Adds one row (from REST or the stream), once, wherever it belongs. */
  apply(row, fromStream) {
    if (!row || typeof row.seq !== "number" || this.seen.has(row.seq)) return;
    this.seen.add(row.seq);
    if (row.seq > this.lastSeq) this.lastSeq = row.seq;

    // A row seen before under another seq was rewritten (encryption turned
    // on or off): rows are keyed by (entry_no, version), so the new content
    // replaces the old in place and the row moves to its new seq.
    const key = `${row.entry_no}:${row.version}`;
    const known = this.byKey.get(key);
    if (known) {
      const at = this.rows.indexOf(known.row);
      if (at >= 0) this.rows.splice(at, 1);
      known.node.remove();
    }

    // History: every row in seq order (rows normally arrive in order).
    const history = $("history");
    const node = historyNode(row);
    this.byKey.set(key, { row, node });
    let at = this.rows.length;
    while (at > 0 && this.rows[at - 1].seq > row.seq) at -= 1;
    this.rows.splice(at, 0, row);
    history.insertBefore(node, history.children[at] || null);

    // Current view: the newest version of each entry, by entry number.
    const prev = this.current.get(row.entry_no);
    if (!prev || row.version >= prev.version) {
      this.current.set(row.entry_no, row);
      let entry = this.nodes.get(row.entry_no);
      if (entry) {
        fillEntry(entry, row);
      } else {
        entry = entryNode(row);
        this.nodes.set(row.entry_no, entry);
        const list = $("entries");
        let before = null;
        for (let n = list.lastElementChild; n; n = n.previousElementSibling) {
          if (Number(n.dataset.entryNo) > row.entry_no) before = n;
          else break;
        }
        list.insertBefore(entry, before);
      }
      if (fromStream) flash(entry);
    }
    if (fromStream) flash(node);
    this.updateCounts();
  }

  updateCounts() {
    const entries = this.current ? this.current.size : 0;
    const rows = this.rows ? this.rows.length : 0;
    $("entry-count").textContent =
      entries === 0 ? "" : `${entries} ${entries === 1 ? "entry" : "entries"} · ${rows} ${rows === 1 ? "write" : "writes"}`;
    show($("entries-empty"), entries === 0);
  }

  // ----------------------------------------------------- read-only links

  async loadLinks() {
    let links;
    try {
      links = await api("GET", `/api/vault/${seg(this.vaultId)}/links`);
    } catch (err) {
      if (this.live()) failed(err);
      return;
    }
    if (!this.live()) return;
    const now = Date.now();
    const list = $("links");
    const items = links
      .slice()
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)))
      .map((link) => {
        const expired = new Date(link.expires_at).getTime() <= now;
        const state = link.revoked ? "revoked" : expired ? "expired" : "active";
        const expires = el("time", { class: "time" });
        setTime(expires, link.expires_at);
        const item = el(
          "li",
          { class: `link-row ${state}`, "data-link-id": link.link_id, "data-state": state },
          el("code", { class: "link-id", text: link.link_id }),
          el("span", { class: `badge ${state === "active" ? "badge-ok" : "badge-muted"}`, text: state }),
          el("span", { class: "muted small" }, state === "active" ? "expires " : "was valid until ", expires),
        );
        if (state === "active") {
          const revoke = el("button", { type: "button", class: "btn btn-small btn-danger revoke", text: "Revoke" });
          revoke.addEventListener("click", () => this.revokeLink(link.link_id, revoke));
          item.append(revoke);
        }
        return item;
      });
    list.replaceChildren(...items);
  }

  async createLink() {
    const button = $("share-link");
    button.disabled = true;
    try {
      const reply = await api("POST", `/api/vault/${seg(this.vaultId)}/links`, { body: {} });
      if (!this.live()) return;
      $("share-url").value = reply.url;
      show($("share-result"), true);
      $("share-url").select();
      await this.loadLinks();
    } catch (err) {
      if (this.live()) failed(err);
    } finally {
      button.disabled = false;
    }
  }

  async revokeLink(linkId, button) {
    button.disabled = true;
    try {
      await api("DELETE", `/api/vault/${seg(this.vaultId)}/links/${seg(linkId)}`);
    } catch (err) {
      if (this.live()) failed(err);
    }
    if (this.live()) await this.loadLinks();
  }
}

function selectTab(which) {
  const history = which === "history";
  $("tab-current").setAttribute("aria-selected", String(!history));
  $("tab-history").setAttribute("aria-selected", String(history));
  show($("entries"), !history);
  show($("history"), history);
}

// ----------------------------------------------------------------- wiring

function wire() {
  $("token-form").addEventListener("submit", signInWithToken);
  $("pair-start").addEventListener("click", startPairing);
  $("pair-copy").addEventListener("click", (e) => copyText($("pair-command").textContent, e.currentTarget));
  $("sign-out").addEventListener("click", signOut);
  $("notice-close").addEventListener("click", clearNotice);
  $("error-action").addEventListener("click", () => {
    clearNotice();
    route();
  });
  $("vaults-refresh").addEventListener("click", () => route());
  $("home-link").addEventListener("click", (e) => {
    e.preventDefault();
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    route();
  });
  $("back-link").addEventListener("click", (e) => {
    e.preventDefault();
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    route();
  });
  $("copy-vault-id").addEventListener("click", (e) => copyText($("vault-id").textContent, e.currentTarget));
  $("tab-current").addEventListener("click", () => selectTab("current"));
  $("tab-history").addEventListener("click", () => selectTab("history"));
  $("share-toggle").addEventListener("click", () => {
    const open = $("share").hidden;
    show($("share"), open);
    $("share-toggle").setAttribute("aria-expanded", String(open));
    if (open && page) page.loadLinks();
  });
  $("share-link").addEventListener("click", () => page && page.createLink());
  $("share-copy").addEventListener("click", (e) => copyText($("share-url").value, e.currentTarget));
  window.addEventListener("hashchange", () => {
    takeLinkFromAddress();
    clearNotice();
    route();
  });
}

clientId();
takeLinkFromAddress();
wire();
route();
