// Drafts of training dialogues: edit the YAML with its problems listed by line, save, accept
// into the training dialogues or the held-out tests, or reject.
import { api, attempt, explain, listRefresher, listRow, openDetail, path, panelIds } from "./api.js";
import { byId, clear, el, focus, say } from "./dom.js";

const PANEL = panelIds("draft");
let opened = null;

function problemText(p) {
  return p.line ? p.message : (p.where ? p.where + ": " : "") + p.message; // with a line, its button names it
}

// Select line `n` (1-based) of the textarea, so the person lands on the problem.
function goToLine(n) {
  const area = byId("draft-text");
  const lines = area.value.split("\n");
  const start = lines.slice(0, n - 1).reduce((sum, line) => sum + line.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + (lines[n - 1] || "").length);
}

function showProblems(draft) {
  const list = clear(byId("draft-problems"));
  const title = byId("draft-problems-title");
  const area = byId("draft-text");
  title.textContent = draft.valid ? "No problems: the draft is valid." : draft.problems.length + " problem(s)";
  area.setAttribute("aria-invalid", draft.valid ? "false" : "true");
  for (const p of draft.problems) {
    list.append(el("li", { className: "problem" },
      p.line ? el("button", { type: "button", className: "link", onclick: () => goToLine(p.line) }, "Go to line " + p.line) : null,
      " ", el("span", {}, problemText(p))));
  }
}

function row(d) {
  return listRow(d.name, open, " ",
    el("span", { className: d.valid ? "badge good" : "badge bad" }, d.valid ? "valid" : d.problems.length + " problem(s)"),
    d.source ? el("span", { className: "muted block" }, "from conversation " + d.source) : null);
}

export const refresh = listRefresher(PANEL, "/api/drafts", "drafts", row, {
  counted: (n) => n + " draft(s)", empty: "No drafts. Make one from a conversation, or with 'bot data review'." });

export async function open(name) {
  opened = name;
  byId("draft-reject-confirm").hidden = true;
  await openDetail(PANEL, "Draft " + name, async () => {
    const draft = await api("GET", path("drafts", name));
    byId("draft-text").value = draft.text;
    showProblems(draft);
  });
}

async function save() {
  await attempt(PANEL.status, async () => {
    const draft = await api("PUT", path("drafts", opened), { text: byId("draft-text").value });
    showProblems(draft);
    const told = draft.valid ? "Saved. The draft is valid." : "Saved, with problems to fix before it can be accepted.";
    say(byId(PANEL.status), told, !draft.valid);
    await refresh(); // the list shows whether it is valid now
  });
}

async function accept() {
  const result = byId("draft-result");
  try {
    await api("PUT", path("drafts", opened), { text: byId("draft-text").value }); // what is on screen is what is accepted
    const answer = await api("POST", path("drafts", opened, "accept"), { into: byId("draft-into").value });
    byId("draft-view").hidden = true;
    await refresh();
    say(byId("draft-count"), "Draft " + opened + " accepted: written to " + answer.path + ".");
    focus(byId("drafts-title"));
  } catch (error) {
    say(result, "Not accepted: " + explain(error), true);
  }
}

async function reject() {
  await attempt(PANEL.status, async () => {
    await api("POST", path("drafts", opened, "reject"));
    byId("draft-view").hidden = true;
    await refresh();
    say(byId("draft-count"), "Draft " + opened + " rejected and deleted.");
    focus(byId("drafts-title"));
  });
}

export function setUp() {
  byId("drafts-refresh").addEventListener("click", refresh);
  byId("draft-save").addEventListener("click", save);
  byId("draft-accept").addEventListener("click", accept);
  byId("draft-reject").addEventListener("click", () => {
    byId("draft-reject-confirm").hidden = false;
    byId("draft-reject-confirm").focus();
  });
  byId("draft-reject-confirm").addEventListener("click", reject);
}
