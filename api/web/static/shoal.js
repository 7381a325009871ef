// Follows a running run live: while the run's part of the page says "applying", fetch that
// part again every second and swap it in. Everything else works without this script (a
// <noscript> refresh does the same, coarser); it needs nothing but this server.
(function () {
  "use strict";
  var INTERVAL_MS = 1000;

  function follow() {
    var live = document.getElementById("run-live");
    if (!live || live.getAttribute("data-state") !== "applying") {
      return;
    }
    window.setTimeout(function () {
      fetch(live.getAttribute("data-live"), { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("HTTP " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          var holder = document.createElement("div");
          holder.innerHTML = html; // the server's own escaped template, not user input
          var next = holder.querySelector("#run-live");
          if (next) {
            live.replaceWith(next);
          }
          follow();
        })
        .catch(function () {
          window.setTimeout(follow, INTERVAL_MS * 3); // the server restarts: keep trying
        });
    }, INTERVAL_MS);
  }

  document.addEventListener("DOMContentLoaded", follow);
})();
