// Tonewall agent console: vanilla JS, no build step, served under a strict CSP (no inline code).
//
// Progress arrives as server-sent events, read with fetch() streaming rather than
// EventSource: EventSource cannot send an Authorization header, and the alternative
// (a token in the URL) leaks the bearer token into access logs, proxies and history.
"use strict";

const TOKEN_KEY = "tonewall.token";
const POLL_MS = 2000;
const FIELD_LABELS = { pan: "Card number", expiry: "Expiry (MMYY)", cvv: "Security code", postcode: "Postcode" };
const BRAND_LABELS = {
  visa: "Visa", mastercard: "Mastercard", amex: "American Express", discover: "Discover",
  diners: "Diners Club", jcb: "JCB", unionpay: "UnionPay", maestro: "Maestro",
};
const TERMINAL = new Set(["tokenized", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);
const state = { token: null, pollTimer: null, capture: null, stream: null, fields: [] };

// -- helpers ----------------------------------------------------------------------

function claimsOf(token) {
  // Display only: the server verifies the token on every request.
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (e) {
    return null;
  }
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.reason) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401) {
    signOut("Your session has expired or the token was not accepted. Sign in again.");
    throw new ApiError(401, await response.json().catch(() => null));
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

function friendlyReason(reason) {
  const text = String(reason || "").toLowerCase().replace(/_/g, " ");
  if (/processor|vault|unavailable|tokeni[sz]ation|timed out|timeout.*token/.test(text))
    return "The payment processor is not reachable. No card data was kept; try again shortly.";
  if (/hang|hung|call ended|bye|caller left/.test(text))
    return "The caller hung up before the card was complete. No card data was kept.";
  if (/luhn|invalid|expired|attempt|rejected|wrong length|unknown brand/.test(text))
    return "The card details were not valid after the allowed attempts. Ask the caller to check the card.";
  if (/codec|inspect|refused/.test(text))
    return "Secure capture is not possible on this call (its audio cannot be protected).";
  if (/already active/.test(text)) return "A secure capture is already running on this call.";
  if (/cancel/.test(text)) return "The capture was cancelled. No card data was kept.";
  if (/timeout|timed out/.test(text)) return "The caller took too long. No card data was kept.";
  return reason ? `The capture ended: ${reason}.` : "The capture ended without a token.";
}

// -- sign in / out ----------------------------------------------------------------

function signIn(token) {
  const claims = claimsOf(token);
  if (!claims) {
    $("login-error").textContent = "That does not look like a token. Paste the whole token.";
    return false;
  }
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  $("token-input").value = "";
  $("login").hidden = true;
  $("who").hidden = false;
  $("who-name").textContent = `${claims.sub || "unknown"} (${claims.role || "no role"})`;
  $("calls-panel").hidden = false;
  refreshCalls();
  state.pollTimer = setInterval(refreshCalls, POLL_MS);
  return true;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearInterval(state.pollTimer);
  if (state.stream) state.stream.abort();
  $("login").hidden = false;
  $("who").hidden = true;
  $("calls-panel").hidden = true;
  $("capture-panel").hidden = true;
  $("login-error").textContent = message || "";
  $("token-input").focus();
}

// -- calls ----------------------------------------------------------------------------

async function refreshCalls() {
  if (!state.token) return;
  let calls;
  try {
    calls = (await (await api("/v1/calls")).json()).calls;
  } catch (error) {
    if (error.status !== 401) $("calls-error").textContent = `Could not load calls: ${error.message}`;
    return;
  }
  $("calls-error").textContent = "";
  renderCalls(calls);
}

function renderCalls(calls) {
  const body = $("calls-body");
  const focusedId = document.activeElement && document.activeElement.dataset.callId;
  body.replaceChildren();
  $("calls-empty").hidden = calls.length > 0;
  const busy = state.capture && !TERMINAL.has(state.capture.state);
  for (const call of calls) {
    const row = document.createElement("tr");
    const started = call.started_at ? new Date(call.started_at).toLocaleTimeString() : "–";
    for (const text of [call.caller, call.state, started]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const action = document.createElement("td");
    action.className = "action";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Start secure capture";
    button.dataset.callId = call.call_id;
    button.setAttribute("aria-label", `Start secure capture on the call with ${call.caller}`);
    button.disabled = Boolean(busy);
    button.addEventListener("click", () => startCapture(call.call_id));
    action.append(button);
    row.append(action);
    body.append(row);
    if (focusedId === call.call_id) button.focus();
  }
}

// -- capture ----------------------------------------------------------------------------

function resetCapturePanel(fields) {
  state.fields = fields;
  const list = $("fields");
  list.replaceChildren();
  for (const name of fields) {
    const item = document.createElement("li");
    item.id = `field-${name}`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = FIELD_LABELS[name] || name;
    const dots = document.createElement("span");
    dots.className = "dots";
    dots.setAttribute("aria-hidden", "true");
    const status = document.createElement("span");
    status.className = "state";
    status.textContent = "waiting";
    item.append(label, dots, status);
    list.append(item);
  }
  for (const id of ["brand", "validity", "last4"]) $(id).textContent = "–";
  $("result").hidden = true;
  $("result-token").value = "";
  $("copy-status").textContent = "";
  $("capture-error").textContent = "";
  $("cancel-capture").hidden = false;
  $("cancel-capture").disabled = false;
  $("close-capture").hidden = true;
  setStatus("Starting secure capture…", "");
}

function setStatus(text, kind) {
  const status = $("capture-status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

async function startCapture(callId) {
  resetCapturePanel(["pan", "expiry", "cvv"]);
  $("capture-panel").hidden = false;
  let capture;
  try {
    const response = await api(`/v1/calls/${encodeURIComponent(callId)}/captures`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ fields: state.fields }),
    });
    capture = await response.json();
  } catch (error) {
    setStatus("Secure capture did not start.", "bad");
    $("capture-error").textContent = friendlyReason(error.message);
    showClose();
    return;
  }
  state.capture = capture;
  setStatus("Masking is on. Ask the caller to key the card number, then #.", "");
  $("cancel-capture").focus();
  refreshCalls();
  followEvents(capture.capture_id);
}

async function followEvents(captureId) {
  const controller = new AbortController();
  state.stream = controller;
  try {
    const response = await api(`/v1/captures/${encodeURIComponent(captureId)}/events`, {
      headers: { Accept: "text/event-stream" },
      signal: controller.signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleSse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    $("capture-error").textContent = "Lost the live progress; checking the capture…";
  }
  if (state.capture && !TERMINAL.has(state.capture.state)) {
    // the stream ended without an end event: read the final state once
    try {
      applyCapture(await (await api(`/v1/captures/${encodeURIComponent(captureId)}`)).json());
    } catch (error) { /* shown by api() or left as is */ }
  }
}

function handleSse(block) {
  // WHATWG server-sent events: lines "event: x" / "data: y"; lines starting ":" are comments
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "event") event = value;
    else if (name === "data") data.push(value);
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "progress") applyProgress(payload);
  else applyCapture(payload);
}

function fieldItem(name) {
  return name ? $(`field-${name}`) : null;
}

function applyProgress(event) {
  const kind = String(event.type || event.event || "").toLowerCase();
  if (kind === "state") {
    const { type, ...capture } = event;
    applyCapture(capture);
    return;
  }
  const item = fieldItem(event.field);
  if (item) {
    for (const other of document.querySelectorAll(".fields li")) other.classList.remove("current");
    item.classList.add("current");
    const count = event.count ?? event.digits_entered ?? event.digits;
    if (Number.isInteger(count)) {
      item.querySelector(".dots").textContent = "•".repeat(count);
      item.querySelector(".state").textContent = `${count} digit${count === 1 ? "" : "s"}`;
    }
    if (/cleared/.test(kind)) {
      item.querySelector(".dots").textContent = "";
      item.querySelector(".state").textContent = "cleared, re-entering";
    }
    if (/rejected/.test(kind) || event.valid === false) {
      item.classList.add("error");
      const left = event.attempts_left;
      item.querySelector(".state").textContent = Number.isInteger(left) ? `invalid, ${left} tries left` : "invalid";
      if (event.field === "pan") $("validity").textContent = "Not valid";
    }
    if (/completed/.test(kind) || event.valid === true) {
      item.classList.remove("error", "current");
      item.classList.add("done");
      item.querySelector(".state").textContent = "✓ done";
      if (event.field === "pan") $("validity").textContent = "Valid";
    }
  }
  if (event.brand) $("brand").textContent = BRAND_LABELS[event.brand] || event.brand;
  if (event.last4) $("last4").textContent = event.last4;
  const fieldName = FIELD_LABELS[event.field] || "";
  const count = event.count ?? event.digits_entered;
  if (item && Number.isInteger(count)) setStatus(`${fieldName}: ${count} digit${count === 1 ? "" : "s"} entered`, "");
}

function applyCapture(capture) {
  state.capture = Object.assign({}, state.capture, capture);
  const c = state.capture;
  if (c.brand) $("brand").textContent = BRAND_LABELS[c.brand] || c.brand;
  if (c.last4) { $("last4").textContent = c.last4; $("validity").textContent = "Valid"; }
  if (c.state === "tokenizing") setStatus("Card complete. Getting a payment token…", "");
  if (c.state === "tokenized") {
    setStatus("Done: the card was tokenized.", "ok");
    for (const item of document.querySelectorAll(".fields li")) {
      item.classList.remove("current", "error");
      item.classList.add("done");
      item.querySelector(".state").textContent = "✓ done";
    }
    $("result").hidden = false;
    $("result-token").value = c.token || "";
    $("copy-token").focus();
  }
  if (c.state === "failed" || c.state === "cancelled") {
    setStatus(c.state === "cancelled" ? "Capture cancelled." : "Capture failed.", "bad");
    $("capture-error").textContent = friendlyReason(c.reason || c.state);
  }
  if (TERMINAL.has(c.state)) showClose();
}

function showClose() {
  $("cancel-capture").hidden = true;
  $("close-capture").hidden = false;
  refreshCalls();
}

async function cancelCapture() {
  if (!state.capture) return;
  $("cancel-capture").disabled = true;
  try {
    const response = await api(`/v1/captures/${encodeURIComponent(state.capture.capture_id)}`, { method: "DELETE" });
    applyCapture(await response.json());
  } catch (error) {
    $("capture-error").textContent = `Could not cancel: ${error.message}`;
    $("cancel-capture").disabled = false;
  }
}

async function copyToken() {
  const field = $("result-token");
  try {
    await navigator.clipboard.writeText(field.value);
  } catch (error) {
    field.select();
    document.execCommand("copy");
  }
  $("copy-status").textContent = "Token copied.";
}

function closeCapture() {
  if (state.stream) state.stream.abort();
  state.capture = null;
  $("capture-panel").hidden = true;
  refreshCalls();
}

// -- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token-input").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("cancel-capture").addEventListener("click", cancelCapture);
  $("copy-token").addEventListener("click", copyToken);
  $("close-capture").addEventListener("click", closeCapture);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else $("token-input").focus();
});
