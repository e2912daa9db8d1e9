// The lab's page: submit jobs, follow them live (Server-Sent Events), explore the results.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v, d = 3) => (v === null || v === undefined) ? "" : (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : esc(v));
const list = (s) => s.split(",").map(x => x.trim()).filter(Boolean);
const ACTIVE = ["queued", "running", "cancelling"];
const FINISHED = ["succeeded", "failed", "cancelled"];
const FLAG_ORDER = ["hit", "stable", "metastable", "unique", "novel", "valid", "charge_neutral", "constraints"];
const CORE_PROPERTIES = ["band_gap", "formation_energy", "energy_above_hull", "density", "tolerance_factor", "hhi"];
const GOALS = ["target", "below", "above", "minimize", "maximize"];
const FIDELITIES = ["", "pbe", "gllb_sc", "hse", "scan"];
const KEY_STORE = "matdesign.apikey";

const state = {
  methods: {}, units: {}, properties: [...CORE_PROPERTIES], jobs: new Map(), order: [],
  cursor: null, selected: null, structures: [], sort: { key: "rank", dir: 1 }, picked: null,
  streams: new Map(), templates: null, viewer: null,
};

// --- HTTP ----------------------------------------------------------------------------------

const keyInput = $("apikey");
keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, keyInput.value);
  closeStreams(); loadCatalog(); loadJobs();
});

function headers(extra = {}) {
  const h = { ...extra };
  if (keyInput.value) h["X-API-Key"] = keyInput.value;
  return h;
}

class ApiError extends Error {
  constructor(status, detail) {
    const msg = Array.isArray(detail) ? detail.map(e => `${e.field}: ${e.msg}`).join("\n") : String(detail);
    super(`${status}: ${msg}`);
    this.status = status; this.detail = detail;
  }
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!r.ok) throw new ApiError(r.status, (data && data.detail) || text);
  return data;
}

async function download(path, name) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) { alert(`${r.status}: ${await r.text()}`); return; }
  saveBlob(await r.blob(), name);
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Server-Sent Events over fetch (EventSource cannot send the X-API-Key header).
function followJob(jobId) {
  if (state.streams.has(jobId)) return;
  const ctrl = new AbortController();
  state.streams.set(jobId, ctrl);
  (async () => {
    try {
      const r = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(), signal: ctrl.signal });
      if (!r.ok || !r.body) throw new Error(`events: HTTP ${r.status}`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data) onJobEvent(jobId, event, JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    } finally {
      state.streams.delete(jobId);
    }
    // Stream ended without an end event (server restart, network): polling picks it up again.
  })();
}

function closeStreams() { for (const c of state.streams.values()) c.abort(); state.streams.clear(); }

let refreshTimer = null;
function onJobEvent(jobId, event, data) {
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

// --- catalogue and the form ----------------------------------------------------------------

async function loadCatalog() {
  try {
    const methods = await api("/v1/methods");
    state.methods = Object.fromEntries(methods.map(m => [m.name, m]));
    const current = $("method").value;
    $("method").innerHTML = methods.map(m => `<option value="${esc(m.name)}">${esc(m.name)} (${esc(m.version)})</option>`).join("");
    if (current && state.methods[current]) $("method").value = current;
    renderParams();
  } catch (e) { showSubmitError(e); }
  try {
    const oracles = await api("/v1/oracles");
    for (const o of oracles) state.units[o.property] = o.unit;
    state.properties = [...new Set([...CORE_PROPERTIES, ...oracles.map(o => o.property)])];
    for (const sel of document.querySelectorAll("select.prop")) fillPropertySelect(sel, sel.value);
  } catch (e) { /* properties stay the core set */ }
  buildRequest();
}

function fillPropertySelect(sel, value) {
  sel.innerHTML = state.properties.map(p => `<option value="${esc(p)}">${esc(p)}${state.units[p] ? ` (${esc(state.units[p])})` : ""}</option>`).join("");
  if (value) sel.value = value;
}

function addObjective(o = {}) {
  const tr = document.createElement("tr");
  const opts = (vals, v) => vals.map(x => `<option value="${esc(x)}"${x === (v ?? "") ? " selected" : ""}>${esc(x || "default")}</option>`).join("");
  tr.innerHTML = `
    <td><select class="prop" data-k="property"></select></td>
    <td><select data-k="goal">${opts(GOALS, o.goal || "target")}</select></td>
    <td><input data-k="value" type="number" step="any" value="${o.value ?? ""}"></td>
    <td><input data-k="tolerance" type="number" step="any" min="0" value="${o.tolerance ?? ""}"></td>
    <td><input data-k="weight" type="number" step="any" min="0" value="${o.weight ?? 1}"></td>
    <td><select data-k="fidelity">${opts(FIDELITIES, o.fidelity || "")}</select></td>
    <td><button type="button" class="remove">remove</button><small class="fielderr"></small></td>`;
  fillPropertySelect(tr.querySelector(".prop"), o.property || "band_gap");
  tr.querySelector(".remove").onclick = () => { tr.remove(); renumberObjectives(); buildRequest(); };
  $("objectives").appendChild(tr);
  renumberObjectives();
}

function renumberObjectives() {
  [...$("objectives").rows].forEach((tr, i) => {
    tr.dataset.field = `objectives.${i}`;
    tr.querySelectorAll("[data-k]").forEach(el => { el.dataset.field = `objectives.${i}.${el.dataset.k}`; });
  });
}

// A parameter's JSON schema, with Optional[...] (anyOf [X, null]) and $ref resolved.
function paramSchema(schema, root) {
  let s = schema;
  if (s.anyOf) s = { ...s, ...(s.anyOf.find(x => x.type !== "null") || {}), nullable: true };
  if (s.$ref) {
    const name = s.$ref.split("/").pop();
    s = { ...s, ...((root.$defs || {})[name] || {}) };
  }
  if (s.allOf && s.allOf.length === 1 && s.allOf[0].$ref) s = { ...s, ...paramSchema(s.allOf[0], root) };
  return s;
}

function renderParams() {
  const m = state.methods[$("method").value];
  $("method-desc").textContent = m ? m.description : "";
  const box = $("params");
  // Same method again (catalogue reloaded, e.g. a new key): keep what was typed.
  const kept = box.dataset.method === $("method").value
    ? Object.fromEntries([...box.querySelectorAll("[data-param]")].map(el => [el.dataset.param, el.value])) : {};
  box.dataset.method = $("method").value;
  box.innerHTML = "";
  if (!m) return;
  const root = m.params_schema || {};
  for (const [name, raw] of Object.entries(root.properties || {})) {
    const s = paramSchema(raw, root);
    const def = m.defaults ? m.defaults[name] : undefined;
    const label = document.createElement("label");
    label.dataset.field = `params.${name}`;
    label.title = s.description || "";
    const kind = s.enum ? "enum" : (s.type || "json");
    label.dataset.kind = kind;
    let input;
    const defText = def === undefined || def === null ? "" : (typeof def === "object" ? JSON.stringify(def) : String(def));
    if (kind === "boolean") {
      input = `<select data-param="${esc(name)}"><option value="">default (${esc(defText)})</option><option value="true">true</option><option value="false">false</option></select>`;
    } else if (kind === "enum") {
      input = `<select data-param="${esc(name)}"><option value="">default (${esc(defText)})</option>${s.enum.map(v => `<option value="${esc(v)}">${esc(v)}</option>`).join("")}</select>`;
    } else if (kind === "integer" || kind === "number") {
      const lim = [s.minimum !== undefined ? `min="${s.minimum}"` : "", s.maximum !== undefined ? `max="${s.maximum}"` : ""].join(" ");
      input = `<input data-param="${esc(name)}" type="number" step="${kind === "integer" ? 1 : "any"}" ${lim} placeholder="${esc(defText)}">`;
    } else if (kind === "array") {
      input = `<input data-param="${esc(name)}" placeholder="${esc(Array.isArray(def) ? def.join(", ") : defText)}">`;
    } else {
      input = `<input data-param="${esc(name)}" placeholder="${esc(defText)}">`;
    }
    const help = s.description ? `<span class="muted">${esc(s.description.length > 90 ? s.description.slice(0, 88) + "…" : s.description)}</span>` : "";
    label.innerHTML = `${esc(name)}${input}${help}<small class="fielderr"></small>`;
    label.dataset.items = (s.items && s.items.type) || "";
    box.appendChild(label);
  }
  box.querySelectorAll("[data-param]").forEach(el => {
    if (kept[el.dataset.param]) el.value = kept[el.dataset.param];
    el.addEventListener("input", buildRequest);
  });
}

function readParams() {
  const params = {};
  for (const label of $("params").children) {
    const el = label.querySelector("[data-param]");
    const raw = el.value.trim();
    if (raw === "") continue;
    const name = el.dataset.param, kind = label.dataset.kind;
    if (kind === "boolean") params[name] = raw === "true";
    else if (kind === "integer" || kind === "number") params[name] = Number(raw);
    else if (kind === "array") {
      const items = raw.startsWith("[") ? safeJson(raw, raw) : list(raw);
      params[name] = Array.isArray(items) && ["number", "integer"].includes(label.dataset.items) ? items.map(Number) : items;
    } else if (kind === "enum" || kind === "string") params[name] = raw;
    else params[name] = safeJson(raw, raw);
  }
  return params;
}

function safeJson(text, fallback) { try { return JSON.parse(text); } catch (e) { return fallback; } }

function buildRequest() {
  const objectives = [...$("objectives").rows].map(tr => {
    const get = k => tr.querySelector(`[data-k="${k}"]`).value;
    const o = { property: get("property"), goal: get("goal") };
    if (get("value") !== "") o.value = Number(get("value"));
    if (get("tolerance") !== "") o.tolerance = Number(get("tolerance"));
    if (get("weight") !== "") o.weight = Number(get("weight"));
    if (get("fidelity")) o.fidelity = get("fidelity");
    return o;
  });
  const elements = {};
  for (const k of ["allowed", "required", "excluded"]) if (list($(k).value).length) elements[k] = list($(k).value);
  const constraints = { elements, charge_neutral: $("charge_neutral").checked, max_atoms: Number($("max_atoms").value) };
  if ($("composition").value.trim()) constraints.composition = $("composition").value.trim();
  if (list($("space_groups").value).length) constraints.space_groups = list($("space_groups").value).map(Number);
  if ($("crystal_family").value) constraints.crystal_family = $("crystal_family").value;
  if (state.templates) constraints.templates = state.templates;
  const body = {
    method: $("method").value, objectives, constraints,
    num_candidates: Number($("num_candidates").value), relax: $("relax").checked,
    seed: Number($("seed").value), params: readParams(),
  };
  $("body").value = JSON.stringify(body, null, 2);
  return body;
}

// Fill the form from a stored request (re-submit with edits).
function fillForm(req) {
  $("method").value = req.method;
  $("params").dataset.method = "";  // a fresh set of parameter fields
  renderParams();
  $("num_candidates").value = req.num_candidates ?? 16;
  $("seed").value = req.seed ?? 0;
  $("relax").checked = !!req.relax;
  $("objectives").innerHTML = "";
  for (const o of req.objectives || []) addObjective(o);
  const c = req.constraints || {}, el = c.elements || {};
  $("allowed").value = (el.allowed || []).join(", ");
  $("required").value = (el.required || []).join(", ");
  $("excluded").value = (el.excluded || []).join(", ");
  $("max_atoms").value = c.max_atoms ?? 20;
  $("composition").value = c.composition || "";
  $("space_groups").value = (c.space_groups || []).join(", ");
  $("crystal_family").value = c.crystal_family || "";
  $("charge_neutral").checked = c.charge_neutral !== false;
  state.templates = c.templates || null;
  $("templates-info").textContent = state.templates ? `${state.templates.length} template(s) from the job` : "";
  for (const [k, v] of Object.entries(req.params || {})) {
    const input = $("params").querySelector(`[data-param="${CSS.escape(k)}"]`);
    if (!input || v === null || v === undefined) continue;
    const kind = input.parentElement.dataset.kind;
    input.value = kind === "array" ? (Array.isArray(v) ? v.join(", ") : JSON.stringify(v)) : (typeof v === "object" ? JSON.stringify(v) : String(v));
  }
  buildRequest();
}

function clearFieldErrors() {
  document.querySelectorAll("#form .fielderr").forEach(el => { el.textContent = ""; });
  document.querySelectorAll("#form .invalid").forEach(el => el.classList.remove("invalid"));
}

// Put each 422 message next to the field it names (or its closest named parent).
function showFieldErrors(detail) {
  const unplaced = [];
  for (const e of detail) {
    const parts = String(e.field || "").split(".");
    if (parts[0] === "body") parts.shift();
    let target = null;
    for (let n = parts.length; n > 0 && !target; n--) {
      target = document.querySelector(`#form [data-field="${CSS.escape(parts.slice(0, n).join("."))}"]`);
    }
    if (!target) { unplaced.push(`${e.field}: ${e.msg}`); continue; }
    const holder = target.closest("[data-field]");
    const box = holder.tagName === "TR" ? holder.querySelector(".fielderr")
      : holder.tagName === "FIELDSET" ? holder.querySelector(":scope > .fielderr") : holder.querySelector(".fielderr");
    if (target.matches("input, select")) target.classList.add("invalid"); else holder.classList.add("invalid");
    if (box) box.textContent = (box.textContent ? box.textContent + "\n" : "") + e.msg;
    else unplaced.push(`${e.field}: ${e.msg}`);
  }
  return unplaced;
}

function showSubmitError(e) {
  const msg = $("submitmsg");
  msg.className = "err"; msg.textContent = e.message;
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearFieldErrors();
  const msg = $("submitmsg");
  msg.className = ""; msg.textContent = "submitting…";
  try {
    const job = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: $("body").value });
    msg.className = "ok"; msg.textContent = `accepted: job ${job.id}`;
    state.jobs.set(job.id, job);
    selectJob(job.id);
    await loadJobs();
  } catch (e) {
    if (e instanceof ApiError && e.status === 422 && Array.isArray(e.detail)) {
      const rest = showFieldErrors(e.detail);
      msg.className = "err";
      msg.textContent = "The server refused the request: see the fields marked in red." + (rest.length ? "\n" + rest.join("\n") : "");
    } else showSubmitError(e);
  }
});

$("method").addEventListener("change", () => { renderParams(); buildRequest(); });
$("add-objective").onclick = () => { addObjective({ property: "formation_energy", goal: "below", value: -0.5 }); buildRequest(); };
$("form").addEventListener("input", (ev) => { if (ev.target.id !== "body" && ev.target.id !== "templates") buildRequest(); });
$("form").addEventListener("change", (ev) => { if (ev.target.id !== "body" && ev.target.id !== "templates") buildRequest(); });
$("templates").addEventListener("change", async (ev) => {
  const files = [...ev.target.files];
  state.templates = files.length ? await Promise.all(files.map(f => f.text())) : null;
  $("templates-info").textContent = files.length ? `${files.length} file(s)` : "";
  buildRequest();
});

// --- jobs ----------------------------------------------------------------------------------

function objectivesText(req) {
  return (req && req.objectives || []).map(o => {
    const u = state.units[o.property] ? ` ${state.units[o.property]}` : "";
    if (o.goal === "target") return `${o.property} ${o.value}±${o.tolerance ?? "?"}${u}`;
    if (o.goal === "below") return `${o.property} < ${o.value}${u}`;
    if (o.goal === "above") return `${o.property} > ${o.value}${u}`;
    return `${o.goal} ${o.property}`;
  }).join("; ");
}

function progressBar(job) {
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

function jobRowHtml(j) {
  const err = j.error ? `<div class="err">${esc(j.error)}</div>` : "";
  return `<td>${esc(new Date(j.created_at).toLocaleString())}</td><td><code>${esc(j.id.slice(0, 8))}</code></td>
    <td>${esc(j.method)}</td><td>${esc(objectivesText(j.request))}</td>
    <td class="status status-${esc(j.status)}">${esc(j.status)}${err}</td><td>${progressBar(j)}</td>
    <td><button type="button" data-view="${esc(j.id)}">view</button>
    ${["queued", "running"].includes(j.status) ? `<button type="button" data-cancel="${esc(j.id)}">cancel</button>` : ""}
    <button type="button" data-edit="${esc(j.id)}">edit &amp; re-submit</button></td>`;
}

function renderJobRow(job) {
  const tr = document.querySelector(`#jobs tr[data-id="${CSS.escape(job.id)}"]`);
  if (tr) { tr.innerHTML = jobRowHtml(job); tr.className = job.id === state.selected ? "sel" : ""; }
  if (job.id === state.selected) renderResultsStatus(job);
}

async function loadJobs(append = false) {
  try {
    const q = append && state.cursor ? `&cursor=${encodeURIComponent(state.cursor)}` : "";
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
    for (const id of state.order) if (ACTIVE.includes(state.jobs.get(id).status)) followJob(id);
  } catch (e) {
    $("jobs").innerHTML = `<tr><td colspan="7" class="err">${esc(e.message)}</td></tr>`;
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
});

function editJob(jobId) {
  const job = state.jobs.get(jobId);
  if (!job) return;
  fillForm(job.request);
  clearFieldErrors();
  $("submitmsg").className = "muted";
  $("submitmsg").textContent = `editing a copy of job ${jobId.slice(0, 8)}: change what you like, then submit`;
  $("submit-section").scrollIntoView({ behavior: "smooth" });
}

// --- results -------------------------------------------------------------------------------

function selectJob(jobId) {
  state.selected = jobId; state.picked = null; state.pickedByUser = false; state.structures = [];
  document.querySelectorAll("#jobs tr").forEach(tr => { tr.className = tr.dataset.id === jobId ? "sel" : ""; });
  $("results").hidden = false;
  loadResults(jobId, true);
  const job = state.jobs.get(jobId);
  if (job && ACTIVE.includes(job.status)) followJob(jobId);
}

function renderResultsStatus(job) {
  $("results-title").textContent = `Results of job ${job.id.slice(0, 8)} (${job.method})`;
  $("results-status").innerHTML = `<span class="status status-${esc(job.status)}">${esc(job.status)}</span> ${progressBar(job)}`;
}

async function loadResults(jobId, scroll) {
  try {
    const job = await api(`/v1/jobs/${jobId}`);
    if (jobId !== state.selected) return;
    state.jobs.set(job.id, job);
    renderResultsStatus(job);
    const items = [];
    let cursor = null;
    do {
      const page = await api(`/v1/jobs/${jobId}/structures?limit=500${cursor ? "&cursor=" + encodeURIComponent(cursor) : ""}`);
      items.push(...page.items); cursor = page.next_cursor;
    } while (cursor);
    if (jobId !== state.selected) return;
    state.structures = items;
    // Follow the best rank until the user picks a structure (ranks arrive when the job ends).
    if (!state.pickedByUser || !items.some(s => s.id === state.picked)) {
      state.picked = items.length ? items[0].id : null;
      state.pickedByUser = false;
    }
    renderCards(job);
    setupAxes(job);
    renderTable();
    renderPlot();
    renderViewer();
    if (scroll) $("results").scrollIntoView({ behavior: "smooth" });
  } catch (e) {
    $("cards").innerHTML = `<div class="err">${esc(e.message)}</div>`;
  }
}

const isSun = (s) => !!(s.flags.stable && s.flags.unique && s.flags.novel);

function labelOf(key) {
  return key.replace(/^n_/, "number of ").replace(/_s$/, " (s)").replace(/_/g, " ")
    .replace(/\bsun\b/g, "S.U.N.").replace(/\bmsun\b/g, "M.S.U.N.");
}

function cardValue(key, v) {
  if (typeof v === "number" && /rate$/.test(key)) return `${(100 * v).toFixed(1)} %`;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(parseFloat(v.toPrecision(4)));
  if (typeof v === "boolean") return v ? "yes" : "no";
  return esc(v);
}

// Nested objects as "a.b: value" lines.
function flatten(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) out.push(...flatten(v, `${prefix}${k}.`));
    else out.push([`${prefix}${k}`, Array.isArray(v) ? v.join(", ") : v]);
  }
  return out;
}

function renderCards(job) {
  const s = job.summary;
  if (!s) {
    $("cards").innerHTML = `<div class="muted">${job.status === "failed" ? esc(job.error) : "The summary appears when the job has finished."}</div>`;
    return;
  }
  const cards = [];
  for (const [k, v] of Object.entries(s)) {
    if (v === null || typeof v !== "object") {
      cards.push(`<div class="card" data-key="${esc(k)}"><div class="k">${esc(labelOf(k))}</div><div class="v">${cardValue(k, v)}</div></div>`);
    } else if (k === "best") {
      const lines = Object.entries(v).map(([p, b]) => `<li>${esc(p)}: <b>${fmt(b.value)}</b> ${esc(state.units[p] || "")} (${esc(b.formula)}, rank ${esc(b.rank)})</li>`);
      cards.push(`<div class="card wide" data-key="best"><div class="k">best per objective</div><ul>${lines.join("")}</ul></div>`);
    } else {
      const lines = flatten(v).map(([kk, vv]) => `<li>${esc(kk)}: ${typeof vv === "number" ? cardValue(kk, vv) : esc(vv)}</li>`);
      cards.push(`<div class="card wide" data-key="${esc(k)}"><div class="k">${esc(labelOf(k))}</div><ul>${lines.join("")}</ul></div>`);
    }
  }
  $("cards").innerHTML = cards.join("");
}

function scoreProps() {
  return [...new Set(state.structures.flatMap(s => Object.keys(s.scores)))].sort();
}

function unitOf(prop) {
  for (const s of state.structures) if (s.scores[prop]) return s.scores[prop].unit;
  return state.units[prop] || "";
}

function columns() {
  const cols = [
    { key: "rank", label: "rank", get: s => s.rank ?? Infinity, show: s => s.rank ?? "" },
    { key: "formula", label: "formula", get: s => s.formula, show: s => esc(s.formula) },
    { key: "n_atoms", label: "atoms", get: s => s.n_atoms, show: s => s.n_atoms },
    { key: "space_group", label: "space group", get: s => s.space_group ?? -1, show: s => s.space_group ?? "" },
  ];
  for (const p of scoreProps()) {
    if (p === "energy_above_hull") continue;
    const u = unitOf(p);
    cols.push({ key: `score:${p}`, label: `${p.replace(/_/g, " ")}${u ? ` (${u})` : ""}`, get: s => s.scores[p] ? s.scores[p].value : null, show: s => fmt(s.scores[p] && s.scores[p].value) });
  }
  cols.push({ key: "ehull", label: "E above hull (eV/atom)", get: s => s.energy_above_hull, show: s => fmt(s.energy_above_hull) });
  cols.push({ key: "method_score", label: "method score", get: s => s.method_score, show: s => fmt(s.method_score) });
  cols.push({ key: "flags", label: "flags", get: s => FLAG_ORDER.filter(f => s.flags[f]).length + (isSun(s) ? 10 : 0), show: badges });
  cols.push({ key: "cif", label: "CIF", get: () => 0, show: s => `<button type="button" data-cif="${esc(s.id)}" data-name="${esc(s.formula)}">CIF</button>`, nosort: true });
  return cols;
}

function badges(s) {
  const out = [];
  if (isSun(s)) out.push(`<span class="badge sun" title="stable, unique and novel">S.U.N.</span>`);
  for (const f of FLAG_ORDER) {
    if (!(f in s.flags)) continue;
    // Valid, neutral and within constraints is the norm: only their absence gets a badge.
    const norm = ["valid", "charge_neutral", "constraints"].includes(f);
    if (s.flags[f] && !norm) out.push(`<span class="badge ${esc(f)}">${esc(f.replace(/_/g, " "))}</span>`);
    else if (!s.flags[f] && norm) out.push(`<span class="badge no" title="not ${esc(f)}">${esc(f.replace(/_/g, " "))}</span>`);
  }
  return out.join("");
}

function visibleStructures() {
  const q = $("filter").value.trim().toLowerCase();
  let rows = state.structures.filter(s => {
    if ($("only-hits").checked && !s.flags.hit) return false;
    if ($("only-sun").checked && !isSun(s)) return false;
    if (!q) return true;
    const flags = Object.entries(s.flags).filter(([, v]) => v).map(([k]) => k);
    if (isSun(s)) flags.push("sun", "s.u.n.");
    return s.formula.toLowerCase().includes(q) || flags.includes(q) || String(s.space_group) === q;
  });
  const col = columns().find(c => c.key === state.sort.key) || columns()[0];
  rows = [...rows].sort((a, b) => {
    const x = col.get(a), y = col.get(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * state.sort.dir;
  });
  return rows;
}

function renderTable() {
  const cols = columns();
  $("shead").innerHTML = `<tr>${cols.map(c => {
    const cls = c.key === state.sort.key ? (state.sort.dir > 0 ? "sorted-asc" : "sorted-desc") : "";
    return `<th data-sort="${c.nosort ? "" : esc(c.key)}" class="${cls}">${esc(c.label)}</th>`;
  }).join("")}</tr>`;
  const rows = visibleStructures();
  $("structures").innerHTML = rows.map(s => `<tr data-id="${esc(s.id)}" class="${s.id === state.picked ? "sel" : ""}">${cols.map(c => `<td>${c.show(s)}</td>`).join("")}</tr>`).join("");
  $("count").textContent = `${rows.length} of ${state.structures.length} structures`;
}

$("shead").addEventListener("click", (ev) => {
  const th = ev.target.closest("th");
  if (!th || !th.dataset.sort) return;
  const key = th.dataset.sort;
  state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
  renderTable();
});
for (const id of ["filter", "only-hits", "only-sun"]) $(id).addEventListener("input", () => { renderTable(); renderPlot(); });

$("structures").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (b && b.dataset.cif) {
    const relaxed = currentGeometry() === "relaxed" && pickedStructure(b.dataset.cif).relaxed_cif;
    download(`/v1/structures/${b.dataset.cif}.cif${relaxed ? "?relaxed=true" : ""}`, `${b.dataset.name}_${b.dataset.cif.slice(0, 8)}${relaxed ? "_relaxed" : ""}.cif`);
    return;
  }
  const tr = ev.target.closest("tr");
  if (tr) pick(tr.dataset.id);
});

function pick(id) {
  state.picked = id; state.pickedByUser = true;
  document.querySelectorAll("#structures tr").forEach(tr => { tr.className = tr.dataset.id === id ? "sel" : ""; });
  renderPlot(); renderViewer();
}

const pickedStructure = (id = state.picked) => state.structures.find(s => s.id === id);

// --- plot ----------------------------------------------------------------------------------

function setupAxes(job) {
  const props = scoreProps();
  const objs = (job.request.objectives || []).map(o => o.property).filter(p => props.includes(p));
  const defaults = [...new Set([...objs, "band_gap", "formation_energy", ...props])].filter(p => props.includes(p));
  for (const [i, id] of [[0, "plot-x"], [1, "plot-y"]]) {
    const sel = $(id), prev = sel.value;
    sel.innerHTML = props.map(p => `<option value="${esc(p)}">${esc(p)}</option>`).join("");
    sel.value = props.includes(prev) && sel.dataset.job === job.id ? prev : (defaults[i] ?? defaults[0] ?? "");
    sel.dataset.job = job.id;
  }
}
$("plot-x").addEventListener("change", () => renderPlot());
$("plot-y").addEventListener("change", () => renderPlot());

// The region an objective accepts, for shading.
function regionOf(prop) {
  const job = state.jobs.get(state.selected);
  const o = job && (job.request.objectives || []).find(x => x.property === prop);
  if (!o) return null;
  if (o.goal === "target") {
    const tol = o.tolerance ?? 0.1 * Math.max(Math.abs(o.value), 1);
    return { lo: o.value - tol, hi: o.value + tol };
  }
  if (o.goal === "below") return { lo: null, hi: o.value };
  if (o.goal === "above") return { lo: o.value, hi: null };
  return null;
}

function renderPlot() {
  const px = $("plot-x").value, py = $("plot-y").value;
  if (!px || !py) { $("plot").innerHTML = `<div class="muted">No scores yet.</div>`; return; }
  const axis = p => `${p.replace(/_/g, " ")}${unitOf(p) ? ` (${unitOf(p)})` : ""}`;
  const points = visibleStructures().map(s => ({
    id: s.id, x: s.scores[px] ? s.scores[px].value : NaN, y: s.scores[py] ? s.scores[py].value : NaN,
    ehull: s.energy_above_hull, hit: !!s.flags.hit, sun: isSun(s),
    label: `${s.rank ? "#" + s.rank : "unranked"} ${s.formula}: ${px} ${fmt(s.scores[px] && s.scores[px].value)}, ${py} ${fmt(s.scores[py] && s.scores[py].value)}, E hull ${fmt(s.energy_above_hull)}`,
  })).map(p => ({ ...p, x: p.x ?? NaN, y: p.y ?? NaN }));
  scatterPlot($("plot"), {
    points, selected: state.picked, onSelect: pick,
    x: { label: axis(px), region: regionOf(px) }, y: { label: axis(py), region: regionOf(py) },
  });
}

// --- 3D ------------------------------------------------------------------------------------

function currentGeometry() {
  const el = document.querySelector('input[name="geometry"]:checked');
  return el ? el.value : "proposed";
}
document.querySelectorAll('input[name="geometry"]').forEach(el => el.addEventListener("change", renderViewer));

function renderViewer() {
  const s = pickedStructure();
  const note = $("viewer-note");
  const relaxedInput = document.querySelector('input[name="geometry"][value="relaxed"]');
  relaxedInput.disabled = !(s && s.relaxed_cif);
  if (!s) { $("viewer-title").textContent = "3D view"; note.textContent = "No structure yet."; return; }
  const relaxed = currentGeometry() === "relaxed" && s.relaxed_cif;
  const rank = s.rank ? `#${s.rank}` : "unranked";
  $("viewer-title").textContent = `${rank} ${s.formula} (${relaxed ? "relaxed" : "proposed"})`;
  note.textContent = s.relaxed_cif ? "" : "This job did not relax its candidates: only the proposed geometry exists.";
  if (typeof $3Dmol === "undefined") { note.textContent = "3Dmol.js did not load."; return; }
  if (!state.viewer) state.viewer = $3Dmol.createViewer($("viewer"), { backgroundColor: "white" });
  const v = state.viewer;
  v.clear();
  const model = v.addModel(relaxed ? s.relaxed_cif : s.cif, "cif");
  v.setStyle({}, { sphere: { scale: 0.32, colorscheme: "Jmol" }, stick: { radius: 0.1, colorscheme: "Jmol" } });
  v.addUnitCell(model, { box: { color: "#333" }, alabel: "a", blabel: "b", clabel: "c" });
  v.zoomTo();
  // Tilted off the c axis, so the cell reads as a box.
  v.rotate(-20, "x"); v.rotate(30, "y");
  v.render();
  $("viewer").dataset.structure = s.id;
  $("viewer").dataset.geometry = relaxed ? "relaxed" : "proposed";
}

// --- downloads -----------------------------------------------------------------------------

document.querySelector(".downloads").addEventListener("click", async (ev) => {
  const kind = ev.target.dataset.download;
  const id = state.selected;
  if (!kind || !id) return;
  if (kind === "archive") return download(`/v1/jobs/${id}/archive`, `matdesign-${id}.zip`);
  if (kind === "extxyz") return download(`/v1/jobs/${id}/structures?format=extxyz`, `matdesign-${id}.extxyz`);
  if (kind === "optimade") return download(`/v1/jobs/${id}/structures?format=optimade`, `matdesign-${id}.optimade.json`);
  const job = state.jobs.get(id);
  saveBlob(new Blob([JSON.stringify({ job, structures: state.structures }, null, 1)], { type: "application/json" }), `matdesign-${id}.json`);
});
$("resubmit").onclick = () => state.selected && editJob(state.selected);

// --- start ---------------------------------------------------------------------------------

addObjective({ property: "band_gap", goal: "target", value: 1.5, tolerance: 0.5 });
addObjective({ property: "formation_energy", goal: "below", value: -0.5 });
loadCatalog();
loadJobs();
setInterval(() => loadJobs(), 5000);
