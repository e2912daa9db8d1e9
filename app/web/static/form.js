// The submit form: every request field, method parameters from their schema, 422 messages next to their fields.

import { $, ApiError, CORE_PROPERTIES, FIDELITIES, GOALS, api, esc, list, state } from "./common.js";
import { loadJobs } from "./jobs.js";
import { selectJob } from "./results.js";

export async function loadCatalog() {
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
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;  // refused: the properties stay the core set
  }
  buildRequest();
}

// The server's own defaults of num_candidates and relax (they fit the deployment: few
// candidates and no relaxation on the embedded CPU server), unless the user changed them.
export async function loadServerDefaults() {
  try {
    const schema = await api("/openapi.json");
    const props = schema.components.schemas.DesignRequest.properties;
    state.defaults = {
      num_candidates: props.num_candidates.default, relax: props.relax.default,
      oversample: props.oversample?.default ?? 1,
    };
  } catch (e) { return; }  // keep the page's own
  if (!state.touched.has("num_candidates")) $("num_candidates").value = state.defaults.num_candidates;
  if (!state.touched.has("relax")) $("relax").checked = !!state.defaults.relax;
  if (!state.touched.has("oversample")) $("oversample").value = state.defaults.oversample;
  $("form").dataset.defaults = "server";
  buildRequest();
}

export function fillPropertySelect(sel, value) {
  sel.innerHTML = state.properties.map(p => `<option value="${esc(p)}">${esc(p)}${state.units[p] ? ` (${esc(state.units[p])})` : ""}</option>`).join("");
  if (value) sel.value = value;
}

export function addObjective(o = {}) {
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

export function renumberObjectives() {
  [...$("objectives").rows].forEach((tr, i) => {
    tr.dataset.field = `objectives.${i}`;
    tr.querySelectorAll("[data-k]").forEach(el => { el.dataset.field = `objectives.${i}.${el.dataset.k}`; });
  });
}

// A parameter's JSON schema, with Optional[...] (anyOf [X, null]) and $ref resolved.
export function paramSchema(schema, root) {
  let s = schema;
  if (s.anyOf) s = { ...s, ...(s.anyOf.find(x => x.type !== "null") || {}), nullable: true };
  if (s.$ref) {
    const name = s.$ref.split("/").pop();
    s = { ...s, ...((root.$defs || {})[name] || {}) };
  }
  if (s.allOf && s.allOf.length === 1 && s.allOf[0].$ref) s = { ...s, ...paramSchema(s.allOf[0], root) };
  return s;
}

export function renderParams() {
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

export function readParams() {
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

export function safeJson(text, fallback) { try { return JSON.parse(text); } catch (e) { return fallback; } }

export function buildRequest() {
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
    oversample: Number($("oversample").value) || 1,
    seed: Number($("seed").value), params: readParams(),
  };
  if ($("label").value.trim()) body.label = $("label").value.trim();
  $("body").value = JSON.stringify(body, null, 2);
  return body;
}

// Fill the form from a stored request (re-submit with edits).
export function fillForm(req) {
  $("method").value = req.method;
  $("params").dataset.method = "";  // a fresh set of parameter fields
  renderParams();
  $("num_candidates").value = req.num_candidates ?? state.defaults.num_candidates;
  $("oversample").value = req.oversample ?? state.defaults.oversample;
  $("label").value = req.label || "";
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

export function clearFieldErrors() {
  document.querySelectorAll("#form .fielderr").forEach(el => { el.textContent = ""; });
  document.querySelectorAll("#form .invalid").forEach(el => el.classList.remove("invalid"));
}

// Put each 422 message next to the field it names (or its closest named parent).
export function showFieldErrors(detail) {
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

export function showSubmitError(e) {
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
$("form").addEventListener("input", (ev) => { state.touched.add(ev.target.id); if (ev.target.id !== "body" && ev.target.id !== "templates") buildRequest(); });
$("form").addEventListener("change", (ev) => { if (ev.target.id !== "body" && ev.target.id !== "templates") buildRequest(); });
$("templates").addEventListener("change", async (ev) => {
  const files = [...ev.target.files];
  state.templates = files.length ? await Promise.all(files.map(f => f.text())) : null;
  $("templates-info").textContent = files.length ? `${files.length} file(s)` : "";
  buildRequest();
});

