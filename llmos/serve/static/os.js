/* The LLM OS page (llmos/agent/web.py serves it and its API; api.js loads first).
 *
 * Send: POST /api/turn {"text"} shows the reply, the tool calls it made (folded, with their results)
 * and the memories paged in for it. Image…: the file's bytes go to POST /api/image?name=FILE, the
 * server reads its text (OCR) into the context window, marked untrusted. After each, the status line
 * shows the kernel's figures and the inspector lists GET /api/inspect's blocks. Everything the model,
 * a tool or an image wrote is shown as text (textContent), never parsed as HTML.
 */
"use strict";

const $ = (id) => document.getElementById(id);
let busy = false;  // a request is in flight: Send and Image… wait for it

function setBusy(value) {
  busy = value;
  $("send").disabled = value;
  $("image").disabled = value;
}

function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/* A <details> whose summary is `title` and whose body is `text` in a <pre>. */
function folded(title, text, className) {
  const details = element("details", className);
  details.append(element("summary", "", title), element("pre", "", text));
  return details;
}

// ----- the status line -----

function showStatus(status) {
  const fields = {
    "ram-used": status.ram_used, "ram-budget": status.ram_budget, "pages-in": status.pages_in,
    "pages-out": status.pages_out, "page-faults": status.page_faults, recall: status.recall,
    archival: status.archival,
  };
  for (const [id, value] of Object.entries(fields)) $(id).textContent = String(value);
  $("ram-bar").style.width = `${Math.min(100, (100 * status.ram_used) / status.ram_budget)}%`;
  $("paging-off").hidden = status.paging;
  $("status").title = status.line;
  const taint = $("taint");
  taint.hidden = status.tainted.length === 0;
  taint.textContent = `untrusted in context: ${status.tainted.join(", ")}`;
  document.body.dataset.turns = String(status.turns);
}

// ----- the inspector -----

function blockItem(block, budget) {
  const item = element("li", "block");
  item.classList.toggle("untrusted", block.untrusted);
  item.classList.toggle("empty", !block.text);
  item.dataset.name = block.name;
  item.dataset.provenance = block.provenance;
  item.dataset.tokens = String(block.tokens);

  const head = element("div", "head");
  head.append(element("span", "name", block.name), element("span", "provenance", block.provenance));
  if (block.untrusted) head.append(element("span", "badge", "untrusted"));
  head.append(element("span", "tokens", `${block.tokens} tok`));

  const bar = element("div", "bar");
  const fill = element("span");
  fill.style.width = `${Math.min(100, (100 * block.tokens) / budget)}%`;
  bar.append(fill);

  // The preview: the first line with words in it (not the <untrusted> mark the model sees around it).
  const isMark = (line) => /^<\/?untrusted\b/.test(line.trim());
  const firstLine = block.text.split("\n").find((line) => line.trim() && !isMark(line)) || "";
  item.append(head, bar, folded(block.text ? firstLine.slice(0, 120) : "(empty)", block.text));
  return item;
}

function showBlocks(blocks, status) {
  const list = $("blocks");
  const open = new Set([...list.querySelectorAll(".block")].filter((b) => b.querySelector("details").open)
    .map((b) => b.dataset.name));
  list.replaceChildren(...blocks.map((block) => blockItem(block, status.ram_budget)));
  for (const item of list.querySelectorAll(".block")) {
    if (open.has(item.dataset.name)) item.querySelector("details").open = true;  // keep what the user unfolded
  }
  const total = blocks.reduce((sum, block) => sum + block.tokens, 0);
  $("block-count").textContent = `${blocks.length} blocks · ${total} tok`;
  const rest = status.ram_used - total;
  $("overhead").textContent = rest > 0
    ? `The other ${rest} of the ${status.ram_used} tokens used go to message framing, headings and the tools' ` +
      "descriptions." : "";
}

async function refreshInspector() {
  const data = await requestJson("/api/inspect");
  showBlocks(data.blocks, data.status);
  showStatus(data.status);
}

/* After a turn or an image: the inspector shows the window as it is now, then `message` is done. */
async function settle(message) {
  try {
    await refreshInspector();
  } catch (e) {
    showError(`the inspector could not be refreshed: ${e.message}`);
  }
  message.scrollIntoView({ block: "end" });
  message.dataset.done = "true";
}

// ----- the chat -----

function addMessage(role, label, text) {
  const message = element("div", `message ${role}`);
  message.append(element("div", "role", label), element("div", "content", text));
  $("messages").append(message);
  message.scrollIntoView({ block: "end" });
  return message;
}

function callSummary(call) {
  const args = call.arguments === null || call.arguments === undefined ? "" : JSON.stringify(call.arguments);
  return `${call.error ? "✗" : "✓"} ${call.name}(${args.length > 100 ? args.slice(0, 99) + "…" : args})`;
}

function showReply(message, out) {
  const content = message.querySelector(".content");
  message.classList.remove("pending");
  for (const call of out.calls) {
    content.before(folded(callSummary(call), call.result ?? "", `tool-call${call.error ? " failed" : ""}`));
  }
  content.textContent = out.reply;
  if (out.paged_in.length) {
    message.append(folded(`paged in ${plural(out.paged_in.length, "memory", "memories")}`,
      out.paged_in.join("\n\n"), "paged-in"));
  }
  if (out.evicted) message.append(element("p", "note", `${plural(out.evicted, "message")} paged out`));
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value;
  if (busy || !text.trim()) return;
  showError("");
  setBusy(true);
  addMessage("user", "you", text);
  $("input").value = "";
  const pending = addMessage("assistant pending", "model", "thinking…");
  try {
    const out = await requestJson("/api/turn", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }),
    });
    showReply(pending, out);
    showStatus(out.status);
    await settle(pending);
  } catch (e) {
    pending.classList.remove("pending");
    pending.querySelector(".content").textContent = "(no reply)";
    pending.dataset.done = "failed";
    showError(e.message);
  } finally {
    setBusy(false);
    $("input").focus();
  }
}

async function upload() {
  const file = $("image").files[0];
  if (busy || !file) return;
  showError("");
  setBusy(true);
  try {
    const out = await requestJson(`/api/image?name=${encodeURIComponent(file.name)}`, {
      method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
    });
    const message = addMessage("attachment", `image text · ${out.name} · untrusted`, "");
    const words = out.text.split(/\s+/).filter(Boolean).length;
    message.querySelector(".content").replaceWith(
      folded(`${plural(words, "word")} read into the context window`, out.text));
    if (out.evicted) message.append(element("p", "note", `${plural(out.evicted, "message")} paged out`));
    showStatus(out.status);
    await settle(message);
  } catch (e) {
    showError(`${file.name}: ${e.message}`);
  } finally {
    $("image").value = "";
    setBusy(false);
  }
}

async function start() {
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("image").addEventListener("change", upload);
  try {
    await refreshInspector();
    if (Number(document.body.dataset.turns) > 0) {
      addMessage("note", "session", "A resumed session: its earlier turns are in memory, and the inspector " +
        "shows what of them is in the context window.");
    }
  } catch (e) {
    showError(e.message);
  }
  document.body.dataset.ready = "true";
  $("input").focus();
}

start();
