// Tiny SVG line charts and a confusion matrix table (no library: a few dozen points at most).

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#f5b83d", "#8cc4ff", "#5fd38d", "#ff7a7a"];

function svgEl(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** series: [{name, points: [[x, y], ...]}] drawn into an <svg class="chart">. */
export function lineChart(svg, series, { yMin, yMax, format = (v) => v.toFixed(2) } = {}) {
  svg.replaceChildren();
  const W = svg.clientWidth || 400;
  const H = svg.clientHeight || 180;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pts = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  if (!pts.length) {
    const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = "no data yet";
    svg.append(t);
    return;
  }
  const pad = { l: 40, r: 10, t: 10, b: 22 };
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const last = Math.max(...xs);
  const x1 = Math.max(last, x0 + 1); // the scale needs a width even for a single epoch
  const y0 = yMin ?? Math.min(...ys);
  const y1 = yMax ?? Math.max(...ys, y0 + 1e-6);
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const sy = (y) => H - pad.b - ((y - y0) / (y1 - y0 || 1)) * (H - pad.t - pad.b);
  svg.append(svgEl("line", { class: "axis", x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }));
  svg.append(svgEl("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }));
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    const t = svgEl("text", { x: pad.l - 4, y: sy(v) + 3, "text-anchor": "end" });
    t.textContent = format(v);
    svg.append(t);
  }
  const xl = svgEl("text", { x: W - pad.r, y: H - 6, "text-anchor": "end" });
  xl.textContent = `epoch ${last}`;
  svg.append(xl);
  series.forEach((s, i) => {
    const good = s.points.filter(([, y]) => Number.isFinite(y));
    if (!good.length) return;
    const colour = COLOURS[i % COLOURS.length];
    svg.append(
      svgEl("polyline", {
        points: good.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "),
        fill: "none",
        stroke: colour,
        "stroke-width": 2,
      }),
    );
    for (const [x, y] of good) svg.append(svgEl("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: colour }));
    const label = svgEl("text", { x: pad.l + 6 + i * 90, y: pad.t + 8, fill: colour });
    label.textContent = s.name;
    label.style.fill = colour;
    svg.append(label);
  });
}

export function confusionTable(matrix, labels) {
  const table = document.createElement("table");
  table.className = "confusion";
  const max = Math.max(1, ...matrix.flat());
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "true \\ predicted" }));
  for (const l of labels) head.append(Object.assign(document.createElement("th"), { textContent: l, scope: "col" }));
  const body = table.createTBody();
  matrix.forEach((row, i) => {
    const tr = body.insertRow();
    tr.append(Object.assign(document.createElement("th"), { textContent: labels[i] ?? i, scope: "row" }));
    row.forEach((v, j) => {
      const td = tr.insertCell();
      td.textContent = v;
      const a = v / max;
      td.style.background = i === j ? `rgba(95,211,141,${0.15 + 0.6 * a})` : v ? `rgba(255,122,122,${0.15 + 0.6 * a})` : "";
    });
  });
  return table;
}
