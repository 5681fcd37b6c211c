/* Garrison console: live refresh, charts (uPlot), confirmations. No framework, no network beyond
   this server. Charts take {points: [{t, v}], threshold: {value}, violations: [{start, end}]}
   from one endpoint per chart (data-series): swapping the data source is server-side only. */
(function () {
  "use strict";
  var body = document.body;
  var charts = window.garrisonCharts = {};

  function inside(t, episodes) {
    for (var i = 0; i < episodes.length; i++) {
      var e = episodes[i];
      if (t >= e.start - 0.5 && (e.end === null || e.end === undefined || t <= e.end - 0.5)) return true;
    }
    return false;
  }

  function draw(figure) {
    var url = figure.getAttribute("data-series");
    var state = figure.querySelector(".chart-state");
    var plot = figure.querySelector(".plot");
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
      if (r.status === 401) { location.href = "/console/login"; throw new Error("signed out"); }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (data) {
      charts[figure.getAttribute("data-behavior")] = data;
      figure.setAttribute("data-points", String(data.points.length));
      figure.setAttribute("data-source", data.source);
      plot.innerHTML = "";
      if (!data.points.length) {
        state.textContent = "No datapoints yet" + (data.source === "violation-events"
          ? " (without a metric history the chart shows the values of violation events)." : ".");
        return;
      }
      var xs = [], ys = [], th = [], marks = [];
      var limit = data.threshold && typeof data.threshold.value === "number" ? data.threshold.value : null;
      data.points.forEach(function (p) {
        xs.push(p.t); ys.push(p.v); th.push(limit);
        marks.push(inside(p.t, data.violations || []) ? p.v : null);
      });
      // without a metric history the points are only the datapoints that started or ended an
      // alarm: no line between them (it would suggest values nobody measured)
      var sparse = data.source !== "metric-history";
      var value = {label: "value", stroke: "#2563eb", width: 2, points: {show: true, size: sparse ? 7 : 5}};
      if (sparse) value.paths = function () { return null; };
      var series = [{}, value];
      var columns = [xs, ys];
      if (limit !== null) {
        series.push({label: "threshold " + (data.threshold.operator || ""), stroke: "#d97706", dash: [6, 4], width: 1.5, points: {show: false}});
        columns.push(th);
      }
      series.push({label: "violating", stroke: "#dc2626", width: 0, points: {show: true, size: 9, fill: "#dc2626"}});
      columns.push(marks);
      var width = Math.max(320, plot.clientWidth || 600);
      var opts = {width: width, height: 220, series: series,
        scales: {x: {time: true, range: function (u, lo, hi) { return lo === hi ? [lo - 300, hi + 300] : [lo, hi]; }}},
        axes: [{}, {size: 50}]};
      new uPlot(opts, columns, plot);
      state.textContent = data.points.length + " datapoint(s), source: " + data.source;
      figure.setAttribute("data-drawn", "1");
    }).catch(function (err) {
      if (String(err.message) === "signed out") return;
      figure.setAttribute("data-error", String(err.message));
      state.textContent = "Could not load this chart: " + err.message;
      state.className = "chart-state flash error";
    });
  }

  function init(root) {
    root.querySelectorAll("figure.chart[data-series]").forEach(draw);
    root.querySelectorAll("form[data-confirm], button[data-confirm]").forEach(function (el) {
      var form = el.tagName === "FORM" ? el : el.form;
      el.addEventListener(el.tagName === "FORM" ? "submit" : "click", function (ev) {
        if (!window.confirm(el.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  function editing() {
    var a = document.activeElement;
    return a && a.closest && a.closest("#main") && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName);
  }

  var mark = null, live = document.getElementById("live");
  function setLive(ok, title) {
    if (!live) return;
    live.className = "live " + (ok ? "ok" : "down");
    live.title = title;
  }
  function refresh() {
    fetch(location.href, {credentials: "same-origin"}).then(function (r) {
      if (r.redirected && /\/login$/.test(r.url)) { location.href = r.url; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html || editing()) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("main");
      if (!fresh) return;
      var main = document.getElementById("main");
      fresh.querySelectorAll(".flash.ok, .flash.error").forEach(function (f) {
        if (!f.id) f.remove();  // a one-time message stays on the page it was shown on
      });
      main.innerHTML = fresh.innerHTML;
      init(main);
      body.setAttribute("data-refreshed", String(Date.now()));
    });
  }
  function poll() {
    var url = body.getAttribute("data-changes");
    if (!url) return;
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
      if (r.status === 401) { location.href = "/console/login"; return null; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (data) {
      if (!data) return;
      setLive(true, "live: refreshes itself as reports arrive");
      if (mark !== null && data.mark !== mark) refresh();
      mark = data.mark;
    }).catch(function (err) {
      setLive(false, "the engine is not answering (" + err.message + "); retrying");
    });
  }
  init(document);
  if (body.getAttribute("data-changes")) { poll(); setInterval(poll, 3000); }
})();
