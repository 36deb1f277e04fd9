// Building the page from data: every value goes in as text (textContent, text nodes), never as HTML.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

export function when(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toLocaleString();
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

// A status line: text, and whether it reports a failure.
export function say(node, text, failed = false) {
  node.textContent = text;
  node.classList.toggle("error", failed);
}

// Focus a heading or panel after it changed, so keyboard and screen-reader users follow along.
export function focus(node) {
  node.focus({ preventScroll: false });
}
