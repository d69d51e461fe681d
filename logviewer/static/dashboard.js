// The dashboard's charts: one SVG line chart per <figure data-chart>, from the JSON block the
// page carries (first paint) and then from /api/dashboard every sample interval. No library,
// nothing from another site (the CSP allows scripts from this origin only); colours and sizes
// go through SVG attributes and the CSSOM, which the CSP's style-src does not restrict.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var PALETTE = ["#0b5cad", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad", "#e67700",
                 "#5c940d", "#364fc7", "#a61e4d", "#495057", "#0ca678"];
  var MARKERS = {"sync": "#2f80ed", "load": "#1a7f37", "sync-failed": "#c0262d", "load-failed": "#c0262d"};
  var H = 150, LEFT = 46, RIGHT = 8, TOP = 8, BOTTOM = 20;
  var blob = document.getElementById("dashboard-data");
  if (!blob) { return; }
  var data = JSON.parse(blob.textContent);
  var colours = {};   // one colour per series name, the same in every chart

  function colour(name) {
    if (!(name in colours)) { colours[name] = PALETTE[Object.keys(colours).length % PALETTE.length]; }
    return colours[name];
  }

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function html(tag, cls, text, parent) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) { return 1; }
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * step >= value) { return steps[i] * step; }
    }
    return 10 * step;
  }

  function number(value) {
    if (value === null || value === undefined) { return "–"; }
    if (Math.abs(value) >= 1000) { return (value / 1000).toFixed(value >= 10000 ? 0 : 1) + "k"; }
    if (Math.abs(value) >= 100) { return value.toFixed(0); }
    if (Math.abs(value) >= 10) { return value.toFixed(1); }
    return value.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) { if (values[i] !== null) { return values[i]; } }
    return null;
  }

  function draw(figure, chart) {
    figure.textContent = "";
    var caption = html("figcaption", "", undefined, figure);
    html("span", "", chart.title, caption);
    html("span", "unit", chart.unit, caption);
    var times = data.times, since = data.since, until = data.until;
    var present = chart.series.filter(function (s) { return s.values.some(function (v) { return v !== null; }); });
    figure.setAttribute("data-series", String(present.length));
    if (!present.length) {
      html("div", "empty", times.length ? "no data in this range" : "waiting for samples", figure);
      return;
    }
    var max = 0;
    present.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > max) { max = v; } }); });
    max = niceMax(max);
    // The chart's own width in pixels, so that text and lines are never stretched.
    var W = Math.max(240, Math.round(figure.getBoundingClientRect().width) - 20);
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": chart.title}, figure);
    var x = function (t) { return LEFT + (W - LEFT - RIGHT) * (t - since) / Math.max(1, until - since); };
    var y = function (v) { return TOP + (H - TOP - BOTTOM) * (1 - v / max); };
    for (var i = 0; i <= 3; i++) {
      var value = max * i / 3;
      el("line", {x1: LEFT, x2: W - RIGHT, y1: y(value), y2: y(value), "class": "grid"}, svg);
      el("text", {x: LEFT - 4, y: y(value) + 3, "text-anchor": "end"}, svg).textContent = number(value);
    }
    for (var j = 0; j <= 4; j++) {
      var t = since + (until - since) * j / 4;
      el("text", {x: x(t), y: H - 5, "text-anchor": j === 0 ? "start" : j === 4 ? "end" : "middle"}, svg)
        .textContent = clock(t);
    }
    data.events.forEach(function (ev) {
      var line = el("line", {x1: x(ev.t), x2: x(ev.t), y1: TOP, y2: H - BOTTOM, "class": "marker",
                             stroke: MARKERS[ev.kind] || "#888"}, svg);
      el("title", {}, line).textContent = clock(ev.t) + " " + ev.text;
    });
    var legend = html("ul", "legend", undefined, figure);
    present.forEach(function (s) {
      var d = "", pen = false, points = 0, alone = [];
      var missing = function (k) { return k < 0 || k >= times.length || s.values[k] === null || s.values[k] === undefined; };
      for (var k = 0; k < times.length; k++) {
        var v = s.values[k];
        if (missing(k)) { pen = false; continue; }
        d += (pen ? "L" : "M") + x(times[k]).toFixed(1) + " " + y(v).toFixed(1);
        if (missing(k - 1) && missing(k + 1)) { alone.push(k); }   // a point no line reaches
        pen = true;
        points++;
      }
      var path = el("path", {d: d, "class": "line", stroke: colour(s.name)}, svg);
      el("title", {}, path).textContent = s.name;
      alone.forEach(function (k) {
        el("circle", {cx: x(times[k]), cy: y(s.values[k]), r: 2.5, fill: colour(s.name)}, svg);
      });
      var item = html("li", "", undefined, legend);
      item.setAttribute("data-series", s.name);
      item.setAttribute("data-points", String(points));
      var swatch = el("svg", {viewBox: "0 0 10 10"}, item);
      el("rect", {width: 10, height: 10, rx: 2, fill: colour(s.name)}, swatch);
      html("span", "", s.name, item);
      html("span", "now", number(lastValue(s.values)), item);
    });
    var cursor = el("line", {y1: TOP, y2: H - BOTTOM, "class": "cursor", visibility: "hidden"}, svg);
    svg.addEventListener("mousemove", function (event) {
      var box = svg.getBoundingClientRect();
      var t = since + (until - since) * ((event.clientX - box.left) * W / box.width - LEFT) / (W - LEFT - RIGHT);
      var best = -1;
      times.forEach(function (tick, n) { if (best < 0 || Math.abs(tick - t) < Math.abs(times[best] - t)) { best = n; } });
      if (best < 0) { return; }
      cursor.setAttribute("x1", x(times[best])); cursor.setAttribute("x2", x(times[best]));
      cursor.setAttribute("visibility", "visible");
      var items = legend.querySelectorAll("li");
      present.forEach(function (s, n) { items[n].lastChild.textContent = number(s.values[best]); });
      legend.title = clock(times[best]);
    });
    svg.addEventListener("mouseleave", function () {
      cursor.setAttribute("visibility", "hidden");
      var items = legend.querySelectorAll("li");
      present.forEach(function (s, n) { items[n].lastChild.textContent = number(lastValue(s.values)); });
    });
  }

  function render() {
    data.charts.forEach(function (chart) {
      var figure = document.querySelector('figure[data-chart="' + chart.id + '"]');
      if (figure) { draw(figure, chart); }
    });
    var updated = document.getElementById("updated");
    if (updated) { updated.textContent = "updated " + new Date(data.until * 1000).toLocaleTimeString(); }
    document.body.setAttribute("data-drawn", String(data.until));
  }

  function refresh() {
    fetch("/api/dashboard?minutes=" + data.minutes, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (fresh) { data = fresh; render(); })
      .catch(function () { /* the next interval tries again */ });
  }

  render();
  setInterval(refresh, Math.max(2, data.interval) * 1000);
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(render, 200);
  });
}());
