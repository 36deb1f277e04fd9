// Preference data: how many replies customers rated up and down, how many agents' replies stand
// against the bot's, how many rows a person has reviewed (what the preference stage of training
// uses), and the files. `bot data preferences` writes them, `bot data review` reviews them.
import { api, explain } from "./api.js";
import { byId, clear, el, say } from "./dom.js";

const COUNTS = [
  ["rated_up", "rated up"],
  ["rated_down", "rated down"],
  ["pairs", "agents' replies against the bot's"],
  ["reviewed", "reviewed (trained on when the stage is on)"],
  ["waiting", "waiting for review"],
];

function fileRow(f) {
  const state = f.valid ? (f.draft ? "waiting for review" : "reviewed") : f.problems.length + " problem(s)";
  return el("li", {}, el("strong", {}, f.name), " ", el("span", { className: "muted" }, f.preferences + " row(s)"), " ",
    el("span", { className: f.valid ? (f.draft ? "badge" : "badge good") : "badge bad" }, state),
    f.valid ? null : el("span", { className: "muted block" }, f.problems[0].where + ": " + f.problems[0].message));
}

export async function refresh() {
  const status = byId("preferences-count");
  const counts = clear(byId("preferences-totals"));
  const files = clear(byId("preferences-list"));
  say(status, "Loading…");
  try {
    const found = await api("GET", "/api/preferences");
    for (const [key, label] of COUNTS) counts.append(el("li", {}, el("strong", {}, String(found[key])), " " + label));
    for (const f of found.files) files.append(fileRow(f));
    say(status, found.files.length ? found.files.length + " file(s) in training_data/preferences/"
      : "No preference data. Make it from rated conversations with 'bot data preferences'.");
  } catch (error) {
    say(status, explain(error), true);
  }
}

export function setUp() {
  byId("preferences-refresh").addEventListener("click", refresh);
}
