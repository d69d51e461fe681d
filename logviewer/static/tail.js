// Live tail of a log page: polls /api/logs/tail/<name>?after=<byte> once a second and appends
// the new lines. No framework, no inline script (the page's CSP forbids it).
(function () {
  "use strict";
  var pre = document.getElementById("log");
  var box = document.getElementById("live");
  var status = document.getElementById("tail-status");
  if (!pre || !box) { if (pre) { pre.scrollTop = pre.scrollHeight; } return; }
  var url = pre.getAttribute("data-tail-url");
  var end = parseInt(pre.getAttribute("data-end"), 10) || 0;
  var inode = pre.getAttribute("data-inode") || "";
  var MAX_LINES = 5000;
  var timer = null, busy = false;
  // "changed <time> (<age> ago)" in the page's header, kept current while the tail runs.
  var changed = document.getElementById("changed");
  var mtime = changed ? parseFloat(changed.getAttribute("data-mtime")) : NaN;
  var ERR = /( E |ERROR|FATAL|CRIT|Traceback|\[error\]|\[critical\])/;
  var WARN = /( W |WARN|\[warning\])/;

  function classify(line) {
    var head = line.slice(0, 200);
    return ERR.test(head) ? "lv-err" : (WARN.test(head) ? "lv-warn" : "");
  }

  // The same spans as the server's `duration` filter: 12 s, 5 min, 2.5 h, 3.0 d.
  function duration(seconds) {
    var age = Math.max(0, seconds);
    if (age < 60) { return Math.floor(age) + " s"; }
    if (age < 3600) { return Math.floor(age / 60) + " min"; }
    if (age < 86400) { return (age / 3600).toFixed(1) + " h"; }
    return (age / 86400).toFixed(1) + " d";
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function showChanged() {
    if (!changed || isNaN(mtime)) { return; }
    var at = new Date(mtime * 1000);
    var time = changed.querySelector("time"), age = changed.querySelector("span");
    if (time) {
      time.textContent = at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) + " " +
        pad(at.getHours()) + ":" + pad(at.getMinutes()) + ":" + pad(at.getSeconds());
      time.setAttribute("datetime", at.toISOString());
    }
    if (age) { age.textContent = "(" + duration(Date.now() / 1000 - mtime) + " ago)"; }
  }

  function append(text) {
    var atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    var lines = text.split("\n");
    if (lines.length && lines[lines.length - 1] === "") { lines.pop(); }
    var frag = document.createDocumentFragment();
    lines.forEach(function (line) {
      var span = document.createElement("span");
      span.textContent = line + "\n";
      span.className = (classify(line) + " fresh").trim();
      frag.appendChild(span);
      setTimeout(function () { span.classList.remove("fresh"); }, 2500);
    });
    pre.appendChild(frag);
    while (pre.childNodes.length > MAX_LINES) { pre.removeChild(pre.firstChild); }
    var empty = document.getElementById("empty");
    if (empty) { empty.remove(); }
    if (atBottom) { pre.scrollTop = pre.scrollHeight; }
  }

  function poll() {
    if (busy) { return; }
    busy = true;
    fetch(url + "?after=" + end + "&inode=" + inode, {credentials: "same-origin", cache: "no-store"})
      .then(function (resp) {
        if (resp.status === 401) { throw new Error("logged out: reload the page to log in again"); }
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.json();
      })
      .then(function (data) {
        if (data.reset) { append("--- the log was truncated or rotated; following the new file ---\n"); }
        if (data.text) { append(data.text); }
        end = data.end;
        inode = String(data.inode);
        if (typeof data.mtime === "number") { mtime = data.mtime; }
        showChanged();
        status.textContent = "following · " + new Date().toLocaleTimeString();
      })
      .catch(function (err) { status.textContent = "tail stopped: " + err.message; stop(); box.checked = false; })
      .finally(function () { busy = false; });
  }

  function start() { if (!timer) { poll(); timer = setInterval(poll, 1000); } }
  function stop() { if (timer) { clearInterval(timer); timer = null; } }

  box.addEventListener("change", function () {
    if (box.checked) { start(); } else { stop(); status.textContent = "paused"; }
  });
  pre.scrollTop = pre.scrollHeight;
  if (box.checked) { start(); }
})();
