/* Provisioner dashboard: the two tables. Rows are keyed by server name and updated in place
 * on every refresh, so focus and a half-edited schedule survive the 15-second polling. Data
 * goes in with textContent only. */
(function (D) {
  "use strict";

  var t = D.i18n.t, tOr = D.i18n.tOr, formatBytes = D.i18n.formatBytes, formatDate = D.i18n.formatDate;
  var cityName = D.i18n.cityName;
  var handlers = { rebuild: null, download: null, save: null };  // set by app.js
  var settings = { timeZone: null };                               // schedule times: worker.timezone

  function labelCells(table) {  // the column name each cell shows on narrow screens (CSS attr())
    var heads = table.querySelectorAll("thead th");
    table.querySelectorAll("tbody tr").forEach(function (tr) {
      Array.prototype.forEach.call(tr.children, function (cell, i) {
        if (heads[i]) { cell.setAttribute("data-label", heads[i].textContent); }
      });
    });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function serverKey(s, i) { return s.name || ("#" + i); }

  function ensureServerRow(tbody, key) {
    var row = tbody.querySelector('tr[data-key="' + CSS.escape(key) + '"]');
    if (row) { return row; }
    row = el("tr");
    row.setAttribute("data-key", key);
    var name = el("th");
    name.scope = "row";
    row.appendChild(name);
    for (var i = 0; i < 6; i++) { row.appendChild(el("td")); }
    var status = row.children[1];
    status.appendChild(el("span", "badge"));
    status.appendChild(el("span", "progress"));
    status.appendChild(el("span", "error-text"));
    var bw = row.children[4];
    bw.appendChild(el("span", "bw-text"));
    var bar = el("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    bar.appendChild(el("span", "bar-fill"));
    bw.appendChild(bar);
    var actions = row.children[6];
    var rebuild = el("button", "rebuild", t("servers.rebuild"));
    rebuild.type = "button";
    rebuild.addEventListener("click", function () { handlers.rebuild(row.getAttribute("data-key")); });
    var download = el("button", "download", t("servers.download"));
    download.type = "button";
    download.addEventListener("click", function () { handlers.download(row.getAttribute("data-key"), download); });
    var group = el("div", "actions");
    group.appendChild(rebuild);
    group.appendChild(download);
    actions.appendChild(group);
    tbody.appendChild(row);
    return row;
  }

  function statusLabel(s) {
    if (s.support_hold) { return t("status.support_" + s.support_hold); }
    if (s.rebuild_requested && !s.step) { return t("status.rebuild_requested"); }
    return tOr("status." + s.status, s.status);
  }

  function progressLabel(s) {
    if (s.support_hold) { return tOr("progress.support_" + s.support_hold, s.progress || ""); }
    if (s.rebuild_requested && !s.step) {
      return t("progress.rebuild_requested", { location: cityName(s.rebuild_location) });
    }
    if (s.step) { return tOr("step." + s.step, s.progress || s.step); }
    if (s.progress) { return tOr("progress." + s.status, s.progress); }
    return "";
  }

  function renderServerRow(row, s) {
    var cells = row.children;
    cells[0].textContent = s.name || t("value.pending_name");
    var badge = cells[1].querySelector(".badge");
    badge.textContent = statusLabel(s);
    badge.className = "badge badge-" + (s.support_hold ? "suspended"
      : s.rebuild_requested ? "requested" : String(s.status).toLowerCase());
    cells[1].querySelector(".progress").textContent = progressLabel(s);
    cells[1].querySelector(".error-text").textContent =
      s.last_error_code ? tOr("error.server." + s.last_error_code, s.last_error || "") : "";
    cells[2].textContent = s.ip || t("value.none");
    cells[3].textContent = s.location ? cityName(s.location, s.city) : t("value.none");
    var cap = s.bandwidth_cap || 0;
    var pct = cap > 0 ? Math.min(100, Math.round(100 * s.bandwidth_used / cap)) : 0;
    cells[4].querySelector(".bw-text").textContent = t("servers.bandwidth_of", {
      used: formatBytes(s.bandwidth_used), cap: cap ? formatBytes(cap) : t("value.unlimited"), percent: pct });
    var fill = cells[4].querySelector(".bar-fill");
    fill.style.width = pct + "%";
    fill.className = "bar-fill" + (pct >= 100 ? " over" : pct >= 80 ? " high" : "");
    cells[5].textContent = formatDate(s.last_rebuilt);
    var rebuild = cells[6].querySelector(".rebuild");
    rebuild.disabled = !s.name || s.busy;
    rebuild.setAttribute("aria-label", t("servers.rebuild_named", { name: s.short_name || "" }));
    rebuild.title = s.busy ? t("servers.rebuild_busy") : "";
    var download = cells[6].querySelector(".download");
    download.disabled = download.hasAttribute("data-busy") || !s.name || !s.ovpn_available;
    download.setAttribute("aria-label", t("servers.download_named", { name: s.short_name || "" }));
    download.title = s.ovpn_available ? "" : t("servers.download_not_ready");
    download.hidden = (s.protocols || ["openvpn"]).indexOf("openvpn") < 0;   // a WireGuard-only plan
  }

  function fillLocations(select, choices, current) {
    // the choices come from the API (the one location rule): the plan's regions, then random
    var wanted = (choices || []).slice();
    if (current && wanted.indexOf(current) === -1) { wanted.push(current); }
    select.textContent = "";
    wanted.forEach(function (id) {
      var opt = el("option", null, cityName(id));
      opt.value = id;
      select.appendChild(opt);
    });
    select.value = current || "random";
  }

  function ensureScheduleRow(tbody, key, schedules) {
    var row = tbody.querySelector('tr[data-key="' + CSS.escape(key) + '"]');
    if (row) { return row; }
    row = el("tr");
    row.setAttribute("data-key", key);
    var name = el("th");
    name.scope = "row";
    row.appendChild(name);
    for (var i = 0; i < 4; i++) { row.appendChild(el("td")); }
    var idBase = "sched-" + key.replace(/[^A-Za-z0-9]/g, "-");
    var schedule = el("select", "schedule");
    schedule.id = idBase + "-schedule";
    (schedules || []).forEach(function (v) {
      var opt = el("option", null, t("schedule." + v));
      opt.value = v;
      schedule.appendChild(opt);
    });
    var location = el("select", "location");
    location.id = idBase + "-location";
    [schedule, location].forEach(function (sel) {
      sel.addEventListener("change", function () { row.setAttribute("data-dirty", "1"); });
    });
    var schedLabel = el("label", "visually-hidden");
    schedLabel.htmlFor = schedule.id;
    var locLabel = el("label", "visually-hidden");
    locLabel.htmlFor = location.id;
    row.children[1].appendChild(schedLabel);
    row.children[1].appendChild(schedule);
    row.children[2].appendChild(locLabel);
    row.children[2].appendChild(location);
    var save = el("button", "save primary", t("scheduler.save"));
    save.type = "button";
    save.addEventListener("click", function () { handlers.save(row, save); });
    row.children[4].appendChild(save);
    tbody.appendChild(row);
    return row;
  }

  function renderScheduleRow(row, s) {
    var cells = row.children;
    var short = s.short_name || s.name || "";
    cells[0].textContent = s.name || t("value.pending_name");
    cells[1].querySelector("label").textContent = t("scheduler.schedule_for", { name: short });
    cells[2].querySelector("label").textContent = t("scheduler.location_for", { name: short });
    var schedule = cells[1].querySelector("select");
    var location = cells[2].querySelector("select");
    if (row.getAttribute("data-dirty") !== "1") {  // never overwrite what the customer is editing
      schedule.value = s.schedule;
      fillLocations(location, s.location_choices, s.schedule_location);
    }
    cells[3].textContent = s.next_scheduled_rebuild ? t("scheduler.next_at", {
      time: formatDate(s.next_scheduled_rebuild, settings.timeZone), zone: D.i18n.zoneName(settings.timeZone) })
      : t("value.none");
    var save = cells[4].querySelector("button");
    save.disabled = !s.name;
    save.setAttribute("aria-label", t("scheduler.save_named", { name: short }));
    schedule.disabled = location.disabled = !s.name;
  }

  D.rows = {
    handlers: handlers, settings: settings, labelCells: labelCells, el: el, serverKey: serverKey, fillLocations: fillLocations,
    ensureServerRow: ensureServerRow, renderServerRow: renderServerRow,
    ensureScheduleRow: ensureScheduleRow, renderScheduleRow: renderScheduleRow
  };
}(window.ProvisionerDashboard = window.ProvisionerDashboard || {}));
