/* Provisioner dashboard: talking to the API, and telling the customer how it went.
 *
 * Every request carries the customer's token and gives up after a timeout (an API that hangs
 * must not leave a button disabled without a word): the customer then gets a message and a
 * "Try again" button. Toasts never hold HTML: text only. */
(function (D) {
  "use strict";

  var t = D.i18n.t, tOr = D.i18n.tOr;
  var TIMEOUT_MS = 15000;
  var net = { token: null, onExpired: function () {} };

  function ApiError(status, code, message, retryAfter) {
    this.status = status; this.code = code; this.message = message; this.retryAfter = retryAfter;
  }

  function api(method, path, body, timeoutMs) {
    var headers = { "Accept": "application/json" };
    if (net.token) { headers.Authorization = "Bearer " + net.token; }
    var controller = window.AbortController ? new AbortController() : null;
    var init = { method: method, headers: headers, cache: "no-store" };
    if (controller) { init.signal = controller.signal; }
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    var timedOut = false;
    var timer = setTimeout(function () { timedOut = true; if (controller) { controller.abort(); } },
      timeoutMs || TIMEOUT_MS);
    return fetch(path, init).then(function (r) {
      clearTimeout(timer);
      if (r.ok) { return r; }
      return r.json().catch(function () { return {}; }).then(function (data) {
        var err = (data && data.error) || {};
        throw new ApiError(r.status, err.code || "error", err.message || t("error.generic"),
          r.headers.get("Retry-After"));
      });
    }, function () {
      clearTimeout(timer);
      throw timedOut ? new ApiError(0, "timeout", t("error.timeout")) : new ApiError(0, "network", t("error.network"));
    });
  }

  function apiJson(method, path, body) {
    return api(method, path, body).then(function (r) { return r.json(); });
  }

  // The API's own sentence says more than a translation can (which key was refused and why).
  var DETAILED = ["invalid_key", "invalid_device_name", "device_exists"];

  function errorText(err) {
    if (!(err instanceof ApiError)) { return t("error.generic"); }
    if (err.code === "timeout" || err.code === "network") { return err.message; }
    if (DETAILED.indexOf(err.code) !== -1 && D.i18n.lang() === "en") { return err.message; }
    return tOr("error.code." + err.code, err.message, { seconds: err.retryAfter || "", minutes:
      err.retryAfter ? Math.max(1, Math.ceil(err.retryAfter / 60)) : "" });
  }

  function toast(message, isError, retry) {
    var box = document.getElementById(isError ? "alerts" : "toasts");
    var item = document.createElement("div");
    item.className = "toast" + (isError ? " toast-error" : " toast-ok");
    var text = document.createElement("span");
    text.textContent = message;
    item.appendChild(text);
    if (retry) {
      var again = document.createElement("button");
      again.type = "button";
      again.className = "toast-retry";
      again.textContent = t("toast.retry");
      again.addEventListener("click", function () { item.remove(); retry(); });
      item.appendChild(again);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", t("toast.dismiss"));
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { item.remove(); });
    item.appendChild(close);
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, isError ? 20000 : 6000);
  }

  /* A failed request: a 401 ends the session; anything else is said, with "Try again" when it
   * may help (the API did not answer, or it was busy). */
  function failed(err, what, retry) {
    if (err instanceof ApiError && err.status === 401) { net.onExpired(); return; }
    var transient = err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.status === 429);
    toast(t(what) + " " + errorText(err), true, transient ? retry : null);
  }

  /* The one confirmation dialog: resolves true when the customer confirms. */
  function confirm(title, text, ok) {
    var dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = ok;
    return new Promise(function (resolve) {
      var form = document.getElementById("confirm-form");
      var cancel = document.getElementById("confirm-cancel");
      var answered = false;
      function done(value) {
        if (answered) { return; }
        answered = true;
        form.removeEventListener("submit", onOk);
        cancel.removeEventListener("click", onCancel);
        dialog.removeEventListener("close", onCancel);
        if (dialog.open) { dialog.close(); }
        resolve(value);
      }
      function onOk(event) { event.preventDefault(); done(true); }
      function onCancel() { done(false); }
      form.addEventListener("submit", onOk);
      cancel.addEventListener("click", onCancel);
      dialog.addEventListener("close", onCancel);
      dialog.showModal();
      cancel.focus();
    });
  }

  /* A downloaded profile handed to the browser as a file (the bytes never touch the page). */
  function save(blob, filename) {
    var url = URL.createObjectURL(blob);
    var a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }

  net.ApiError = ApiError; net.api = api; net.apiJson = apiJson; net.errorText = errorText;
  net.toast = toast; net.failed = failed; net.confirm = confirm; net.save = save;
  D.net = net;
}(window.ProvisionerDashboard = window.ProvisionerDashboard || {}));
