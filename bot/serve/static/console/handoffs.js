// The handoff queue: conversations waiting for a person; reply as an agent, give back to the bot.
import { api, attempt, listRefresher, listRow, openDetail, path, panelIds } from "./api.js";
import { byId, el, say, when } from "./dom.js";
import { showTimeline } from "./timeline.js";

const PANEL = panelIds("handoff");
let opened = null;

function row(w) {
  return listRow(w.sender, open,
    el("span", { className: "muted block" }, "since " + when(w.since) + (w.reason ? " · " + w.reason : "")),
    el("span", { className: "block quote" }, w.last_customer_message ?? ""));
}

export const refresh = listRefresher(PANEL, "/api/handoffs", "waiting", row, {
  counted: (n) => n + " waiting", empty: "Nobody is waiting for a person." });

async function showEvents() {
  const { events } = await api("GET", path("admin", "conversations", opened));
  showTimeline(byId("handoff-timeline"), events);
}

async function open(sender) {
  opened = sender;
  await openDetail(PANEL, "Conversation " + sender, showEvents);
}

async function reply(e) {
  e.preventDefault();
  const form = byId("agent-reply");
  const body = { text: form.elements.text.value };
  if (form.elements.agent.value.trim()) body.agent = form.elements.agent.value.trim();
  await attempt(PANEL.status, async () => {
    const answer = await api("POST", path("conversations", opened, "messages"), body);
    form.elements.text.value = "";
    say(byId(PANEL.status), answer.took_over ? "Sent; you have taken the conversation over from the bot." : "Sent.");
    await showEvents();
  });
}

async function giveBack() {
  await attempt(PANEL.status, async () => {
    await api("POST", path("conversations", opened, "resume"));
    say(byId(PANEL.status), "The bot has the conversation again.");
    await showEvents();
    await refresh();
  });
}

export function setUp() {
  byId("handoffs-refresh").addEventListener("click", refresh);
  byId("agent-reply").addEventListener("submit", reply);
  byId("give-back").addEventListener("click", giveBack);
}
