// Conversations: find stored conversations, read one's timeline, make a training draft of it.
import { api, attempt, listRow, openDetail, path, panelIds, showList } from "./api.js";
import { byId, clear, el, say, when } from "./dom.js";
import { showTimeline } from "./timeline.js";

const PANEL = panelIds("conversation", "make-draft-result");
let opened = null; // the sender whose timeline is shown
let onDraft = () => {};

function query() {
  const form = byId("conversation-search");
  const params = new URLSearchParams();
  const words = form.elements.q.value.trim();
  if (words) params.set("q", words);
  if (form.elements.handed_off.checked) params.set("handed_off", "true");
  if (form.elements.rated_down.checked) params.set("rated", "down");
  if (form.elements.since.value) params.set("since", form.elements.since.value);
  return params.toString();
}

function row(found) {
  const badges = [];
  if (found.handed_off) badges.push(el("span", { className: "badge" }, "handed off"));
  if (found.ratings.down) badges.push(el("span", { className: "badge bad" }, "rated down ×" + found.ratings.down));
  if (found.ratings.up) badges.push(el("span", { className: "badge good" }, "rated up ×" + found.ratings.up));
  return listRow(found.sender, open, " ", badges,
    el("span", { className: "muted block" }, "last active " + when(found.last_active) + " · " + found.events + " events"),
    el("span", { className: "block quote" }, found.last_customer_message ?? ""));
}

export async function search() {
  const wanted = query();
  await showList({
    ...PANEL,
    busy: "Searching…",
    load: async () => (await api("GET", "/api/admin/conversations" + (wanted ? "?" + wanted : ""))).conversations,
    counted: (n) => n + " found",
    empty: "No conversation matches.",
    row,
  });
}

export async function open(sender) {
  opened = sender;
  await openDetail(PANEL, "Conversation " + sender, async () => {
    clear(byId("conversation-timeline")); // no other conversation's timeline under this title, even if it fails
    const { events } = await api("GET", path("admin", "conversations", sender));
    showTimeline(byId("conversation-timeline"), events);
  });
}

async function makeDraft() {
  const result = byId(PANEL.status);
  say(result, "Making a draft…");
  await attempt(PANEL.status, async () => {
    const draft = await api("POST", path("conversations", opened, "draft"), {});
    const redacted = Object.entries(draft.redacted || {}).map(([kind, n]) => n + " " + kind).join(", ");
    say(result, "Draft " + draft.name + " made" + (redacted ? " (redacted: " + redacted + ")" : "") + ".");
    onDraft(draft.name);
  });
}

export function setUp({ draftMade }) {
  onDraft = draftMade;
  byId("conversation-search").addEventListener("submit", (e) => {
    e.preventDefault();
    search();
  });
  byId("make-draft").addEventListener("click", makeDraft);
}
