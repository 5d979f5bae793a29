// The page's chrome: which view shows, the notice bar, the connection
// badge and the error view. Pure DOM, no application state.

import { $, show } from "./dom.js";

const VIEWS = ["loading", "signin-view", "error-view", "vaults-view", "vault-view"];

export function showView(id) {
  for (const view of VIEWS) show($(view), view === id);
}

export function notice(text) {
  $("notice-text").textContent = text;
  show($("notice"), true);
}

export function clearNotice() {
  show($("notice"), false);
  $("notice-text").textContent = "";
}

export function setConn(state, detail = "") {
  const conn = $("conn");
  conn.dataset.state = state;
  $("conn-state").textContent = state;
  $("conn-detail").textContent = detail;
  conn.title = detail ? `${state} (${detail})` : state;
  document.body.dataset.conn = state;
}

export function showError(title, text, reason) {
  showView("error-view");
  $("error-title").textContent = title;
  $("error-text").textContent = text;
  $("error-view").dataset.reason = reason;
  document.title = `${title} · vault-relay`;
}
