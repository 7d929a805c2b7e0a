/* The labeling page of `llmos label` (api.js loads first).
 *
 * Asks the labeler's name once (kept in localStorage), then loops: GET /api/next shows a prompt and
 * answers A and B; a choice (buttons, or keys 1/a, 2/b, t, s) is POSTed to /api/labels, and only
 * once the server confirms that it is stored does the page say so and move on. "Edit into an ideal
 * answer" POSTs the edited text to /api/edits and stays on the pair. "Previous" shows the pair
 * labeled before, to change one's mind (the latest label counts). Model output is shown as text
 * (textContent), never parsed as HTML.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const NAME_KEY = "llmos.labeler";
const CHOICE_TEXT = { a: "A is better", b: "B is better", tie: "Tie", skip: "Skipped" };
const KEYS = { 1: "a", a: "a", 2: "b", b: "b", t: "tie", s: "skip" };

let labeler = localStorage.getItem(NAME_KEY) || "";
let current = null;  // the pair shown: {id, prompt, a, b, your_label}
let history = [];    // ids of the pairs this page labeled, oldest first
let busy = false;    // a request is in flight: choices wait for it
let editingSide = null;
let acks = 0;

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  return requestJson(path, init, "; nothing was saved, try again");
}

function acknowledge(text) {
  acks += 1;
  $("ack").textContent = `✓ ${text}`;
  $("ack").dataset.count = String(acks);
}

function setBusy(value) {
  busy = value;
  for (const button of document.querySelectorAll("#choices button[data-choice], #edit-a, #edit-b, #edit-submit")) {
    button.disabled = value || !current;
  }
  $("previous").disabled = value || previousId() === null;
}

function showProgress(p) {
  const parts = [
    ["count-you", `You: ${p.you} label${p.you === 1 ? "" : "s"}` +
      (p.your_skips ? `, ${p.your_skips} skipped` : "") + (p.your_edits ? `, ${p.your_edits} edited` : "")],
    ["count-everyone", `Everyone: ${p.everyone} label${p.everyone === 1 ? "" : "s"} by ${p.labelers} ` +
      `labeler${p.labelers === 1 ? "" : "s"}`],
    ["count-left", `${p.left} of ${p.total} pair${p.total === 1 ? "" : "s"} left`],
  ];
  $("progress").replaceChildren(...parts.map(([id, text]) => {
    const span = document.createElement("span");
    span.id = id;
    span.textContent = text;
    return span;
  }));
}

function showPrompt(messages) {
  $("prompt").replaceChildren(...messages.map((m) => {
    const box = document.createElement("div");
    box.className = `message ${m.role}`;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = m.role;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.content ?? "";
    box.append(role, text);
    return box;
  }));
}

function showPair(pair) {
  current = pair;
  closeEditor();
  $("waiting").hidden = true;
  $("done").hidden = true;
  $("answers").hidden = false;
  $("choices").hidden = false;
  $("pair-id").textContent = `(pair ${pair.id})`;
  document.body.dataset.pairId = String(pair.id);
  showPrompt(pair.prompt);
  $("answer-a").textContent = pair.a;
  $("answer-b").textContent = pair.b;
  $("your-label").hidden = !pair.your_label;
  $("your-label").textContent = pair.your_label
    ? `Your label on this pair: ${CHOICE_TEXT[pair.your_label]}. Choose again to change it.` : "";
  window.scrollTo(0, 0);
}

function showDone() {
  current = null;
  document.body.dataset.pairId = "";
  $("waiting").hidden = true;
  $("answers").hidden = true;
  $("your-label").hidden = true;
  $("prompt").replaceChildren();
  $("pair-id").textContent = "";
  $("done").hidden = false;
}

async function loadNext() {
  setBusy(true);
  $("waiting").hidden = false;
  try {
    const data = await api(`/api/next?labeler=${encodeURIComponent(labeler)}`);
    showProgress(data.progress);
    if (data.pair) showPair(data.pair);
    else showDone();
    showError("");
  } catch (e) {
    $("waiting").hidden = true;
    showError(`Could not load the next pair: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

async function choose(choice) {
  if (busy || !current) return;
  const pair = current;
  setBusy(true);
  try {
    const data = await api("/api/labels", { pair_id: pair.id, labeler, choice });
    showProgress(data.progress);
    if (!history.includes(pair.id)) history.push(pair.id);
    acknowledge(`Saved: ${CHOICE_TEXT[choice]} (pair ${pair.id})`);
    showError("");
  } catch (e) {
    showError(`Not saved: ${e.message}`);
    setBusy(false);
    return;
  }
  await loadNext();
}

function previousId() {
  const at = current ? history.indexOf(current.id) : -1;
  const index = at >= 0 ? at - 1 : history.length - 1;
  return index >= 0 ? history[index] : null;
}

async function goBack() {
  const id = previousId();
  if (busy || id === null) return;
  setBusy(true);
  try {
    const data = await api(`/api/pairs/${id}?labeler=${encodeURIComponent(labeler)}`);
    showProgress(data.progress);
    showPair(data.pair);
    showError("");
  } catch (e) {
    showError(`Could not load pair ${id}: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

function openEditor(side) {
  if (busy || !current) return;
  editingSide = side;
  $("edit-title").textContent = `Edit answer ${side.toUpperCase()} into an ideal answer`;
  $("edit-text").value = current[side];
  $("editor").hidden = false;
  $("edit-text").focus();
}

function closeEditor() {
  editingSide = null;
  $("editor").hidden = true;
}

async function submitEdit(event) {
  event.preventDefault();
  if (busy || !current || !editingSide) return;
  const text = $("edit-text").value;
  if (!text.trim()) {
    showError("The ideal answer is empty: write it, or cancel.");
    return;
  }
  setBusy(true);
  try {
    const data = await api("/api/edits", { pair_id: current.id, labeler, side: editingSide, text });
    showProgress(data.progress);
    acknowledge(`Saved your ideal answer for pair ${current.id}: it is an SFT example now. ` +
      "You can still say which answer is better.");
    closeEditor();
    showError("");
  } catch (e) {
    showError(`Not saved: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

function askName() {
  $("task").hidden = true;
  $("name-form").hidden = false;
  $("labeler-name").value = labeler;
  $("labeler-name").focus();
}

function start(event) {
  event.preventDefault();
  const name = $("labeler-name").value.trim();
  if (!name) return;
  labeler = name;
  localStorage.setItem(NAME_KEY, name);
  $("labeler-shown").textContent = name;
  $("name-form").hidden = true;
  $("task").hidden = false;
  history = [];
  loadNext();
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (editingSide && event.key === "Escape") {
    closeEditor();
    return;
  }
  // Typing in the editor (or the name box) is typing, not labeling.
  if (editingSide || !$("name-form").hidden || event.target.closest("input, textarea, select")) return;
  const key = event.key.toLowerCase();
  if (KEYS[key]) {
    event.preventDefault();
    choose(KEYS[key]);
  } else if (key === "p") {
    event.preventDefault();
    goBack();
  }
}

for (const button of document.querySelectorAll("#choices button[data-choice]")) {
  button.addEventListener("click", () => choose(button.dataset.choice));
}
$("previous").addEventListener("click", goBack);
$("edit-a").addEventListener("click", () => openEditor("a"));
$("edit-b").addEventListener("click", () => openEditor("b"));
$("edit-cancel").addEventListener("click", closeEditor);
$("editor").addEventListener("submit", submitEdit);
$("name-form").addEventListener("submit", start);
$("change-name").addEventListener("click", askName);
document.addEventListener("keydown", onKey);

if (labeler) {
  $("labeler-shown").textContent = labeler;
  $("task").hidden = false;
  loadNext();
} else {
  askName();
}
