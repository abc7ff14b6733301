"""The rating page: one trial at a time, by click, tap or key; progress shown; the token from the link."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>difftrain: rate images</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #1d1d1f; }
  main { max-width: 760px; margin: 0 auto; padding: 16px; text-align: center; }
  h1 { font-size: 1.1rem; font-weight: 600; margin: 8px 0 12px; }
  progress { width: 100%; height: 10px; }
  #count { font-size: 0.85rem; color: #555; margin: 4px 0 16px; }
  #question { font-size: 1.25rem; margin: 12px 0 16px; min-height: 1.6em; }
  #items { display: flex; gap: 16px; justify-content: center; flex-wrap: wrap; }
  .item { border: 3px solid transparent; border-radius: 8px; background: #fff; padding: 6px; cursor: pointer; }
  .item:focus, .item:hover { border-color: #2f6fde; outline: none; }
  .item img { width: min(300px, 40vw); height: auto; image-rendering: pixelated; display: block; }
  .single .item img { width: min(340px, 80vw); }
  #answers { margin: 18px 0; display: flex; gap: 10px; justify-content: center; flex-wrap: wrap; }
  button { font-size: 1.05rem; padding: 12px 20px; min-width: 96px; border-radius: 8px; border: 1px solid #aaa;
           background: #fff; cursor: pointer; touch-action: manipulation; }
  button:hover, button:focus { background: #e8efff; border-color: #2f6fde; }
  kbd { font-size: 0.75rem; color: #777; margin-left: 6px; }
  #message { color: #a11; min-height: 1.4em; }
  #done { display: none; font-size: 1.2rem; margin-top: 40px; }
</style>
</head>
<body>
<main>
  <h1>difftrain: rate images</h1>
  <progress id="progress" value="0" max="1"></progress>
  <div id="count"></div>
  <div id="trial">
    <div id="question"></div>
    <div id="items"></div>
    <div id="answers"></div>
  </div>
  <div id="message" role="status"></div>
  <div id="done">Thank you: every trial for you is rated. You can close this page.</div>
</main>
<script>
const token = new URLSearchParams(location.search).get("t") || "";
const labels = {left: "Left", right: "Right", real: "Real", generated: "Generated"};
const keys = {left: ["ArrowLeft", "a"], right: ["ArrowRight", "d"], real: ["r"], generated: ["g"],
              "1": ["1"], "2": ["2"], "3": ["3"], "4": ["4"], "5": ["5"]};
let current = null, shownAt = 0, busy = false;

function say(text) { document.getElementById("message").textContent = text; }

async function api(path, options = {}) {
  options.headers = Object.assign({"X-Rater-Token": token, "Content-Type": "application/json"}, options.headers || {});
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

async function load() {
  if (!token) { say("This page needs your personal link (it ends in ?t=...)."); return; }
  try {
    show(await api("/api/next"));
  } catch (e) { say(e.message); }
}

function show(trial) {
  current = trial;
  const progress = document.getElementById("progress");
  progress.max = trial.quota; progress.value = trial.answered;
  document.getElementById("count").textContent = trial.answered + " of " + trial.quota + " rated";
  if (trial.done) {
    document.getElementById("trial").style.display = "none";
    document.getElementById("done").style.display = "block";
    return;
  }
  document.getElementById("question").textContent = trial.question;
  const items = document.getElementById("items");
  items.className = trial.items.length === 1 ? "single" : "";
  items.replaceChildren(...trial.items.map((url, slot) => {
    const box = document.createElement("div");
    box.className = "item"; box.tabIndex = 0;
    const img = document.createElement("img");
    img.src = url + "?t=" + encodeURIComponent(token);
    img.alt = trial.items.length === 1 ? "the image" : (slot ? "right image" : "left image");
    box.appendChild(img);
    if (trial.kind === "pair") box.addEventListener("click", () => answer(slot ? "right" : "left"));
    return box;
  }));
  document.getElementById("answers").replaceChildren(...trial.answers.map(a => {
    const button = document.createElement("button");
    button.textContent = labels[a] || a;
    button.dataset.answer = a;
    const hint = document.createElement("kbd");
    hint.textContent = (keys[a] || [])[0] === "ArrowLeft" ? "\u2190" : (keys[a] || [])[0] === "ArrowRight" ? "\u2192" : (keys[a] || [""])[0];
    button.appendChild(hint);
    button.addEventListener("click", () => answer(a));
    return button;
  }));
  say("");
  shownAt = performance.now();
}

async function answer(choice) {
  if (busy || !current || current.done) return;
  busy = true;
  try {
    await api("/api/vote", {method: "POST", body: JSON.stringify(
      {position: current.position, answer: choice, ms: Math.round(performance.now() - shownAt)})});
    show(await api("/api/next"));
  } catch (e) {
    say(e.message + " (try again)");
    try { show(await api("/api/next")); } catch (_) {}  // the vote may have landed: show what is open now
  } finally { busy = false; }
}

document.addEventListener("keydown", event => {
  if (!current || current.done || event.ctrlKey || event.metaKey || event.altKey) return;
  for (const a of current.answers) {
    if ((keys[a] || []).includes(event.key)) { event.preventDefault(); answer(a); return; }
  }
});
load();
</script>
</body>
</html>
"""
