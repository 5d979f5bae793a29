// One vault page: the header (summary, encryption, presence), the current
// view and the history, kept live from the stream, and the read-only links
// a session user shares from it.

import { api, seg } from "./api.js";
import { $, el, setTime, show } from "./dom.js";
import { notice, setConn, showView } from "./chrome.js";
import { entryNode, envelopeKid, fillEntry, flash, historyNode, setContent } from "./rows.js";
import { VaultStream } from "./stream.js";

/** The name this browser shows in a vault's presence list. */
const ATEM_NAME = "viewer";

/**
 * One vault, open in the page: loaded over REST, then followed live.
 * `app` is what the page around it decides: `isOpen(page)` (is this page
 * still the one on screen), `ended(message)` (the credential stopped
 * working), `failed(err)` (an action failed) and `unavailable(message)`
 * (this vault cannot be shown).
 */
export class VaultPage {
  constructor(vaultId, app) {
    this.vaultId = vaultId;
    this.app = app;
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
    return !this.closed && this.app.isOpen(this);
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
      if (err.status === 401) return this.app.ended(err.message);
      if (err.status === 403 || err.status === 404) return this.app.unavailable(err.message);
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
        if (this.live()) this.app.ended(message);
      },
      onFatal: (message) => {
        if (this.live()) this.app.unavailable(message);
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
      if (this.live()) this.app.failed(err);
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
      if (this.live()) this.app.failed(err);
    } finally {
      button.disabled = false;
    }
  }

  async revokeLink(linkId, button) {
    button.disabled = true;
    try {
      await api("DELETE", `/api/vault/${seg(this.vaultId)}/links/${seg(linkId)}`);
    } catch (err) {
      if (this.live()) this.app.failed(err);
    }
    if (this.live()) await this.loadLinks();
  }
}

export function selectTab(which) {
  const history = which === "history";
  $("tab-current").setAttribute("aria-selected", String(!history));
  $("tab-history").setAttribute("aria-selected", String(history));
  show($("entries"), !history);
  show($("history"), history);
}
