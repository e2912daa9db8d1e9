// The jobs table: labels (and a filter on them), status, live progress bars, cancel, delete
// (purge) of finished jobs, edit and re-submit.

import { $, ACTIVE, FINISHED, api, esc, fmt, state } from "./common.js";
import { followJob } from "./events.js";
import { clearFieldErrors, fillForm } from "./form.js";
import { loadResults, renderResultsStatus, selectJob } from "./results.js";

let refreshTimer = null;
export function onJobEvent(jobId, event, data) {
  const job = state.jobs.get(jobId);
  if (event === "progress" && job) {
    job.status = data.status; job.progress = data.progress; renderJobRow(job);
  } else if (event === "candidates" && jobId === state.selected) {
    // Candidates arrive in batches; refresh the results at most once a second.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => loadResults(jobId, false), 600);
  } else if (event === "end") {
    state.jobs.set(jobId, data); renderJobRow(data);
    if (jobId === state.selected) loadResults(jobId, false);
  }
}

export function objectivesText(req) {
  return (req && req.objectives || []).map(o => {
    const u = state.units[o.property] ? ` ${state.units[o.property]}` : "";
    if (o.goal === "target") return `${o.property} ${o.value}±${o.tolerance ?? "?"}${u}`;
    if (o.goal === "below") return `${o.property} < ${o.value}${u}`;
    if (o.goal === "above") return `${o.property} > ${o.value}${u}`;
    return `${o.goal} ${o.property}`;
  }).join("; ");
}

export function progressBar(job) {
  const p = job.progress || {};
  const total = p.total || 0, step = p.step || 0;
  const done = job.status === "succeeded";
  const frac = done ? 1 : (total ? Math.min(1, step / total) : 0);
  const best = p.best !== null && p.best !== undefined ? ` · best loss ${fmt(p.best)}` : "";
  const stored = p.stored ? ` · ${p.stored} stored` : "";
  return `<div class="bar" data-job="${esc(job.id)}" data-status="${esc(job.status)}" data-phase="${esc(p.phase || "")}" data-step="${step}" data-total="${total}">
    <div class="fill" style="width:${(frac * 100).toFixed(1)}%"></div>
    <div class="text">${esc(p.phase || "")} ${step}/${total}${best}${stored}</div></div>`;
}

export function jobRowHtml(j) {
  const err = j.error ? `<div class="err">${esc(j.error)}</div>` : "";
  return `<td>${esc(new Date(j.created_at).toLocaleString())}</td><td><code>${esc(j.id.slice(0, 8))}</code></td>
    <td class="label">${esc(j.label || "")}</td>
    <td>${esc(j.method)}</td><td>${esc(objectivesText(j.request))}</td>
    <td class="status status-${esc(j.status)}">${esc(j.status)}${err}</td><td>${progressBar(j)}</td>
    <td><button type="button" data-view="${esc(j.id)}">view</button>
    ${["queued", "running"].includes(j.status) ? `<button type="button" data-cancel="${esc(j.id)}">cancel</button>` : ""}
    <button type="button" data-edit="${esc(j.id)}">edit &amp; re-submit</button>
    ${FINISHED.includes(j.status) ? `<button type="button" data-purge="${esc(j.id)}" title="delete the job and its structures for good">delete</button>` : ""}</td>`;
}

export function renderJobRow(job) {
  const tr = document.querySelector(`#jobs tr[data-id="${CSS.escape(job.id)}"]`);
  if (tr) { tr.innerHTML = jobRowHtml(job); tr.className = job.id === state.selected ? "sel" : ""; }
  if (job.id === state.selected) renderResultsStatus(job);
}

export async function loadJobs(append = false) {
  try {
    const label = $("label-filter").value.trim();
    let q = append && state.cursor ? `&cursor=${encodeURIComponent(state.cursor)}` : "";
    if (label) q += `&label=${encodeURIComponent(label)}`;
    const page = await api(`/v1/jobs?limit=20${q}`);
    if (!append) state.order = [];
    for (const j of page.items) {
      // A finished state from the event stream stands against a poll that raced with it.
      const known = state.jobs.get(j.id);
      if (!(known && FINISHED.includes(known.status) && !FINISHED.includes(j.status))) state.jobs.set(j.id, j);
      if (!state.order.includes(j.id)) state.order.push(j.id);
    }
    state.cursor = page.next_cursor;
    $("jobs").innerHTML = state.order.map(id => {
      const j = state.jobs.get(id);
      return `<tr data-id="${esc(id)}" class="${id === state.selected ? "sel" : ""}">${jobRowHtml(j)}</tr>`;
    }).join("");
    $("more").innerHTML = state.cursor ? `<button type="button" id="morebtn">more</button>` : "";
    if (state.cursor) $("morebtn").onclick = () => loadJobs(true);
    for (const id of state.order) if (ACTIVE.includes(state.jobs.get(id).status)) followJob(id, onJobEvent);
  } catch (e) {
    $("jobs").innerHTML = `<tr><td colspan="8" class="err">${esc(e.message)}</td></tr>`;
  }
}

$("jobs").addEventListener("click", async (ev) => {
  const t = ev.target.closest("button");
  if (!t) return;
  if (t.dataset.view) selectJob(t.dataset.view);
  if (t.dataset.cancel) {
    try { const j = await api(`/v1/jobs/${t.dataset.cancel}`, { method: "DELETE" }); state.jobs.set(j.id, j); renderJobRow(j); }
    catch (e) { alert(e.message); }
  }
  if (t.dataset.edit) editJob(t.dataset.edit);
  if (t.dataset.purge) purgeJob(t.dataset.purge);
});

let filterTimer = null;
$("label-filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => loadJobs(), 300);
});

async function purgeJob(jobId) {
  if (!confirm(`Delete job ${jobId.slice(0, 8)} and all its structures for good?`)) return;
  try { await api(`/v1/jobs/${jobId}?purge=true`, { method: "DELETE" }); }
  catch (e) { alert(e.message); return; }
  state.jobs.delete(jobId);
  state.order = state.order.filter(id => id !== jobId);
  const tr = document.querySelector(`#jobs tr[data-id="${CSS.escape(jobId)}"]`);
  if (tr) tr.remove();
  if (state.selected === jobId) { state.selected = null; $("results").hidden = true; }
}

export function editJob(jobId) {
  const job = state.jobs.get(jobId);
  if (!job) return;
  fillForm(job.request);
  clearFieldErrors();
  $("submitmsg").className = "muted";
  $("submitmsg").textContent = `editing a copy of job ${jobId.slice(0, 8)}: change what you like, then submit`;
  $("submit-section").scrollIntoView({ behavior: "smooth" });
}

