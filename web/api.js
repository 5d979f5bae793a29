// Talking to the relay: credentials (kept only in sessionStorage, so they
// die with the tab), the per-tab client id, and JSON requests.

const KEY_CLIENT = "vr.client";
const KEY_SESSION = "vr.session";
const KEY_LINK = "vr.link";

function randomHex(bytes) {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** This tab's client id (`viewer-<hex>`), made once and kept for the tab. */
export function clientId() {
  let id = sessionStorage.getItem(KEY_CLIENT);
  if (!id) {
    id = `viewer-${randomHex(8)}`;
    sessionStorage.setItem(KEY_CLIENT, id);
  }
  return id;
}

/** The credentials this tab holds. A read-only link wins over a session. */
export const creds = {
  session() {
    return sessionStorage.getItem(KEY_SESSION);
  },
  setSession(id) {
    sessionStorage.setItem(KEY_SESSION, id);
  },
  clearSession() {
    sessionStorage.removeItem(KEY_SESSION);
  },
  link() {
    try {
      const value = JSON.parse(sessionStorage.getItem(KEY_LINK) || "null");
      return value && value.vault && value.secret ? value : null;
    } catch {
      return null;
    }
  },
  setLink(vault, secret) {
    sessionStorage.setItem(KEY_LINK, JSON.stringify({ vault, secret }));
  },
  clearLink() {
    sessionStorage.removeItem(KEY_LINK);
  },
  /** The Authorization header for vault requests, or null when signed out. */
  authorization() {
    const link = this.link();
    if (link) return `link ${link.secret}`;
    const session = this.session();
    return session ? `session ${session}` : null;
  },
};

/** A failed request: `status` is 0 when the relay could not be reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/**
 * A JSON request. Vault routes get `?id=<client id>` and the tab's
 * credential; `authorization` overrides the header (or `false` for none).
 */
export async function api(method, path, { body, authorization } = {}) {
  let url = path;
  if (path.startsWith("/api/vault")) {
    url += `${path.includes("?") ? "&" : "?"}id=${encodeURIComponent(clientId())}`;
  }
  const headers = { Accept: "application/json" };
  const auth = authorization === undefined ? creds.authorization() : authorization;
  if (auth) headers.Authorization = auth;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, "Cannot reach the relay. Check your connection.");
  }
  let data = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message =
      data && typeof data.error === "string" ? data.error : `The relay answered ${response.status}.`;
    throw new ApiError(response.status, message);
  }
  return data;
}

/** Path segment encoding for ids taken from the address bar. */
export function seg(value) {
  return encodeURIComponent(value);
}
