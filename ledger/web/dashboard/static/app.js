// Promotion Ledger dashboard: progressive enhancement only (every page works without it).
// - the tier board and the approvals queue refresh themselves when the daemon's change feed
//   says something changed (the queue keeps what you were typing);
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

  // A region with data-live (an event stream) and data-fragment (its HTML): swapped for a
  // fresh copy of the fragment whenever the daemon's change feed says something changed.
  // ``query`` adds the fragment's query string; ``keep`` and ``restore`` carry what the person
  // was doing (a half-typed reason, the focus) across the swap.
  function live(region, options) {
    if (!region || !window.EventSource) return;
    var status = document.getElementById("live");
    var fragment = region.getAttribute("data-fragment");
    var loading = false;
    var again = false;

    function refresh() {
      if (loading) { again = true; return; }
      loading = true;
      var url = fragment + (options.query ? options.query() : "");
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected || !response.ok) throw new Error("status " + response.status);
          return response.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var kept = options.keep ? options.keep(region) : null;
          region.replaceChildren.apply(region, Array.prototype.slice.call(doc.body.childNodes));
          if (options.restore) options.restore(region, kept);
          region.setAttribute("data-version", String(Date.now()));
        })
        .catch(function () { if (status) status.textContent = "Live updates paused (reload the page)"; })
        .finally(function () {
          loading = false;
          if (again) { again = false; refresh(); }
        });
    }

    var events = new EventSource(region.getAttribute("data-live"));
    // Every event, the first too: the feed's version when the stream starts may already
    // include a change made after the page was rendered (so may one after a reconnect).
    events.addEventListener("changed", refresh);
    events.addEventListener("open", function () {
      if (status) { status.textContent = "Live"; status.classList.add("on"); }
    });
    events.addEventListener("error", function () {
      if (status) { status.textContent = "Reconnecting…"; status.classList.remove("on"); }
    });
  }

  function liveBoard() {
    var board = document.getElementById("board");
    if (!board) return;
    var box = document.getElementById("q");
    live(board, {
      query: function () { return "?q=" + encodeURIComponent(box ? box.value : ""); },
      // What was typed while the fragment was on its way narrows the fresh cards too.
      restore: function (region) { applyFilter(region, box ? box.value : ""); }
    });
    if (box) {
      box.addEventListener("input", function () { applyFilter(board, box.value); });
    }
  }

  // The text typed into the queue's forms and the focused field, by element id (ids name the
  // run, so they survive requests arriving or leaving around them).
  function keepTyping(region) {
    var values = {};
    region.querySelectorAll("input[id]:not([type=hidden]), textarea[id]").forEach(function (el) {
      if (el.value) values[el.id] = el.value;
    });
    var active = document.activeElement;
    var current = region.querySelector(".approval.current");
    return {
      values: values,
      focus: active && region.contains(active) && active.id ? active.id : null,
      current: current ? current.getAttribute("data-run") : null
    };
  }

  function restoreTyping(region, kept) {
    if (!kept) return;
    Object.keys(kept.values).forEach(function (id) {
      var el = document.getElementById(id);
      if (el && region.contains(el)) el.value = kept.values[id];
    });
    var items = Array.prototype.slice.call(region.querySelectorAll(".approval"));
    var current = items.filter(function (item) {
      return item.getAttribute("data-run") === kept.current;
    })[0] || items[0];
    if (current) current.classList.add("current");
    var focus = kept.focus ? document.getElementById(kept.focus) : null;
    if (focus && region.contains(focus)) focus.focus();
  }

  function approvalKeys() {
    var region = document.getElementById("approvals-live");
    if (!region) return;
    // Read the queue on every key: live updates replace its items.
    function items() { return Array.prototype.slice.call(region.querySelectorAll(".approval")); }
    function currentIndex(list) {
      for (var i = 0; i < list.length; i++) if (list[i].classList.contains("current")) return i;
      return 0;
    }
    function select(list, i) {
      if (!list.length) return;
      var index = Math.max(0, Math.min(list.length - 1, i));
      list.forEach(function (item, n) { item.classList.toggle("current", n === index); });
      list[index].focus();
      list[index].scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("keydown", function (event) {
      var target = event.target;
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (target && /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) return;
      var list = items();
      var index = currentIndex(list);
      var item = list[index];
      if (event.key === "j") { select(list, index + 1); event.preventDefault(); }
      else if (event.key === "k") { select(list, index - 1); event.preventDefault(); }
      else if (event.key === "a" && item) {
        var approve = item.querySelector("form.approve");
        if (approve) { approve.requestSubmit(); event.preventDefault(); }
      } else if (event.key === "r" && item) {
        var reason = item.querySelector("[data-key='r']");
        if (reason) { reason.focus(); event.preventDefault(); }
      }
    });
    var first = items()[0];
    if (first) first.classList.add("current");
    live(region, { keep: keepTyping, restore: restoreTyping });
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveBoard();
    approvalKeys();
  });
})();
