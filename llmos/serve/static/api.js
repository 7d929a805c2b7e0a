/* What every page of the server needs of its API (loaded before the page's own script).
 *
 * requestJson(path, init, unreachable): fetch JSON; a failed request throws an Error whose message
 * is the server's own (`{"error": {"message"}}`), else the HTTP status; `unreachable` is added to
 * the message when the server cannot be reached at all (what that means for this page).
 * showError(message): the page's #error line ("" hides it).
 */
"use strict";

async function requestJson(path, init = {}, unreachable = "") {
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`the server cannot be reached (${e.message})${unreachable}`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new Error(data?.error?.message || `${response.status} ${response.statusText}`);
  return data;
}

function showError(message) {
  const line = document.getElementById("error");
  line.textContent = message;
  line.hidden = !message;
}
