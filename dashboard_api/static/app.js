/* Provisioner customer dashboard. Plain JS, no build step, no inline scripts (CSP).
 * Loaded after i18n.js (strings, formatting), net.js (the API, toasts), rows.js (the tables),
 * chart.js (the usage chart) and panels.js (one panel per server).
 *
 * The storefront opens this page as  <API>/#token=<JWT>.  The token moves to sessionStorage
 * and out of the address bar; every API call sends it as a Bearer header. On a 401 the page
 * says the session expired and stops polling. Data is only ever put into the page with
 * textContent, never as HTML.
 */
(function (D) {
  "use strict";

  var TOKEN_KEY = "provisioner.token";
  var LANGUAGES = ["en", "de", "fr"];
  var t = D.i18n.t, formatDate = D.i18n.formatDate, formatDay = D.i18n.formatDay, cityName = D.i18n.cityName;
  var rows = D.rows, net = D.net;
  var state = { config: null, account: null, servers: [], timer: null, rebuildFor: null, stopped: false,
                loaded: false };
  var SECTIONS = ["loading", "expired", "failed", "empty", "lapsed", "servers-section", "scheduler-section",
                  "guide-section", "panels"];

  // --- page states ------------------------------------------------------------------------------

  function show(id, visible) { document.getElementById(id).hidden = !visible; }

  function showOnly(ids) {
    SECTIONS.forEach(function (id) { show(id, ids.indexOf(id) !== -1); });
    postHeight();
  }

  function storeUrl() {
    return (state.account && state.account.store_url) || (state.config && state.config.storefront_url) || "#";
  }

  function showExpired() {
    state.stopped = true;
    if (state.timer) { clearInterval(state.timer); state.timer = null; }
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage may be blocked */ }
    net.token = null;
    var link = document.getElementById("expired-link");
    if (state.config && state.config.storefront_url) { link.href = state.config.storefront_url; } else { link.hidden = true; }
    ["rebuild-dialog", "confirm-dialog", "password-dialog"].forEach(function (id) {
      var dialog = document.getElementById(id);
      if (dialog.open) { dialog.close(); }
    });
    showOnly(["expired"]);
  }

  function showFailed(err) {
    document.getElementById("failed-text").textContent = err && err.code === "timeout" ? t("failed.timeout")
      : t("failed.text");
    showOnly(["failed"]);
  }

  // --- the account: who is signed in, plans, servers that ended -----------------------------------

  function renderAccount(account) {
    state.account = account;
    rows.settings.timeZone = account.timezone;
    var who = document.getElementById("signed-in");
    who.textContent = t("account.signed_in", { email: account.email });
    who.hidden = false;
    document.getElementById("scheduler-help").textContent = t("scheduler.help",
      { zone: D.i18n.zoneName(account.timezone) });
  }

  function renderLapsed() {
    var list = document.getElementById("lapsed-list");
    list.textContent = "";
    state.account.ended.forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = t("lapsed.item", { name: (e.server || "").split(".")[0], plan: e.plan,
        date: formatDay(e.ended_at), reason: t("lapsed.reason." + e.reason) });
      list.appendChild(li);
    });
    document.getElementById("lapsed-link").href = storeUrl();
    showOnly(["lapsed"]);
  }

  // --- the servers ------------------------------------------------------------------------------

  function render(servers) {
    var previous = {};
    state.servers.forEach(function (s) { previous[s.name] = s; });
    state.servers = servers;
    state.loaded = true;
    if (!servers.length) {
      if (state.account && state.account.ended.length) { renderLapsed(); return; }
      document.getElementById("empty-link").href = storeUrl();
      showOnly(["empty"]);
      return;
    }
    var tbody = document.querySelector("#servers tbody");
    var sbody = document.querySelector("#scheduler tbody");
    var keys = servers.map(rows.serverKey);
    [tbody, sbody].forEach(function (body) {
      Array.prototype.slice.call(body.children).forEach(function (tr) {
        if (keys.indexOf(tr.getAttribute("data-key")) === -1) { tr.remove(); }
      });
    });
    servers.forEach(function (s, i) {
      rows.renderServerRow(rows.ensureServerRow(tbody, keys[i]), s);
      rows.renderScheduleRow(rows.ensureScheduleRow(sbody, keys[i], state.config && state.config.schedules), s);
    });
    rows.labelCells(document.getElementById("servers"));
    rows.labelCells(document.getElementById("scheduler"));
    var plans = {};
    ((state.account && state.account.plans) || []).forEach(function (p) { plans[p.server] = p; });
    D.panels.sync(document.getElementById("panels"), servers, keys, plans, previous);
    document.getElementById("updated").textContent = t("servers.updated", { time: formatDate(new Date().toISOString()) });
    showOnly(["servers-section", "panels", "scheduler-section", "guide-section"]);
  }

  function findServer(key) {
    for (var i = 0; i < state.servers.length; i++) {
      if (rows.serverKey(state.servers[i], i) === key) { return state.servers[i]; }
    }
    return null;
  }

  function replaceServer(updated) {
    render(state.servers.map(function (s) { return s.name === updated.name ? updated : s; }));
  }

  function refresh() {
    if (state.stopped || document.hidden) { return Promise.resolve(); }
    var account = state.account ? Promise.resolve(state.account) : net.apiJson("GET", "/api/account").then(renderAccount);
    return Promise.all([net.apiJson("GET", "/api/servers"), account]).then(function (got) { render(got[0]); },
      function (err) {
        if (err instanceof net.ApiError && err.status === 401) { showExpired(); return; }
        if (!state.loaded) { showFailed(err); } else { net.failed(err, "toast.refresh_failed", refresh); }
      });
  }

  // --- actions ----------------------------------------------------------------------------------

  function openRebuild(key) {
    var s = findServer(key);
    if (!s || !s.name) { return; }
    state.rebuildFor = s;
    document.getElementById("rebuild-title").textContent = t("rebuild.title", { name: s.short_name || s.name });
    rows.fillLocations(document.getElementById("rebuild-location"), s.location_choices, "random");
    document.getElementById("rebuild-confirm").disabled = false;
    document.getElementById("rebuild-dialog").showModal();
    document.getElementById("rebuild-location").focus();
  }

  function closeRebuild() {
    var dialog = document.getElementById("rebuild-dialog");
    if (dialog.open) { dialog.close(); }
  }

  function onRebuildDialogClose() {
    var s = state.rebuildFor;
    state.rebuildFor = null;
    if (!s) { return; }
    var row = document.querySelector('#servers tr[data-key="' + CSS.escape(s.name) + '"] .rebuild');
    if (row && !row.disabled) { row.focus(); }
  }

  function requestRebuild(s, location) {
    net.apiJson("POST", "/api/servers/" + encodeURIComponent(s.name) + "/rebuild", { location: location })
      .then(function (data) {
        net.toast(t("toast.rebuild_ok", { name: s.short_name, location: cityName(location) }), false);
        replaceServer(data.server);
      }, function (err) {
        net.failed(err, "toast.rebuild_failed", function () { requestRebuild(s, location); });
      });
  }

  function confirmRebuild(event) {
    event.preventDefault();
    var s = state.rebuildFor;
    closeRebuild();
    if (s) { requestRebuild(s, document.getElementById("rebuild-location").value); }
  }

  function saveSchedule(row, button) {
    var s = findServer(row.getAttribute("data-key"));
    if (!s || !s.name) { return; }
    var body = {
      schedule: row.querySelector("select.schedule").value,
      location: row.querySelector("select.location").value
    };
    button.disabled = true;
    net.apiJson("PUT", "/api/servers/" + encodeURIComponent(s.name) + "/schedule", body).then(function (updated) {
      row.removeAttribute("data-dirty");
      button.disabled = false;
      net.toast(t("toast.schedule_ok", { name: s.short_name, schedule: t("schedule." + updated.schedule),
        location: cityName(updated.schedule_location) }), false);
      replaceServer(updated);
    }, function (err) {
      button.disabled = false;
      net.failed(err, "toast.schedule_failed", function () { saveSchedule(row, button); });
    });
  }

  function downloadOvpn(key, button) {
    var s = findServer(key);
    if (!s || !s.name) { return; }
    button.disabled = true;
    button.setAttribute("data-busy", "1");   // a refresh meanwhile must not enable it again
    net.api("GET", "/api/servers/" + encodeURIComponent(s.name) + "/ovpn", undefined, 30000).then(function (r) {
      return r.blob();
    }).then(function (blob) {
      net.save(blob, (s.short_name || "server") + ".ovpn");
      net.toast(t("toast.download_ok", { name: s.short_name }), false);
    }, function (err) {
      net.failed(err, "toast.download_failed", function () { downloadOvpn(key, button); });
    }).then(function () {
      button.removeAttribute("data-busy");
      button.disabled = !s.ovpn_available;
    });
  }

  function closePassword(event) {
    if (event) { event.preventDefault(); }
    var dialog = document.getElementById("password-dialog");
    document.getElementById("password-value").textContent = "";   // the secret leaves the page with the dialog
    if (dialog.open) { dialog.close(); }
  }

  function copyPassword() {
    var value = document.getElementById("password-value").textContent;
    if (navigator.clipboard && value) {
      navigator.clipboard.writeText(value).then(function () { net.toast(t("toast.copied"), false); },
        function () { net.toast(t("toast.copy_failed"), true); });
    }
  }

  // --- embedding --------------------------------------------------------------------------------

  function postHeight() {  // lets the WordPress plugin size its iframe (a number only, nothing secret)
    if (window.parent === window) { return; }
    window.parent.postMessage({ type: "provisioner-dashboard:height",
      height: document.documentElement.scrollHeight }, "*");
  }

  // --- start ------------------------------------------------------------------------------------

  function takeToken() {
    var match = /(?:^|[#&])token=([^&]+)/.exec(location.hash || "");
    var token = null;
    if (match) {
      token = decodeURIComponent(match[1]);
      history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* kept in memory only */ }
    } else {
      try { token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { token = null; }
    }
    return token;
  }

  function start() {
    net.token = takeToken();
    net.onExpired = showExpired;
    rows.handlers.rebuild = openRebuild;
    rows.handlers.download = downloadOvpn;
    rows.handlers.save = saveSchedule;
    Promise.all([D.i18n.load(LANGUAGES), net.apiJson("GET", "/api/config").catch(function () { return null; })])
      .then(function (loaded) {
        state.config = loaded[1];
        D.i18n.apply();
        document.getElementById("rebuild-form").addEventListener("submit", confirmRebuild);
        document.getElementById("rebuild-cancel").addEventListener("click", closeRebuild);
        document.getElementById("rebuild-dialog").addEventListener("close", onRebuildDialogClose);
        document.getElementById("password-form").addEventListener("submit", closePassword);
        document.getElementById("password-dialog").addEventListener("close", function () { closePassword(); });
        document.getElementById("password-copy").addEventListener("click", copyPassword);
        document.getElementById("failed-retry").addEventListener("click", function () {
          showOnly(["loading"]);
          refresh();
        });
        if (!net.token) { showExpired(); return; }
        var seconds = (state.config && state.config.refresh_seconds) || 15;
        refresh().then(function () {
          if (!state.stopped) { state.timer = setInterval(refresh, seconds * 1000); }
        });
        document.addEventListener("visibilitychange", function () { if (!document.hidden) { refresh(); } });
        if (window.ResizeObserver) { new ResizeObserver(postHeight).observe(document.body); }
      }, function () {
        document.getElementById("loading").textContent = "Error";
      });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}(window.ProvisionerDashboard));
