// Small DOM and formatting helpers. Every text goes in through textContent: nothing the
// database holds is ever parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function fmtInt(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
  if (ms >= 100) return Math.round(ms) + " ms";
  return ms.toFixed(1) + " ms";
}

export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return "now";
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace("Z", "").slice(0, 23);
}

// A JSON value in one line, cut at `max` characters.
export function jsonText(value, max = 160) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

// An entity's fields as "name: value" chips (a value that is not an object: as JSON).
export function fieldChips(data, max = 8) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) return h("code", {}, jsonText(data));
  const names = Object.keys(data);
  const chips = names.slice(0, max).map((name) =>
    h("span", { class: "chip", dataset: { field: name }, title: jsonText(data[name], 2000) },
      h("b", {}, name), ": ", jsonText(data[name], 80)));
  if (names.length > max) chips.push(h("span", { class: "chip more" }, `+${names.length - max} more`));
  return h("span", { class: "chips" }, chips);
}

// Pretty JSON, folded into <details> when long.
export function jsonBlock(value, summary = null) {
  const text = JSON.stringify(value, null, 2);
  const pre = h("pre", { class: "json" }, text);
  if (text.length < 200 && summary === null) return pre;
  return h("details", {}, h("summary", {}, summary ?? jsonText(value, 100)), pre);
}

export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}` }, text);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
