/* Provisioner dashboard: the month's data use per day as an accessible SVG bar chart.
 * role="img" with a <title> and a <desc> that say in words what the bars show (total, the
 * busiest day, the days so far); the exact numbers are also in a table next to it. Built with
 * createElementNS and attributes only (no inline style: the CSP forbids it). */
(function (D) {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var t = D.i18n.t, formatBytes = D.i18n.formatBytes, formatDay = D.i18n.formatDay;
  var WIDTH = 320, HEIGHT = 120, AXIS = 16, TOP = 8;
  var ids = 0;

  function node(tag, attrs, text) {
    var el = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  function summary(usage) {
    var busiest = null;
    usage.days.forEach(function (d) { if (!busiest || d.bytes > busiest.bytes) { busiest = d; } });
    var text = t("usage.summary", { used: formatBytes(usage.used), cap: usage.cap ? formatBytes(usage.cap) :
      t("value.unlimited"), days: usage.days.length });
    if (busiest && busiest.bytes > 0) {
      text += " " + t("usage.busiest", { day: formatDay(busiest.day, "short"), amount: formatBytes(busiest.bytes) });
    }
    return text;
  }

  function render(container, usage) {
    var n = ++ids;
    var days = usage.days || [];
    var max = Math.max.apply(null, days.map(function (d) { return d.bytes; }).concat([1]));
    var svg = node("svg", { viewBox: "0 0 " + WIDTH + " " + HEIGHT, role: "img", class: "bars",
      "aria-labelledby": "chart-title-" + n + " chart-desc-" + n, preserveAspectRatio: "none" });
    svg.appendChild(node("title", { id: "chart-title-" + n }, t("usage.chart_title", { month: usage.month })));
    svg.appendChild(node("desc", { id: "chart-desc-" + n }, summary(usage)));
    var slots = Math.max(days.length, 28);
    var step = WIDTH / slots, bar = Math.max(1, step * 0.7);
    var room = HEIGHT - AXIS - TOP;
    svg.appendChild(node("line", { x1: 0, x2: WIDTH, y1: HEIGHT - AXIS, y2: HEIGHT - AXIS, class: "axis" }));
    days.forEach(function (d, i) {
      var h = d.bytes > 0 ? Math.max(1, room * d.bytes / max) : 0;
      var rect = node("rect", { x: (i * step + (step - bar) / 2).toFixed(2), y: (HEIGHT - AXIS - h).toFixed(2),
        width: bar.toFixed(2), height: h.toFixed(2), class: "bar-day" });
      rect.appendChild(node("title", {}, formatDay(d.day, "short") + ": " + formatBytes(d.bytes)));
      svg.appendChild(rect);
      if (i === 0 || (i + 1) % 7 === 0) {
        svg.appendChild(node("text", { x: (i * step + step / 2).toFixed(2), y: HEIGHT - 3, class: "tick",
          "text-anchor": "middle", "aria-hidden": "true" }, String(Number(d.day.slice(8, 10)))));
      }
    });
    container.textContent = "";
    container.appendChild(svg);
    return summary(usage);
  }

  D.chart = { render: render, summary: summary };
}(window.ProvisionerDashboard = window.ProvisionerDashboard || {}));
