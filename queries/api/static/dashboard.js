// The dashboard: pick sensors and a range, chart every metric (avg line, min/max band),
// refresh live. State lives in the URL (?sensors=a,b&range=3600000&metric=&band=1&live=1),
// so a view can be bookmarked or shared. Dragging across a chart zooms every chart to that
// range (&from=&to=, epoch ms; relative times such as from=now-30m&to=now work too); the
// live range is asked for as start=now-<range>&end=now, resolved by the server's clock.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), sensors: $("sensors"), filter: $("sensor-filter"),
    sensorCount: $("sensor-count"), range: $("range"), metric: $("metric"), band: $("band"),
    live: $("live"), interval: $("interval"), controls: $("controls"), charts: $("charts"),
    cost: $("cost"), tz: $("tz"), keyBox: $("key-box"), apiKey: $("api-key"),
    resetZoom: $("reset-zoom"),
  };
  // The API key (when the server requires one) lives in sessionStorage: this tab only,
  // gone when it closes; it is sent as a header, never in a URL.
  const KEY_STORAGE = "iot-ingest.api-key";
  const MAX_SENSORS = 10;
  const MAX_SENSOR_PAGES = 50;
  let allSensors = [];
  let timer = null;
  let inFlight = null;
  let zoom = null;  // { from, to }: the zoomed range (API time strings), null: the live range
  let fetches = 0;

  function setStatus(text, isError) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", Boolean(isError));
  }

  function storedKey() {
    try { return window.sessionStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
  }

  function askForKey() {
    ui.keyBox.hidden = false;
    ui.apiKey.focus();
  }

  function setupKeyBox() {
    if (storedKey()) ui.keyBox.hidden = false;
    ui.apiKey.addEventListener("change", () => {
      try { window.sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim()); } catch (e) { /* private mode */ }
      window.location.reload();
    });
  }

  async function getJSON(path, params, signal) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    const headers = { Accept: "application/json" };
    const key = storedKey();
    if (key) headers["X-API-Key"] = key;
    const resp = await fetch(url, { signal, headers });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const msg = body && body.error ? body.error.message : resp.status + " " + resp.statusText;
      if (resp.status === 401) {
        askForKey();
        throw new Error(msg + " (enter an API key above)");
      }
      throw new Error(msg);
    }
    return { body, readUnits: Number(resp.headers.get("X-Read-Units") || 0) };
  }

  function readState() {
    const q = new URLSearchParams(window.location.search);
    return {
      sensors: (q.get("sensors") || "").split(",").filter(Boolean),
      range: q.get("range"),
      metric: q.get("metric") || "",
      band: q.get("band") !== "0",
      live: q.get("live") !== "0",
      interval: q.get("interval"),
      zoom: q.get("from") && q.get("to") ? { from: q.get("from"), to: q.get("to") } : null,
    };
  }

  function writeState() {
    const q = new URLSearchParams();
    const chosen = selectedSensors();
    if (chosen.length) q.set("sensors", chosen.join(","));
    q.set("range", ui.range.value);
    if (ui.metric.value) q.set("metric", ui.metric.value);
    q.set("band", ui.band.checked ? "1" : "0");
    q.set("live", ui.live.checked ? "1" : "0");
    q.set("interval", ui.interval.value);
    if (zoom) { q.set("from", zoom.from); q.set("to", zoom.to); }
    window.history.replaceState(null, "", "?" + q.toString());
  }

  function selectedSensors() {
    return Array.from(ui.sensors.selectedOptions).map((o) => o.value).slice(0, MAX_SENSORS);
  }

  function setSelectValue(select, value) {
    if (value && Array.from(select.options).some((o) => o.value === value)) select.value = value;
  }

  async function loadSensors() {
    let cursor = null;
    const out = [];
    for (let page = 0; page < MAX_SENSOR_PAGES; page++) {
      const params = { limit: "1000" };
      if (cursor) params.cursor = cursor;
      const { body } = await getJSON("/v1/sensors", params);
      out.push(...body.sensors);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    out.sort((a, b) => (a.sensor_id < b.sensor_id ? -1 : a.sensor_id > b.sensor_id ? 1 : 0));
    return out;
  }

  function fillSensors(chosen) {
    const needle = ui.filter.value.trim().toLowerCase();
    const keep = new Set(chosen);
    ui.sensors.textContent = "";
    for (const s of allSensors) {
      if (needle && !s.sensor_id.toLowerCase().includes(needle) && !keep.has(s.sensor_id)) continue;
      const opt = document.createElement("option");
      opt.value = s.sensor_id;
      opt.textContent = s.sensor_id;
      opt.selected = keep.has(s.sensor_id);
      ui.sensors.appendChild(opt);
    }
    ui.sensorCount.textContent = allSensors.length + " sensors";
  }

  function fillMetrics(names, chosen) {
    const current = chosen !== undefined ? chosen : ui.metric.value;
    ui.metric.textContent = "";
    const all = document.createElement("option");
    all.value = "";
    all.textContent = "all metrics";
    ui.metric.appendChild(all);
    for (const n of names) {
      const opt = document.createElement("option");
      opt.value = n;
      opt.textContent = n;
      ui.metric.appendChild(opt);
    }
    setSelectValue(ui.metric, current);
  }

  function knownMetrics(sensorIds) {
    const names = new Set();
    for (const s of allSensors) {
      if (sensorIds.includes(s.sensor_id)) Object.keys(s.latest || {}).forEach((m) => names.add(m));
    }
    return Array.from(names).sort();
  }

  function panel(title) {
    const section = document.createElement("section");
    section.className = "chart-panel";
    const h = document.createElement("h2");
    h.textContent = title;
    const body = document.createElement("div");
    const legend = document.createElement("div");
    legend.className = "legend";
    section.append(h, body, legend);
    ui.charts.appendChild(section);
    return { body, legend };
  }

  function drawCharts(series, sensorIds) {
    ui.charts.textContent = "";
    const metrics = new Set();
    for (const s of series.sensors) Object.keys(s.metrics).forEach((m) => metrics.add(m));
    const names = Array.from(metrics).sort();
    if (names.length === 0) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No readings from " + sensorIds.join(", ") + " in this range.";
      ui.charts.appendChild(p);
      return 0;
    }
    let points = 0;
    for (const metric of names) {
      const { body, legend } = panel(metric + "  (avg per " + formatStep(series.step_ms) + ")");
      const lines = series.sensors
        .filter((s) => s.metrics[metric])
        .map((s) => ({
          name: s.sensor_id,
          values: s.metrics[metric].avg,
          min: s.metrics[metric].min,
          max: s.metrics[metric].max,
        }));
      points += window.LineChart.render(body, {
        ts: series.ts, stepMs: series.step_ms, series: lines, band: ui.band.checked,
        onZoom: zoomTo, onReset: resetZoom,
      });
      lines.forEach((l, k) => {
        const item = document.createElement("span");
        item.appendChild(window.LineChart.swatch(
          window.LineChart.PALETTE[k % window.LineChart.PALETTE.length]));
        item.appendChild(document.createTextNode(l.name));
        legend.appendChild(item);
      });
    }
    return points;
  }

  function formatStep(ms) {
    const units = [[864e5, "d"], [36e5, "h"], [6e4, "min"], [1e3, "s"]];
    for (const [size, unit] of units) if (ms >= size && ms % size === 0) return ms / size + " " + unit;
    return ms + " ms";
  }

  async function refresh() {
    const chosen = selectedSensors();
    writeState();
    if (chosen.length === 0) {
      ui.charts.textContent = "";
      setStatus(allSensors.length ? "pick one or more sensors" : "no sensors yet: is the ingest service running?");
      return;
    }
    if (inFlight) inFlight.abort();
    const ctrl = new AbortController();
    inFlight = ctrl;
    const width = ui.charts.clientWidth || 800;
    // A narrower range at the same max_points: the server picks a finer step.
    const params = {
      sensors: chosen.join(","),
      start: zoom ? zoom.from : "now-" + Math.round(Number(ui.range.value) / 1000) + "s",
      end: zoom ? zoom.to : "now",
      agg: "avg,min,max",
      max_points: String(Math.max(10, Math.min(1000, Math.floor(width / 3)))),
    };
    if (ui.metric.value) params.fields = ui.metric.value;
    setStatus("loading…");
    try {
      const { body, readUnits } = await getJSON("/v1/series", params, ctrl.signal);
      const points = drawCharts(body, chosen);
      fetches += 1;
      ui.charts.setAttribute("data-rendered", String(points));
      ui.charts.setAttribute("data-start", String(body.start));
      ui.charts.setAttribute("data-end", String(body.end));
      ui.charts.setAttribute("data-step", String(body.step_ms));
      ui.charts.setAttribute("data-fetches", String(fetches));
      ui.cost.textContent = "last query: " + readUnits + " read units";
      setStatus("updated " + new Date().toLocaleTimeString() + " · " + points + " points");
    } catch (err) {
      if (err.name === "AbortError") return;
      setStatus(String(err.message || err), true);
    } finally {
      if (inFlight === ctrl) inFlight = null;
    }
  }

  function zoomed() {
    ui.resetZoom.hidden = zoom === null;
    refresh();
    schedule();
  }

  function zoomTo(startMs, endMs) {
    zoom = { from: String(startMs), to: String(endMs) };
    zoomed();
  }

  function resetZoom() {
    if (zoom === null) return;
    zoom = null;
    zoomed();
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = null;
    // A zoomed absolute range does not move: nothing to refresh.
    if (!ui.live.checked || (zoom && !zoom.to.startsWith("now"))) return;
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, Number(ui.interval.value));
  }

  async function start() {
    setupKeyBox();
    ui.tz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    const state = readState();
    setSelectValue(ui.range, state.range);
    setSelectValue(ui.interval, state.interval);
    ui.band.checked = state.band;
    ui.live.checked = state.live;
    zoom = state.zoom;
    ui.resetZoom.hidden = zoom === null;
    ui.resetZoom.addEventListener("click", resetZoom);
    try {
      allSensors = await loadSensors();
    } catch (err) {
      setStatus("cannot list sensors: " + (err.message || err), true);
      return;
    }
    let chosen = state.sensors.filter((id) => allSensors.some((s) => s.sensor_id === id));
    if (chosen.length === 0) chosen = allSensors.slice(0, 3).map((s) => s.sensor_id);
    fillSensors(chosen);
    fillMetrics(knownMetrics(chosen), state.metric);
    ui.controls.addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    ui.filter.addEventListener("input", () => fillSensors(selectedSensors()));
    ui.sensors.addEventListener("change", () => {
      fillMetrics(knownMetrics(selectedSensors()));
      refresh();
    });
    ui.range.addEventListener("change", () => { zoom = null; zoomed(); });
    for (const node of [ui.metric, ui.band]) node.addEventListener("change", refresh);
    for (const node of [ui.live, ui.interval]) node.addEventListener("change", () => { writeState(); schedule(); });
    await refresh();
    schedule();
  }

  start();
})();
