/* Provisioner dashboard: one panel per server below the table, made from <template id="panel-template">:
 * the plan and where it stands, the devices (each its own profile, revocable alone), the month's
 * data use per day, SSH access (root password, keys, key-only login), restart, and the history
 * in plain words. Each part loads on its own, so one slow part never blanks the others. */
(function (D) {
  "use strict";

  var t = D.i18n.t, tOr = D.i18n.tOr, formatDate = D.i18n.formatDate, formatDay = D.i18n.formatDay;
  var formatBytes = D.i18n.formatBytes, cityName = D.i18n.cityName;
  var net = D.net, el = D.rows.el;
  var PLACES = ["location", "from", "to"];
  var panels = {};   // server key -> { el, server, access, historyNext }

  function q(panel, selector) { return panel.el.querySelector(selector); }

  function base(server) { return "/api/servers/" + encodeURIComponent(server.name); }

  function button(text, className, label, onClick) {
    var b = el("button", className, text);
    b.type = "button";
    if (label) { b.setAttribute("aria-label", label); }
    b.addEventListener("click", function () { onClick(b); });
    return b;
  }

  // --- the panel ---------------------------------------------------------------------------------

  function ensure(container, key, server) {
    var panel = panels[key];
    if (panel) { panel.server = server; return panel; }
    var node = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
    D.i18n.apply(node);
    var idBase = "p-" + key.replace(/[^A-Za-z0-9]/g, "-");
    node.id = idBase;
    node.setAttribute("data-key", key);
    node.setAttribute("aria-labelledby", idBase + "-title");
    node.querySelector(".panel-title").id = idBase + "-title";
    [["device-name", "device-label"], ["key-text", "key-label"], ["key-only", "key-only-label"]].forEach(function (p) {
      var input = node.querySelector("." + p[0]);
      input.id = idBase + "-" + p[0];
      node.querySelector("." + p[1]).htmlFor = input.id;
    });
    panel = panels[key] = { el: node, server: server, access: null, historyNext: null };
    node.querySelector(".device-form").addEventListener("submit", function (e) { e.preventDefault(); addDevice(panel); });
    node.querySelector(".key-form").addEventListener("submit", function (e) { e.preventDefault(); addKey(panel); });
    node.querySelector(".key-only").addEventListener("change", function (e) { setKeyOnly(panel, e.target); });
    node.querySelector(".show-password").addEventListener("click", function (e) { showPassword(panel, e.target); });
    node.querySelector(".restart").addEventListener("click", function (e) { restart(panel, e.target); });
    node.querySelector(".history-more").addEventListener("click", function () { loadHistory(panel, false); });
    container.appendChild(node);
    refreshAll(panel);
    return panel;
  }

  function render(panel, server, plan) {
    var short = server.short_name || server.name || "";
    q(panel, ".panel-title").textContent = t("panel.title", { name: short });
    var planLine = q(panel, ".plan"), warning = q(panel, ".plan-warning");
    warning.hidden = true;
    planLine.textContent = "";
    if (plan) {
      var when = plan.date ? formatDay(plan.date) : "";
      planLine.textContent = t("plan." + plan.standing, { plan: plan.plan, date: when });
      if (plan.standing === "grace" || plan.standing === "ends") {
        warning.textContent = t("plan.warning_" + plan.standing, { date: when });
        warning.hidden = false;
      }
    }
    var restartButton = q(panel, ".restart");
    restartButton.disabled = server.busy || server.status !== "Running";
    restartButton.setAttribute("aria-label", t("restart.named", { name: short }));
    q(panel, ".show-password").setAttribute("aria-label", t("access.show_password_named", { name: short }));
    q(panel, ".device-add").disabled = !server.name;
  }

  function refreshAll(panel) {
    loadDevices(panel);
    loadAccess(panel);
    loadUsage(panel);
    loadHistory(panel, true);
  }

  /* After the list was polled: the parts that change on their own, when they may have. */
  function poll(panel, server, before) {
    if (before && (before.status !== server.status || before.step !== server.step)) {
      loadHistory(panel, true);
      loadDevices(panel);
    }
    if (panel.access && panel.access.pending) { loadAccess(panel); }
  }

  // --- devices -----------------------------------------------------------------------------------

  function loadDevices(panel) {
    return net.apiJson("GET", base(panel.server) + "/devices").then(function (data) {
      renderDevices(panel, data);
    }, function (err) { net.failed(err, "toast.devices_failed", function () { loadDevices(panel); }); });
  }

  function renderDevices(panel, data) {
    var list = q(panel, ".device-list");
    list.textContent = "";
    var active = 0, wireguard = false;
    data.devices.forEach(function (stored) {
      // the first device's stored name is English ("Device 1", what every server had before devices)
      var d = stored.id === "1" && stored.name === "Device 1" ? Object.assign({}, stored, { name: t("devices.first") })
        : stored;
      var li = el("li", "device" + (d.revoked_at ? " revoked" : ""));
      li.setAttribute("data-device", d.id);
      var what = el("div", "device-what");
      what.appendChild(el("strong", "device-title", d.name));
      what.appendChild(el("span", "muted", d.revoked_at ? t("devices.revoked_on", { date: formatDate(d.revoked_at) })
        : t("devices.added_on", { date: formatDate(d.created_at) })));
      li.appendChild(what);
      if (!d.revoked_at) {
        active += 1;
        var actions = el("div", "actions");
        var downloads = [];
        if (hasProfile(d, "openvpn")) {
          downloads.push(button(t("devices.download"), "download-device", t("devices.download_named", { name: d.name }),
            function (b) { downloadDevice(panel, d, b, "ovpn"); }));
        }
        if (hasProfile(d, "wireguard")) {
          wireguard = true;
          downloads.push(button(t("devices.download_conf"), "download-conf",
            t("devices.download_conf_named", { name: d.name }), function (b) { downloadDevice(panel, d, b, "conf"); }));
          downloads.push(button(t("devices.show_qr"), "show-qr", t("devices.show_qr_named", { name: d.name }),
            function (b) { toggleQr(panel, d, b, li); }));
        }
        downloads.forEach(function (b) {
          b.disabled = !data.ready;
          b.title = data.ready ? "" : t("servers.download_not_ready");
          actions.appendChild(b);
        });
        actions.appendChild(button(t("devices.revoke"), "revoke-device", t("devices.revoke_named", { name: d.name }),
          function (b) { revokeDevice(panel, d, b); }));
        li.appendChild(actions);
      }
      list.appendChild(li);
    });
    renderWireGuardGuide(panel, wireguard);
    // no device at all: the server's keys are not made yet (it is queued)
    q(panel, ".device-count").textContent = data.devices.length ? t("devices.count",
      { active: active, max: data.max_devices }) : t("devices.not_yet");
    q(panel, ".device-add").disabled = !data.devices.length || active >= data.max_devices || !panel.server.name;
  }

  function addDevice(panel) {
    var input = q(panel, ".device-name"), add = q(panel, ".device-add");
    var name = input.value.trim();
    if (!name) { input.focus(); return; }
    add.disabled = true;
    net.apiJson("POST", base(panel.server) + "/devices", { name: name }).then(function (d) {
      input.value = "";
      net.toast(t("toast.device_added", { name: d.name }), false);
      loadDevices(panel);
      loadHistory(panel, true);
    }, function (err) {
      add.disabled = false;
      net.failed(err, "toast.device_add_failed", function () { addDevice(panel); });
    });
  }

  function revokeDevice(panel, device, btn) {
    net.confirm(t("devices.revoke_title", { name: device.name }), t("devices.revoke_text"), t("devices.revoke"))
      .then(function (yes) {
        if (!yes) { btn.focus(); return; }
        btn.disabled = true;
        net.apiJson("DELETE", base(panel.server) + "/devices/" + encodeURIComponent(device.id)).then(function () {
          net.toast(t("toast.device_revoked", { name: device.name }), false);
          loadDevices(panel);
          loadAccess(panel);
          loadHistory(panel, true);
        }, function (err) {
          btn.disabled = false;
          net.failed(err, "toast.device_revoke_failed", function () { revokeDevice(panel, device, btn); });
        });
      });
  }

  function hasProfile(device, protocol) {
    return (device.profiles || []).some(function (p) { return p.protocol === protocol && !p.revoked_at; });
  }

  function profileUrl(panel, device, kind) {
    return base(panel.server) + "/devices/" + encodeURIComponent(device.id) + "/" + kind;
  }

  function downloadDevice(panel, device, btn, kind) {
    btn.disabled = true;
    net.api("GET", profileUrl(panel, device, kind), undefined, 30000)
      .then(function (r) {
        var name = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
        return r.blob().then(function (blob) { net.save(blob, name ? name[1] : "profile." + kind); });
      }).then(function () {
        net.toast(t("toast.device_download_ok", { name: device.name }), false);
      }, function (err) {
        net.failed(err, "toast.download_failed", function () { downloadDevice(panel, device, btn, kind); });
      }).then(function () { btn.disabled = false; });
  }

  /* The WireGuard .conf as a QR code under the device, for the phone apps' scanner; shown on
   * demand only (it holds the device's key) and dropped when hidden. */
  function toggleQr(panel, device, btn, li) {
    var shown = li.querySelector(".wg-qr");
    if (shown) {
      shown.remove();
      btn.textContent = t("devices.show_qr");
      btn.setAttribute("aria-label", t("devices.show_qr_named", { name: device.name }));
      btn.setAttribute("aria-expanded", "false");
      return;
    }
    btn.disabled = true;
    net.api("GET", profileUrl(panel, device, "qr"), undefined, 30000)
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var svg = new DOMParser().parseFromString(text, "image/svg+xml").documentElement;
        if (svg.nodeName !== "svg") { throw new Error("not an SVG"); }
        var box = el("div", "wg-qr");
        var id = "qr-" + panel.el.id + "-" + device.id;   // one id per code on the page
        svg.id = id;
        ["title", "desc"].forEach(function (tag) {
          var part = svg.querySelector(tag);
          if (part) { part.id = id + "-" + tag; }
        });
        svg.setAttribute("aria-labelledby", id + "-title " + id + "-desc");
        box.appendChild(document.importNode(svg, true));
        box.appendChild(el("p", "muted", t("devices.qr_help")));
        li.appendChild(box);
        btn.textContent = t("devices.hide_qr");
        btn.setAttribute("aria-label", t("devices.hide_qr_named", { name: device.name }));
        btn.setAttribute("aria-expanded", "true");
      }, function (err) {
        net.failed(err, "toast.download_failed", function () { toggleQr(panel, device, btn, li); });
      }).then(function () { btn.disabled = false; });
  }

  /* How to use the .conf, and after a rebuild the one thing a WireGuard app needs: its tunnel
   * switched off and on, because it looked the server's name up when the tunnel started. */
  function renderWireGuardGuide(panel, wireguard) {
    var guide = q(panel, ".wg-guide"), rebuilt = q(panel, ".wg-rebuilt");
    guide.hidden = !wireguard;
    var last = panel.server.last_rebuilt ? new Date(panel.server.last_rebuilt) : null;
    var recent = last && Date.now() - last.getTime() < REBUILT_NOTICE_MS;
    rebuilt.hidden = !(wireguard && recent);
    if (!rebuilt.hidden) { rebuilt.textContent = t("devices.wg_rebuilt", { date: formatDate(panel.server.last_rebuilt) }); }
  }

  var REBUILT_NOTICE_MS = 7 * 24 * 3600 * 1000;

  // --- SSH access, the root password, restart -----------------------------------------------------

  function loadAccess(panel) {
    return net.apiJson("GET", base(panel.server) + "/ssh").then(function (data) {
      panel.access = data;
      renderAccess(panel, data);
    }, function (err) { net.failed(err, "toast.access_failed", function () { loadAccess(panel); }); });
  }

  function renderAccess(panel, data) {
    q(panel, ".password-block").hidden = !data.password_available;
    q(panel, ".key-only-note").hidden = !data.key_only;
    q(panel, ".pending-note").hidden = !data.pending;
    var box = q(panel, ".key-only");
    box.checked = data.key_only;
    box.disabled = !data.key_only && data.keys.length === 0;
    var list = q(panel, ".key-list");
    list.textContent = "";
    if (!data.keys.length) { list.appendChild(el("li", "muted", t("access.no_keys"))); }
    data.keys.forEach(function (k) {
      var li = el("li", "key");
      var what = el("div", "key-what");
      var label = k.comment || k.key_type;
      what.appendChild(el("strong", null, label));
      what.appendChild(el("code", "fingerprint", k.fingerprint));
      what.appendChild(el("span", "muted", t("access.key_kind", { type: k.key_type, bits: k.bits })));
      li.appendChild(what);
      li.appendChild(button(t("access.remove_key"), "remove-key", t("access.remove_key_named", { name: label }),
        function (b) { removeKey(panel, k, label, b); }));
      list.appendChild(li);
    });
    q(panel, ".key-add").disabled = data.keys.length >= data.max_keys;
  }

  function addKey(panel) {
    var text = q(panel, ".key-text"), add = q(panel, ".key-add");
    if (!text.value.trim()) { text.focus(); return; }
    add.disabled = true;
    net.apiJson("POST", base(panel.server) + "/ssh/keys", { public_key: text.value }).then(function (k) {
      text.value = "";
      add.disabled = false;
      net.toast(t("toast.key_added", { name: k.comment || k.fingerprint }), false);
      loadAccess(panel);
      loadHistory(panel, true);
    }, function (err) {
      add.disabled = false;
      net.failed(err, "toast.key_add_failed", function () { addKey(panel); });
    });
  }

  function removeKey(panel, key, label, btn) {
    btn.disabled = true;
    net.apiJson("DELETE", base(panel.server) + "/ssh/keys/" + key.id).then(function (data) {
      panel.access = data;
      renderAccess(panel, data);
      net.toast(t("toast.key_removed", { name: label }), false);
      loadHistory(panel, true);
    }, function (err) {
      btn.disabled = false;
      net.failed(err, "toast.key_remove_failed", function () { removeKey(panel, key, label, btn); });
    });
  }

  function setKeyOnly(panel, box) {
    var wanted = box.checked;
    box.disabled = true;
    net.apiJson("PUT", base(panel.server) + "/ssh/key-only", { key_only: wanted }).then(function (data) {
      panel.access = data;
      renderAccess(panel, data);
      net.toast(t(wanted ? "toast.key_only_on" : "toast.key_only_off"), false);
      loadHistory(panel, true);
    }, function (err) {
      box.checked = !wanted;
      box.disabled = false;
      net.failed(err, "toast.key_only_failed", function () { box.checked = wanted; setKeyOnly(panel, box); });
    });
  }

  function showPassword(panel, btn) {
    btn.disabled = true;
    net.apiJson("POST", base(panel.server) + "/root-password").then(function (data) {
      var dialog = document.getElementById("password-dialog");
      document.getElementById("password-title").textContent = t("access.password_title",
        { name: panel.server.short_name || panel.server.name });
      document.getElementById("password-value").textContent = data.password;
      dialog.showModal();
      document.getElementById("password-close").focus();
      loadHistory(panel, true);
    }, function (err) {
      net.failed(err, "toast.password_failed", function () { showPassword(panel, btn); });
    }).then(function () { btn.disabled = false; });
  }

  function restart(panel, btn) {
    var short = panel.server.short_name || panel.server.name;
    net.confirm(t("restart.title", { name: short }), t("restart.text"), t("restart.confirm")).then(function (yes) {
      if (!yes) { btn.focus(); return; }
      btn.disabled = true;
      net.apiJson("POST", base(panel.server) + "/restart").then(function () {
        net.toast(t("toast.restart_ok", { name: short }), false);
        loadHistory(panel, true);
      }, function (err) {
        btn.disabled = false;
        net.failed(err, "toast.restart_failed", function () { restart(panel, btn); });
      });
    });
  }

  // --- usage -------------------------------------------------------------------------------------

  function loadUsage(panel) {
    return net.apiJson("GET", base(panel.server) + "/usage").then(function (usage) {
      q(panel, ".usage-summary").textContent = D.chart.render(q(panel, ".chart"), usage);
      var body = q(panel, ".usage-table tbody");
      body.textContent = "";
      usage.days.forEach(function (d) {
        var tr = el("tr");
        tr.appendChild(el("th", null, formatDay(d.day)));
        tr.lastChild.scope = "row";
        tr.appendChild(el("td", null, formatBytes(d.bytes)));
        body.appendChild(tr);
      });
    }, function (err) { net.failed(err, "toast.usage_failed", function () { loadUsage(panel); }); });
  }

  // --- history -----------------------------------------------------------------------------------

  function historyText(item) {
    var params = {};
    Object.keys(item.params || {}).forEach(function (k) {
      var v = item.params[k];
      params[k] = PLACES.indexOf(k) !== -1 ? cityName(v) : (k === "schedule" ? t("schedule." + v).toLowerCase() : v);
    });
    var text = tOr("history." + item.kind, item.text, params);
    return item.by === "support" ? t("history.by_support", { text: text }) : text;
  }

  function loadHistory(panel, fresh) {
    var path = base(panel.server) + "/history" + (!fresh && panel.historyNext ? "?before=" + panel.historyNext : "");
    var more = q(panel, ".history-more");
    more.disabled = true;
    return net.apiJson("GET", path).then(function (data) {
      var list = q(panel, ".history-list");
      if (fresh) { list.textContent = ""; }
      data.items.forEach(function (item) {
        var li = el("li", "history-item");
        li.appendChild(el("time", null, formatDate(item.at)));
        li.lastChild.setAttribute("datetime", item.at);
        li.appendChild(el("span", null, historyText(item)));
        list.appendChild(li);
      });
      if (!list.children.length) { list.appendChild(el("li", "muted", t("history.empty"))); }
      panel.historyNext = data.next_before;
      more.hidden = !data.next_before;
      more.disabled = false;
    }, function (err) {
      more.disabled = false;
      net.failed(err, "toast.history_failed", function () { loadHistory(panel, fresh); });
    });
  }

  // --- all panels --------------------------------------------------------------------------------

  function sync(container, servers, keys, plans, previous) {
    Object.keys(panels).forEach(function (key) {
      if (keys.indexOf(key) === -1) { panels[key].el.remove(); delete panels[key]; }
    });
    servers.forEach(function (s, i) {
      if (!s.name) { return; }
      var fresh = !panels[keys[i]];
      var panel = ensure(container, keys[i], s);
      render(panel, s, plans[s.name]);
      if (!fresh) { poll(panel, s, previous[s.name]); }
    });
  }

  D.panels = { sync: sync, historyText: historyText };
}(window.ProvisionerDashboard = window.ProvisionerDashboard || {}));
