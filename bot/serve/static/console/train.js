// Training: start a job, follow its progress (GET /api/train every few seconds), read the gate's verdict.
import { api, explain, path } from "./api.js";
import { byId, clear, el, say, when } from "./dom.js";

const POLL_MS = 2000;
let timer = null;

function facts(job) {
  const p = job.progress;
  const rows = [["job", job.id], ["state", job.state], ["started", when(job.started)]];
  if (job.finished) rows.push(["finished", when(job.finished)]);
  if (p) {
    rows.push(["step", p.step + " of " + p.steps]);
    if (p.loss !== null && p.loss !== undefined) rows.push(["loss", p.loss.toFixed(3)]);
    if (p.eta_s !== null && p.eta_s !== undefined && job.state === "running") rows.push(["time left", Math.round(p.eta_s) + " s"]);
  }
  if (job.model_id) rows.push(["model", job.model_id]);
  if (job.error) rows.push(["error", job.error]);
  return rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]);
}

function show(job) {
  byId("train-job").hidden = !job;
  byId("train-cancel").hidden = !job || job.state !== "running";
  byId("train-start").disabled = Boolean(job && job.state === "running");
  if (!job) return;
  clear(byId("train-facts")).append(...facts(job).flat());
  const bar = byId("train-progress");
  bar.max = job.progress && job.progress.steps ? job.progress.steps : 1;
  bar.value = job.progress ? job.progress.step : job.state === "succeeded" ? 1 : 0;
  byId("train-gate").textContent = job.gate
    ? "Gate: " + (job.gate.passed ? "passed. " : "refused: the active model stays as it was. ") + job.gate.summary
    : job.state === "running" ? "Gate: not decided yet." : "";
  byId("train-next").textContent = job.next_step || "";
  const serve = byId("train-serve");
  serve.hidden = !(job.state === "succeeded" && job.model_id);
  if (!serve.hidden) {
    serve.textContent = "Serve " + job.model_id + " now";
    serve.dataset.model = job.model_id;
  }
  byId("train-log").textContent = (job.log_tail || []).join("\n");
}

// Activate the new model and swap it in (the server goes on serving what it loaded until then).
async function serveNew() {
  const id = byId("train-serve").dataset.model;
  const result = byId("train-result");
  say(result, "Loading " + id + "… the current model keeps answering meanwhile.");
  try {
    const answer = await api("POST", path("models", id, "activate"));
    say(result, "Now serving " + answer.model.id + " (was " + (answer.previous.id || "the base model") + ").");
    byId("train-serve").hidden = true;
  } catch (error) {
    say(result, "Not activated: " + explain(error), true);
  }
}

function poll(job) {
  clearTimeout(timer);
  if (job && job.state === "running" && !byId("train").hidden) timer = setTimeout(refresh, POLL_MS);
}

export async function refresh() {
  try {
    const { job } = await api("GET", "/api/train");
    show(job);
    poll(job);
  } catch (error) {
    say(byId("train-result"), explain(error), true);
  }
}

async function start() {
  const result = byId("train-result");
  try {
    const { job } = await api("POST", "/api/train", {});
    say(result, "Training started.");
    show(job);
    poll(job);
  } catch (error) {
    say(result, "Not started: " + explain(error), true);
  }
}

async function cancel() {
  try {
    const { job } = await api("POST", "/api/train/cancel");
    say(byId("train-result"), "Training cancelled.");
    show(job);
  } catch (error) {
    say(byId("train-result"), explain(error), true);
  }
}

export function stop() {
  clearTimeout(timer);
}

export function setUp() {
  byId("train-start").addEventListener("click", start);
  byId("train-cancel").addEventListener("click", cancel);
  byId("train-serve").addEventListener("click", serveNew);
}
