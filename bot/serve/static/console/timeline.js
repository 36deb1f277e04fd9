// A conversation's stored events as a timeline: one list item per event, each kind labelled.
import { clear, el, json, when } from "./dom.js";

const SHOWN = new Set(["seq", "type", "timestamp"]);

function rest(event, known) {
  const extra = {};
  for (const [key, value] of Object.entries(event)) if (!SHOWN.has(key) && !known.includes(key)) extra[key] = value;
  return Object.keys(extra).length ? el("pre", { className: "data" }, json(extra)) : null;
}

function said(who, event) {
  return [el("span", { className: "who" }, who), el("p", { className: "said" }, event.text ?? "")];
}

function describe(event) {
  switch (event.type) {
    case "user":
      return [said("Customer", event), rest(event, ["text"])];
    case "bot": {
      const by = event.by ? " (" + event.by + ")" : "";
      const buttons = (event.buttons || []).map((b) => el("li", {}, String(b.title ?? ""), b.payload ? " → " + b.payload : ""));
      return [said("Bot" + by, event), buttons.length ? el("ul", { className: "buttons", "aria-label": "Buttons offered" }, buttons) : null,
        rest(event, ["text", "by", "buttons"])];
    }
    case "agent":
      return [said("Agent" + (event.agent ? " " + event.agent : ""), event), rest(event, ["text", "agent"])];
    case "handoff":
      return [el("span", { className: "who" }, "Handed off to a person"),
        el("p", {}, "by " + (event.by || "?") + (event.reason ? ": " + event.reason : "") + (event.agent ? " (" + event.agent + ")" : "")),
        rest(event, ["by", "reason", "agent", "text"])];
    case "resume":
      return [el("span", { className: "who" }, "Given back to the bot"), rest(event, [])];
    case "action":
    case "action_failed":
    case "action_rejected": {
      const label = { action: "Action", action_failed: "Action failed", action_rejected: "Action refused" }[event.type];
      return [el("span", { className: "who" }, label + " " + (event.name || "")),
        el("p", { className: "label" }, "arguments"), el("pre", { className: "data" }, json(event.arguments ?? {})),
        "result" in event ? [el("p", { className: "label" }, "result"), el("pre", { className: "data" }, json(event.result))] : null,
        rest(event, ["name", "arguments", "result"])];
    }
    case "rating":
      return [el("span", { className: "who" }, "Rating: " + event.rating),
        el("p", {}, "of message #" + event.rated_seq + (event.comment ? ": " + event.comment : "")), rest(event, ["rating", "rated_seq", "comment"])];
    case "slot":
      return [el("span", { className: "who" }, "Slot " + event.name), el("pre", { className: "data" }, json(event.value)), rest(event, ["name", "value"])];
    default:
      return [el("span", { className: "who" }, event.type), rest(event, [])];
  }
}

export function showTimeline(list, events) {
  clear(list);
  for (const event of events) {
    list.append(el("li", { className: "event event-" + String(event.type).replace(/[^a-z_]/g, "") },
      el("span", { className: "meta" }, "#" + event.seq + " · " + when(event.timestamp)), describe(event)));
  }
}
