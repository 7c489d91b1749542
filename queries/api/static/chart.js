// A small SVG line chart: time on x, values on y, gaps at nulls, optional min/max bands.
// No dependencies; exposes window.LineChart.render(container, spec).
// Drag across a chart to select a time range (spec.onZoom(startMs, endMs)); double-click
// calls spec.onReset(). A library would add ~40 KB for these few dozen lines.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c",
                   "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const PAD = { left: 56, right: 12, top: 10, bottom: 26 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  // Round tick values: 1, 2 or 5 times a power of ten.
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d / 2; hi += d / 2; }
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const first = Math.floor(lo / step) * step;
    const last = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = first; v <= last + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
    return { lo: first, hi: last, ticks };
  }

  const TIME_STEPS = [1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5,
                      36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5];

  function timeTicks(lo, hi, count) {
    const raw = (hi - lo) / Math.max(1, count);
    const step = TIME_STEPS.find((s) => s >= raw) || TIME_STEPS[TIME_STEPS.length - 1];
    // Align to the local time zone, so labels fall on round local times.
    const offset = new Date(lo).getTimezoneOffset() * 60000;
    const ticks = [];
    for (let t = Math.ceil((lo - offset) / step) * step + offset; t <= hi; t += step) ticks.push(t);
    return { ticks, step };
  }

  function two(n) { return String(n).padStart(2, "0"); }

  function timeLabel(t, step) {
    const d = new Date(t);
    const hm = two(d.getHours()) + ":" + two(d.getMinutes());
    if (step >= 864e5) return (d.getMonth() + 1) + "/" + d.getDate();
    if (step < 6e4) return hm + ":" + two(d.getSeconds());
    return hm;
  }

  function formatValue(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  // Runs of consecutive non-null points: [[i0, i1], ...] inclusive.
  function runs(values) {
    const out = [];
    let start = -1;
    for (let i = 0; i <= values.length; i++) {
      const ok = i < values.length && values[i] !== null && values[i] !== undefined;
      if (ok && start < 0) start = i;
      if (!ok && start >= 0) { out.push([start, i - 1]); start = -1; }
    }
    return out;
  }

  /**
   * Render a chart into `container` (replacing its content).
   * spec: { ts: [ms...], stepMs, series: [{ name, values, min?, max? }], band: bool,
   *         onZoom?(startMs, endMs), onReset?() }
   * Returns the number of points drawn.
   */
  function render(container, spec) {
    container.textContent = "";
    const width = Math.max(320, container.clientWidth || 800);
    const height = 260;
    const svg = el("svg", {
      class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
      preserveAspectRatio: "none",
    }, container);
    const ts = spec.ts;
    const x0 = ts.length ? ts[0] : 0;
    const x1 = ts.length ? ts[ts.length - 1] + (spec.stepMs || 0) : 1;
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of spec.series) {
      const arrays = spec.band && s.min && s.max ? [s.values, s.min, s.max] : [s.values];
      for (const arr of arrays) {
        for (const v of arr) {
          if (v === null || v === undefined) continue;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
    }
    const points = spec.series.reduce(
      (n, s) => n + s.values.filter((v) => v !== null && v !== undefined).length, 0);
    svg.setAttribute("data-points", String(points));
    svg.setAttribute("data-series", String(spec.series.length));
    if (!isFinite(lo)) {
      el("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" }, svg)
        .textContent = "no data in this range";
      return 0;
    }
    const yt = niceTicks(lo, hi, 5);
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    // Points sit in the middle of their window.
    const half = (spec.stepMs || 0) / 2;
    const sx = (t) => PAD.left + ((t + half - x0) / (x1 - x0 || 1)) * plotW;
    const sy = (v) => PAD.top + (1 - (v - yt.lo) / (yt.hi - yt.lo || 1)) * plotH;

    for (const v of yt.ticks) {
      const y = sy(v);
      el("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: "grid" }, svg);
      el("text", { x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, svg)
        .textContent = formatValue(v);
    }
    const tt = timeTicks(x0, x1, Math.max(2, Math.floor(plotW / 90)));
    for (const t of tt.ticks) {
      const x = PAD.left + ((t - x0) / (x1 - x0 || 1)) * plotW;
      el("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotH, class: "grid" }, svg);
      el("text", { x, y: height - 8, class: "axis", "text-anchor": "middle" }, svg)
        .textContent = timeLabel(t, tt.step);
    }

    spec.series.forEach((s, k) => {
      const color = PALETTE[k % PALETTE.length];
      if (spec.band && s.min && s.max) {
        for (const [a, b] of runs(s.min)) {
          let d = "";
          for (let i = a; i <= b; i++) d += (i === a ? "M" : "L") + sx(ts[i]).toFixed(1) + "," + sy(s.max[i]).toFixed(1);
          for (let i = b; i >= a; i--) d += "L" + sx(ts[i]).toFixed(1) + "," + sy(s.min[i]).toFixed(1);
          el("path", { d: d + "Z", class: "band", fill: color }, svg);
        }
      }
      for (const [a, b] of runs(s.values)) {
        if (a === b) {
          el("circle", { cx: sx(ts[a]), cy: sy(s.values[a]), r: 2, fill: color, class: "dot" }, svg);
          continue;
        }
        let d = "";
        for (let i = a; i <= b; i++) d += (i === a ? "M" : "L") + sx(ts[i]).toFixed(1) + "," + sy(s.values[i]).toFixed(1);
        el("path", { d, class: "line", stroke: color, "data-name": s.name }, svg);
      }
    });

    addCursor(svg, spec, { sx, width, height, plotW, x0, x1 });
    addZoom(svg, spec, { width, height, plotW, x0, x1 });
    return points;
  }

  // Drag to select a time range (a shaded rectangle while dragging), double-click to reset.
  function addZoom(svg, spec, geo) {
    if (!spec.onZoom) return;
    const sel = el("rect", {
      class: "zoom-sel", y: PAD.top, height: geo.height - PAD.top - PAD.bottom, visibility: "hidden",
    }, svg);
    const toX = (ev) => {
      const box = svg.getBoundingClientRect();
      const x = ((ev.clientX - box.left) / box.width) * geo.width;
      return Math.min(geo.width - PAD.right, Math.max(PAD.left, x));
    };
    const toTime = (x) => geo.x0 + ((x - PAD.left) / (geo.plotW || 1)) * (geo.x1 - geo.x0);
    let from = null;
    svg.addEventListener("mousedown", (ev) => {
      if (ev.button !== 0) return;
      ev.preventDefault();  // no text selection while dragging
      from = toX(ev);
      sel.setAttribute("x", from);
      sel.setAttribute("width", 0);
      sel.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mousemove", (ev) => {
      if (from === null) return;
      const x = toX(ev);
      sel.setAttribute("x", Math.min(from, x));
      sel.setAttribute("width", Math.abs(x - from));
    });
    const finish = (ev) => {
      if (from === null) return;
      const x = toX(ev);
      const a = Math.min(from, x);
      const b = Math.max(from, x);
      from = null;
      sel.setAttribute("visibility", "hidden");
      if (b - a < 5) return;  // a click, not a drag
      const start = Math.round(toTime(a));
      const end = Math.round(toTime(b));
      if (end > start) spec.onZoom(start, end);
    };
    svg.addEventListener("mouseup", finish);
    svg.addEventListener("mouseleave", finish);
    svg.addEventListener("dblclick", () => { if (spec.onReset) spec.onReset(); });
  }

  // A crosshair with the values of the nearest window under the mouse.
  function addCursor(svg, spec, geo) {
    const cursor = el("line", { class: "cursor", y1: PAD.top, y2: geo.height - PAD.bottom, visibility: "hidden" }, svg);
    const bg = el("rect", { class: "tip-bg", rx: 3, visibility: "hidden" }, svg);
    const tip = el("text", { class: "tip", visibility: "hidden" }, svg);
    svg.addEventListener("mousemove", (ev) => {
      const box = svg.getBoundingClientRect();
      const x = ((ev.clientX - box.left) / box.width) * geo.width;
      const frac = (x - PAD.left) / geo.plotW;
      const n = spec.ts.length;
      if (n === 0 || frac < 0 || frac > 1) return;
      const i = Math.min(n - 1, Math.max(0, Math.floor(frac * n)));
      const cx = geo.sx(spec.ts[i]);
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
      tip.textContent = "";
      const lines = [new Date(spec.ts[i]).toLocaleString()].concat(
        spec.series.map((s) => s.name + ": " + formatValue(s.values[i])));
      lines.forEach((text, k) => {
        el("tspan", { x: Math.min(cx + 8, geo.width - 160), dy: k === 0 ? 0 : 13 }, tip).textContent = text;
      });
      tip.setAttribute("y", PAD.top + 14);
      const b = tip.getBBox();
      bg.setAttribute("x", b.x - 4); bg.setAttribute("y", b.y - 2);
      bg.setAttribute("width", b.width + 8); bg.setAttribute("height", b.height + 4);
      for (const node of [cursor, bg, tip]) node.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseleave", () => {
      for (const node of [cursor, bg, tip]) node.setAttribute("visibility", "hidden");
    });
  }

  function swatch(color) {
    const svg = el("svg", { width: 14, height: 6, class: "swatch", "aria-hidden": "true" });
    el("line", { x1: 0, x2: 14, y1: 3, y2: 3, stroke: color, "stroke-width": 3 }, svg);
    return svg;
  }

  window.LineChart = { render, swatch, PALETTE };
})();
