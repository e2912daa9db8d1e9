// A scatter plot of candidates in plain SVG: target bands shaded, hits ringed, S.U.N. marked,
// colour by energy above hull. No plotting library: the page needs one chart type only.
const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== null) el.textContent = text;
  return el;
}

// Green (on the hull) to red (>= 0.3 eV/atom above); grey when unknown.
function hullColour(e) {
  if (e === null || e === undefined || !Number.isFinite(e)) return "#999";
  const t = Math.max(0, Math.min(1, e / 0.3));
  const hue = 120 * (1 - t);
  return `hsl(${hue}, 75%, 42%)`;
}

function niceTicks(lo, hi, n = 5) {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= step0) || step0;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

// opts: {points: [{id, x, y, ehull, hit, sun, label}], x: {label, region}, y: {label, region},
//        selected, onSelect}; region: {lo, hi} (either may be null) shaded on that axis.
export function scatterPlot(container, opts) {
  container.innerHTML = "";
  const W = 520, H = 360, m = { l: 62, r: 14, t: 12, b: 46 };
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "scatter plot of candidates" });
  container.appendChild(svg);
  const pts = opts.points.filter(p => Number.isFinite(p.x) && Number.isFinite(p.y));
  const range = (vals, region) => {
    const extra = [region && region.lo, region && region.hi].filter(v => v !== null && v !== undefined && Number.isFinite(v));
    const all = [...vals, ...extra];
    if (!all.length) return [0, 1];
    let lo = Math.min(...all), hi = Math.max(...all);
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    return [lo - pad, hi + pad];
  };
  const [x0, x1] = range(pts.map(p => p.x), opts.x.region);
  const [y0, y1] = range(pts.map(p => p.y), opts.y.region);
  const sx = v => m.l + (v - x0) / (x1 - x0) * (W - m.l - m.r);
  const sy = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
  const plot = { x: m.l, y: m.t, w: W - m.l - m.r, h: H - m.t - m.b };
  svg.appendChild(svgEl("rect", { ...plot, width: plot.w, height: plot.h, fill: "#fff", stroke: "#ccc" }));
  // Target regions: a band on x is a vertical strip, on y a horizontal one.
  const clampX = v => Math.max(x0, Math.min(x1, v)), clampY = v => Math.max(y0, Math.min(y1, v));
  if (opts.x.region) {
    const lo = clampX(opts.x.region.lo ?? x0), hi = clampX(opts.x.region.hi ?? x1);
    svg.appendChild(svgEl("rect", { class: "band", x: sx(lo), y: plot.y, width: Math.max(0, sx(hi) - sx(lo)), height: plot.h, fill: "#2e7dd7", "fill-opacity": 0.12 }));
  }
  if (opts.y.region) {
    const lo = clampY(opts.y.region.lo ?? y0), hi = clampY(opts.y.region.hi ?? y1);
    svg.appendChild(svgEl("rect", { class: "band", x: plot.x, y: sy(hi), width: plot.w, height: Math.max(0, sy(lo) - sy(hi)), fill: "#2e7dd7", "fill-opacity": 0.12 }));
  }
  for (const t of niceTicks(x0, x1)) {
    svg.appendChild(svgEl("line", { x1: sx(t), x2: sx(t), y1: H - m.b, y2: H - m.b + 4, stroke: "#555" }));
    svg.appendChild(svgEl("text", { x: sx(t), y: H - m.b + 16, "font-size": 11, "text-anchor": "middle" }, String(t)));
  }
  for (const t of niceTicks(y0, y1)) {
    svg.appendChild(svgEl("line", { x1: m.l - 4, x2: m.l, y1: sy(t), y2: sy(t), stroke: "#555" }));
    svg.appendChild(svgEl("text", { x: m.l - 7, y: sy(t) + 4, "font-size": 11, "text-anchor": "end" }, String(t)));
  }
  svg.appendChild(svgEl("text", { x: m.l + plot.w / 2, y: H - 8, "font-size": 12, "text-anchor": "middle" }, opts.x.label));
  svg.appendChild(svgEl("text", { x: 14, y: m.t + plot.h / 2, "font-size": 12, "text-anchor": "middle", transform: `rotate(-90 14 ${m.t + plot.h / 2})` }, opts.y.label));
  // Draw the selected point last so it stays on top.
  const ordered = [...pts].sort((a, b) => (a.id === opts.selected) - (b.id === opts.selected));
  for (const p of ordered) {
    const g = svgEl("g", { class: "point", "data-id": p.id });
    const cx = sx(p.x), cy = sy(p.y);
    if (p.hit) g.appendChild(svgEl("circle", { cx, cy, r: 9, fill: "none", stroke: "#222", "stroke-width": 1.5, class: "hit-ring" }));
    if (p.sun) {
      g.appendChild(svgEl("path", { d: `M${cx} ${cy - 8} L${cx + 8} ${cy} L${cx} ${cy + 8} L${cx - 8} ${cy} Z`, fill: hullColour(p.ehull), stroke: "#c2185b", "stroke-width": 2, class: "sun-mark" }));
    } else {
      g.appendChild(svgEl("circle", { cx, cy, r: 5.5, fill: hullColour(p.ehull), stroke: p.id === opts.selected ? "#000" : "#fff", "stroke-width": p.id === opts.selected ? 2.5 : 1, class: "dot" }));
    }
    if (p.id === opts.selected) g.appendChild(svgEl("circle", { cx, cy, r: 12, fill: "none", stroke: "#2e7dd7", "stroke-width": 2 }));
    g.appendChild(svgEl("title", {}, p.label));
    g.style.cursor = "pointer";
    g.addEventListener("click", () => opts.onSelect && opts.onSelect(p.id));
    svg.appendChild(g);
  }
  return { plotted: pts.length, total: opts.points.length };
}
