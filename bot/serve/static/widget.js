/* The chat widget: plain JavaScript, no build step, no dependencies.
 *
 *   <script src="https://bot.example/widget.js"></script>
 *   <script>BotWidget.init({server: "https://bot.example", title: "Kestrel Mobile",
 *                           greeting: "Hi! How can I help?", colors: {primary: "#0b5fff"}});</script>
 *
 * On a server with several brands, `brand: "lumen"` talks to that brand (its routes under
 * /b/lumen/), and keeps its own conversation apart from another brand's on the same site.
 *
 * Every text from the server is attacker-influenced: it is only ever put on the page with
 * textContent, never as HTML.
 */
(function () {
  "use strict";

  var CSS = [
    ".bw-root{--bw-primary:#0b5fff;--bw-on-primary:#fff;--bw-bg:#fff;--bw-text:#1b1b1f;--bw-bot:#eef1f6;--bw-agent:#fff4d6;",
    "font:15px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--bw-text);position:fixed;right:20px;bottom:20px;z-index:2147483000}",
    ".bw-launcher{width:56px;height:56px;border-radius:50%;border:0;background:var(--bw-primary);color:var(--bw-on-primary);font-size:26px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}",
    ".bw-launcher svg{display:block;width:28px;height:28px;margin:auto}",
    ".bw-panel{position:absolute;right:0;bottom:70px;width:360px;height:540px;max-height:calc(100vh - 100px);background:var(--bw-bg);border-radius:12px;",
    "box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden}",
    ".bw-panel[hidden]{display:none}",
    ".bw-header{background:var(--bw-primary);color:var(--bw-on-primary);padding:12px 14px;display:flex;align-items:center;justify-content:space-between}",
    ".bw-header h2{font-size:16px;margin:0}",
    ".bw-close{background:none;border:0;color:inherit;font-size:22px;cursor:pointer;line-height:1}",
    ".bw-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px}",
    ".bw-msg{max-width:82%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}",
    ".bw-user{align-self:flex-end;background:var(--bw-primary);color:var(--bw-on-primary)}",
    ".bw-bot{align-self:flex-start;background:var(--bw-bot)}",
    ".bw-agent{align-self:flex-start;background:var(--bw-agent);border:1px solid #e5c66a}",
    ".bw-who{display:block;font-size:12px;font-weight:600;opacity:.75;margin-bottom:2px}",
    ".bw-note{align-self:center;font-size:13px;opacity:.8;text-align:center}",
    ".bw-typing{align-self:flex-start;background:var(--bw-bot);padding:8px 11px;border-radius:12px;letter-spacing:2px}",
    ".bw-doing{letter-spacing:normal;font-style:italic;opacity:.85}",
    ".bw-status{padding:6px 12px;font-size:13px;background:#fff4d6;border-top:1px solid #e5c66a}",
    ".bw-status[hidden]{display:none}",
    ".bw-error{background:#fde7e9;border-top-color:#e88}",
    ".bw-replies{display:flex;flex-wrap:wrap;gap:6px;align-self:flex-start}",
    ".bw-reply{border:1px solid var(--bw-primary);color:var(--bw-primary);background:var(--bw-bg);border-radius:14px;padding:4px 10px;cursor:pointer}",
    ".bw-form{display:flex;border-top:1px solid #ddd}",
    ".bw-input{flex:1;border:0;padding:12px;font:inherit;min-width:0}",
    ".bw-send{border:0;background:var(--bw-primary);color:var(--bw-on-primary);padding:0 16px;font:inherit;cursor:pointer}",
    ".bw-rate{display:flex;gap:2px;align-self:flex-start;margin-top:-4px}",
    ".bw-vote{border:1px solid transparent;background:none;color:#5f6368;border-radius:6px;padding:3px;cursor:pointer;line-height:0}",
    ".bw-vote svg{width:16px;height:16px}",
    ".bw-vote:hover{color:var(--bw-text)}",
    ".bw-vote[aria-pressed=true]{color:var(--bw-primary);border-color:var(--bw-primary)}",
    ".bw-vote[aria-pressed=true] svg{fill:currentColor;fill-opacity:.25}",
    ".bw-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}",
    "@media (max-width:767px){.bw-panel{position:fixed;inset:0;width:auto;height:auto;max-height:none;border-radius:0}}",
  ].join("");

  // The styles go in as a constructed stylesheet: a host page's Content-Security-Policy governs
  // <style> elements and style attributes, not stylesheets built through the CSSOM, so the widget
  // needs no 'unsafe-inline' (colours are set with style.setProperty, also CSSOM). A browser
  // without constructed stylesheets (before Chrome 73, Firefox 101, Safari 16.4) gets a <style>
  // element, which works on pages that don't forbid inline styles.
  var styled = false;
  function addStyles() {
    if (styled) return;
    styled = true;
    if (window.CSSStyleSheet && "adoptedStyleSheets" in document && "replaceSync" in CSSStyleSheet.prototype) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
    } else {
      var style = el("style");
      style.textContent = CSS;
      document.head.appendChild(style);
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // text, never HTML
    return node;
  }

  // Icons are drawn as inline SVG (DOM nodes, which no CSP blocks): a character such as an emoji
  // shows as an empty box where the system has no font with it.
  var SVG = "http://www.w3.org/2000/svg";
  var ICONS = {
    chat: {fill: "currentColor", d: "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2h-9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"},
    up: {d: "M3 10h4v10H3zM7 10l4-7c1.4 0 2.5 1.1 2.5 2.5V9h5.1a2 2 0 0 1 2 2.3l-1.2 7A2 2 0 0 1 17.4 20H7"},
  };

  function icon(name, flipped) {
    var shape = ICONS[name];
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("d", shape.d);
    if (shape.fill) {
      path.setAttribute("fill", shape.fill);
    } else {
      svg.setAttribute("fill", "none");
      path.setAttribute("stroke", "currentColor");
      path.setAttribute("stroke-width", "2");
      path.setAttribute("stroke-linejoin", "round");
      path.setAttribute("stroke-linecap", "round");
    }
    if (flipped) path.setAttribute("transform", "rotate(180 12 12)");
    svg.appendChild(path);
    return svg;
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
    return "web-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function Widget(options) {
    var brand = options.brand ? "/b/" + encodeURIComponent(options.brand) : "";
    this.server = (options.server || "").replace(/\/$/, "") + brand;
    this.title = options.title || "Chat with us";
    this.greeting = options.greeting || "";
    this.storageKey = options.storageKey || "bot-widget-conversation" + (options.brand ? "-" + options.brand : "");
    this.sender = localStorage.getItem(this.storageKey);
    if (!this.sender) {
      this.sender = newId();
      localStorage.setItem(this.storageKey, this.sender);
    }
    this.lastSeq = 0; // every event up to here is on screen
    this.busy = false; // a message is being answered
    this.deferred = []; // live events that arrived while a reply was streaming
    this.sent = {}; // the customer's messages by seq, for "Try again"
    this.build(options.colors || {});
    this.loadHistory(0);
  }

  Widget.prototype.build = function (colors) {
    var self = this;
    addStyles();
    var root = (this.root = el("div", "bw-root"));
    var names = {primary: "--bw-primary", onPrimary: "--bw-on-primary", background: "--bw-bg", text: "--bw-text", bot: "--bw-bot", agent: "--bw-agent"};
    Object.keys(colors).forEach(function (k) {
      if (names[k]) root.style.setProperty(names[k], colors[k]);
    });

    this.launcher = el("button", "bw-launcher");
    this.launcher.appendChild(icon("chat"));
    this.launcher.type = "button";
    this.launcher.setAttribute("aria-label", "Open chat: " + this.title);
    this.launcher.setAttribute("aria-expanded", "false");

    var panel = (this.panel = el("div", "bw-panel"));
    panel.hidden = true;
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", this.title);
    var header = el("div", "bw-header");
    header.appendChild(el("h2", null, this.title));
    var close = el("button", "bw-close", "\u00d7");
    close.type = "button";
    close.setAttribute("aria-label", "Close chat");
    header.appendChild(close);

    this.log = el("div", "bw-log");
    this.log.setAttribute("role", "log");
    this.log.setAttribute("aria-live", "polite");
    this.log.setAttribute("aria-label", "Conversation");
    this.status = el("div", "bw-status");
    this.status.hidden = true;
    this.status.setAttribute("role", "status");

    var form = (this.form = el("form", "bw-form"));
    var label = el("label", "bw-sr", "Your message");
    label.htmlFor = "bw-input-" + this.sender;
    this.input = el("input", "bw-input");
    this.input.id = label.htmlFor;
    this.input.type = "text";
    this.input.autocomplete = "off";
    this.input.placeholder = "Type your message…";
    var send = el("button", "bw-send", "Send");
    send.type = "submit";
    form.appendChild(label);
    form.appendChild(this.input);
    form.appendChild(send);

    panel.appendChild(header);
    panel.appendChild(this.log);
    panel.appendChild(this.status);
    panel.appendChild(form);
    root.appendChild(panel);
    root.appendChild(this.launcher);
    document.body.appendChild(root);

    this.launcher.addEventListener("click", function () { self.toggle(); });
    close.addEventListener("click", function () { self.toggle(false); });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = self.input.value.trim();
      if (!text || self.busy) return;
      self.input.value = "";
      self.send(text, text);
    });
    panel.addEventListener("keydown", function (e) {
      if (e.key === "Escape") self.toggle(false);
    });
  };

  Widget.prototype.toggle = function (open) {
    open = open === undefined ? this.panel.hidden : open;
    this.panel.hidden = !open;
    this.launcher.setAttribute("aria-expanded", String(open));
    if (open) {
      this.input.focus();
      this.scroll();
    } else {
      this.launcher.focus();
    }
  };

  Widget.prototype.scroll = function () { this.log.scrollTop = this.log.scrollHeight; };

  Widget.prototype.setStatus = function (text, isError) {
    this.status.hidden = !text;
    this.status.textContent = text || "";
    this.status.classList.toggle("bw-error", !!isError);
  };

  Widget.prototype.add = function (kind, text, who) {
    var node = el("div", "bw-msg bw-" + kind);
    if (who) node.appendChild(el("span", "bw-who", who));
    node.appendChild(document.createTextNode(text));
    this.log.appendChild(node);
    this.scroll();
    return node;
  };

  Widget.prototype.note = function (text) {
    this.log.appendChild(el("div", "bw-note", text));
    this.scroll();
  };

  Widget.prototype.quickReplies = function (buttons) {
    var self = this;
    var box = el("div", "bw-replies");
    buttons.forEach(function (b) {
      var button = el("button", "bw-reply", b.title);
      button.type = "button";
      button.addEventListener("click", function () {
        if (self.busy) return;
        box.remove();
        self.send(b.payload || b.title, b.title);
      });
      box.appendChild(button);
    });
    this.log.appendChild(box);
    this.scroll();
  };

  // Thumbs up and down under a bot message (`seq`: its place in the conversation; `current`: the
  // customer's vote so far). One vote per message; pressing the other button changes it.
  Widget.prototype.ratingButtons = function (message, seq, current) {
    if (!seq) return; // the greeting is not stored: nothing to rate
    var self = this;
    var bar = el("div", "bw-rate");
    bar.setAttribute("role", "group");
    bar.setAttribute("aria-label", "Rate this answer");
    var votes = {};
    [["up", "Helpful", false], ["down", "Not helpful", true]].forEach(function (spec) {
      var button = el("button", "bw-vote");
      button.type = "button";
      button.setAttribute("aria-label", spec[1]);
      button.setAttribute("aria-pressed", String(current === spec[0]));
      button.appendChild(icon("up", spec[2]));
      button.addEventListener("click", function () { self.rate(seq, spec[0], votes); });
      votes[spec[0]] = button;
      bar.appendChild(button);
    });
    message.parentNode.insertBefore(bar, message.nextSibling);
  };

  Widget.prototype.rate = function (seq, rating, votes) {
    var self = this;
    var before = Object.keys(votes).filter(function (k) { return votes[k].getAttribute("aria-pressed") === "true"; })[0];
    if (before === rating) return;
    function press(which) {
      Object.keys(votes).forEach(function (k) { votes[k].setAttribute("aria-pressed", String(k === which)); });
    }
    press(rating); // at once; undone if the server does not take it
    fetch(this.server + "/api/conversations/" + encodeURIComponent(this.sender) + "/ratings", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({seq: seq, rating: rating}),
    })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); })
      .catch(function () {
        press(before);
        self.note("Sorry, your rating wasn't saved. Please try again.");
      });
  };

  // The bubble that says the bot is at work: "•••", or what it is doing (an action's status,
  // such as "Checking your order…"), shown until its reply comes and never kept.
  Widget.prototype.typing = function (on, doing) {
    if (on && !this.typingNode) {
      this.typingNode = el("div", "bw-typing", "•••");
      this.typingNode.setAttribute("aria-label", "The assistant is typing");
      this.log.appendChild(this.typingNode);
      this.scroll();
    }
    if (on && doing) {
      this.typingNode.textContent = doing;
      this.typingNode.classList.add("bw-doing");
      this.typingNode.setAttribute("role", "status");
      this.typingNode.removeAttribute("aria-label");
      this.scroll();
    } else if (!on && this.typingNode) {
      this.typingNode.remove();
      this.typingNode = null;
    }
  };

  // One stored event, shown once (events are numbered; anything at or below lastSeq is on screen).
  Widget.prototype.show = function (event) {
    if (event.seq && event.seq <= this.lastSeq) return;
    if (event.seq) this.lastSeq = event.seq;
    if (event.type === "user") {
      this.sent[event.seq] = event.text;
      this.dropRetries();
      this.add("user", event.text);
    } else if (event.type === "interrupted") this.interrupted(event.of);
    else if (event.type === "bot") {
      if (event.text) this.ratingButtons(this.add("bot", event.text), event.seq, event.rating);
      if (event.buttons && event.buttons.length) this.quickReplies(event.buttons);
    } else if (event.type === "agent") this.add("agent", event.text, event.agent || "Agent");
    else if (event.type === "handoff") {
      if (event.text) this.add("bot", event.text);
      this.setStatus("Waiting for a member of our team…");
    } else if (event.type === "resume") {
      this.setStatus("");
      this.note("You're chatting with the assistant again.");
    }
  };

  // A reply cut off by a server crash: say so, and offer to send the message again.
  Widget.prototype.interrupted = function (of) {
    var self = this;
    var payload = this.sent[of];
    this.setStatus("");
    this.add("bot", "Sorry, that reply was interrupted.");
    if (payload === undefined) return;
    var box = el("div", "bw-replies");
    var button = el("button", "bw-reply bw-retry", "Try again");
    button.type = "button";
    button.addEventListener("click", function () {
      if (self.busy) return;
      box.remove();
      self.send(payload, payload);
    });
    box.appendChild(button);
    this.log.appendChild(box);
    this.scroll();
  };

  Widget.prototype.dropRetries = function () {
    Array.prototype.forEach.call(this.log.querySelectorAll(".bw-retry"), function (b) { b.parentNode.remove(); });
  };

  Widget.prototype.loadHistory = function (attempt) {
    var self = this;
    fetch(this.server + "/api/conversations/" + encodeURIComponent(this.sender))
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        self.setStatus("");
        if (!body.events.length && self.greeting) self.add("bot", self.greeting);
        body.events.forEach(function (e) { self.show(e); });
        var last = body.events[body.events.length - 1];
        if (last && last.type === "handoff") self.setStatus("Waiting for a member of our team…");
        self.listen();
      })
      .catch(function () { self.retry(attempt, function (n) { self.loadHistory(n); }); });
  };

  // The server can't be reached: say so, and try again after 2, 4, 8... (at most 30) seconds.
  Widget.prototype.retry = function (attempt, again) {
    var delay = Math.min(30, Math.pow(2, attempt + 1));
    this.setStatus("Can't reach the chat server. Retrying in " + delay + " s…", true);
    setTimeout(function () { again(attempt + 1); }, delay * 1000);
  };

  // Live events (agent messages, handoff, resume), through an EventSource that reconnects itself.
  Widget.prototype.listen = function () {
    var self = this;
    if (this.feed || !window.EventSource) return;
    this.feed = new EventSource(this.server + "/api/conversations/" + encodeURIComponent(this.sender) + "/events?after=" + this.lastSeq);
    this.feed.addEventListener("event", function (e) {
      var event = JSON.parse(e.data);
      if (self.busy) self.deferred.push(event);
      else self.show(event);
    });
  };

  Widget.prototype.send = function (payload, shownText) {
    this.dropRetries();
    this.add("user", shownText);
    this.busy = true;
    this.typing(true);
    this.post(payload, 0);
  };

  Widget.prototype.finish = function () {
    var self = this;
    this.busy = false;
    this.typing(false);
    this.streaming = null;
    this.deferred.splice(0).forEach(function (e) { self.show(e); });
  };

  Widget.prototype.post = function (payload, attempt) {
    var self = this;
    this.received = null; // the seq the server stored this message under, once it says so
    this.sending = payload;
    fetch(this.server + "/api/chat/stream", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sender: this.sender, message: payload}),
    })
      .then(function (r) {
        if (!r.ok) {
          return r.json().then(
            function (body) { throw {shown: body.error || "HTTP " + r.status}; },
            function () { throw {shown: "The server answered " + r.status + "."}; }
          );
        }
        self.setStatus("");
        return self.readStream(r.body.getReader());
      })
      .then(function () { self.finish(); })
      .catch(function (e) {
        if (e && e.shown) {
          self.note("Sorry, that didn't go through: " + e.shown);
          self.finish();
        } else if (self.received) {
          // The message is stored, its reply was cut (the server went down): never send it
          // twice. When the server is back, the live feed brings the reply's "interrupted" mark.
          if (self.streaming) self.streaming.remove();
          self.finish();
          self.setStatus("Lost the connection to the chat server. Reconnecting…", true);
        } else {
          self.retry(attempt, function (n) { self.post(payload, n); });
        }
      });
  };

  Widget.prototype.readStream = function (reader) {
    var self = this;
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, {stream: true});
        var blocks = buffer.split("\n\n");
        buffer = blocks.pop();
        blocks.forEach(function (block) { self.onServerEvent(block); });
        return pump();
      });
    }
    return pump();
  };

  Widget.prototype.onServerEvent = function (block) {
    var name = "message", data = "";
    block.split("\n").forEach(function (line) {
      if (line.indexOf("event: ") === 0) name = line.slice(7);
      else if (line.indexOf("data: ") === 0) data += line.slice(6);
    });
    var body = data ? JSON.parse(data) : {};
    if (name === "received") {
      this.lastSeq = Math.max(this.lastSeq, body.seq);
      this.received = body.seq;
      this.sent[body.seq] = this.sending;
    } else if (name === "status") {
      if (!this.streaming) this.typing(true, body.text);
    } else if (name === "token") {
      this.typing(false);
      if (!this.streaming) this.streaming = this.add("bot", "");
      this.streaming.lastChild.textContent += body.text;
      this.scroll();
    } else if (name === "message") {
      this.typing(false);
      if (this.streaming && body.type === "bot") {
        this.streaming.lastChild.textContent = body.text || "";
        this.lastSeq = Math.max(this.lastSeq, body.seq);
        this.ratingButtons(this.streaming, body.seq);
        if (body.buttons && body.buttons.length) this.quickReplies(body.buttons);
      } else {
        this.show({seq: body.seq, type: body.type, text: body.text, buttons: body.buttons});
      }
      this.streaming = null;
    } else if (name === "waiting") {
      this.setStatus("Waiting for a member of our team…");
    } else if (name === "error") {
      this.note("Sorry, something went wrong: " + body.error);
    }
  };

  window.BotWidget = {
    init: function (options) {
      var start = function () { window.BotWidget.instance = new Widget(options || {}); };
      if (document.body) start();
      else document.addEventListener("DOMContentLoaded", start);
    },
  };
})();
