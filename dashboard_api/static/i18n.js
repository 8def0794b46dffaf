/* Provisioner dashboard: strings and formatting. Every visible string comes from
 * static/i18n/<lang>.json, chosen from navigator.languages with English as the fallback. */
(function (D) {
  "use strict";

  var state = { lang: "en", strings: {}, fallback: {} };

  function t(key, vars) {
    var text = state.strings[key];
    if (text === undefined) { text = state.fallback[key]; }
    if (text === undefined) { return key; }
    return text.replace(/\{(\w+)\}/g, function (m, name) {
      return vars && vars[name] !== undefined && vars[name] !== null ? String(vars[name]) : m;
    });
  }

  function tOr(key, fallback, vars) {
    return (state.strings[key] !== undefined || state.fallback[key] !== undefined) ? t(key, vars) : fallback;
  }

  function pickLanguage(available) {
    var wanted = (navigator.languages && navigator.languages.length) ? navigator.languages : [navigator.language || "en"];
    for (var i = 0; i < wanted.length; i++) {
      var base = String(wanted[i] || "").toLowerCase().split("-")[0];
      if (available.indexOf(base) !== -1) { return base; }
    }
    return "en";
  }

  function loadStrings(lang) {
    return fetch("/static/i18n/" + lang + ".json", { cache: "no-cache" }).then(function (r) {
      if (!r.ok) { throw new Error("i18n " + lang); }
      return r.json();
    });
  }

  function applyStrings(root) {
    if (!root) { document.documentElement.lang = state.lang; }
    (root || document).querySelectorAll("[data-i18n]").forEach(function (el) {
      el.textContent = t(el.getAttribute("data-i18n"));
    });
  }

  // --- formatting -------------------------------------------------------------------------------

  function formatBytes(n) {
    var units = ["B", "KB", "MB", "GB", "TB", "PB"];
    var value = Number(n) || 0;
    var i = 0;
    while (Math.abs(value) >= 1000 && i < units.length - 1) { value /= 1000; i++; }
    var digits = i === 0 ? 0 : (value < 10 ? 1 : 0);
    var num = new Intl.NumberFormat(state.lang, { maximumFractionDigits: digits }).format(value);
    return t("unit.pattern", { value: num, unit: t("unit." + units[i]) });
  }

  function formatDate(iso, timeZone) {
    if (!iso) { return t("value.never"); }
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return t("value.unknown"); }
    var options = { dateStyle: "medium", timeStyle: "short" };
    if (timeZone) { options.timeZone = timeZone; }
    try {
      return new Intl.DateTimeFormat(state.lang, options).format(d);
    } catch (e) {  // a zone this browser does not know: the browser's own
      return new Intl.DateTimeFormat(state.lang, { dateStyle: "medium", timeStyle: "short" }).format(d);
    }
  }

  function formatDay(iso, style) {  // a date without time ("2025-03-10" is that calendar day, not UTC midnight)
    if (!iso) { return t("value.unknown"); }
    var parts = String(iso).slice(0, 10).split("-");
    var d = new Date(Date.UTC(+parts[0], +parts[1] - 1, +parts[2]));
    if (isNaN(d.getTime())) { return t("value.unknown"); }
    var options = style === "short" ? { day: "numeric", month: "short" } : { dateStyle: "long" };
    options.timeZone = "UTC";
    return new Intl.DateTimeFormat(state.lang, options).format(d);
  }

  function zoneName(timeZone) {  // "America/New_York" -> "New York"
    var last = String(timeZone || "").split("/").pop() || "";
    return tOr("zone." + timeZone, last.replace(/_/g, " "));
  }

  function cityName(id, fallback) {
    if (!id) { return t("value.unknown"); }
    if (id === "random") { return t("location.random"); }
    return tOr("city." + id, fallback || id.toUpperCase());
  }

  function load(available) {
    var lang = pickLanguage(available);
    var english = loadStrings("en");
    var chosen = lang === "en" ? english : loadStrings(lang).catch(function () { lang = "en"; return english; });
    return Promise.all([english, chosen]).then(function (loaded) {
      state.fallback = loaded[0];
      state.strings = loaded[1];
      state.lang = lang;
      return lang;
    });
  }

  D.i18n = {
    load: load, t: t, tOr: tOr, apply: applyStrings, formatBytes: formatBytes, formatDate: formatDate,
    formatDay: formatDay, zoneName: zoneName, cityName: cityName, lang: function () { return state.lang; }
  };
}(window.ProvisionerDashboard = window.ProvisionerDashboard || {}));
