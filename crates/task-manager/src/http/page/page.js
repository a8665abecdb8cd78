// The web page's behaviour: choose or drop a CSV file, upload it with a progress bar, follow
// its task until it ends, download the result, list the recent tasks. Talks to the /v1 API of
// the server that serves it, with the API token (when the server asks for one) kept in the
// tab's sessionStorage and sent as "Authorization: Bearer <token>".
// Everything from the server is shown with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "play-counts.api-token";
const FINISHED = new Set(["DONE", "FAILED", "CANCELLED"]);
// While a task runs: the status request waits this long for its end (long polling), and the
// task list is read again after this delay.
const STATUS_WAIT_SECONDS = 1;
const LIST_REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

// ---- The token -------------------------------------------------------------------------

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  } catch {
    // Storage disabled: the token is then lost on reload, nothing worse.
  }
}

function authorize(setHeader) {
  const token = storedToken();
  if (token) {
    setHeader("Authorization", "Bearer " + token);
  }
}

/** Shows the token field, after a 401 answer with `error` or when a token is kept. */
function showTokenSection(error) {
  const held = storedToken() !== "";
  $("token-section").hidden = false;
  $("forget-token").hidden = !held;
  if (error) {
    $("token-message").textContent = held
      ? "The server refused this token (" + error + "). Enter another one."
      : "This server needs an API token: enter it to upload and to see the tasks.";
    if (document.activeElement === document.body || document.activeElement === null) {
      $("token").focus();
    }
  } else {
    $("token-message").textContent = "A token is set for this tab.";
  }
}

// ---- The API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The JSON of a response's text, or null. */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** An error answer's message: its JSON `error`, else the status. */
function errorOf(status, body, statusText) {
  if (body && typeof body.error === "string") {
    return body.error;
  }
  return status ? "HTTP " + status + (statusText ? " " + statusText : "") : "no answer";
}

/** GET `path` (relative to the page) as JSON; throws ApiError. */
async function getJson(path) {
  const headers = new Headers({ Accept: "application/json" });
  authorize((name, value) => headers.set(name, value));
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, "the server cannot be reached");
  }
  const body = parseJson(await response.text());
  if (!response.ok) {
    if (response.status === 401) {
      showTokenSection(errorOf(response.status, body, response.statusText));
    }
    throw new ApiError(response.status, errorOf(response.status, body, response.statusText));
  }
  return body;
}

// ---- Showing a task --------------------------------------------------------------------

function formatNumber(n) {
  return typeof n === "number" ? n.toLocaleString() : "–";
}

function formatBytes(n) {
  if (typeof n !== "number") {
    return "–";
  }
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
}

function formatTime(text) {
  const time = new Date(text);
  return Number.isNaN(time.getTime()) ? text || "" : time.toLocaleString();
}

function percent(progress) {
  return Math.round(Math.min(Math.max(progress || 0, 0), 1) * 100);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The status badge, with the progress of a PROCESSING task. */
function statusBadge(task) {
  const badge = element("span", "badge " + String(task.status).toLowerCase(), task.status);
  if (task.status === "PROCESSING") {
    badge.textContent += " " + percent(task.progress) + " %";
  }
  return badge;
}

/** The download link of a DONE task: the task's `download_link`. */
function downloadLink(task, text) {
  const link = element("a", "download", text);
  link.href = task.download_link;
  link.setAttribute("download", "");
  return link;
}

/** One sentence for the status line and screen readers. */
function summary(task) {
  const name = task.filename || "the file";
  switch (task.status) {
    case "RECEIVED":
      return name + " is received and waits to be processed.";
    case "PROCESSING":
      return name + " is being processed: " + percent(task.progress) + " %.";
    case "DONE":
      return name + " is done: " + formatNumber(task.rows) + " rows read, " +
        formatNumber(task.groups) + " groups written.";
    case "FAILED":
      return name + " failed: " + (task.error || "no reason given");
    case "CANCELLED":
      return name + " was cancelled.";
    default:
      return name + ": " + task.status;
  }
}

/** Fills `container` with the task's details. */
function renderTask(container, task) {
  container.replaceChildren();
  container.dataset.taskId = task.task_id;
  container.dataset.status = task.status;
  const head = element("p", "task-head");
  head.append(element("span", "task-file", task.filename || "(no name)"), " ", statusBadge(task));
  container.append(head);
  if (!FINISHED.has(task.status)) {
    const bar = element("progress");
    bar.max = 100;
    bar.value = percent(task.progress);
    bar.setAttribute("aria-label", "Processing");
    container.append(bar);
  }
  const facts = element("dl", "facts");
  const fact = (term, value) => facts.append(element("dt", "", term), element("dd", "", value));
  fact("Rows", formatNumber(task.rows));
  fact("Groups", formatNumber(task.groups));
  fact("Input", formatBytes(task.input_bytes));
  fact("Output", formatBytes(task.output_bytes));
  fact("Task", task.task_id);
  container.append(facts);
  if (task.status === "FAILED") {
    container.append(element("p", "error", task.error || "The task failed."));
  }
  if (task.download_link) {
    container.append(downloadLink(task, "Download the result"));
  } else if (task.expired_at) {
    container.append(element("p", "hint", "The result has expired and was deleted."));
  }
}

// ---- The current upload ----------------------------------------------------------------

let chosenFile = null;
let currentTask = null;
let following = 0; // the generation of the task being followed; a new upload stops the old

function say(text, kind) {
  const message = $("message");
  message.textContent = text;
  message.className = "message" + (kind ? " " + kind : "");
}

function chooseFile(file) {
  chosenFile = file || null;
  $("file-name").textContent = chosenFile
    ? chosenFile.name + " (" + formatBytes(chosenFile.size) + ")"
    : "";
  $("upload-button").disabled = !chosenFile;
}

function showUploadProgress(value) {
  const visible = value !== null;
  $("upload-progress-label").hidden = !visible;
  $("upload-progress").hidden = !visible;
  $("upload-percent").hidden = !visible;
  if (visible) {
    $("upload-progress").value = value;
    $("upload-percent").textContent = value + " %";
  }
}

function upload(file) {
  const request = new XMLHttpRequest();
  request.open("POST", "v1/data_processor/upload");
  authorize((name, value) => request.setRequestHeader(name, value));
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable && event.total > 0) {
      showUploadProgress(Math.floor((event.loaded / event.total) * 100));
    }
  });
  request.addEventListener("load", () => {
    $("upload-button").disabled = !chosenFile;
    const body = parseJson(request.responseText);
    if (request.status === 202 && body && body.task_id) {
      showUploadProgress(100);
      say("Uploaded " + file.name + ".", "");
      follow(body.task_id);
      refreshList();
      return;
    }
    showUploadProgress(null);
    const error = errorOf(request.status, body, request.statusText);
    if (request.status === 401) {
      showTokenSection(error);
      say("The upload needs an API token: enter it above, then upload again.", "error");
    } else {
      say("The upload was refused: " + error, "error");
    }
  });
  request.addEventListener("error", () => {
    $("upload-button").disabled = !chosenFile;
    showUploadProgress(null);
    say("The upload failed: the server cannot be reached.", "error");
  });
  const form = new FormData();
  form.append("file", file, file.name);
  $("upload-button").disabled = true;
  showUploadProgress(0);
  say("Uploading " + file.name + "…", "");
  request.send(form);
}

/** Shows task `id` and reads it again until it ends. */
async function follow(id) {
  following += 1;
  const generation = following;
  let announced = "";
  $("current-section").hidden = false;
  for (;;) {
    let task;
    try {
      task = await getJson("v1/tasks/status/" + encodeURIComponent(id) + "?wait=" + STATUS_WAIT_SECONDS);
    } catch (error) {
      if (generation !== following) {
        return;
      }
      say("Cannot read the task: " + error.message, "error");
      if (error.status === 401 || error.status === 404) {
        return;
      }
      await sleep(2000);
      continue;
    }
    if (generation !== following) {
      return;
    }
    currentTask = task;
    renderTask($("current-task"), task);
    // The status line changes (and is announced) when the status does, not at each percent.
    if (task.status !== announced) {
      announced = task.status;
      say(summary(task), task.status === "FAILED" ? "error" : task.status === "DONE" ? "done" : "");
      refreshList();
    }
    if (FINISHED.has(task.status)) {
      return;
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- The task list ---------------------------------------------------------------------

let listTimer = null;

function renderList(tasks, count) {
  const rows = tasks.map((task) => {
    const row = element("tr");
    row.dataset.taskId = task.task_id;
    row.dataset.status = task.status;
    const cell = (content, className) => {
      const td = element("td", className);
      td.append(content);
      row.append(td);
    };
    cell(task.filename || "(no name)", "file");
    cell(statusBadge(task));
    cell(formatNumber(task.rows), "number");
    cell(formatNumber(task.groups), "number");
    cell(formatTime(task.created_at), "time");
    if (task.download_link) {
      cell(downloadLink(task, "Download"));
    } else if (task.status === "FAILED") {
      cell(task.error || "failed", "error");
    } else if (task.expired_at) {
      cell("expired");
    } else {
      cell("");
    }
    return row;
  });
  $("tasks").tBodies[0].replaceChildren(...rows);
  // An empty table is no table.
  $("tasks").hidden = rows.length === 0;
  $("tasks-message").textContent =
    count === 0 ? "No task yet." : count > tasks.length ? "The " + tasks.length + " newest of " + count + " tasks." : "";
}

async function refreshList() {
  clearTimeout(listTimer);
  listTimer = null;
  let running = currentTask !== null && !FINISHED.has(currentTask.status);
  try {
    const page = await getJson("v1/tasks?page=1&page_size=20");
    const tasks = Array.isArray(page && page.results) ? page.results : [];
    renderList(tasks, typeof page.count === "number" ? page.count : tasks.length);
    running = running || tasks.some((task) => !FINISHED.has(task.status));
  } catch (error) {
    if (error.status === 401) {
      $("tasks").hidden = true;
      $("tasks-message").textContent = "Enter the API token to see the tasks.";
      return;
    }
    $("tasks-message").textContent = "Cannot list the tasks: " + error.message;
  }
  if (running) {
    // One timer, however many refreshes overlapped.
    clearTimeout(listTimer);
    listTimer = setTimeout(refreshList, LIST_REFRESH_MS);
  }
}

// ---- Downloads with a token ------------------------------------------------------------

/** The file name of a Content-Disposition header, else `fallback`. */
function attachmentName(header, fallback) {
  const match = /filename="([^"]*)"/.exec(header || "");
  return match && match[1] ? match[1] : fallback;
}

/**
 * A download link cannot carry the token, so with a token its click fetches the result with
 * the header and saves it from memory; without one the browser follows the link itself.
 */
async function downloadWithToken(link) {
  const headers = new Headers();
  authorize((name, value) => headers.set(name, value));
  let response;
  try {
    response = await fetch(link.href, { headers, cache: "no-store" });
  } catch {
    say("The download failed: the server cannot be reached.", "error");
    return;
  }
  if (!response.ok) {
    const body = parseJson(await response.text());
    say("The download failed: " + errorOf(response.status, body, response.statusText), "error");
    return;
  }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const save = element("a");
  save.href = url;
  save.download = attachmentName(response.headers.get("Content-Disposition"), "result.csv");
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---- Wiring ----------------------------------------------------------------------------

function start() {
  const input = $("file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => chooseFile(input.files[0]));
  // A file dropped beside the zone must not replace the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length > 0) {
      input.files = files;
      chooseFile(files[0]);
    }
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (chosenFile) {
      upload(chosenFile);
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      return;
    }
    storeToken(token);
    $("token").value = "";
    showTokenSection(null);
    say("Token set.", "");
    refreshList();
  });
  $("forget-token").addEventListener("click", () => {
    storeToken("");
    $("forget-token").hidden = true;
    $("token-message").textContent = "The token is forgotten.";
    refreshList();
  });
  $("refresh").addEventListener("click", refreshList);
  document.addEventListener("click", (event) => {
    const link = event.target instanceof Element ? event.target.closest("a.download") : null;
    if (link && storedToken()) {
      event.preventDefault();
      downloadWithToken(link);
    }
  });
  if (storedToken()) {
    showTokenSection(null);
  }
  refreshList();
}

start();
