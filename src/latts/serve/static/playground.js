// latts playground: asks POST /v1/chat/completions with stream: true and latts_branches: true, and draws
// the server-sent events: one lane per branch, the time bar, drafts accepted, the live tally, the answer.
// Plain JS, no build step, no CDN.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, key: sessionStorage.getItem("latts-key") || "", controller: null, timer: null };

async function loadInfo() {
  try {
    const r = await fetch("/playground/info");
    state.info = await r.json();
  } catch (e) { return showError("the server does not answer: " + e); }
  const i = state.info;
  $("server-line").textContent = `${i.model} · task ${i.task} · ` +
    (i.optimized_plans ? "plans from latts optimize" : "default plan (no latts optimize plans)") +
    ` · B branches race the deadline; their answers are voted.`;
  for (const id of ["deadline", "deadline-range"]) $(id).max = i.max_budget_s;
  $("branches").max = i.max_branches; $("max-think").max = i.max_think;
  if (i.needs_key) { $("key-row").hidden = false; $("api-key").value = state.key; }
  if (i.report_figure) { $("report-link").href = i.report_figure; $("report-link").hidden = false; }
}

function showError(message) { $("error").textContent = message; $("error").hidden = !message; }

function planFields(enabled) { for (const id of ["branches", "gamma", "max-think"]) $(id).disabled = !enabled; }

function lane(index) {
  let el = document.querySelector(`.lane[data-index="${index}"]`);
  if (el) return el;
  el = document.createElement("div");
  el.className = "lane"; el.dataset.index = index;
  el.innerHTML = `<div class="lane-head"><span>branch ${index}</span><span class="lane-stats"></span></div>
    <pre class="lane-text" tabindex="0" aria-label="branch ${index} text"></pre><div class="lane-answer"></div>`;
  const all = [...document.querySelectorAll(".lane")];
  const after = all.find((x) => Number(x.dataset.index) > index);
  $("lanes").insertBefore(el, after || null);
  return el;
}

function drawBranches(branches) {
  for (const b of branches) {
    const el = lane(b.index), text = el.querySelector(".lane-text");
    if (b.delta) {
      const bottom = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
      text.textContent += b.delta;
      if (bottom) text.scrollTop = text.scrollHeight;
    }
    const drafts = b.drafts_proposed ? ` · drafts ${b.drafts_accepted}/${b.drafts_proposed} accepted` : "";
    el.querySelector(".lane-stats").textContent = `${b.tokens} tok${drafts}` +
      (b.finish_reason ? ` · ${b.finish_reason}${b.forced ? " (forced: " + b.forced + ")" : ""}` : "");
    if (b.finish_reason) {
      el.classList.add("done");
      el.querySelector(".lane-answer").textContent = b.answer == null ? "no answer" : "→ " + b.answer;
    }
  }
}

function drawTally(tally) {
  const total = tally.reduce((s, [, c]) => s + c, 0) || 1;
  $("tally").innerHTML = "";
  for (const [answer, count] of tally) {
    const li = document.createElement("li");
    li.textContent = `${answer} · ${typeof count === "number" && count % 1 ? count.toFixed(2) : count}`;
    const bar = document.createElement("span");
    bar.className = "bar"; bar.style.width = `${Math.round(120 * count / total)}px`;
    li.appendChild(bar);
    $("tally").appendChild(li);
  }
}

function tick(t0, budget) {
  const s = (performance.now() - t0) / 1000;
  $("elapsed").textContent = s.toFixed(1) + " s";
  const pct = Math.min(100, 100 * s / budget);
  $("timebar-fill").style.width = pct + "%";
  $("timebar-fill").classList.toggle("late", s > budget);
  $("timebar").setAttribute("aria-valuenow", Math.round(pct));
}

function finish(final) {
  const l = final.latts || {};
  $("answer").textContent = l.answer == null ? "(no answer)" : l.answer;
  drawTally(l.votes || []);
  for (const i of l.winners || []) lane(i).classList.add("winner");
  if ("correct" in l) {
    $("grade").className = l.correct ? "right" : "wrong";
    $("grade").textContent = l.correct ? `right (gold: ${l.gold})` : `wrong (gold: ${l.gold})`;
  }
  $("final-line").textContent = `answered in ${l.latency_s} s of ${l.latency_budget_s} s` +
    (l.early_stopped ? " · stopped early: the vote was decided" : "") +
    (final.usage ? ` · ${final.usage.completion_tokens} tokens` : "");
}

function handle(doc, t0, budget) {
  if (doc.error) throw new Error(doc.error.message);
  const choice = (doc.choices || [])[0] || {};
  const l = doc.latts || {};
  if (l.plan && !choice.finish_reason) {
    const p = l.plan;
    $("plan-line").textContent = `plan B=${p.branches} γ=${p.gamma} L=${p.max_think}` +
      (document.querySelector("input[name=plan]:checked").value === "auto" ? " (chosen for this deadline)" : " (by hand)");
    for (let i = 0; i < p.branches; i++) lane(i);
  }
  if (l.branches) drawBranches(l.branches);
  if (l.tally) drawTally(l.tally);
  if (choice.delta && choice.delta.content) $("answer").textContent = choice.delta.content;
  if (choice.finish_reason) finish(doc);
}

async function run(event) {
  event.preventDefault();
  if (state.controller) return;
  showError("");
  if (!$("key-row").hidden) { state.key = $("api-key").value.trim(); sessionStorage.setItem("latts-key", state.key); }
  const budget = Number($("deadline").value);
  const body = { messages: [{ role: "user", content: $("question").value }], stream: true, latts_branches: true,
                 latency_budget: budget };
  if (document.querySelector("input[name=plan]:checked").value === "hand") {
    body.branches = Number($("branches").value); body.gamma = Number($("gamma").value);
    body.max_think = Number($("max-think").value);
  }
  if ($("gold").value.trim()) body.gold = $("gold").value.trim();
  $("lanes").innerHTML = ""; $("tally").innerHTML = ""; $("answer").textContent = "…";
  $("grade").textContent = ""; $("final-line").textContent = ""; $("budget").textContent = budget + " s";
  $("plan-line").textContent = "waiting for the server…";
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = "Bearer " + state.key;
  state.controller = new AbortController();
  $("run").disabled = true; $("stop").disabled = false;
  const t0 = performance.now();
  state.timer = setInterval(() => tick(t0, budget), 50);
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body),
                                                    signal: state.controller.signal });
    if (r.status === 401) { $("key-row").hidden = false; $("api-key").focus(); }
    if (!r.ok) {
      const doc = await r.json().catch(() => ({}));
      throw new Error(`${r.status}: ${(doc.error && doc.error.message) || r.statusText}`);
    }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data !== "[DONE]") handle(JSON.parse(data), t0, budget);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(String(e.message || e)); else showError("stopped");
    if ($("answer").textContent === "…") $("answer").textContent = "–";
  } finally {
    clearInterval(state.timer); tick(t0, budget);
    state.controller = null; $("run").disabled = false; $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", run);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("deadline-range").addEventListener("input", () => { $("deadline").value = $("deadline-range").value; });
$("deadline").addEventListener("input", () => { $("deadline-range").value = $("deadline").value; });
for (const r of document.querySelectorAll("input[name=plan]")) {
  r.addEventListener("change", () => planFields(r.value === "hand" && r.checked));
}
loadInfo();
