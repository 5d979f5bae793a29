// The viewer: sign-in (astation token, pairing, or a read-only link), the
// vault list, and one vault watched live.

import { api, ApiError, clientId, creds, seg } from "./api.js";
import { $, copyText, el, show } from "./dom.js";
import { clearNotice, notice, setConn, showError, showView } from "./chrome.js";
import { setContent } from "./rows.js";
import { VaultPage, selectTab } from "./vault.js";

/** The hostname a browser session is opened with. */
const HOSTNAME = "web-viewer";
const PAIR_POLL_MS = 2000;

let page = null; // the open VaultPage
let pairing = null; // {id, timer}
let routeGeneration = 0;

// ---------------------------------------------------------------- chrome

function updateChrome() {
  const link = creds.link();
  const signedIn = Boolean(link || creds.session());
  show($("sign-out"), signedIn);
  $("sign-out").textContent = link ? "Close link" : "Sign out";
  show($("back-link"), !link);
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

/** What a vault page asks of the page around it. */
const vaultApp = {
  isOpen: (candidate) => page === candidate,
  ended: (message) => credentialEnded(message),
  failed: (err) => failed(err),
  unavailable: (message) => {
    leaveVault();
    showError("This vault is not available", message, "vault");
  },
};

function openVault(vaultId) {
  page = new VaultPage(vaultId, vaultApp);
  page.open();
}

function leaveVault({ keepConn = false } = {}) {
  if (page) page.close();
  page = null;
  if (!keepConn) show($("conn"), false);
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
