// One vault's live stream: a fresh single-use ticket per connection, resume
// by seq and epoch, and reconnection with backoff until told to stop.

import { api, clientId, seg } from "./api.js";

/** Close codes the relay uses (docs/stream.md). */
const CLOSE_GOING_AWAY = 1001;
const CLOSE_REVOKED = 4001;

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
/** Failed attempts in a row after which the indicator says offline. */
const OFFLINE_AFTER = 5;

/**
 * Callbacks:
 * - resume(): {since, epoch} to resume from (since null: start at the head)
 * - onFrame(frame): every parsed frame, in order
 * - onState(state, detail): "connecting" | "live" | "reconnecting" | "offline"
 * - onRevoked(message): the credential no longer works; the stream has stopped
 * - onFatal(message): the vault cannot be watched (gone, or access refused)
 */
export class VaultStream {
  constructor(vaultId, atemId, callbacks) {
    this.vaultId = vaultId;
    this.atemId = atemId;
    this.cb = callbacks;
    this.ws = null;
    this.stopped = false;
    this.failures = 0;
    this.everLive = false;
    this.timer = null;
    this.countdown = null;
    this.generation = 0;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) this.state("offline", "no network");
    };
    this.onVisible = () => {
      if (document.visibilityState === "visible" && !this.ws) this.reconnectNow();
    };
  }

  start() {
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.generation += 1;
    this.clearTimers();
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    document.removeEventListener("visibilitychange", this.onVisible);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "viewer closed");
  }

  state(name, detail = "") {
    if (!this.stopped) this.cb.onState(name, detail);
  }

  clearTimers() {
    clearTimeout(this.timer);
    clearInterval(this.countdown);
    this.timer = null;
    this.countdown = null;
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    this.clearTimers();
    this.connect();
  }

  async connect() {
    if (this.stopped) return;
    const generation = ++this.generation;
    this.clearTimers();
    if (this.failures === 0) {
      this.state(this.everLive ? "reconnecting" : "connecting");
    }
    let ticket;
    try {
      const reply = await api("POST", `/api/vault/${seg(this.vaultId)}/stream-ticket`);
      ticket = reply.ticket;
    } catch (err) {
      if (generation !== this.generation || this.stopped) return;
      if (err.status === 401) return this.revoked(err.message);
      if (err.status === 403 || err.status === 404) {
        this.stopped = true;
        this.cb.onFatal(err.message);
        return;
      }
      return this.retry(false);
    }
    if (generation !== this.generation || this.stopped) return;

    const params = new URLSearchParams({ id: clientId(), ticket });
    const { since, epoch } = this.cb.resume();
    if (since !== null && since !== undefined) params.set("since", String(since));
    if (epoch) params.set("epoch", epoch);
    if (this.atemId) params.set("atem_id", this.atemId);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/api/vault/${seg(this.vaultId)}/stream?${params}`;

    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      return this.retry(false);
    }
    this.ws = ws;
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!frame || typeof frame.type !== "string") return;
      if (frame.type === "hello") {
        this.failures = 0;
        this.everLive = true;
        this.state("live");
      }
      this.cb.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (event.code === CLOSE_REVOKED) {
        return this.revoked(event.reason || "The credential was revoked or has expired.");
      }
      // 1001 (server going away): another relay, or this one restarted, is
      // usually ready at once; everything else backs off.
      this.retry(event.code === CLOSE_GOING_AWAY);
    };
    ws.onerror = () => {
      // A close event always follows; it decides what happens next.
    };
  }

  revoked(message) {
    this.stopped = true;
    this.clearTimers();
    this.cb.onRevoked(message);
  }

  retry(quick) {
    if (this.stopped) return;
    this.failures += 1;
    let delay;
    if (quick && this.failures === 1) {
      delay = 150 + Math.random() * 350;
    } else {
      const base = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (this.failures - 1));
      delay = base * (0.75 + Math.random() * 0.5);
    }
    if (!navigator.onLine) {
      // Wait for the network; the online event reconnects at once.
      this.state("offline", "no network");
      delay = Math.max(delay, MAX_DELAY_MS);
    }
    const due = Date.now() + delay;
    const show = () => {
      if (!navigator.onLine) return;
      const secs = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      const name = this.failures >= OFFLINE_AFTER ? "offline" : "reconnecting";
      this.state(name, secs > 0 ? `retry in ${secs}s` : "retrying…");
    };
    show();
    this.countdown = setInterval(show, 1000);
    this.timer = setTimeout(() => {
      clearInterval(this.countdown);
      this.countdown = null;
      this.connect();
    }, delay);
  }
}
