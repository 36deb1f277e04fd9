// Trained models: their gate verdict and evaluation figures; activate one (or roll back).
import { api, explain, path } from "./api.js";
import { byId, clear, el, focus, say } from "./dom.js";

const FIGURES = [
  ["conversation_pass_rate", "conversations passed"], ["chrf", "chrF"], ["action_accuracy", "action accuracy"], ["handoff_accuracy", "handoff accuracy"],
  ["expectation_pass_rate", "tests passed"], ["adversarial_pass_rate", "adversarial passed"], ["leaks", "leaks"],
  ["loss", "loss"], ["dialogues", "dialogues"], ["turns", "turns"],
];
const RATES = new Set(["conversation_pass_rate", "action_accuracy", "handoff_accuracy", "expectation_pass_rate", "adversarial_pass_rate"]);

function figure(key, value) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (RATES.has(key)) return (value * 100).toFixed(0) + "%";
  return Number.isInteger(value) ? String(value) : value.toFixed(3);
}

function figures(summary) {
  const known = FIGURES.filter(([key]) => key in summary);
  return el("dl", { className: "facts" }, known.map(([key, label]) => [el("dt", {}, label), el("dd", {}, figure(key, summary[key]))]));
}

function card(model) {
  const badges = [];
  if (model.active) badges.push(el("span", { className: "badge good" }, "active"));
  if (model.previous) badges.push(el("span", { className: "badge" }, "active before"));
  const gate = model.gate
    ? "Gate: " + (model.gate.activated ? "passed" : "refused") + (model.gate.forced ? " (forced)" : "") + (model.gate.reason ? " — " + model.gate.reason : "")
    : "Gate: no verdict recorded";
  const label = model.previous ? "Roll back to " + model.id : "Activate " + model.id;
  return el("li", { className: "card" },
    el("h3", {}, model.id, " ", badges),
    el("p", { className: "muted" }, (model.created || "") + " · " + model.description),
    el("p", {}, gate),
    model.metrics ? figures(model.metrics) : el("p", { className: "muted" }, "No evaluation figures."),
    el("div", { className: "actions" },
      model.report ? el("button", { type: "button", onclick: () => report(model.id) }, "Report of " + model.id) : null,
      model.active ? null : el("button", { type: "button", onclick: () => activate(model.id) }, label)));
}

export async function refresh() {
  const list = clear(byId("model-list"));
  try {
    const { models } = await api("GET", "/api/models");
    if (!models.length) list.append(el("li", { className: "muted" }, "No trained models yet: start one in the Train panel."));
    for (const model of models.slice().reverse()) list.append(card(model));
  } catch (error) {
    say(byId("model-result"), explain(error), true);
  }
}

async function report(id) {
  const body = clear(byId("model-report-body"));
  byId("model-report").hidden = false;
  byId("model-report-title").textContent = "Evaluation report of " + id;
  try {
    const doc = await api("GET", path("models", id, "report"));
    body.append(el("p", { className: "muted" }, "created " + (doc.created || "?") + " · data " + (doc.data_hash || "?")));
    for (const [mode, summary] of Object.entries(doc.summary || {})) body.append(el("h4", {}, mode), figures(summary));
    const failures = doc.failures || [];
    body.append(el("p", {}, failures.length + " failure(s) recorded."));
  } catch (error) {
    body.append(el("p", { className: "error" }, explain(error)));
  }
  focus(byId("model-report-title"));
}

async function activate(id) {
  const result = byId("model-result");
  say(result, "Loading " + id + "… the current model keeps answering meanwhile.");
  try {
    const answer = await api("POST", path("models", id, "activate"));
    say(result, "Now serving " + (answer.model.id || id) + " (was " + (answer.previous.id || "the base model") + "; " + answer.seconds + " s).");
  } catch (error) {
    say(result, "Not activated: " + explain(error), true);
  }
  await refresh();
  focus(byId("models-title"));
}

export function setUp() {
  byId("models-refresh").addEventListener("click", refresh);
}
