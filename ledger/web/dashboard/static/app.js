// Promotion Ledger dashboard: progressive enhancement only (every page works without it).
// - the tier board refreshes itself when the daemon's change feed says something changed;
// - the filter box narrows the board as you type;
// - the approvals queue has keyboard shortcuts: j/k move, a approves, r goes to the reason.
"use strict";

(function () {
  function applyFilter(board, text) {
    var needle = (text || "").trim().toLowerCase();
    board.querySelectorAll(".card").forEach(function (card) {
      var hay = card.getAttribute("data-search") || "";
      card.hidden = needle !== "" && hay.indexOf(needle) === -1;
    });
  }

  function liveBoard() {
    var board = document.getElementById("board");
    if (!board || !window.EventSource) return;
    var live = document.getElementById("live");
    var box = document.getElementById("q");
    var fragment = board.getAttribute("data-fragment");
    var first = true;
    var loading = false;
    var again = false;

    function refresh() {
      if (loading) { again = true; return; }
      loading = true;
      var url = fragment + "?q=" + encodeURIComponent(box ? box.value : "");
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected || !response.ok) throw new Error("status " + response.status);
          return response.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          board.replaceChildren.apply(board, Array.prototype.slice.call(doc.body.childNodes));
          board.setAttribute("data-version", String(Date.now()));
        })
        .catch(function () { if (live) live.textContent = "Live updates paused (reload the page)"; })
        .finally(function () {
          loading = false;
          if (again) { again = false; refresh(); }
        });
    }

    var events = new EventSource(board.getAttribute("data-live"));
    events.addEventListener("changed", function () {
      if (first) { first = false; return; }  // the first event is the state the page shows
      refresh();
    });
    events.addEventListener("open", function () {
      if (live) { live.textContent = "Live"; live.classList.add("on"); }
    });
    events.addEventListener("error", function () {
      if (live) { live.textContent = "Reconnecting…"; live.classList.remove("on"); }
      first = false;  // after a reconnect, refresh on the first event: we may have missed one
    });
    if (box) {
      box.addEventListener("input", function () { applyFilter(board, box.value); });
    }
  }

  function approvalKeys() {
    var list = document.getElementById("approvals");
    if (!list) return;
    var items = Array.prototype.slice.call(list.querySelectorAll(".approval"));
    var index = 0;
    function select(i) {
      if (!items.length) return;
      index = Math.max(0, Math.min(items.length - 1, i));
      items.forEach(function (item, n) { item.classList.toggle("current", n === index); });
      items[index].focus();
      items[index].scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("keydown", function (event) {
      var target = event.target;
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (target && /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) return;
      var item = items[index];
      if (event.key === "j") { select(index + 1); event.preventDefault(); }
      else if (event.key === "k") { select(index - 1); event.preventDefault(); }
      else if (event.key === "a" && item) {
        var approve = item.querySelector("form.approve");
        if (approve) { approve.requestSubmit(); event.preventDefault(); }
      } else if (event.key === "r" && item) {
        var reason = item.querySelector("[data-key='r']");
        if (reason) { reason.focus(); event.preventDefault(); }
      }
    });
    if (items.length) items[0].classList.add("current");
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveBoard();
    approvalKeys();
  });
})();
