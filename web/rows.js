// How rows look: an entry of the current view, a row of the history, and
// stored values (text, or an envelope shown locked).

import { $, copyText, el, setTime } from "./dom.js";

export function flash(node) {
  node.classList.remove("flash");
  void node.offsetWidth; // restart the animation
  node.classList.add("flash");
}

/**
 * The key id of an envelope (`e1.<kid>.<payload>`), null for a value that
 * starts with `e1.` but is not one, undefined for plain text.
 */
export function envelopeKid(text) {
  if (typeof text !== "string" || !text.startsWith("e1.")) return undefined;
  const m = /^e1\.([0-9a-f]{8})\./.exec(text);
  return m ? m[1] : null;
}

/**
 * Shows a stored value: text as text, an envelope as locked content with
 * its key id (never its base64: the atems hold the key, not the viewer).
 */
export function setContent(node, text, placeholder = "") {
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

export function entryNode(row) {
  const node = $("entry-template").content.firstElementChild.cloneNode(true);
  const id = node.querySelector(".entry-no");
  id.addEventListener("click", () => copyText(id.textContent, id));
  node.addEventListener("animationend", () => node.classList.remove("flash"));
  fillEntry(node, row);
  return node;
}

export function fillEntry(node, row) {
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

export function historyNode(row) {
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
