/* Provisioner customer dashboard. Plain JS, no build step, no inline scripts (CSP).
 * Loaded after i18n.js (strings, formatting) and rows.js (the tables).
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
  var t = D.i18n.t, tOr = D.i18n.tOr, formatDate = D.i18n.formatDate, cityName = D.i18n.cityName;
  var rows = D.rows;
  var state = { token: null, config: null, servers: [], timer: null, rebuildFor: null, stopped: false };

  // --- API --------------------------------------------------------------------------------------

  function ApiError(status, code, message, retryAfter) {
    this.status = status; this.code = code; this.message = message; this.retryAfter = retryAfter;
  }

  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    if (state.token) { headers.Authorization = "Bearer " + state.token; }
    var init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(path, init).then(function (r) {
      if (r.ok) { return r; }
      return r.json().catch(function () { return {}; }).then(function (data) {
        var err = (data && data.error) || {};
        throw new ApiError(r.status, err.code || "error", err.message || t("error.generic"),
          r.headers.get("Retry-After"));
      });
    }, function () {
      throw new ApiError(0, "network", t("error.network"));
    });
  }

  function apiJson(method, path, body) {
    return api(method, path, body).then(function (r) { return r.json(); });
  }

  function errorText(err) {
    if (!(err instanceof ApiError)) { return t("error.generic"); }
    return tOr("error.code." + err.code, err.message, { seconds: err.retryAfter || "" });
  }

  function handleFailure(err, what) {
    if (err instanceof ApiError && err.status === 401) { showExpired(); return; }
    toast(t(what, {}) + " " + errorText(err), true);
  }

  // --- page states ------------------------------------------------------------------------------

  function show(id, visible) { document.getElementById(id).hidden = !visible; }

  function showOnly(ids) {
    ["loading", "expired", "failed", "empty", "servers-section", "scheduler-section"].forEach(function (id) {
      show(id, ids.indexOf(id) !== -1);
    });
    postHeight();
  }

  function showExpired() {
    state.stopped = true;
    if (state.timer) { clearInterval(state.timer); state.timer = null; }
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage may be blocked */ }
    state.token = null;
    var link = document.getElementById("expired-link");
    if (state.config && state.config.storefront_url) { link.href = state.config.storefront_url; } else { link.hidden = true; }
    var dialog = document.getElementById("rebuild-dialog");
    if (dialog.open) { dialog.close(); }
    showOnly(["expired"]);
  }

  // --- toasts -----------------------------------------------------------------------------------

  function toast(message, isError) {
    var box = document.getElementById(isError ? "alerts" : "toasts");
    var item = document.createElement("div");
    item.className = "toast" + (isError ? " toast-error" : " toast-ok");
    var text = document.createElement("span");
    text.textContent = message;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", t("toast.dismiss"));
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { item.remove(); });
    item.appendChild(text);
    item.appendChild(close);
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, isError ? 12000 : 6000);
  }

  function render(servers) {
    state.servers = servers;
    if (!servers.length) {
      var link = document.getElementById("empty-link");
      link.href = (state.config && state.config.storefront_url) || "#";
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
    document.getElementById("updated").textContent = t("servers.updated", { time: formatDate(new Date().toISOString()) });
    showOnly(["servers-section", "scheduler-section"]);
  }

  function findServer(key) {
    for (var i = 0; i < state.servers.length; i++) {
      if (rows.serverKey(state.servers[i], i) === key) { return state.servers[i]; }
    }
    return null;
  }

  function replaceServer(updated) {
    var list = state.servers.map(function (s) { return s.name === updated.name ? updated : s; });
    render(list);
  }

  // --- actions ----------------------------------------------------------------------------------

  function refresh() {
    if (state.stopped || document.hidden) { return Promise.resolve(); }
    return apiJson("GET", "/api/servers").then(render, function (err) {
      if (err instanceof ApiError && err.status === 401) { showExpired(); return; }
      if (!state.servers.length) { showOnly(["failed"]); } else { toast(t("toast.refresh_failed") + " " + errorText(err), true); }
    });
  }

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

  function confirmRebuild(event) {
    event.preventDefault();
    var s = state.rebuildFor;
    if (!s) { closeRebuild(); return; }
    var location = document.getElementById("rebuild-location").value;
    var button = document.getElementById("rebuild-confirm");
    button.disabled = true;
    apiJson("POST", "/api/servers/" + encodeURIComponent(s.name) + "/rebuild", { location: location })
      .then(function (data) {
        closeRebuild();
        toast(t("toast.rebuild_ok", { name: s.short_name, location: cityName(location) }), false);
        replaceServer(data.server);
      }, function (err) {
        closeRebuild();
        handleFailure(err, "toast.rebuild_failed");
      });
  }

  function saveSchedule(row, button) {
    var s = findServer(row.getAttribute("data-key"));
    if (!s || !s.name) { return; }
    var body = {
      schedule: row.querySelector("select.schedule").value,
      location: row.querySelector("select.location").value
    };
    button.disabled = true;
    apiJson("PUT", "/api/servers/" + encodeURIComponent(s.name) + "/schedule", body).then(function (updated) {
      row.removeAttribute("data-dirty");
      button.disabled = false;
      toast(t("toast.schedule_ok", { name: s.short_name, schedule: t("schedule." + updated.schedule),
        location: cityName(updated.schedule_location) }), false);
      replaceServer(updated);
    }, function (err) {
      button.disabled = false;
      handleFailure(err, "toast.schedule_failed");
    });
  }

  function downloadOvpn(key, button) {
    var s = findServer(key);
    if (!s || !s.name) { return; }
    button.disabled = true;
    api("GET", "/api/servers/" + encodeURIComponent(s.name) + "/ovpn").then(function (r) {
      return r.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = document.createElement("a");
      a.href = url;
      a.download = (s.short_name || "server") + ".ovpn";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
      toast(t("toast.download_ok", { name: s.short_name }), false);
    }, function (err) {
      handleFailure(err, "toast.download_failed");
    }).then(function () { button.disabled = !s.ovpn_available; });
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
    state.token = takeToken();
    rows.handlers.rebuild = openRebuild;
    rows.handlers.download = downloadOvpn;
    rows.handlers.save = saveSchedule;
    Promise.all([D.i18n.load(LANGUAGES), apiJson("GET", "/api/config").catch(function () { return null; })])
      .then(function (loaded) {
        state.config = loaded[1];
        D.i18n.apply();
        document.getElementById("rebuild-form").addEventListener("submit", confirmRebuild);
        document.getElementById("rebuild-cancel").addEventListener("click", closeRebuild);
        document.getElementById("rebuild-dialog").addEventListener("close", onRebuildDialogClose);
        document.getElementById("failed-retry").addEventListener("click", function () {
          showOnly(["loading"]);
          refresh();
        });
        if (!state.token) { showExpired(); return; }
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
