/* The chat page of `llmos serve`.
 *
 * Talks to the server's OpenAI-compatible API: GET /v1/models fills the model picker, and each turn
 * POSTs the whole conversation to /v1/chat/completions with `stream: true`, reading the server-sent
 * events as they arrive. Replies are markdown from an untrusted model, so they are rendered by
 * `renderMarkdown`: raw HTML is shown as text, the result is sanitised by DOMPurify, and images load
 * only from this server or the origins that /ui/config.json allows (checked by the renderer, and by a
 * Content-Security-Policy that also holds for their redirects). `window.llmosRender(text)` exposes
 * that renderer to the browser tests.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  apiKeyField: $("api-key-field"), apiKey: $("api-key"), input: $("input"), send: $("send"),
  stop: $("stop"), newChat: $("new-chat"), messages: $("messages"), error: $("error"),
  composer: $("composer"),
};

const API_KEY_STORAGE = "llmos.apiKey";
const allowedImageOrigins = new Set([location.origin]);
let chatHistory = [];       // the conversation as the API sees it: [{role, content}, ...]
let inFlight = null;        // the AbortController of the reply being streamed, if any

/* ---- Safe markdown ---- */

function escapeHtml(text) {
  const entities = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  return text.replace(/[&<>"']/g, (c) => entities[c]);
}

// The model's raw HTML is shown as the text it is; markdown is the only markup it gets.
const markdown = new marked.Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html(token) {
      return token.block ? `<p>${escapeHtml(token.text)}</p>` : escapeHtml(token.text);
    },
  },
});

// Only what marked produces; nothing that loads or runs anything beyond <img>, which the hook checks.
const PURIFY_CONFIG = {
  ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "img", "input", "li", "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th",
    "thead", "tr", "ul"],
  FORBID_ATTR: ["style", "srcset"],
  RETURN_DOM_FRAGMENT: true,
};

function imageAllowed(src) {
  if (!src) return false;
  try {
    return allowedImageOrigins.has(new URL(src, location.href).origin);
  } catch {
    return false;
  }
}

// DOMPurify parses into an inert document, so an image removed here never sends a request.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "IMG") {
    const src = node.getAttribute("src") || "";
    if (!imageAllowed(src)) {
      const placeholder = node.ownerDocument.createElement("span");
      placeholder.className = "blocked-image";
      placeholder.textContent = `[image blocked: ${src}]`;
      node.replaceWith(placeholder);
    }
  } else if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

function renderMarkdown(text) {
  return DOMPurify.sanitize(markdown.parse(text), PURIFY_CONFIG);
}

window.llmosRender = (text) => {
  const container = document.createElement("div");
  container.append(renderMarkdown(text));
  return container;
};

/* ---- Server calls ---- */

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// An OpenAI-style error body names the problem in error.message; fall back to the HTTP status.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch { /* not JSON: the status line says enough */ }
  return `${response.status} ${response.statusText}`;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

// The renderer checks an image's own URL, but the browser follows its redirects: an allowed origin
// that redirects (an image proxy, an open redirect) would hand the request on to any host. The
// allow-list as a Content-Security-Policy stops that, since the browser checks every hop against it.
// A second policy can only narrow the page's own, so it is added once, when the list is complete.
function enforceImageOrigins() {
  const policy = document.createElement("meta");
  policy.httpEquiv = "Content-Security-Policy";
  policy.content = `img-src 'self' blob: ${[...allowedImageOrigins].join(" ")}`;
  document.head.append(policy);
}

async function loadConfig() {
  try {
    const response = await fetch("/ui/config.json");
    if (!response.ok) throw new Error(`/ui/config.json: ${await errorMessage(response)}`);
    const config = await response.json();
    for (const origin of config.image_origins || []) {
      try {
        allowedImageOrigins.add(new URL(origin).origin);
      } catch {
        console.warn("ignoring an image origin that is not a URL:", origin);
      }
    }
    ui.apiKeyField.hidden = !config.auth_required;
  } finally {
    enforceImageOrigins();  // without the config: this server's images only
  }
  document.body.dataset.config = "loaded";  // from now on images are judged by the full allow-list
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: authHeaders() });
  if (!response.ok) throw new Error(`Could not list models: ${await errorMessage(response)}`);
  const { data } = await response.json();
  const chosen = ui.model.value;
  ui.model.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
  if (data.some((m) => m.id === chosen)) ui.model.value = chosen;
}

/* ---- Conversation ---- */

function addMessage(role, text) {
  const message = document.createElement("article");
  message.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const reasoning = document.createElement("div");
  reasoning.className = "reasoning";
  reasoning.hidden = true;
  const tools = document.createElement("div");
  tools.className = "tools";
  tools.hidden = true;
  const content = document.createElement("div");
  content.className = "content";
  const stats = document.createElement("div");
  stats.className = "stats";
  message.append(label, reasoning, tools, content, stats);
  if (role === "user") content.textContent = text;
  ui.messages.append(message);
  message.scrollIntoView({ block: "end" });
  return message;
}

// The calls the server's tools ran for a reply (`llmos_tool_calls`): each call, its result as text,
// and its charts. The PNGs come inside the reply and are shown through blob: URLs, never fetched.
function showToolCalls(box, calls) {
  box.replaceChildren(...calls.map((call) => {
    const item = document.createElement("details");
    item.className = call.error ? "tool-call error" : "tool-call";
    item.open = call.images.length > 0;
    const summary = document.createElement("summary");
    summary.textContent = `${call.name} ${JSON.stringify(call.arguments)}`;
    const result = document.createElement("pre");
    result.textContent = call.result;
    item.append(summary, result);
    for (const png of call.images) {
      const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
      const chart = document.createElement("img");
      chart.className = "tool-chart";
      chart.alt = `chart drawn by ${call.name}`;
      chart.src = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
      item.append(chart);
    }
    return item;
  }));
  box.hidden = calls.length === 0;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

// Yields each parsed `data:` payload of a server-sent event stream until `data: [DONE]`.
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();  // an incomplete last line waits for the next read
    const batch = [];
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") {
        yield batch;
        return;
      }
      batch.push(JSON.parse(payload));
    }
    if (batch.length) yield batch;
  }
}

async function sendMessage() {
  const text = ui.input.value.trim();
  if (!text || inFlight) return;
  showError("");
  ui.input.value = "";
  const conversation = chatHistory;  // New chat starts another array; this turn ends in its own
  conversation.push({ role: "user", content: text });
  const userMessage = addMessage("user", text);

  const message = addMessage("assistant", "");
  const [reasoningBox, toolsBox, contentBox, statsBox] = ["reasoning", "tools", "content", "stats"]
    .map((name) => message.querySelector(`.${name}`));
  let reply = "";
  let reasoning = "";
  const controller = new AbortController();
  inFlight = controller;
  setBusy(true);
  const started = performance.now();
  try {
    const system = ui.system.value.trim();
    const temperature = parseFloat(ui.temperature.value);
    const maxTokens = parseInt(ui.maxTokens.value, 10);
    const body = {
      model: ui.model.value,
      messages: system ? [{ role: "system", content: system }, ...conversation] : conversation,
      stream: true,
      stream_options: { include_usage: true },
    };
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const chunks of serverEvents(response)) {
      for (const chunk of chunks) {
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        reply += delta.content || "";
        reasoning += delta.reasoning_content || "";
        if (delta.llmos_tool_calls) showToolCalls(toolsBox, delta.llmos_tool_calls);
        if (chunk.usage) {
          const seconds = (performance.now() - started) / 1000;
          const tokens = chunk.usage.completion_tokens;
          statsBox.textContent = `${tokens} tokens · ${(tokens / seconds).toFixed(1)} tokens/s`;
        }
      }
      // One render per network read: the reply grows visibly without re-parsing on every token.
      reasoningBox.hidden = !reasoning;
      reasoningBox.textContent = reasoning;
      contentBox.replaceChildren(renderMarkdown(reply));
      message.scrollIntoView({ block: "end" });
    }
    if (!reply) statsBox.textContent = "empty reply";
    conversation.push({ role: "assistant", content: reply });
  } catch (err) {
    if (reply) {
      // A stopped or broken reply keeps what arrived, and the next turn sends it as it is shown.
      conversation.push({ role: "assistant", content: reply });
      if (err.name === "AbortError") statsBox.textContent = "stopped";
    } else {
      // Nothing came back: take the turn back so that it can be sent again as it was.
      conversation.pop();
      userMessage.remove();
      message.remove();
      if (conversation === chatHistory) ui.input.value = text;
    }
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    message.dataset.done = "true";
    if (inFlight === controller) {
      inFlight = null;
      setBusy(false);
      ui.input.focus();
    }
  }
}

function newChat() {
  if (inFlight) inFlight.abort();
  inFlight = null;
  setBusy(false);
  chatHistory = [];
  ui.messages.replaceChildren();
  showError("");
  ui.input.focus();
}

/* ---- Wiring ---- */

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});
ui.stop.addEventListener("click", () => inFlight && inFlight.abort());
ui.newChat.addEventListener("click", newChat);
ui.apiKey.value = localStorage.getItem(API_KEY_STORAGE) || "";
ui.apiKey.addEventListener("change", () => {
  localStorage.setItem(API_KEY_STORAGE, ui.apiKey.value.trim());
  loadModels().then(() => showError(""), (err) => showError(err.message));
});

loadConfig()
  .then(loadModels)
  .catch((err) => showError(err.message));
