// The admin API: the token lives in sessionStorage (this tab only) and goes in the
// Authorization header, as the server's admin routes expect.

import { byId, clear, el, focus, say } from "./dom.js";

// The console of a brand on a server with several (/b/NAME/console) calls that brand's routes.
export const BRAND = (location.pathname.match(/^\/b\/[^/]+/) || [""])[0];
const KEY = "bot-console-token"; // one for every brand's console: a server-wide token opens them all

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

let onSignedOut = () => {};
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

// What a person should read for an error answer.
export function explain(error) {
  if (!(error instanceof ApiError)) return "Can't reach the server: " + error.message;
  if (error.status === 401) return "That admin token is wrong. Check BOT_ADMIN_TOKEN on the server and try again.";
  if (error.status === 403)
    return /another brand/.test(error.message)
      ? "That admin token belongs to another brand: use this brand's BOT_ADMIN_TOKEN_<NAME>, or the server-wide one."
      : "The server's admin routes are closed: set BOT_ADMIN_TOKEN where the server runs.";
  if (error.status === 429)
    return "Too many wrong tokens or requests from this address: try again in " + (error.retryAfter ? error.retryAfter + " s." : "a minute.");
  return error.message;
}

// `prefix`: whose routes; this console's brand by default, "" for the server's own (the brand list).
export async function api(method, path, body, given, prefix = BRAND) {
  const headers = { Authorization: "Bearer " + (given || token() || "") };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(prefix + path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && typeof data.error === "string" && data.error) || "the server answered " + response.status;
    const error = new ApiError(response.status, message, response.headers.get("Retry-After"));
    if (response.status === 401 && !given) {
      setToken(null);
      onSignedOut(explain(error));
    }
    throw error;
  }
  return data;
}

export function path(...parts) {
  return "/api/" + parts.map(encodeURIComponent).join("/");
}

// The ids of a panel's list and detail view, named after the panel (index.html): `name`-count and
// `name`-list for the list, `name`-view, `name`-title and the status line `status` for the detail.
export function panelIds(name, status = name + "-result") {
  return { count: name + "-count", list: name + "-list", view: name + "-view", title: name + "-title", status };
}

// A panel's list (`count` and `list`: the ids of its count line and its list), filled from the API: a count line (or why nothing came), then one row per item.
// `load` fetches the items; `counted(n)` says how many; `empty` says there are none.
export async function showList({ count, list, load, counted, empty, row, busy }) {
  const status = byId(count);
  const rows = clear(byId(list));
  if (busy) say(status, busy);
  try {
    const items = await load();
    say(status, items.length ? counted(items.length) : empty);
    for (const item of items) rows.append(row(item));
  } catch (error) {
    say(status, explain(error), true);
  }
}

// A panel's refresh: its list (`ids`: panelIds) filled with one `row` per item of `field` in the
// answer to GET `url`; `counted` and `empty` as in showList.
export function listRefresher(ids, url, field, row, { counted, empty }) {
  return () => showList({ ...ids, load: async () => (await api("GET", url))[field], counted, empty, row });
}

// One row of a panel's list: a button that opens the item `name`, named in bold, `details` after it.
export function listRow(name, open, ...details) {
  return el("li", {},
    el("button", { type: "button", className: "row", onclick: () => open(name) }, el("strong", {}, name), ...details));
}

// Runs `action` (admin requests and what follows them); a failure is told in the status line `status`.
export async function attempt(status, action) {
  try {
    await action();
  } catch (error) {
    say(byId(status), explain(error), true);
  }
}

// Opens a panel's detail view (`ids`: its view, title and status line) and fills it in with `load`.
export async function openDetail(ids, title, load) {
  byId(ids.view).hidden = false;
  byId(ids.title).textContent = title;
  say(byId(ids.status), "");
  await attempt(ids.status, load);
  focus(byId(ids.title));
}
