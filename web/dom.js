// Small DOM helpers. Data only ever reaches the page through textContent
// and attributes, never as markup.

export const $ = (id) => document.getElementById(id);

/** `el("li", {class: "x", "data-seq": 3}, "text", child)` */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function show(node, visible = true) {
  node.hidden = !visible;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** Fills a <time> element: short text, full date on hover. */
export function setTime(node, iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    node.textContent = "";
    return;
  }
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  node.textContent = (sameDay ? timeFormat : dateTimeFormat).format(date);
  node.dateTime = date.toISOString();
  node.title = fullFormat.format(date);
}

/** Copies text to the clipboard and marks the button for a moment. */
export async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    const area = el("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
  }
  if (button) {
    button.classList.remove("copied", "copy-failed");
    // Restart the feedback animation on repeated clicks.
    void button.offsetWidth;
    button.classList.add(ok ? "copied" : "copy-failed");
    clearTimeout(button._copyTimer);
    button._copyTimer = setTimeout(() => button.classList.remove("copied", "copy-failed"), 1400);
  }
  return ok;
}
