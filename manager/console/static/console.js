// The console's own script (no inline script anywhere: the CSP forbids it).
// It keeps the live log at its end while the reader follows, and bounds the lines kept.
"use strict";
(function () {
  var MAX_LINES = 5000;
  function logBox() { return document.getElementById("log"); }
  function following() { var f = document.getElementById("follow"); return !f || f.checked; }
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var log = logBox();
    if (log && log.contains(ev.detail.target)) {
      log.dataset.atEnd = String(log.scrollHeight - log.scrollTop - log.clientHeight < 40);
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    var log = logBox();
    if (!log) { return; }
    // A long run keeps only the newest lines in the page; earlier ones stay one click away.
    var lines = log.querySelectorAll(".ln");
    var extra = lines.length - MAX_LINES;
    if (following() && log.dataset.atEnd !== "false") {
      for (var i = 0; i < extra; i++) { lines[i].remove(); }
    }
    if (following() && log.dataset.atEnd !== "false") { log.scrollTop = log.scrollHeight; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var log = logBox();
    if (log) { log.scrollTop = log.scrollHeight; }
  });
})();
