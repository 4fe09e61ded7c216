// DOM helpers. Text always goes in through textContent: nothing from the server or the
// user is ever parsed as HTML.

/**
 * el("div", { class: "row", data: { seq: 3 }, attrs: { title: "x" }, on: { click } }, child, "text")
 */
export function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  if (options.class) node.className = options.class;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.data ?? {})) {
    if (value !== undefined && value !== null) node.dataset[name] = String(value);
  }
  for (const [name, value] of Object.entries(options.attrs ?? {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const [name, handler] of Object.entries(options.on ?? {})) node.addEventListener(name, handler);
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function $(selector, root = document) {
  const node = root.querySelector(selector);
  if (!node) throw new Error(`console markup is missing ${selector}`);
  return node;
}

/** JSON for display: pretty, and never longer than `limit` characters. */
export function pretty(value, limit = 4000) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > limit ? `${text.slice(0, limit)}… (${text.length - limit} more characters)` : text;
}

export function shortTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
}

export function shortId(id) {
  const text = String(id ?? "");
  return text.length > 18 ? `${text.slice(0, 14)}…${text.slice(-4)}` : text;
}
