// A job's results: summary cards, sortable and filterable table, scatter plot, 3D view, downloads.

import { $, ACTIVE, FLAG_ORDER, api, download, esc, fmt, saveBlob, state } from "./common.js";
import { followJob } from "./events.js";
import { editJob, onJobEvent, progressBar } from "./jobs.js";
import { scatterPlot } from "./plot.js";

export function selectJob(jobId) {
  state.selected = jobId; state.picked = null; state.pickedByUser = false; state.structures = [];
  document.querySelectorAll("#jobs tr").forEach(tr => { tr.className = tr.dataset.id === jobId ? "sel" : ""; });
  $("results").hidden = false;
  loadResults(jobId, true);
  const job = state.jobs.get(jobId);
  if (job && ACTIVE.includes(job.status)) followJob(jobId, onJobEvent);
}

export function renderResultsStatus(job) {
  $("results-title").textContent = `Results of job ${job.id.slice(0, 8)} (${job.method})`;
  $("results-status").innerHTML = `<span class="status status-${esc(job.status)}">${esc(job.status)}</span> ${progressBar(job)}`;
}

export async function loadResults(jobId, scroll) {
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

export function labelOf(key) {
  return key.replace(/^n_/, "number of ").replace(/_s$/, " (s)").replace(/_/g, " ")
    .replace(/\bsun\b/g, "S.U.N.").replace(/\bmsun\b/g, "M.S.U.N.");
}

export function cardValue(key, v) {
  if (typeof v === "number" && /rate$/.test(key)) return `${(100 * v).toFixed(1)} %`;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(parseFloat(v.toPrecision(4)));
  if (typeof v === "boolean") return v ? "yes" : "no";
  return esc(v);
}

// Nested objects as "a.b: value" lines.
export function flatten(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) out.push(...flatten(v, `${prefix}${k}.`));
    else out.push([`${prefix}${k}`, Array.isArray(v) ? v.join(", ") : v]);
  }
  return out;
}

export function renderCards(job) {
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

export function scoreProps() {
  return [...new Set(state.structures.flatMap(s => Object.keys(s.scores)))].sort();
}

export function unitOf(prop) {
  for (const s of state.structures) if (s.scores[prop]) return s.scores[prop].unit;
  return state.units[prop] || "";
}

export function columns() {
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

export function badges(s) {
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

export function visibleStructures() {
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

export function renderTable() {
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

export function pick(id) {
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
