// walhook console: the live page's Server-Sent Events. Everything else works without script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var status = document.getElementById("live-status");
  var list = document.getElementById("live");
  if (!status || !list || !window.EventSource) return;
  var MAX = 200; // entries kept on the page
  var source = new EventSource(status.getAttribute("data-src"));
  source.addEventListener("ready", function () {
    status.textContent = "Listening. New deliveries appear below.";
    status.setAttribute("data-state", "ready");
  });
  source.addEventListener("delivery", function (e) {
    var d = JSON.parse(e.data);
    var li = document.createElement("li");
    var meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = d.created + " · " + d.event + " · " + d.id;
    var pre = document.createElement("pre");
    pre.textContent = d.payload;
    li.appendChild(meta);
    li.appendChild(pre);
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX) list.removeChild(list.lastChild);
  });
  source.onerror = function () {
    status.textContent = "Disconnected; retrying…";
    status.setAttribute("data-state", "error");
  };
});
