// The console: sign in with the admin token (kept in this tab's sessionStorage), then panels.
import { ApiError, BRAND, api, explain, setToken, token, whenSignedOut } from "./api.js";
import { byId, clear, el, focus } from "./dom.js";
import * as conversations from "./conversations.js";
import * as drafts from "./drafts.js";
import * as handoffs from "./handoffs.js";
import * as models from "./models.js";
import * as preferences from "./preferences.js";
import * as train from "./train.js";

const PANELS = {
  conversations: conversations.search,
  handoffs: handoffs.refresh,
  drafts: drafts.refresh,
  preferences: preferences.refresh,
  models: models.refresh,
  train: train.refresh,
};

function notice(text) {
  const node = byId("notice");
  node.textContent = text || "";
  node.hidden = !text;
}

export function show(name, { load = true } = {}) {
  for (const button of document.querySelectorAll(".tabs button")) {
    const current = button.dataset.panel === name;
    button.setAttribute("aria-current", current ? "page" : "false");
  }
  for (const panel of Object.keys(PANELS)) byId(panel).hidden = panel !== name;
  if (name !== "train") train.stop();
  if (load) PANELS[name]();
  focus(byId(name + "-title"));
}

// Which model answers customers (GET /health, public), every 30 s: "base (fine-tuning in
// progress)" while the first model trains, then the trained model's id.
async function showServing() {
  try {
    const { model } = await (await fetch(BRAND + "/health")).json();
    const brand = BRAND ? "brand " + decodeURIComponent(BRAND.slice(3)) + ", " : "";
    byId("serving").textContent = "Serving: " + brand + model.description;
  } catch (error) {
    byId("serving").textContent = "Serving: unknown (no answer from /health)";
  }
  setTimeout(showServing, 30000);
}

function signedIn() {
  notice("");
  byId("sign-in").hidden = true;
  byId("console").hidden = false;
  byId("sign-out").hidden = false;
  show("conversations");
  showBrands();
}

// A server-wide token on a server with several brands: links to every brand's console.
async function showBrands() {
  const nav = clear(byId("brands"));
  try {
    const { brands } = await api("GET", "/api/brands", undefined, undefined, "");
    if (brands.length < 2) return;
    nav.append("Brands: ");
    brands.forEach((brand, i) => {
      const here = brand.prefix === BRAND;
      const link = el("a", { href: brand.prefix + "/console", text: brand.name, "aria-current": here ? "page" : undefined });
      nav.append(...(i ? [" · ", link] : [link]));
    });
    nav.hidden = false;
  } catch (error) {
    nav.hidden = true; // not a server-wide token, or an older server: nothing to switch to
  }
}

function signedOut(message) {
  train.stop();
  byId("console").hidden = true;
  byId("sign-out").hidden = true;
  byId("sign-in").hidden = false;
  notice(message);
  byId("token").value = "";
  byId("token").focus();
}

async function signIn(e) {
  e.preventDefault();
  const given = byId("token").value.trim();
  if (!given) return;
  try {
    await api("GET", "/api/handoffs", undefined, given); // any admin route: does the token open it?
    setToken(given);
    signedIn();
  } catch (error) {
    setToken(null);
    notice(error instanceof ApiError && error.status === 401 ? "That admin token is wrong. Check BOT_ADMIN_TOKEN on the server and try again." : explain(error));
    byId("token").select();
  }
}

function start() {
  whenSignedOut(signedOut);
  byId("sign-in").addEventListener("submit", signIn);
  byId("sign-out").addEventListener("click", () => {
    setToken(null);
    signedOut("Signed out: the token is forgotten in this tab.");
  });
  for (const button of document.querySelectorAll(".tabs button")) button.addEventListener("click", () => show(button.dataset.panel));
  conversations.setUp({
    draftMade: async (name) => {
      show("drafts");
      await drafts.open(name);
    },
  });
  handoffs.setUp();
  drafts.setUp();
  preferences.setUp();
  models.setUp();
  train.setUp();
  showServing();
  if (token()) signedIn();
  else byId("token").focus();
}

start();
