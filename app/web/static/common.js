// Shared helpers of the page: DOM and formatting helpers, constants, state, HTTP with the API key.

export const $ = (id) => document.getElementById(id);
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
export const fmt = (v, d = 3) => (v === null || v === undefined) ? "" : (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : esc(v));
export const list = (s) => s.split(",").map(x => x.trim()).filter(Boolean);
export const ACTIVE = ["queued", "running", "cancelling"];
export const FINISHED = ["succeeded", "failed", "cancelled"];
export const FLAG_ORDER = ["hit", "stable", "metastable", "unique", "novel", "valid", "charge_neutral", "constraints"];
export const CORE_PROPERTIES = ["band_gap", "formation_energy", "energy_above_hull", "density", "tolerance_factor", "hhi"];
export const GOALS = ["target", "below", "above", "minimize", "maximize"];
export const FIDELITIES = ["", "pbe", "gllb_sc", "hse", "scan"];
const KEY_STORE = "matdesign.apikey";

export const state = {
  methods: {}, units: {}, properties: [...CORE_PROPERTIES], jobs: new Map(), order: [],
  cursor: null, selected: null, structures: [], sort: { key: "rank", dir: 1 }, picked: null,
  pickedByUser: false, streams: new Map(), templates: null, viewer: null,
  defaults: { num_candidates: 8, relax: false, oversample: 1 }, touched: new Set(),
};

// The API key lives in this tab's session storage only.
const keyInput = $("apikey");
keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
export function onKeyChange(callback) {
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, keyInput.value);
    callback();
  });
}


export function headers(extra = {}) {
  const h = { ...extra };
  if (keyInput.value) h["X-API-Key"] = keyInput.value;
  return h;
}

export class ApiError extends Error {
  constructor(status, detail) {
    const msg = Array.isArray(detail) ? detail.map(e => `${e.field}: ${e.msg}`).join("\n") : String(detail);
    super(`${status}: ${msg}`);
    this.status = status; this.detail = detail;
  }
}

export async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!r.ok) throw new ApiError(r.status, (data && data.detail) || text);
  return data;
}

export async function download(path, name) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) { alert(`${r.status}: ${await r.text()}`); return; }
  saveBlob(await r.blob(), name);
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Server-Sent Events over fetch (EventSource cannot send the X-API-Key header).
