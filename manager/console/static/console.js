// The console's own script (no inline script anywhere: the CSP forbids it).
// It follows a task's live log through server-sent events (manager/console/follow.py),
// keeps the log at its end while the reader follows, and bounds the lines kept; and it keeps
// a list's rows live (an element with data-live: manager/console/stream.py).
"use strict";
(function () {
  var MAX_LINES = 5000;
  function logBox() { return document.getElementById("log"); }
  function following() { var f = document.getElementById("follow"); return !f || f.checked; }
  function atEnd(log) { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
  function settle(log, wasAtEnd) {
    // A long run keeps only the newest lines in the page; earlier ones stay one click away.
    if (!following() || !wasAtEnd) { return; }
    var lines = log.querySelectorAll(".ln");
    for (var i = 0; i < lines.length - MAX_LINES; i++) { lines[i].remove(); }
    log.scrollTop = log.scrollHeight;
  }
  function note(log, id, text) {
    var div = document.createElement("div");
    div.id = id;
    div.className = "log-end muted";
    div.textContent = text;  // text, never markup
    log.appendChild(div);
  }
  function stateChanged() { document.body.dispatchEvent(new CustomEvent("tether-state")); }

  function follow(log) {
    var source = new EventSource(log.dataset.follow);
    source.addEventListener("lines", function (ev) {
      var wasAtEnd = atEnd(log);
      // The server's markup, escaped by the template that draws the tail (log_lines.html).
      log.insertAdjacentHTML("beforeend", ev.data);
      settle(log, wasAtEnd);
    });
    source.addEventListener("state", stateChanged);
    source.addEventListener("end", function () {
      source.close();
      note(log, "log-end", "— end of log —");
      stateChanged();
    });
    source.addEventListener("refused", function (ev) {
      // The session ended (or may no longer read the task): the server closed the stream.
      source.close();
      var why = JSON.parse(ev.data);
      if (why.location) { window.location.assign(why.location); return; }
      note(log, "log-stopped", "— stopped: " + why.message + " —");
    });
    source.addEventListener("error", function () {
      // An answer that is not a stream (a refusal page): EventSource gives up by itself.
      if (source.readyState === EventSource.CLOSED) { note(log, "log-stopped", "— disconnected —"); }
    });
  }

  function live(rows) {
    // The rows come drawn and escaped by the page's own template (task_rows.html,
    // delegate_rows.html); without this script the page is simply as it was loaded.
    var source = new EventSource(rows.dataset.live);
    source.addEventListener("rows", function (ev) { rows.innerHTML = ev.data; });
    source.addEventListener("refused", function (ev) {
      source.close();
      var why = JSON.parse(ev.data);
      if (why.location) { window.location.assign(why.location); return; }
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 99;
      td.className = "muted";
      td.id = "live-stopped";
      td.textContent = "— not updated any more: " + why.message + " —";  // text, never markup
      tr.appendChild(td);
      rows.appendChild(tr);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var lists = document.querySelectorAll("[data-live]");
    for (var i = 0; i < lists.length; i++) { live(lists[i]); }
    var log = logBox();
    if (!log) { return; }
    log.scrollTop = log.scrollHeight;
    if (log.dataset.follow) { follow(log); }
  });
})();
