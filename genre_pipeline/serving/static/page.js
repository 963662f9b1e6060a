// The page posts the form (with the poster file, if any) to /predict and draws one bar per genre.
"use strict";

const form = document.getElementById("movie-form");
const posterInput = document.getElementById("poster");
const preview = document.getElementById("poster-preview");
const dropZone = document.getElementById("drop-zone");
const dropHint = document.getElementById("drop-hint");
const clearPoster = document.getElementById("clear-poster");
const submit = document.getElementById("submit");
const errorBox = document.getElementById("error");
const answerBox = document.getElementById("answer");
const keyRow = document.getElementById("key-row");
const keyInput = document.getElementById("api-key");  // no name: FormData leaves it out of the form

// A server with API keys: the key is asked for once and kept for this tab (sessionStorage), never in the form.
keyInput.value = sessionStorage.getItem("genre-pipeline-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("genre-pipeline-api-key", keyInput.value.trim()));
function keyHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function modelName(model) {
  return `${model.name} v${model.version} (${model.model}, run ${model.run_id.slice(0, 8)})`;
}

// Each input's limits as the model describes them (GET /model's inputs), so the page refuses what the API would.
function applyLimits(fields) {
  for (const field of fields) {
    const input = form.elements[field.name];
    if (!input || input.type === "file") continue;
    if (field.max_length != null) input.maxLength = field.max_length;
    if (field.minimum != null) input.min = field.minimum;
    if (field.maximum != null) input.max = field.maximum;
    input.required = field.required;
  }
}

fetch("/model")
  .then((response) => response.json())
  .then((model) => {
    applyLimits(model.inputs);
    keyRow.hidden = !model.api_key_required;
    const f1 = model.metrics.test.macro_f1;
    document.getElementById("model-line").textContent =
      `Answered by ${modelName(model)}` + (f1 == null ? "" : `, test macro-F1 ${f1.toFixed(3)}`);
  })
  .catch(() => { document.getElementById("model-line").textContent = "The model could not be reached."; });

function showPoster(file) {
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (!file) {
    preview.hidden = true; preview.removeAttribute("src"); dropHint.hidden = false; clearPoster.hidden = true;
    return;
  }
  preview.src = URL.createObjectURL(file);
  preview.alt = `poster: ${file.name}`;
  preview.hidden = false; dropHint.hidden = true; clearPoster.hidden = false;
}

posterInput.addEventListener("change", () => showPoster(posterInput.files[0]));
clearPoster.addEventListener("click", () => { posterInput.value = ""; showPoster(null); });
["dragenter", "dragover"].forEach((name) => dropZone.addEventListener(name, (event) => {
  event.preventDefault(); dropZone.classList.add("dragging");
}));
["dragleave", "drop"].forEach((name) => dropZone.addEventListener(name, () => dropZone.classList.remove("dragging")));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) {
    posterInput.files = event.dataTransfer.files;
    showPoster(posterInput.files[0]);
  }
});

// On a phone the answer lands below the form: bring it (or the error) into view.
function reveal(element) {
  element.scrollIntoView({ block: "start", behavior: "smooth" });
}

function showError(message) {
  errorBox.textContent = message; errorBox.hidden = false; answerBox.hidden = true;
  reveal(errorBox);
}

function bar(score) {
  const row = document.createElement("li");
  row.className = "genre-row" + (score.decided ? " decided" : "");
  row.dataset.genre = score.genre;
  const name = document.createElement("span");
  name.className = "genre-name"; name.textContent = score.genre;
  const track = document.createElement("span");
  track.className = "track";
  track.title = `probability ${score.probability.toFixed(3)}, threshold ${score.threshold.toFixed(3)}`;
  const fill = document.createElement("span");
  fill.className = "fill"; fill.style.display = "block"; fill.style.width = `${(score.probability * 100).toFixed(1)}%`;
  const line = document.createElement("span");
  line.className = "threshold"; line.style.left = `${(score.threshold * 100).toFixed(1)}%`;
  track.append(fill, line);
  const value = document.createElement("span");
  value.className = "value"; value.textContent = score.probability.toFixed(2);
  row.append(name, track, value);
  return row;
}

function showAnswer(result) {
  errorBox.hidden = true;
  document.getElementById("decided").textContent = result.genres.length ? result.genres.join(", ") : "none reaches its threshold";
  document.getElementById("bars").replaceChildren(...result.scores.map(bar));
  const used = result.inputs;
  const parts = ["overview"];
  if (used.tagline) parts.push("tagline");
  if (used.title) parts.push("title");
  if (used.metadata.length) parts.push(used.metadata.map((name) => name.replaceAll("_", " ")).join(", "));
  if (used.poster) parts.push("poster");
  document.getElementById("inputs-line").textContent =
    `Read: ${parts.join(", ")}.` + result.notes.map((note) => ` ${note[0].toUpperCase()}${note.slice(1)}.`).join("");
  document.getElementById("answered-by").textContent = `Answered by ${modelName(result.model)}.`;
  answerBox.hidden = false;
  reveal(answerBox);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.overview.value.trim()) { showError("Write the movie's overview first."); return; }
  submit.disabled = true;
  try {
    const response = await fetch("/predict", { method: "POST", body: new FormData(form), headers: keyHeaders() });
    if (response.status === 401) { keyRow.hidden = false; keyInput.focus(); }
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (response.ok) showAnswer(body); else showError(body.error || `the server answered ${response.status}`);
  } catch (failure) {
    showError(`The server could not be reached: ${failure.message}`);
  } finally {
    submit.disabled = false;
  }
});
