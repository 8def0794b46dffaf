/* Sizes the dashboard iframe to its content. The page inside posts only its height; the
 * message is accepted only from the API's own origin (data-origin on the iframe). */
(function () {
  "use strict";
  window.addEventListener("message", function (event) {
    var data = event.data;
    if (!data || data.type !== "provisioner-dashboard:height" || typeof data.height !== "number") { return; }
    document.querySelectorAll("iframe.provisioner-dashboard").forEach(function (frame) {
      if (frame.getAttribute("data-origin") === event.origin && frame.contentWindow === event.source) {
        frame.style.height = Math.max(320, Math.min(Math.ceil(data.height) + 24, 20000)) + "px";
      }
    });
  });
}());
