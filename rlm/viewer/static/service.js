/*
 * The pages of `rlm serve`: /ui (this tenant's runs) and /ui/runs/{id} (one run, live).
 *
 * The page holds no data of its own: it asks the JSON API with the tenant's key, which the person
 * enters once and which is kept in sessionStorage (this tab only). A run's events are read from
 * GET /v1/runs/{id}/events with fetch and a streaming body, since EventSource cannot send the
 * Authorization header; after a dropped connection the page asks again with Last-Event-ID. Every
 * string from the API goes in through textContent; the run itself is drawn by RLMRunView.
 */
(function (global) {
  "use strict";

  var KEY = "rlm-serve-key";
  var POLL_MS = 2000;
  var RETRY_MS = [500, 1000, 2000, 5000];
  var ACTIVE = {queued: 1, running: 1};
  var STATUSES = ["queued", "running", "final", "error", "cancelled", "interrupted", "rejected", "max_iterations",
                  "max_wall_s", "max_cost_usd", "max_tokens", "max_llm_calls", "max_tool_calls", "context_window",
                  "cell_timeout_s", "model_timeout_s"];

  // ---- small helpers: the run view's DOM helpers (view.js loads first; data goes in as text only) ---
  var h = global.RLMRunView.dom.h, add = global.RLMRunView.dom.add, clear = global.RLMRunView.dom.clear;
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function fmtS(s) {
    if (!isNum(s)) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  function fmtUsd(x) {
    if (!isNum(x)) return "–";
    if (x === 0) return "$0";
    if (x < 0.0001) return "<$0.0001";
    return "$" + x.toFixed(x < 1 ? 4 : 2);
  }
  function fmtInt(n) { return isNum(n) ? Math.round(n).toLocaleString("en-US") : "–"; }
  function fmtWhen(epoch) {
    if (!isNum(epoch)) return "–";
    var d = new Date(epoch * 1000), now = new Date();
    var time = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
    return d.toDateString() === now.toDateString() ? time : d.toLocaleDateString() + " " + time;
  }
  function oneLine(text, max) {
    var s = String(text === null || text === undefined ? "" : text).replace(/\s+/g, " ").trim();
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }
  function pillClass(status) {
    if (status === "final") return "pill ok";
    if (ACTIVE[status]) return "pill run";
    if (status === "error" || status === "interrupted" || status === "rejected") return "pill bad";
    return "pill warn";
  }
  function statusPill(status) {
    var p = h("span", pillClass(status), status);
    p.dataset.role = "status";
    return p;
  }
  // How long a run took, or has been going.
  function duration(run) {
    if (isNum(run.started_at)) return fmtS((isNum(run.finished_at) ? run.finished_at : Date.now() / 1000) - run.started_at);
    if (isNum(run.finished_at) && isNum(run.created_at)) return fmtS(run.finished_at - run.created_at);
    return run.status === "queued" ? "queued " + fmtS(Date.now() / 1000 - run.created_at) : "–";
  }

  // ---- the key and the API ------------------------------------------------------------------------

  function storedKey() {
    try { return global.sessionStorage.getItem(KEY); } catch (err) { return null; }
  }
  function storeKey(key) {
    try {
      if (key) global.sessionStorage.setItem(KEY, key); else global.sessionStorage.removeItem(KEY);
    } catch (err) { /* storage refused (private mode): the key lives as long as the page */ }
  }

  function ApiError(status, message) { this.status = status; this.message = message; }

  // A JSON API call with the key; 401/403 sign the person out with the server's reason.
  function api(path, options) {
    options = options || {};
    var headers = {"Authorization": "Bearer " + (state.key || "")};
    return global.fetch(path, {method: options.method || "GET", headers: headers, cache: "no-store"})
      .then(function (resp) {
        return resp.json().catch(function () { return {}; }).then(function (body) {
          if (resp.ok) return body;
          var message = body && body.error && body.error.message ? body.error.message : "HTTP " + resp.status;
          if (resp.status === 401 || resp.status === 403) signOut(message);
          throw new ApiError(resp.status, message);
        });
      });
  }

  // ---- the page frame and the sign-in form ----------------------------------------------------------

  var state = {key: storedKey(), timers: []};
  var root = document.getElementById("service-app");

  function later(fn, ms) { state.timers.push(setTimeout(fn, ms)); }
  function stopTimers() { state.timers.forEach(clearTimeout); state.timers = []; if (state.abort) state.abort.abort(); }

  function mark(value) { document.documentElement.dataset.state = value; }

  function frame() {
    clear(root);
    root.className = "rlm-view svc";
    var bar = h("header", "svc-bar"), home = h("a", "brand", "rlm serve");
    home.href = "/ui";
    var runs = h("a", "nav", "Runs");
    runs.href = "/ui";
    add(bar, home, runs, h("span", "spacer"));
    if (state.key) {
      var out = h("button", "btn", "Sign out");
      out.dataset.action = "sign-out";
      out.addEventListener("click", function () { signOut(null); });
      add(bar, out);
    }
    var main = h("div", "svc-main");
    add(root, bar, main);
    return main;
  }

  function signOut(reason) {
    stopTimers();
    state.key = null;
    storeKey(null);
    showSignIn(reason);
  }

  function showSignIn(reason) {
    var main = frame(), card = h("form", "card signin");
    card.setAttribute("autocomplete", "off");
    var input = h("input");
    input.type = "password";
    input.id = "api-key";
    input.name = "api-key";
    input.placeholder = "rlm_…";
    input.setAttribute("aria-label", "API key");
    var button = h("button", "btn primary", "Sign in");
    button.type = "submit";
    var error = h("div", "error");
    error.dataset.role = "sign-in-error";
    if (reason) error.textContent = reason;
    add(card, h("h1", null, "Sign in"),
        h("p", "meta", "Enter your tenant's API key. It is kept in this browser tab only (sessionStorage) and " +
          "sent with each request to this server."),
        add(h("label", null, "API key"), input), button, error);
    card.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var key = input.value.trim();
      if (!key) { error.textContent = "Enter a key."; return; }
      button.disabled = true;
      state.key = key;
      api("/v1/runs?limit=1").then(function () {
        storeKey(key);
        start();
      }, function (err) {
        state.key = null;
        button.disabled = false;
        if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) {
          error.textContent = "The server could not be reached: " + (err.message || err);
        }
      });
    });
    add(main, card);
    mark("signed-out");
    input.focus();
  }

  // ---- /ui: the runs ----------------------------------------------------------------------------

  function runsPage() {
    var params = new URLSearchParams(global.location.search);
    var limit = Math.max(1, Math.min(500, parseInt(params.get("limit"), 10) || 25));
    var filter = params.get("status") || "";
    var list = {runs: [], next: null, loaded: false};
    var main = frame(), card = h("section", "card runs-card"), head = h("div", "runs-head");
    var select = h("select");
    select.dataset.role = "status-filter";
    select.setAttribute("aria-label", "Show runs with status");
    add(select, option("", "all statuses"));
    STATUSES.forEach(function (s) { add(select, option(s, s)); });
    if (filter && STATUSES.indexOf(filter) < 0) add(select, option(filter, filter));
    select.value = filter;
    var body = h("div", "runs-body");
    add(head, h("h1", null, "Runs"), h("span", "spacer"), add(h("label", "filter", "Status "), select));
    add(card, head, body);
    add(main, card);

    function option(value, label) { var o = h("option", null, label); o.value = value; return o; }

    function query(cursor) {
      var q = "?limit=" + limit + (filter ? "&status=" + encodeURIComponent(filter) : "");
      return "/v1/runs" + q + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    }

    function draw() {
      clear(body);
      if (!list.runs.length) {
        add(body, h("div", "empty", list.loaded ? (filter ? "No " + filter + " runs." : "No runs yet.") : "Loading…"));
      } else {
        var table = h("table", "runs"), tr = h("tr");
        ["run", "status", "model", "started", "time", "cost", "tokens", "answer"].forEach(function (k, i) {
          add(tr, h("th", i >= 4 && i <= 6 ? "num" : null, k));
        });
        add(table, tr);
        list.runs.forEach(function (run) { add(table, row(run)); });
        add(body, table);
      }
      if (list.next) {
        var more = h("button", "btn", "Show older runs");
        more.dataset.action = "older";
        more.addEventListener("click", function () {
          more.disabled = true;
          api(query(list.next)).then(function (page) {
            list.runs = list.runs.concat(page.runs.filter(function (r) { return !known(r.id); }));
            list.next = page.next_cursor;
            draw();
          }, function () { more.disabled = false; });
        });
        add(body, h("div", "older"), more);
      }
    }

    function known(id) { return list.runs.some(function (r) { return r.id === id; }); }

    function row(run) {
      var tr = h("tr"), link = h("a", "run-link", run.id), result = run.result || {};
      tr.dataset.run = run.id;
      tr.dataset.status = run.status;
      link.href = "/ui/runs/" + encodeURIComponent(run.id);
      var answer = result.response !== undefined && result.response !== null ? result.response : result.message;
      add(tr, add(h("td"), link), add(h("td"), statusPill(run.status)),
          h("td", "meta", run.settings && run.settings.model ? run.settings.model : "–"),
          h("td", "meta", fmtWhen(run.started_at || run.created_at)), h("td", "num", duration(run)),
          h("td", "num", fmtUsd(result.cost_usd)), h("td", "num", fmtInt(result.tokens)),
          h("td", "answer-cell", oneLine(answer, 140)));
      return tr;
    }

    // The newest page again: rows change in place, new runs come on top.
    function refresh() {
      api(query(null)).then(function (page) {
        var fresh = [];
        page.runs.forEach(function (run) {
          var at = -1;
          for (var i = 0; i < list.runs.length; i++) if (list.runs[i].id === run.id) { at = i; break; }
          if (at >= 0) list.runs[at] = run; else fresh.push(run);
        });
        if (!list.loaded) list.next = page.next_cursor;
        list.runs = fresh.concat(list.runs);
        list.loaded = true;
        // Drawn again only when something changed (or a run is under way: its time goes on).
        var seen = JSON.stringify([list.runs, list.next]);
        if (seen !== list.drawn || list.runs.some(function (r) { return ACTIVE[r.status]; })) draw();
        list.drawn = seen;
        mark("ready");
        later(refresh, POLL_MS);
      }, function (err) {
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return;
        later(refresh, POLL_MS * 2);
      });
    }

    select.addEventListener("change", function () {
      var p = new URLSearchParams(global.location.search);
      if (select.value) p.set("status", select.value); else p.delete("status");
      global.history.replaceState(null, "", "/ui" + (p.toString() ? "?" + p.toString() : ""));
      stopTimers();
      runsPage();
    });
    draw();
    refresh();
  }

  // ---- /ui/runs/{id}: one run, live -------------------------------------------------------------

  function runPage(runId) {
    var main = frame(), card = h("section", "card run-card"), viewEl = h("div", "run-view");
    add(main, card, viewEl);

    function drawHead(run) {
      clear(card);
      var back = h("a", "back", "← All runs");
      back.href = "/ui";
      var result = run.result || {};
      var cancel = h("button", "btn danger", "Cancel run");
      cancel.dataset.action = "cancel";
      cancel.disabled = !ACTIVE[run.status];
      cancel.addEventListener("click", function () {
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
        api("/v1/runs/" + encodeURIComponent(runId) + "/cancel", {method: "POST"}).then(drawHead, function (err) {
          cancel.disabled = false;
          cancel.textContent = "Cancel run";
          add(card, h("div", "error", "Could not cancel: " + err.message));
        });
      });
      var facts = h("div", "facts");
      add(facts, fact("started", fmtWhen(run.started_at || run.created_at)), fact("time", duration(run)),
          fact("cost", fmtUsd(result.cost_usd)), fact("tokens", fmtInt(result.tokens)),
          fact("model", run.settings && run.settings.model ? run.settings.model : "–"));
      add(card, add(h("div", "run-title"), back, h("span", "run-id", run.id), statusPill(run.status),
                    h("span", "spacer"), cancel), facts);
    }

    function fact(k, v) { var f = h("span", "fact"); add(f, h("span", "k", k), h("b", null, v)); return f; }

    function notFound(message) {
      clear(card);
      var back = h("a", "back", "← All runs");
      back.href = "/ui";
      add(card, back, h("h1", null, "Run not found"),
          h("p", "meta", message || "No run with this id belongs to the key you signed in with."));
      card.dataset.role = "not-found";
      mark("not-found");
    }

    function reload() {
      return api("/v1/runs/" + encodeURIComponent(runId)).then(function (run) {
        drawHead(run);
        if (ACTIVE[run.status]) later(poll, POLL_MS);
        return run;
      });
    }

    // The header again while the run is under way (its time, then its cost once it has ended).
    function poll() {
      reload().catch(function (err) { if (!(err instanceof ApiError)) later(poll, POLL_MS * 2); });
    }

    reload().then(function (run) {
      var view = global.RLMRunView.create(viewEl, {prices: {}, live: !!ACTIVE[run.status]});
      global.rlmView = view;
      mark("ready");
      follow(runId, view, !ACTIVE[run.status]);
    }, function (err) {
      if (err instanceof ApiError && err.status === 404) notFound();
      else if (!(err instanceof ApiError && (err.status === 401 || err.status === 403))) notFound("The run could not be loaded: " + err.message);
    });
  }

  // Read the run's event stream into the view. A finished run's events are drawn in one go; a live
  // run's one by one. Reconnects with Last-Event-ID until the service says the run is over.
  function follow(runId, view, finished) {
    var last = 0, over = false, failures = 0, buffered = [];

    function dispatch(block) {
      var id = null, data = [];
      block.split("\n").forEach(function (line) {
        if (line.charAt(line.length - 1) === "\r") line = line.slice(0, -1);
        if (line.indexOf("id:") === 0) id = parseInt(line.slice(3).trim(), 10);
        else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (!data.length) return;  // a comment (keep-alive)
      if (isNum(id)) { if (id <= last) return; last = id; }
      var ev;
      try { ev = JSON.parse(data.join("\n")); } catch (err) { ev = {event: "unreadable", data: data.join("\n")}; }
      if (ev && ev.event === "status" && !ACTIVE[ev.status]) over = true;
      if (finished) buffered.push(ev); else view.addEvent(ev);
    }

    function once() {
      var headers = {"Authorization": "Bearer " + (state.key || "")};
      if (last) headers["Last-Event-ID"] = String(last);
      var abort = state.abort = new global.AbortController();
      return global.fetch("/v1/runs/" + encodeURIComponent(runId) + "/events",
                          {headers: headers, cache: "no-store", signal: abort.signal}).then(function (resp) {
        if (!resp.ok) throw new ApiError(resp.status, "HTTP " + resp.status);
        var reader = resp.body.getReader(), decoder = new TextDecoder(), buf = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) return;
            buf += decoder.decode(chunk.value, {stream: true});
            var at;
            while ((at = buf.indexOf("\n\n")) >= 0) {
              dispatch(buf.slice(0, at));
              buf = buf.slice(at + 2);
            }
            failures = 0;
            return pump();
          });
        }
        return pump();
      });
    }

    function loop() {
      once().then(function () {
        if (over) return done();
        later(loop, RETRY_MS[0]);  // the server closed the stream early (it restarted): ask again
      }, function (err) {
        if (err && err.name === "AbortError") return;
        if (err instanceof ApiError && (err.status === 401 || err.status === 403 || err.status === 404)) {
          if (err.status !== 404) signOut("Your key was refused while following the run.");
          return;
        }
        later(loop, RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)]);
      });
    }

    function done() {
      if (finished) view.render(buffered);
      document.documentElement.dataset.stream = "ended";
    }

    loop();
  }

  // ---- start ------------------------------------------------------------------------------------

  function start() {
    stopTimers();
    if (!state.key) return showSignIn(null);
    var page = document.body.dataset.page;
    if (page === "run") {
      var match = /^\/ui\/runs\/([^/]+)$/.exec(global.location.pathname);
      return runPage(match ? decodeURIComponent(match[1]) : "");
    }
    return runsPage();
  }

  start();
})(window);
