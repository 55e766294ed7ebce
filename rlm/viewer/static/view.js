/*
 * The run view: one RLM run, drawn from its stream of run events.
 *
 *   const view = RLMRunView.create(element, {prices: {"model": [usdPerMInput, usdPerMOutput]}});
 *   view.render(events);   // a whole run log at once (replaces what is shown)
 *   view.addEvent(event);  // one more event as it happens (a live page fed by Server-Sent Events)
 *
 * Everything that comes from the run (model replies, cell output, prompts, answers) is data: it reaches
 * the page only through textContent, setAttribute and canvas fillText, never as markup.
 * Large runs stay fast because what is hidden is not built: a collapsed list of sub-calls is a count
 * until it is opened (then it is built a page at a time), and the timeline is a single canvas.
 * Unknown event kinds are shown as a key/value row; a malformed event is shown, never thrown.
 */
(function (global) {
  "use strict";

  var SUB_PAGE = 200;          // sub-call rows built per click on "show more"
  var SUBS_OPEN_UP_TO = 8;     // a cell's sub-call list starts open when it has at most this many
  var CHILDREN_OPEN_UP_TO = 12; // child RLMs start open while the run has at most this many RLMs
  var CLIP_LINES = 24;         // long texts show this many lines until expanded
  var CLIP_CHARS = 2400;
  var SEARCH_MARKS_MAX = 3000;
  var TL_MAX_LANES = 400;
  var COLORS = {model: "#3b82f6", cell: "#16a34a", failed: "#dc2626", sub: "#a78bfa", subFailed: "#f87171",
                tool: "#14b8a6", boot: "#94a3b8", upload: "#cbd5e1", queue: "#f59e0b", span: "#eef1f5",
                plain: "#8b5cf6", mark: "#111827", axis: "#8b95a3", grid: "#eef0f3", label: "#1f2328",
                muted: "#5f6b7a"};

  // ---- DOM helpers: data goes in as text only ---------------------------------------------------

  function h(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var kid = arguments[i];
      if (kid === null || kid === undefined || kid === false) continue;
      parent.appendChild(typeof kid === "string" ? document.createTextNode(kid) : kid);
    }
    return parent;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function str(v) { return v === null || v === undefined ? "" : (typeof v === "string" ? v : JSON.stringify(v)); }
  function isNum(v) { return typeof v === "number" && isFinite(v); }

  // ---- formatting ---------------------------------------------------------------------------------

  function fmtInt(n) { return isNum(n) ? Math.round(n).toLocaleString("en-US") : "–"; }
  function fmtS(s) {
    if (!isNum(s)) return "–";
    if (s < 0.001) return "<1 ms";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var m = Math.floor(s / 60);
    return m + " min " + Math.round(s - 60 * m) + " s";
  }
  function fmtUsd(x) {
    if (!isNum(x)) return "–";
    if (x === 0) return "$0";
    if (x < 0.0001) return "<$0.0001";
    return "$" + x.toFixed(x < 1 ? 4 : 2);
  }
  function plural(n, one, many) { return fmtInt(n) + " " + (n === 1 ? one : (many || one + "s")); }
  function oneLine(text, max) {
    var s = str(text).replace(/\s+/g, " ").trim();
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }
  function statusClass(status) {
    if (status === "ok" || status === "final") return "ok";
    if (status === "running" || status === "queued") return "run";
    if (status === "error" || status === "oom" || status === "sandbox_lost" || status === "timeout" ||
        status === "kernel_restarted") return "bad";
    return "warn";
  }

  // ---- Python highlighting: a tokenizer whose tokens become text nodes in spans -------------------

  var PY_KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else " +
    "except finally for from global if import in is lambda nonlocal not or pass raise return try while with " +
    "yield match case").split(" "));
  var PY_BUILTINS = new Set(("print len range str int float bool list dict set tuple sorted enumerate zip map " +
    "filter sum min max any all isinstance open type repr abs round reversed super object self Exception " +
    "ValueError KeyError TypeError IndexError RuntimeError context llm_query llm_query_batched rlm_query " +
    "rlm_query_batched FINAL FINAL_VAR SHOW_VARS answer LLMError").split(" "));
  // comment | string (optional prefix; triple, or single-line possibly unterminated) | number | name | other
  var PY_TOKEN = new RegExp(
    "(#[^\\n]*)" +
    "|((?:[rRbBuUfF]{1,2})?(?:\"\"\"[\\s\\S]*?(?:\"\"\"|$)|'''[\\s\\S]*?(?:'''|$)|\"(?:\\\\.|[^\"\\\\\\n])*\"?|'(?:\\\\.|[^'\\\\\\n])*'?))" +
    "|(\\b0[xXoObB][0-9a-fA-F_]+\\b|\\b\\d[\\d_]*\\.?\\d*(?:[eE][+-]?\\d+)?j?\\b|\\.\\d+\\b)" +
    "|([A-Za-z_][A-Za-z0-9_]*)" +
    "|([^#'\"A-Za-z0-9_.]+|[\\s\\S])", "y");

  function highlightPython(code) {
    var frag = document.createDocumentFragment();
    if (code.length > 60000) { frag.appendChild(document.createTextNode(code)); return frag; }
    var plain = "", prev = "", m;
    function flush() { if (plain) { frag.appendChild(document.createTextNode(plain)); plain = ""; } }
    function span(cls, text) { flush(); frag.appendChild(h("span", cls, text)); }
    PY_TOKEN.lastIndex = 0;
    while (PY_TOKEN.lastIndex < code.length && (m = PY_TOKEN.exec(code)) !== null) {
      if (m[1] !== undefined) { span("tk-com", m[1]); prev = ""; }
      else if (m[2] !== undefined) { span("tk-str", m[2]); prev = ""; }
      else if (m[3] !== undefined) { span("tk-num", m[3]); prev = ""; }
      else if (m[4] !== undefined) {
        var w = m[4];
        if (PY_KEYWORDS.has(w)) span("tk-kw", w);
        else if (prev === "def" || prev === "class") span("tk-fn", w);
        else if (PY_BUILTINS.has(w)) span("tk-bi", w);
        else plain += w;
        prev = w;
      } else {
        plain += m[5];
        if (m[5].trim()) prev = "";
      }
    }
    flush();
    return frag;
  }

  // ---- a reply split as the controller splits it: prose and fenced blocks (rlm/parsing.py) ------

  var RUNNABLE = new Set(["repl", "python", "py", "python3"]);
  var FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})\s*([\w+-]*).*$/;

  function splitReply(text) {
    var lines = str(text).split(/\r?\n/), segs = [], prose = [], i = 0;
    function flush() {
      var t = prose.join("\n").replace(/^\s*\n/, "").replace(/\s+$/, "");
      if (t) segs.push({kind: "text", text: t});
      prose = [];
    }
    while (i < lines.length) {
      var m = FENCE_OPEN.exec(lines[i]);
      if (!m) { prose.push(lines[i]); i++; continue; }
      var fence = m[1], ch = fence[0], lang = m[2].toLowerCase(), body = [], closed = false;
      i++;
      while (i < lines.length) {
        var s = lines[i].trim();
        if (s.length >= fence.length && s.split(ch).join("") === "") { closed = true; i++; break; }
        body.push(lines[i]); i++;
      }
      flush();
      var code = body.join("\n").replace(/^\n+|\n+$/g, "");
      if (RUNNABLE.has(lang) && closed && code.trim()) segs.push({kind: "code", code: code, cell: null});
      else segs.push({kind: "fence", code: code, lang: lang, closed: closed});
    }
    flush();
    return segs;
  }

  // ---- the view -------------------------------------------------------------------------------------

  function RunView(root, options) {
    this.root = root;
    this.prices = (options && options.prices) || {};
    this.live = !!(options && options.live);
    this._build();
    this._reset();
    var self = this;
    this._onResize = function () { self._schedule(); };
    global.addEventListener("resize", this._onResize);
  }

  RunView.prototype.render = function (events) {
    this._reset();
    this.bulk = true;
    for (var i = 0; i < events.length; i++) this._ingest(events[i]);
    this.bulk = false;
    this._buildTree();
    this._refresh();
  };

  RunView.prototype.addEvent = function (event) {
    this._ingest(event);
    this._schedule();
    this._tick();
  };

  // A live page redraws its clock-driven parts (wall time, the timeline) each second until the run ends.
  RunView.prototype._tick = function () {
    var self = this;
    if (this._ticking || !this.live || this.run.final) return;
    this._ticking = global.setInterval(function () {
      if (!self.live || self.run.final) { global.clearInterval(self._ticking); self._ticking = null; return; }
      if (global.document.visibilityState !== "hidden") self._schedule();
    }, 1000);
  };

  // -- skeleton

  RunView.prototype._build = function () {
    var self = this, root = clear(this.root);
    root.classList.add("rlm-view");
    var bar = h("div", "bar");
    this.runIdEl = h("span", "run-id");
    this.liveEl = h("span", "live");
    this.searchEl = h("input", "search");
    this.searchEl.type = "search";
    this.searchEl.placeholder = "Search this run  (Enter: next)";
    this.searchEl.setAttribute("aria-label", "Search this run");
    this.searchCountEl = h("span", "search-count");
    var prev = h("button", "btn small", "↑"), next = h("button", "btn small", "↓");
    prev.title = "Previous match (Shift+Enter)"; next.title = "Next match (Enter)";
    var expand = h("button", "btn", "Expand all"), collapse = h("button", "btn", "Collapse all");
    expand.dataset.action = "expand-all"; collapse.dataset.action = "collapse-all";
    add(bar, h("span", "brand", "RLM run"), this.runIdEl, this.liveEl, h("span", "spacer"), this.searchEl,
        this.searchCountEl, prev, next, expand, collapse);
    var main = h("main");
    this.summaryEl = h("section", "card summary");
    var tl = h("section", "card timeline");
    add(tl, h("h2", null, "Timeline"));
    var legend = h("div", "legend");
    [["model call", COLORS.model], ["cell", COLORS.cell], ["failed cell", COLORS.failed],
     ["sub-call", COLORS.sub], ["tool call", COLORS.tool], ["waiting for a sandbox slot", COLORS.queue],
     ["sandbox start", COLORS.boot], ["context upload and setup", COLORS.upload]].forEach(function (x) {
      var item = h("span"), sw = h("i");
      sw.style.background = x[1];
      add(legend, add(item, sw, x[0]));
    });
    this.tlWrap = h("div", "tl-wrap");
    this.canvas = h("canvas");
    this.tlNote = h("div", "tl-note");
    this.tipEl = h("div", "tl-tip");
    this.tipEl.hidden = true;
    add(this.tlWrap, this.canvas);
    add(tl, legend, this.tlWrap, this.tlNote);
    this.treeCard = h("section", "card tree");
    add(this.treeCard, h("h2", null, "Run"));
    this.treeEl = h("div", "tree-body");
    this.otherEl = h("div", "other-events");
    add(this.treeCard, this.treeEl, this.otherEl);
    add(main, this.summaryEl, tl, this.treeCard);
    add(root, bar, main, this.tipEl);

    var timer = null;
    this.searchEl.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { self.search(self.searchEl.value); }, 160);
    });
    this.searchEl.addEventListener("keydown", function (e) {
      if (e.key === "Enter") {
        e.preventDefault();
        clearTimeout(timer);
        if (self._query !== self.searchEl.value) self.search(self.searchEl.value);
        else self.searchStep(e.shiftKey ? -1 : 1);
      }
    });
    prev.addEventListener("click", function () { self.searchStep(-1); });
    next.addEventListener("click", function () { self.searchStep(1); });
    expand.addEventListener("click", function () { self.expandAll(); });
    collapse.addEventListener("click", function () { self.collapseAll(); });
    this.canvas.addEventListener("mousemove", function (e) { self._tlHover(e); });
    this.canvas.addEventListener("mouseleave", function () { self.tipEl.hidden = true; });
    this.canvas.addEventListener("click", function (e) {
      var hit = self._tlHit(e);
      if (hit && hit.obj) self.reveal(hit.obj);
    });
  };

  RunView.prototype._reset = function () {
    this.run = {id: null, question: null, final: null, lastT: 0, roots: [], misc: [], config: null, service: null};
    this.rlms = new Map();
    this.rlmOrder = [];
    this.iters = [];
    this.cells = [];
    this.subs = [];
    this.failedCells = [];
    this.failedSubs = [];
    this.failedTools = [];
    this.lostBoxes = [];
    this.cycleAt = {};
    this.derivedUsage = new Map();
    this.callUsage = new Map();
    this.marks = {slowCall: null, slowCell: null, costly: null};
    this.badged = new Set();
    this._clearSearch();
    this._query = "";
    clear(this.treeEl);
    clear(this.otherEl);
  };

  RunView.prototype._schedule = function () {
    if (this._pending) return;
    var self = this;
    this._pending = true;
    global.requestAnimationFrame(function () { self._pending = false; self._refresh(); });
  };

  // ---- the model: events in, objects out (DOM touched only when not in bulk) ------------------------

  RunView.prototype._ingest = function (ev) {
    if (!ev || typeof ev !== "object" || Array.isArray(ev)) ev = {event: "malformed", value: ev};
    if (isNum(ev.t) && ev.t > this.run.lastT) { this.run.lastT = ev.t; this.run.lastAt = Date.now(); }
    if (ev.run_id && !this.run.id) this.run.id = String(ev.run_id);
    try {
      switch (ev.event) {
        case "run_start": return this._onRunStart(ev);
        case "rlm_start": return this._onRlmStart(ev);
        case "iteration_start": return this._onIterStart(ev);
        case "iteration": return this._onIteration(ev);
        case "iteration_end": return this._onIterEnd(ev);
        case "model_call": return this._onModelCall(ev);
        case "cell": return this._onCell(ev);
        case "subcall": return this._onSubcall(ev);
        case "tool_call": return this._onToolCall(ev);
        case "box_queued": case "box_wait": case "sandbox_ready": return this._onBox(ev);
        case "rlm_end": return this._onRlmEnd(ev);
        case "final": this.run.final = ev; return;
        case "status": return this._onServiceStatus(ev);
        default: return this._onOther(ev);
      }
    } catch (err) {
      if (global.console) global.console.error("rlm view: could not show an event", ev, err);
      this._onOther({event: "unreadable " + str(ev.event), error: String(err), value: ev});
    }
  };

  RunView.prototype._rlm = function (id) {
    id = id === undefined || id === null ? "0" : String(id);
    var r = this.rlms.get(id);
    if (!r) {
      r = {kind: "rlm", id: id, parentId: null, parent: null, depth: 0, model: null, box: null, plain: false,
           startT: null, endT: null, seconds: null, status: null, message: null, response: null,
           iterations: [], children: [], misc: [], cell: null, pendingCell: null, open: null, el: null,
           bodyEl: null, headEl: null, started: false, thinking: null, waiting: [], calls: new Map(),
           extraCalls: [], sandbox: {queued: null, wait: null, ready: null}, boxEl: null};
      this.rlms.set(id, r);
      this.rlmOrder.push(r);
    }
    return r;
  };

  RunView.prototype._onRunStart = function (ev) {
    this.run.question = ev.root_prompt;
    this.run.config = ev.config || null;
    this.run.contextType = ev.context_type;
    this.run.contextSize = ev.context_size;
  };

  RunView.prototype._onRlmStart = function (ev) {
    var r = this._rlm(ev.rlm_id);
    if (r.started) return;
    r.started = true;
    r.depth = isNum(ev.depth) ? ev.depth : 0;
    r.model = ev.model || null;
    r.box = ev.box_id || null;
    r.plain = !!ev.plain_call;
    r.startT = isNum(ev.t) ? ev.t : null;
    r.parentId = ev.parent === undefined || ev.parent === null ? null : String(ev.parent);
    if (r.open === null) r.open = r.parentId === null || this.rlms.size <= CHILDREN_OPEN_UP_TO;
    if (r.parentId !== null && r.parentId !== r.id) {
      var p = this._rlm(r.parentId), cell = this._pendingCell(p);
      r.parent = p;
      r.cell = cell;
      p.children.push(r);
      cell.children.push(r);
      if (!this.bulk && cell.kidsEl) add(cell.kidsEl, this._rlmView(r));
    } else {
      this.run.roots.push(r);
      if (!this.bulk) add(this.treeEl, this._rlmView(r));
    }
  };

  RunView.prototype._lastIter = function (r) {
    if (!r.iterations.length) {
      // Something happened in an RLM before its first reply (it should not): keep it in a placeholder.
      this._addIter(r, {iteration: 0, reply: "", t: null});
    }
    return r.iterations[r.iterations.length - 1];
  };

  RunView.prototype._addIter = function (r, ev) {
    var it = {kind: "iter", rlm: r, n: isNum(ev.iteration) ? ev.iteration : r.iterations.length + 1,
              reply: str(ev.reply), segs: splitReply(ev.reply), extra: [], notes: [], pre: r.waiting, t: ev.t,
              modelS: isNum(ev.model_seconds) ? ev.model_seconds : null, inTok: ev.input_tokens,
              outTok: ev.output_tokens, cost: null, seconds: null, open: true, el: null,
              bodyEl: null, badgeEl: null};
    it.start = isNum(it.t) && isNum(it.modelS) ? it.t - it.modelS : it.t;
    if (ev.iteration !== 0) r.thinking = null;  // the reply came
    r.waiting = [];
    it.pre.forEach(function (m) { m.iter = it; });
    var call = ev.iteration === 0 ? null : this._takeCall(r.id, ev.depth, r.model);
    it.cost = call ? call.cost : this._cost(r.model, it.inTok, it.outTok);
    r.iterations.push(it);
    this.iters.push(it);
    if (ev.iteration !== 0) {
      this._usage(r.model, it.inTok, it.outTok, it.cost);
      this._considerCall(it, it.modelS, it.cost, (it.inTok || 0) + (it.outTok || 0));
    }
    if (!this.bulk && r.bodyEl) r.bodyEl.insertBefore(this._iterView(it), r.endEl || null);
    if (!this.bulk && r.headEl) this._drawRlmHead(r);
    return it;
  };

  RunView.prototype._onIteration = function (ev) {
    var r = this._rlm(ev.rlm_id);
    this._addIter(r, ev);
    if (!this.bulk && r.endEl) this._drawRlmEnd(r);
  };

  // iteration_start / iteration_end: when an iteration began and how long it took in all; not rows.
  // Between the two, a live page says the model is thinking.
  RunView.prototype._onIterStart = function (ev) {
    var r = this._rlm(ev.rlm_id);
    r.thinking = {n: isNum(ev.iteration) ? ev.iteration : r.iterations.length + 1, t: isNum(ev.t) ? ev.t : null};
    if (!this.bulk && r.endEl) this._drawRlmEnd(r);
  };

  RunView.prototype._onIterEnd = function (ev) {
    var it = this._iterOf(this._rlm(ev.rlm_id), ev.iteration);
    if (!it) return;
    it.seconds = isNum(ev.seconds) ? ev.seconds : null;
    if (!this.bulk && it.el) this._drawIterHead(it);
  };

  RunView.prototype._iterOf = function (r, n) {
    for (var i = r.iterations.length - 1; i >= 0; i--) if (r.iterations[i].n === n) return r.iterations[i];
    return null;
  };

  // model_call: each settled model call with what it really cost. It comes just before the step it
  // served (an iteration's reply, a sub-call, a compaction, a plain call), which takes it by its RLM and
  // depth; a call no step claims (a failed call, the last-chance answer) is listed with its RLM.
  RunView.prototype._onModelCall = function (ev) {
    var model = ev.model ? String(ev.model) : null;
    var call = {model: model, inTok: ev.input_tokens, outTok: ev.output_tokens,
                cost: isNum(ev.cost_usd) ? ev.cost_usd : null, seconds: isNum(ev.seconds) ? ev.seconds : null,
                failed: !!ev.failed, retries: isNum(ev.retries) ? ev.retries : 0, t: ev.t};
    var key = str(ev.rlm_id) + "|" + str(ev.depth), list = this._rlm(ev.rlm_id).calls.get(key);
    if (!list) { list = []; this._rlm(ev.rlm_id).calls.set(key, list); }
    list.push(call);
    var u = this.callUsage.get(model || "?");
    if (!u) {
      u = {calls: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, known: true, retries: 0, failures: 0};
      this.callUsage.set(model || "?", u);
    }
    u.calls++;
    u.input_tokens += call.inTok || 0;
    u.output_tokens += call.outTok || 0;
    u.retries += call.retries;
    if (call.failed) u.failures++;
    if (call.cost !== null) u.cost_usd += call.cost; else u.known = false;
  };

  RunView.prototype._takeCall = function (rlmId, depth, model) {
    var r = this._rlm(rlmId), list = r.calls.get(str(rlmId) + "|" + str(depth));
    if (!list || !list.length) return null;
    for (var i = list.length - 1; i >= 0; i--) {
      if (!model || !list[i].model || list[i].model === model) return list.splice(i, 1)[0];
    }
    return null;
  };

  // Calls no step claimed, once the RLM has ended: shown and weighed with the RLM.
  RunView.prototype._settleCalls = function (r) {
    var self = this;
    r.calls.forEach(function (list) {
      list.forEach(function (c) {
        c.kind = "extra";
        c.rlm = r;
        r.extraCalls.push(c);
        self._considerCall(c, c.seconds, c.cost, (c.inTok || 0) + (c.outTok || 0));
      });
    });
    r.calls.clear();
  };

  // Waiting for a start slot, and the box getting ready: drawn in the timeline and atop the RLM.
  RunView.prototype._onBox = function (ev) {
    var r = this._rlm(ev.rlm_id), box = r.sandbox;
    if (ev.event === "box_queued") box.queued = {t: ev.t, ahead: ev.ahead};
    else if (ev.event === "box_wait") box.wait = {t: ev.t, seconds: isNum(ev.seconds) ? ev.seconds : 0};
    else box.ready = ev;
    if (!this.bulk && r.boxEl) this._drawBox(r);
  };

  RunView.prototype._newCell = function (r, code) {
    var it = this._lastIter(r);
    var cell = {kind: "cell", rlm: r, iter: it, index: null, code: code === undefined ? null : code, status: null, stdout: "", stderr: "",
                error: null, notice: null, seconds: null, wall: null, t: null, start: null, done: false,
                subs: [], children: [], seg: null, subsOpen: null, subShown: 0,
                stats: {n: 0, tools: 0, tokens: 0, failed: 0, maxS: 0, cost: 0, costKnown: true, models: new Set(), kinds: new Set()},
                el: null, kidsEl: null, subsHeadEl: null, subsListEl: null, badgeEl: null};
    this._placeCell(it, cell);
    this.cells.push(cell);
    return cell;
  };

  // The code block a cell ran: the first unclaimed block with the same code, else (code not known yet)
  // the next unclaimed block; a cell that matches no block (FINAL_VAR written as text) comes after them.
  RunView.prototype._placeCell = function (it, cell) {
    var code = cell.code === null ? null : cell.code.trim(), i, seg = null;
    for (i = 0; i < it.segs.length; i++) {
      var s = it.segs[i];
      if (s.kind === "code" && !s.cell && (code === null || s.code.trim() === code)) { seg = s; break; }
    }
    if (seg) { seg.cell = cell; cell.seg = seg; }
    else { cell.seg = null; it.extra.push(cell); }
    if (!this.bulk && it.bodyEl) this._redrawIterBody(it);
  };

  RunView.prototype._pendingCell = function (r) {
    if (!r.pendingCell) r.pendingCell = this._newCell(r);
    return r.pendingCell;
  };

  RunView.prototype._onCell = function (ev) {
    var r = this._rlm(ev.rlm_id);
    var cell = r.pendingCell;
    r.pendingCell = null;
    if (!cell) cell = this._newCell(r, str(ev.code));
    cell.code = str(ev.code);
    cell.index = ev.index;
    cell.status = ev.status ? String(ev.status) : "ok";
    cell.stdout = str(ev.stdout);
    cell.stderr = str(ev.stderr);
    cell.error = ev.error ? str(ev.error) : null;
    cell.notice = ev.notice ? str(ev.notice) : null;
    cell.seconds = isNum(ev.seconds) ? ev.seconds : null;
    cell.wall = isNum(ev.wall_seconds) ? ev.wall_seconds : cell.seconds;
    cell.t = ev.t;
    cell.start = isNum(ev.t) && isNum(cell.wall) ? ev.t - cell.wall : ev.t;
    cell.done = true;
    // A pending cell was placed before its code was known: move it if it ran another block.
    var it = cell.iter;
    if (cell.seg && cell.seg.code.trim() !== cell.code.trim()) {
      cell.seg.cell = null;
      this._placeCell(it, cell);
    } else if (!this.bulk && it.bodyEl) {
      this._redrawIterBody(it);
    }
    if (cell.status !== "ok") this.failedCells.push(cell);
    var m = this.marks.slowCell;
    if (isNum(cell.wall) && (!m || cell.wall > m.wall)) this.marks.slowCell = cell;
    if (!this.bulk && it.el) this._drawIterHead(it);
  };

  RunView.prototype._onSubcall = function (ev) {
    var r = this._rlm(ev.rlm_id);
    var sub = {kind: "sub", tool: false, call: ev.kind ? String(ev.kind) : "llm_query", index: ev.index,
               model: ev.model ? String(ev.model) : null, status: ev.status ? String(ev.status) : "ok",
               error: ev.error ? str(ev.error) : null, seconds: isNum(ev.seconds) ? ev.seconds : null, t: ev.t,
               inTok: ev.input_tokens, outTok: ev.output_tokens, prompt: str(ev.prompt),
               promptChars: ev.prompt_chars, response: ev.response === null || ev.response === undefined ? null : str(ev.response)};
    var call = this._takeCall(r.id, ev.depth, sub.model);
    sub.cost = call ? call.cost : this._cost(sub.model, sub.inTok, sub.outTok);
    this._addSub(r, sub);
    this._usage(sub.model, sub.inTok, sub.outTok, sub.cost);
    this._considerCall(sub, sub.seconds, sub.cost, (sub.inTok || 0) + (sub.outTok || 0));
  };

  // A custom tool call: listed with its cell's sub-calls (arguments and result in place of prompt and
  // answer); it costs no tokens and is not a model call.
  RunView.prototype._onToolCall = function (ev) {
    var r = this._rlm(ev.rlm_id);
    this._addSub(r, {kind: "sub", tool: true, call: ev.name ? String(ev.name) : "tool", index: null, model: null,
                     status: ev.status ? String(ev.status) : "ok", error: ev.error ? str(ev.error) : null,
                     seconds: isNum(ev.seconds) ? ev.seconds : null, t: ev.t, inTok: null, outTok: null,
                     prompt: str(ev.args), promptChars: null, cost: null,
                     response: ev.result === null || ev.result === undefined ? null : str(ev.result)});
  };

  RunView.prototype._addSub = function (r, sub) {
    var cell = this._pendingCell(r), st = cell.stats;
    sub.rlm = r;
    sub.cell = cell;
    sub.el = null;
    sub.badgeEl = null;
    sub.n = cell.subs.length;
    sub.start = isNum(sub.t) && isNum(sub.seconds) ? sub.t - sub.seconds : sub.t;
    cell.subs.push(sub);
    this.subs.push(sub);
    st.n++;
    if (sub.tool) st.tools++;
    st.tokens += (sub.inTok || 0) + (sub.outTok || 0);
    if (sub.status !== "ok") { st.failed++; (sub.tool ? this.failedTools : this.failedSubs).push(sub); }
    if (isNum(sub.seconds) && sub.seconds > st.maxS) st.maxS = sub.seconds;
    if (!sub.tool) { if (isNum(sub.cost)) st.cost += sub.cost; else st.costKnown = false; }
    if (sub.model) st.models.add(sub.model);
    st.kinds.add(sub.tool ? "tool " + sub.call : sub.call);
    if (!this.bulk && cell.el) this._subAdded(cell, sub);
  };

  RunView.prototype._onRlmEnd = function (ev) {
    var r = this._rlm(ev.rlm_id);
    r.status = ev.status ? String(ev.status) : null;
    r.message = ev.message ? str(ev.message) : null;
    r.response = ev.response === null || ev.response === undefined ? null : str(ev.response);
    r.seconds = isNum(ev.seconds) ? ev.seconds : null;
    r.endT = isNum(ev.t) ? ev.t : null;
    r.pendingCell = null;
    r.thinking = null;
    if (r.plain) {
      var call = this._takeCall(r.id, ev.depth, r.model);
      r.cost = call ? call.cost : null;
      this._considerCall(r, r.seconds, r.cost, call ? (call.inTok || 0) + (call.outTok || 0) : 0);
    }
    this._settleCalls(r);
    if (!this.bulk && r.el) { this._drawRlmHead(r); if (r.bodyEl) this._drawRlmEnd(r); }
  };

  // A service's own "status" event (rlm serve): queued, running, then how the run ended. A run that
  // was cancelled or interrupted has no final event: this is how the page learns it is over.
  RunView.prototype._onServiceStatus = function (ev) {
    var status = ev.status ? String(ev.status) : null;
    if (!status) return;
    this.run.service = {status: status, message: ev.message ? str(ev.message) : null,
                        over: status !== "queued" && status !== "running"};
    if (!this.run.service.over || !this.live) return;
    this.run.lastT = this._now();  // the run ended about now (the service's events carry no run time)
    this.live = false;  // nothing more will come: what was under way stopped
    if (this.bulk) return;
    var self = this;
    this.rlmOrder.forEach(function (r) {
      if (!r.el) return;
      self._drawRlmHead(r);
      if (r.endEl) self._drawRlmEnd(r);
      var last = r.iterations[r.iterations.length - 1];
      if (last && last.bodyEl) self._redrawIterBody(last);
      if (r.boxEl) self._drawBox(r);
    });
  };

  // Anything else: notices, retries, compactions, a lost sandbox, kinds this page does not know. Each is
  // a row in the iteration it names; one naming an iteration whose reply has not come yet (a compaction
  // happens before the reply) waits at the RLM's end and then opens that iteration.
  RunView.prototype._onOther = function (ev) {
    var misc = {kind: "misc", ev: ev, rlm: null, iter: null, el: null};
    if (ev.event === "sandbox_lost") this.lostBoxes.push(misc);
    if (ev.rlm_id !== undefined && ev.rlm_id !== null) {
      var r = this._rlm(ev.rlm_id);
      misc.rlm = r;
      if (ev.event === "compaction") {
        var call = this._takeCall(r.id, ev.depth, r.model);
        misc.cost = call ? call.cost : this._cost(r.model, ev.input_tokens, ev.output_tokens);
        this._considerCall(misc, isNum(ev.model_seconds) ? ev.model_seconds : null, misc.cost,
                           (ev.input_tokens || 0) + (ev.output_tokens || 0));
      }
      var it = null, last = r.iterations[r.iterations.length - 1];
      if (isNum(ev.iteration)) it = this._iterOf(r, ev.iteration);
      else it = last || null;
      if (!it && isNum(ev.iteration) && !r.status && (!last || ev.iteration > last.n)) {
        r.waiting.push(misc);
        if (!this.bulk && r.endEl) this._drawRlmEnd(r);
      } else if (it) {
        misc.iter = it;
        it.notes.push(misc);
        if (!this.bulk && it.bodyEl) add(it.bodyEl, this._miscView(misc));
      } else {
        r.misc.push(misc);
        if (!this.bulk && r.bodyEl && r.el) this._redrawRlmBody(r);
      }
    } else {
      this.run.misc.push(misc);
      if (!this.bulk) this._drawOther();
    }
  };

  RunView.prototype._cost = function (model, inTok, outTok) {
    var p = model ? this.prices[model] : null;
    if (!p || !isNum(inTok) && !isNum(outTok)) return null;
    return ((inTok || 0) * p[0] + (outTok || 0) * p[1]) / 1e6;
  };

  RunView.prototype._usage = function (model, inTok, outTok, cost) {
    var key = model || "?", u = this.derivedUsage.get(key);
    if (!u) { u = {calls: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, known: true}; this.derivedUsage.set(key, u); }
    u.calls++;
    u.input_tokens += inTok || 0;
    u.output_tokens += outTok || 0;
    if (isNum(cost)) u.cost_usd += cost; else u.known = false;
  };

  RunView.prototype._considerCall = function (obj, seconds, cost, tokens) {
    var m = this.marks;
    if (isNum(seconds) && (!m.slowCall || seconds > m.slowCall._s)) { obj._s = seconds; m.slowCall = obj; }
    else if (isNum(seconds)) obj._s = seconds;
    // The costliest call in dollars; in tokens when no price is known.
    var measure = isNum(cost) ? cost : null;
    obj._c = measure;
    obj._tok = tokens;
    if (!m.costly) { if (measure !== null || tokens) m.costly = obj; return; }
    if (measure !== null && (m.costly._c === null || measure > m.costly._c)) m.costly = obj;
    else if (measure === null && m.costly._c === null && tokens > (m.costly._tok || 0)) m.costly = obj;
  };

  // ---- building the tree -------------------------------------------------------------------------

  RunView.prototype._buildTree = function () {
    clear(this.treeEl);
    var many = this.rlms.size > CHILDREN_OPEN_UP_TO;
    this.rlmOrder.forEach(function (r) { if (r.parent) r.open = !many; });
    for (var i = 0; i < this.run.roots.length; i++) add(this.treeEl, this._rlmView(this.run.roots[i]));
    if (!this.run.roots.length && this.rlmOrder.length) {
      // A log cut before any rlm_start: show what there is.
      for (var j = 0; j < this.rlmOrder.length; j++) if (!this.rlmOrder[j].started) add(this.treeEl, this._rlmView(this.rlmOrder[j]));
    }
    this._drawOther();
  };

  RunView.prototype._drawOther = function () {
    clear(this.otherEl);
    if (!this.run.misc.length) return;
    add(this.otherEl, h("div", "label", "Other events"));
    for (var i = 0; i < this.run.misc.length; i++) add(this.otherEl, this._miscView(this.run.misc[i]));
  };

  RunView.prototype._rlmView = function (r) {
    var self = this, sec = h("section", "rlm depth-" + (r.depth > 3 ? "deep" : r.depth));
    sec.dataset.rlm = r.id;
    r.el = sec;
    r.headEl = h("div", "rlm-head");
    r.headEl.addEventListener("click", function () { self._toggleRlm(r); });
    add(sec, r.headEl);
    this._drawRlmHead(r);
    r.bodyEl = null;
    if (r.open) this._openRlm(r); else sec.classList.add("closed");
    return sec;
  };

  RunView.prototype._drawRlmHead = function (r) {
    var e = clear(r.headEl);
    var caret = h("span", "caret", "▸");
    if (r.open) caret.classList.add("open-caret");
    var over = this.run.service && this.run.service.over ? this.run.service.status : null;
    var status = r.status || over || (r.started ? "running" : "unknown");
    add(e, caret, h("span", "name", (r.parent ? "Child RLM " : "RLM ") + r.id),
        h("span", "pill", "depth " + r.depth),
        r.model ? h("span", "meta", r.model) : null,
        h("span", "pill " + statusClass(status), status),
        r.plain ? h("span", "pill", "plain model call (depth limit)") : null,
        h("span", "meta", plural(r.iterations.filter(function (x) { return x.n !== 0; }).length, "iteration")),
        isNum(r.seconds) ? h("span", "meta", fmtS(r.seconds)) : null,
        r.response ? h("span", "preview", "→ " + oneLine(r.response, 120)) : null);
    r.badgeEl = h("span");
    add(e, r.badgeEl);
    this._drawBadges(r);
  };

  RunView.prototype._openRlm = function (r) {
    r.open = true;
    if (!r.el) return;
    r.el.classList.remove("closed");
    if (!r.bodyEl) {
      r.bodyEl = h("div", "rlm-body");
      add(r.el, r.bodyEl);
      this._redrawRlmBody(r);
    }
    this._drawRlmHead(r);
  };

  RunView.prototype._redrawRlmBody = function (r) {
    var body = clear(r.bodyEl);
    r.boxEl = h("div", "box-line");
    add(body, r.boxEl);
    this._drawBox(r);
    for (var m = 0; m < r.misc.length; m++) add(body, this._miscView(r.misc[m]));
    for (var i = 0; i < r.iterations.length; i++) add(body, this._iterView(r.iterations[i]));
    r.endEl = h("div");
    add(body, r.endEl);
    this._drawRlmEnd(r);
    if (r.plain && !r.iterations.length && !r.response && !r.status) add(body, h("div", "empty", "waiting for the model…"));
  };

  // The sandbox of an RLM in one line: how long it waited for a start slot, started, got its context.
  RunView.prototype._drawBox = function (r) {
    var e = clear(r.boxEl), box = r.sandbox, ready = box.ready, parts = [];
    if (r.plain || !r.box && !ready && !box.queued) { e.hidden = true; return; }
    e.hidden = false;
    add(e, h("span", "k", "sandbox"), h("span", "box-id", str(ready && ready.box_id || r.box)));
    if (box.queued || box.wait) {
      var waited = box.wait ? "waited " + fmtS(box.wait.seconds) + " for a start slot" : "waiting for a start slot";
      if (box.queued && isNum(box.queued.ahead)) waited += " (" + plural(box.queued.ahead, "start") + " ahead)";
      add(e, h("span", "pill " + (box.wait || ready ? "warn" : "run"), waited));
    }
    if (ready) {
      if (ready.new === false) parts.push("reused");
      if (isNum(ready.start_s)) parts.push("start " + fmtS(ready.start_s));
      if (isNum(ready.upload_s)) parts.push("context upload " + fmtS(ready.upload_s));
      if (isNum(ready.setup_s)) parts.push("setup " + fmtS(ready.setup_s));
      add(e, h("span", "meta", "ready in " + fmtS(ready.seconds) + (parts.length ? " (" + parts.join(", ") + ")" : "")));
    } else if (!r.status && this.live) {
      add(e, h("span", "pill run", "starting…"));
    }
  };

  RunView.prototype._drawRlmEnd = function (r) {
    if (!r.endEl) return;
    var e = clear(r.endEl), i;
    for (i = 0; i < r.waiting.length; i++) add(e, this._miscView(r.waiting[i]));
    if (r.thinking && !r.status && this.live) {
      add(e, h("div", "thinking", "Iteration " + r.thinking.n + ": waiting for the model…"));
    }
    if (r.extraCalls.length) add(e, this._extraCallsView(r));
    if (!r.status) return;
    var end = h("div", "rlm-end");
    add(e, end);
    e = end;
    add(e, h("span", "pill " + statusClass(r.status), r.status), " ",
        h("span", "meta", "ended after " + fmtS(r.seconds)));
    if (r.message) add(e, h("pre", "answer-message", r.message));
    if (r.response !== null) {
      var pre = h("pre", null, r.response);
      this._reg(r, "response", pre);
      add(e, h("div", "label", r.status === "final" ? "Answer" : "Best answer"), pre);
    }
  };

  RunView.prototype._extraCallsView = function (r) {
    var row = h("div", "ev extra-calls"), failed = 0, secs = 0, cost = 0, known = true, self = this;
    r.extraCalls.forEach(function (c) {
      if (c.failed) failed++;
      secs += c.seconds || 0;
      if (c.cost === null) known = false; else cost += c.cost;
      c.el = row;
      c.badgeEl = null;
    });
    add(row, h("span", "ev-name", plural(r.extraCalls.length, "other model call")),
        h("span", null, "not a reply of an iteration" + (failed ? " · " + failed + " failed" : "") + " · " + fmtS(secs) +
          (known ? " · " + fmtUsd(cost) : "")));
    var badges = h("span");
    add(row, badges);
    r.extraCalls.forEach(function (c) { c.badgeEl = badges; self._drawBadges(c); });
    return row;
  };

  RunView.prototype._toggleRlm = function (r) {
    if (r.open) { r.open = false; r.el.classList.add("closed"); this._drawRlmHead(r); }
    else this._openRlm(r);
  };

  // -- iterations

  RunView.prototype._iterView = function (it) {
    var self = this, div = h("div", "iter");
    div.dataset.iteration = String(it.n);
    it.el = div;
    it.headEl = h("div", "iter-head");
    it.headEl.addEventListener("click", function () { self._toggleIter(it); });
    add(div, it.headEl);
    this._drawIterHead(it);
    it.bodyEl = null;
    if (it.open) this._openIter(it); else div.classList.add("closed");
    return div;
  };

  RunView.prototype._drawIterHead = function (it) {
    var e = clear(it.headEl), caret = h("span", "caret", "▸");
    if (it.open) caret.classList.add("open-caret");
    var cells = it.segs.filter(function (s) { return s.cell; }).length + it.extra.length;
    var failed = 0;
    it.segs.forEach(function (s) { if (s.cell && s.cell.done && s.cell.status !== "ok") failed++; });
    it.extra.forEach(function (c) { if (c.done && c.status !== "ok") failed++; });
    add(e, caret, h("span", "name", it.n === 0 ? "Before the first reply" : "Iteration " + it.n));
    if (it.n !== 0) {
      var meta = h("span", "meta");
      add(meta, "model ", h("b", null, fmtS(it.modelS)), " · " + fmtInt(it.inTok) + " → " + fmtInt(it.outTok) + " tokens",
          isNum(it.cost) ? " · " + fmtUsd(it.cost) : "", " · " + plural(cells, "cell"),
          isNum(it.seconds) ? " · " + fmtS(it.seconds) + " in all" : "");
      add(e, meta);
    }
    if (failed) add(e, h("span", "pill bad", plural(failed, "failed cell")));
    it.badgeEl = h("span");
    add(e, it.badgeEl);
    this._drawBadges(it);
  };

  RunView.prototype._openIter = function (it) {
    it.open = true;
    if (!it.el) return;
    it.el.classList.remove("closed");
    if (!it.bodyEl) {
      it.bodyEl = h("div", "iter-body");
      add(it.el, it.bodyEl);
      this._redrawIterBody(it);
    }
    this._drawIterHead(it);
  };

  RunView.prototype._toggleIter = function (it) {
    if (it.open) { it.open = false; it.el.classList.add("closed"); this._drawIterHead(it); }
    else this._openIter(it);
  };

  RunView.prototype._redrawIterBody = function (it) {
    var body = clear(it.bodyEl), i;
    if (it.fields) it.fields.reply = [];
    for (i = 0; i < it.pre.length; i++) add(body, this._miscView(it.pre[i]));
    for (i = 0; i < it.segs.length; i++) {
      var s = it.segs[i];
      if (s.kind === "text") {
        var p = h("div", "prose", s.text);
        this._reg(it, "reply", p);
        add(body, p);
      } else if (s.kind === "code") {
        add(body, s.cell ? this._cellView(s.cell, s) : this._unranView(it, s));
      } else {
        var f = h("pre", "fence", s.code);
        this._reg(it, "reply", f);
        add(body, f);
      }
    }
    for (i = 0; i < it.extra.length; i++) add(body, this._cellView(it.extra[i], null));
    for (i = 0; i < it.notes.length; i++) add(body, this._miscView(it.notes[i]));
    if (it.n !== 0 && !it.segs.length && !it.extra.length) add(body, h("div", "empty", "(empty reply)"));
  };

  RunView.prototype._unranView = function (it, seg) {
    var r = it.rlm, current = !r.status && r.iterations[r.iterations.length - 1] === it;
    var service = this.run.service, stopped = current && !this.live && service && service.over;
    var div = h("div", "cell not-run"), head = h("div", "cell-head");
    add(head, h("span", "name", "Code block"),
        h("span", "pill" + (current && this.live ? " run" : stopped ? " warn" : ""),
          current && this.live ? "running…" : stopped ? "stopped: run " + service.status : "not run"));
    add(div, head, this._codeBlock(it, "reply", seg.code));
    return div;
  };

  // -- cells

  RunView.prototype._cellView = function (cell, seg) {
    var div = h("div", "cell");
    cell.el = div;
    this._fillCell(cell, seg);
    return div;
  };

  RunView.prototype._fillCell = function (cell, seg) {
    var div = cell.el, failed = cell.done && cell.status !== "ok";
    var status = cell.done ? cell.status : this.live ? "running" : "no result";
    if (failed) div.classList.add("failed");
    div.dataset.status = status;
    if (isNum(cell.index)) div.dataset.cell = String(cell.index);
    var head = h("div", "cell-head");
    add(head, h("span", "name", "Cell" + (isNum(cell.index) ? " " + cell.index : "")),
        h("span", "pill " + statusClass(status), status === "running" ? "running…" : status));
    if (cell.done) {
      var meta = h("span", "meta");
      add(meta, "took ", h("b", null, fmtS(cell.wall)), isNum(cell.seconds) && isNum(cell.wall) &&
          Math.abs(cell.wall - cell.seconds) > 0.05 ? " (kernel " + fmtS(cell.seconds) + ")" : "");
      add(head, meta);
    }
    cell.badgeEl = h("span");
    add(head, cell.badgeEl);
    add(div, head);
    add(div, seg ? this._codeBlock(cell.iter, "reply", seg.code) : this._codeBlock(cell, "code", str(cell.code)));
    if (cell.done) {
      if (cell.stdout) add(div, this._outBlock(cell, "stdout", "output", cell.stdout));
      if (cell.stderr) add(div, this._outBlock(cell, "stderr", "stderr", cell.stderr));
      if (cell.error) add(div, this._outBlock(cell, "error", "error", cell.error));
      if (cell.notice) add(div, this._outBlock(cell, "notice", "notice", cell.notice));
      if (!cell.stdout && !cell.stderr && !cell.error && !cell.notice) {
        var none = h("div", "out");
        add(none, h("span", "meta", "no output"));
        add(div, none);
      }
    }
    cell.kidsEl = h("div", "cell-kids");
    for (var i = 0; i < cell.children.length; i++) add(cell.kidsEl, this._rlmView(cell.children[i]));
    add(div, cell.kidsEl);
    cell.subsEl = null;
    if (cell.subs.length) this._subsSection(cell);
    this._drawBadges(cell);
  };

  RunView.prototype._outBlock = function (obj, field, label, text) {
    var box = h("div", "out " + field);
    add(box, h("div", "k", label), this._clipText(obj, field, text, "pre"));
    return box;
  };

  // Where a long text is cut: after `lines` lines or `chars` characters; -1 when it is short.
  function cutAt(text, lines, chars) {
    var nl = 0;
    for (var i = 0; i < text.length && i < chars; i++) if (text.charCodeAt(i) === 10 && ++nl >= lines) return i;
    return text.length > chars ? chars : -1;
  }

  // A long text shows its head with a button for the rest; search and "expand all" can open it.
  // `fill(pre, text)` puts text in (plain by default, highlighted for code).
  RunView.prototype._clipText = function (obj, field, text, tag, lines, chars, cls, fill) {
    fill = fill || function (pre, t) { pre.textContent = t; };
    var wrap = h("div", "clip"), pre = h(tag || "pre", cls);
    add(wrap, pre);
    this._reg(obj, field, wrap);
    var cut = cutAt(text, lines || CLIP_LINES, chars || CLIP_CHARS);
    if (cut < 0) { fill(pre, text); return wrap; }
    fill(pre, text.slice(0, cut) + "\n…");
    var totalLines = text.split("\n").length;
    var btn = h("button", "btn small more", "Show all (" + plural(totalLines, "line") + ", " + fmtInt(text.length) + " characters)");
    add(wrap, btn);
    wrap._expand = function () {
      if (!btn.parentNode) return;
      clear(pre);
      fill(pre, text);
      btn.remove();
    };
    btn.addEventListener("click", function (e) { e.stopPropagation(); wrap._expand(); });
    return wrap;
  };

  RunView.prototype._codeBlock = function (obj, field, code) {
    return this._clipText(obj, field, code, "pre", 40, 2000, "code", function (pre, t) { pre.appendChild(highlightPython(t)); });
  };

  // -- sub-calls: a summary line, and rows built only when the list is opened

  RunView.prototype._subsSection = function (cell) {
    var self = this, sec = h("div", "subs");
    cell.subsEl = sec;
    cell.subsHeadEl = h("div", "subs-head");
    cell.subsListEl = h("div", "subs-list");
    cell.subShown = 0;
    cell.subsHeadEl.addEventListener("click", function () { self._toggleSubs(cell); });
    add(sec, cell.subsHeadEl, cell.subsListEl);
    if (cell.subsOpen === null) cell.subsOpen = cell.subs.length <= SUBS_OPEN_UP_TO;
    add(cell.el, sec);
    this._drawSubsHead(cell);
    if (cell.subsOpen) this._showSubs(cell, SUB_PAGE); else cell.subsListEl.hidden = true;
  };

  RunView.prototype._drawSubsHead = function (cell) {
    var st = cell.stats, e = clear(cell.subsHeadEl), caret = h("span", "caret", "▸");
    if (cell.subsOpen) caret.classList.add("open-caret");
    var kinds = Array.from(st.kinds).join(", "), models = Array.from(st.models).join(", ");
    var calls = st.n - st.tools, what = [];
    if (calls) what.push(plural(calls, "sub-call"));
    if (st.tools) what.push(plural(st.tools, "tool call"));
    add(e, caret, h("span", "name", what.join(" and ")),
        h("span", "meta", kinds + (models ? " · " + models : "") + (calls ? " · " + fmtInt(st.tokens) + " tokens" +
          (st.costKnown ? " · " + fmtUsd(st.cost) : "") : "") + " · slowest " + fmtS(st.maxS)),
        st.failed ? h("span", "pill bad", st.failed + " failed") : null);
  };

  RunView.prototype._toggleSubs = function (cell) {
    cell.subsOpen = !cell.subsOpen;
    cell.subsListEl.hidden = !cell.subsOpen;
    if (cell.subsOpen && cell.subShown === 0) this._showSubs(cell, SUB_PAGE);
    this._drawSubsHead(cell);
  };

  RunView.prototype._showSubs = function (cell, upTo) {
    var list = cell.subsListEl;
    if (cell.moreEl) { cell.moreEl.remove(); cell.moreEl = null; }
    var end = Math.min(cell.subs.length, Math.max(upTo, cell.subShown));
    var frag = document.createDocumentFragment();
    for (var i = cell.subShown; i < end; i++) frag.appendChild(this._subView(cell.subs[i]));
    list.appendChild(frag);
    cell.subShown = end;
    this._drawMore(cell);
  };

  RunView.prototype._drawMore = function (cell) {
    var self = this, left = cell.subs.length - cell.subShown;
    if (cell.moreEl) { cell.moreEl.remove(); cell.moreEl = null; }
    if (left <= 0) return;
    var btn = h("button", "btn small show-more", "Show " + fmtInt(Math.min(left, SUB_PAGE)) + " more (" + fmtInt(left) + " not shown)");
    btn.addEventListener("click", function (e) { e.stopPropagation(); self._showSubs(cell, cell.subShown + SUB_PAGE); });
    cell.moreEl = btn;
    add(cell.subsListEl, btn);
  };

  RunView.prototype._subAdded = function (cell, sub) {
    if (!cell.subsEl) { this._subsSection(cell); return; }
    this._drawSubsHead(cell);
    if (cell.subsOpen && cell.subShown === cell.subs.length - 1 && cell.subShown < SUB_PAGE) {
      if (cell.moreEl) { cell.moreEl.remove(); cell.moreEl = null; }
      cell.subsListEl.appendChild(this._subView(sub));
      cell.subShown++;
    } else if (cell.subsOpen) {
      this._drawMore(cell);
    }
  };

  RunView.prototype._subView = function (sub) {
    var row = h("div", "sub" + (sub.tool ? " tool" : "") + (sub.status !== "ok" ? " failed" : ""));
    row.dataset.kind = sub.tool ? "tool" : "subcall";
    sub.el = row;
    var meta = h("div", "meta sub-meta");
    add(meta, sub.tool ? "tool " : "", h("b", null, sub.call), sub.model ? " · " + sub.model : "", " · ",
        h("span", "pill " + statusClass(sub.status), sub.status), " · ", h("b", null, fmtS(sub.seconds)),
        sub.tool ? "" : " · " + fmtInt(sub.inTok) + " → " + fmtInt(sub.outTok) + " tokens", isNum(sub.cost) ? " · " + fmtUsd(sub.cost) : "");
    sub.badgeEl = h("span");
    add(meta, sub.badgeEl);
    var prompt = h("div", "prompt");
    add(prompt, h("div", "k", (sub.tool ? "arguments" : "prompt") + (isNum(sub.promptChars) && sub.promptChars > sub.prompt.length ?
        " (first " + fmtInt(sub.prompt.length) + " of " + fmtInt(sub.promptChars) + " characters)" : "")),
        this._clipText(sub, "prompt", sub.prompt, "pre", 6, 600));
    var resp = h("div", "response" + (sub.error ? " error" : ""));
    if (sub.error) add(resp, h("div", "k", "error"), this._clipText(sub, "error", sub.error, "pre", 6, 600));
    if (sub.response !== null) add(resp, h("div", "k", sub.tool ? "result" : "answer"), this._clipText(sub, "response", sub.response, "pre", 6, 600));
    add(row, h("div", "idx", isNum(sub.index) ? "#" + sub.index : "#" + (sub.n + 1)), meta, prompt, resp);
    this._drawBadges(sub);
    return row;
  };

  // -- other events: a key/value row

  RunView.prototype._miscView = function (misc) {
    var ev = misc.ev, name = str(ev.event) || "event";
    var row = h("div", "ev " + name.replace(/[^a-z_]/gi, ""));
    misc.el = row;
    add(row, h("span", "ev-name", name === "sandbox_lost" ? "sandbox lost" : name));
    var body = h("span");
    if (name === "notice" && typeof ev.text === "string") {
      add(body, ev.text);
    } else if (name === "compaction") {
      row.classList.add("notice-box");
      add(body, "The conversation was summarised to fit the model's context window" +
          (ev.forced ? " (the provider said it was full)" : "") + ": ~" + fmtInt(ev.tokens_before) + " → ~" +
          fmtInt(ev.tokens_after) + " tokens" + (isNum(ev.model_seconds) ? " · summary took " + fmtS(ev.model_seconds) : "") +
          (isNum(misc.cost) ? " · " + fmtUsd(misc.cost) : "") + ". The full history stays in the REPL as `history`.");
      if (ev.summary) add(body, this._clipText(misc, "summary", str(ev.summary), "pre", 3, 300, "summary"));
      misc.badgeEl = h("span");
      add(body, misc.badgeEl);
      this._drawBadges(misc);
    } else if (name === "sandbox_lost") {
      row.classList.add("notice-box", "bad");
      add(body, "Sandbox " + str(ev.box_id) + " was lost: " + str(ev.reason) +
          ". Its REPL state is gone; the RLM stops here.");
    } else {
      var skip = {event: 1, t: 1, run_id: 1, rlm_id: 1, depth: 1, iteration: 1};
      Object.keys(ev).forEach(function (k) {
        if (skip[k]) return;
        var kv = h("span", "kv");
        add(kv, h("b", null, k + "="), oneLine(str(ev[k]), 300));
        add(body, kv);
      });
    }
    this._reg(misc, "text", body);
    add(row, body);
    if (isNum(ev.t)) add(row, h("span", "meta", "at " + fmtS(ev.t)));
    return row;
  };

  // ---- header: question, answer, status, totals, hot spots ---------------------------------------

  RunView.prototype._refresh = function () {
    this._drawSummary();
    this._drawTimeline();
    this._drawMarks();
  };

  RunView.prototype._status = function () {
    var f = this.run.final, service = this.run.service;
    if (f && f.status) return String(f.status);
    if (service && service.over) return service.status;
    var root = this.run.roots[0];
    if (root && root.status) return root.status;
    if (service) return service.status;
    return this.live ? "running" : "unfinished";
  };

  // The run's clock: its last event's time, and on a live page the time since that event came, so a
  // step under way (a model call, a box start) grows while nothing else happens.
  RunView.prototype._now = function () {
    var run = this.run;
    if (!this.live || run.final || !isNum(run.lastAt)) return run.lastT;
    return run.lastT + Math.max(0, Date.now() - run.lastAt) / 1000;
  };

  RunView.prototype._wall = function () {
    var f = this.run.final;
    return f && isNum(f.execution_time) ? Math.max(f.execution_time, this.run.lastT) : this._now();
  };

  RunView.prototype._usageRows = function () {
    var f = this.run.final, rows = [];
    if (f && f.usage && typeof f.usage === "object") {
      Object.keys(f.usage).forEach(function (m) {
        var u = f.usage[m] || {};
        rows.push({model: m, calls: u.calls, input_tokens: u.input_tokens, output_tokens: u.output_tokens,
                   cost_usd: u.cost_known === false ? null : u.cost_usd, retries: u.retries, failures: u.failures});
      });
    } else {
      // Before the final event: the settled model calls so far (exact), else what the steps say.
      var calls = this.callUsage.size > 0;
      (calls ? this.callUsage : this.derivedUsage).forEach(function (u, m) {
        rows.push({model: m, calls: u.calls, input_tokens: u.input_tokens, output_tokens: u.output_tokens,
                   cost_usd: u.known ? u.cost_usd : null, retries: calls ? u.retries : null,
                   failures: calls ? u.failures : null});
      });
    }
    return rows;
  };

  RunView.prototype._drawSummary = function () {
    var run = this.run, e = clear(this.summaryEl), f = run.final, status = this._status();
    this.runIdEl.textContent = run.id || "";
    this.liveEl.textContent = this.live && !f ? "● live" : "";
    add(e, h("div", "label", "Question"));
    var q = h("div", "question", run.question === null || run.question === undefined ? "(no question: the context is the task)" : run.question);
    this._reg(run, "question", q, true);
    add(e, q);
    var cls = status === "final" ? "" : statusClass(status) === "bad" ? " bad" :
        status === "running" || status === "queued" ? " running" : " warn";
    var box = h("div", "answer" + cls), head = h("div", "answer-head");
    var waiting = status === "running" || status === "queued";
    add(head, h("span", "label", status === "final" ? "Answer" : waiting ? "Answer (not yet)" : "Best answer"),
        h("span", "pill " + statusClass(status), status));
    var answer = f ? f.response : (run.roots[0] ? run.roots[0].response : null);
    var text = h("div", "answer-text", answer === null || answer === undefined ? "—" : str(answer));
    text.dataset.role = "answer";
    this._reg(run, "answer", text, true);
    add(box, head, text);
    var message = f ? f.message : run.service && run.service.over && run.service.message ? run.service.message :
        (run.roots[0] ? run.roots[0].message : null);
    if (message) add(box, h("div", "answer-message", str(message)));
    add(e, box);

    var rows = this._usageRows(), calls = 0, tin = 0, tout = 0, cost = 0, costKnown = rows.length > 0;
    rows.forEach(function (r) {
      calls += r.calls || 0; tin += r.input_tokens || 0; tout += r.output_tokens || 0;
      if (isNum(r.cost_usd)) cost += r.cost_usd; else costKnown = false;
    });
    if (f && isNum(f.cost_usd)) { cost = f.cost_usd; costKnown = true; }
    var rootIters = f && isNum(f.iterations) ? f.iterations : (run.roots[0] ? run.roots[0].iterations.length : 0);
    var stats = h("div", "stats");
    function stat(v, k) { var s = h("div", "stat"); add(s, h("div", "v", v), h("div", "k", k)); add(stats, s); }
    stat(fmtS(this._wall()), "wall time");
    stat(fmtInt(rootIters), "iterations" + (this.iters.length > rootIters ? " (" + fmtInt(this.iters.length) + " in all RLMs)" : ""));
    stat(fmtInt(calls), "model calls");
    stat(fmtInt(tin + tout), "tokens (" + fmtInt(tin) + " in, " + fmtInt(tout) + " out)");
    stat(costKnown ? fmtUsd(cost) : "unknown", "cost");
    stat(fmtInt(this.rlms.size), this.rlms.size === 1 ? "RLM" : "RLMs in the tree");
    add(e, stats);

    var alerts = h("div", "alerts");
    add(alerts, this._cycleLink("failed-cells", this.failedCells, "failed cell"),
        this._cycleLink("failed-subcalls", this.failedSubs, "failed sub-call"),
        this._cycleLink("failed-tools", this.failedTools, "failed tool call"),
        this._cycleLink("lost-sandboxes", this.lostBoxes, "lost sandbox", "lost sandboxes"));
    var m = this.marks;
    if (m.slowCall) add(alerts, this._markLink("slow", "slowest-call", "Slowest model call", m.slowCall, fmtS(m.slowCall._s)));
    if (m.slowCell) add(alerts, this._markLink("slow", "slowest-cell", "Slowest cell", m.slowCell, fmtS(m.slowCell.wall)));
    if (m.costly) add(alerts, this._markLink("cost", "costliest-call", "Costliest model call", m.costly,
        m.costly._c !== null ? fmtUsd(m.costly._c) : fmtInt(m.costly._tok) + " tokens"));
    add(e, alerts);

    if (rows.length) {
      var table = h("table", "models"), thead = h("tr");
      ["model", "calls", "input tokens", "output tokens", "cost", "retries", "failures"].forEach(function (k, i) {
        add(thead, h("th", i ? "num" : null, k));
      });
      add(table, thead);
      rows.forEach(function (r) {
        var tr = h("tr");
        add(tr, h("td", null, r.model), h("td", "num", fmtInt(r.calls)), h("td", "num", fmtInt(r.input_tokens)),
            h("td", "num", fmtInt(r.output_tokens)), h("td", "num", isNum(r.cost_usd) ? fmtUsd(r.cost_usd) : "unknown"),
            h("td", "num", isNum(r.retries) ? fmtInt(r.retries) : "–"), h("td", "num", isNum(r.failures) ? fmtInt(r.failures) : "–"));
        add(table, tr);
      });
      add(e, table);
    }
    if (this.rlms.size > 1) add(e, this._outline());
  };

  // A red link in the header that shows the next of `list` on each click; null for an empty list.
  RunView.prototype._cycleLink = function (action, list, one, many) {
    if (!list.length) return null;
    var self = this, a = h("a", "alert bad", "");
    a.href = "#";
    a.dataset.action = action;
    add(a, h("span", "ico", "✕"), plural(list.length, one, many));
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      var at = ((action in self.cycleAt ? self.cycleAt[action] : -1) + 1) % list.length;
      self.cycleAt[action] = at;
      self.reveal(list[at]);
    });
    return a;
  };

  RunView.prototype._where = function (obj) {
    if (obj.kind === "rlm") return "RLM " + obj.id + " (plain call)";
    if (obj.kind === "extra") return "RLM " + obj.rlm.id + ", a model call after its iterations";
    if (obj.kind === "misc") return "RLM " + (obj.rlm ? obj.rlm.id : "?") + ", " + str(obj.ev.event) +
        (obj.iter ? " in iteration " + obj.iter.n : "");
    if (obj.kind === "iter") return "RLM " + obj.rlm.id + ", iteration " + obj.n + " (reply)";
    if (obj.kind === "cell") return "RLM " + obj.rlm.id + ", iteration " + obj.iter.n + ", cell" + (isNum(obj.index) ? " " + obj.index : "");
    if (obj.kind === "sub") return "RLM " + obj.rlm.id + ", iteration " + obj.cell.iter.n + ", " + obj.call +
        (isNum(obj.index) ? " #" + obj.index : "") + ": " + oneLine(obj.prompt, 40);
    return "";
  };

  RunView.prototype._markLink = function (cls, action, label, obj, value) {
    var self = this, a = h("a", "alert " + cls, "");
    a.href = "#";
    a.dataset.action = action;
    add(a, h("span", "ico", cls === "cost" ? "$" : "◷"), h("b", null, label + ": " + value), " — " + this._where(obj));
    a.addEventListener("click", function (ev) { ev.preventDefault(); self.reveal(obj); });
    return a;
  };

  RunView.prototype._outline = function () {
    var self = this, box = h("div", "outline"), shown = 0, max = 60;
    add(box, h("div", "label", "Tree of RLMs"));
    function walk(r, depth) {
      if (shown >= max) return;
      shown++;
      var row = h("div", "o-row"), a = h("a", null, (depth ? "└ " : "") + "RLM " + r.id);
      row.style.paddingLeft = (depth * 18) + "px";
      a.href = "#";
      a.addEventListener("click", function (ev) { ev.preventDefault(); self.reveal(r); });
      add(row, a, h("span", "pill " + statusClass(r.status || "running"), r.status || "running"),
          h("span", "meta", (r.model || "") + " · depth " + r.depth + (r.plain ? " · plain call" : " · " +
            plural(r.iterations.length, "iteration")) + (isNum(r.seconds) ? " · " + fmtS(r.seconds) : "")));
      add(box, row);
      for (var i = 0; i < r.children.length; i++) walk(r.children[i], depth + 1);
    }
    this.run.roots.forEach(function (r) { walk(r, 0); });
    if (this.rlms.size > shown) add(box, h("div", "o-more", "… and " + fmtInt(this.rlms.size - shown) + " more RLMs"));
    return box;
  };

  // Badges on the slowest and costliest steps, moved when a live run finds a new one.
  RunView.prototype._drawMarks = function () {
    var self = this, m = this.marks;
    Array.from(this.badged).concat([m.slowCall, m.slowCell, m.costly]).forEach(function (obj) {
      if (obj) self._drawBadges(obj);
    });
  };

  RunView.prototype._drawBadges = function (obj) {
    var m = this.marks, marked = m.slowCall === obj || m.slowCell === obj || m.costly === obj;
    if (marked) this.badged.add(obj); else this.badged.delete(obj);
    if (!obj.badgeEl) return;
    var e = clear(obj.badgeEl);
    if (m.slowCall === obj) add(e, h("span", "badge slow", "slowest call"));
    if (m.slowCell === obj) add(e, h("span", "badge slow", "slowest cell"));
    if (m.costly === obj) add(e, h("span", "badge cost", "costliest call"));
  };

  // ---- jumping to a step ------------------------------------------------------------------------

  function parentOf(o) {
    if (o.kind === "sub") return o.cell;
    if (o.kind === "cell") return o.iter;
    if (o.kind === "iter") return o.rlm;
    if (o.kind === "rlm") return o.cell;
    if (o.kind === "misc" || o.kind === "extra") return o.iter || o.rlm;
    return null;
  }

  // Open every enclosing part (building what was not built yet) so that obj has an element.
  RunView.prototype._ensure = function (obj) {
    var chain = [], o = obj;
    while (o) { chain.unshift(o); o = parentOf(o); }
    for (var i = 0; i < chain.length; i++) {
      var c = chain[i];
      if (c.kind === "rlm" && (i < chain.length - 1 || !c.el)) this._openRlm(c);
      else if (c.kind === "iter" && i < chain.length - 1) this._openIter(c);
      else if (c.kind === "cell" && chain[i + 1] && chain[i + 1].kind === "sub") {
        if (!c.subsOpen) this._toggleSubs(c);
        var want = c.subs.indexOf(chain[i + 1]) + 1;
        if (want > c.subShown) this._showSubs(c, Math.ceil(want / SUB_PAGE) * SUB_PAGE);
      }
    }
    return obj.el;
  };

  RunView.prototype.reveal = function (obj) {
    var el = this._ensure(obj);
    if (!el) return null;
    el.scrollIntoView({block: "center"});
    el.classList.remove("flash");
    void el.offsetWidth;
    el.classList.add("flash");
    return el;
  };

  RunView.prototype.expandAll = function () {
    var self = this;
    // A parent comes before its children in rlmOrder, and opening it builds their elements.
    this.rlmOrder.forEach(function (r) { if (r.el) self._openRlm(r); });
    this.iters.forEach(function (it) { if (it.el) self._openIter(it); });
    this.cells.forEach(function (c) { if (c.el && c.subsEl && !c.subsOpen) self._toggleSubs(c); });
  };

  RunView.prototype.collapseAll = function () {
    var self = this;
    this.iters.forEach(function (it) { if (it.el && it.open) self._toggleIter(it); else it.open = false; });
    this.cells.forEach(function (c) { if (c.subsEl && c.subsOpen) self._toggleSubs(c); });
    this.rlmOrder.forEach(function (r) { if (r.parent && r.el && r.open) self._toggleRlm(r); });
  };

  // ---- search -----------------------------------------------------------------------------------

  RunView.prototype._reg = function (obj, field, el, replace) {
    if (!obj.fields) obj.fields = {};
    if (replace || !obj.fields[field]) obj.fields[field] = [];
    obj.fields[field].push(el);
  };

  // Every searchable text: [object, field, text].
  RunView.prototype._texts = function () {
    var out = [], run = this.run, f = run.final;
    if (run.question) out.push([run, "question", str(run.question)]);
    if (f && f.response) out.push([run, "answer", str(f.response)]);
    this.rlmOrder.forEach(function (r) {
      r.misc.forEach(function (m) { out.push([m, "text", JSON.stringify(m.ev)]); });
      r.waiting.forEach(function (m) { out.push([m, "text", JSON.stringify(m.ev)]); });
      r.iterations.forEach(function (it) {
        it.pre.forEach(function (m) { out.push([m, "text", JSON.stringify(m.ev)]); });
        if (it.reply) out.push([it, "reply", it.reply]);
        var cells = it.segs.filter(function (s) { return s.cell; }).map(function (s) { return s.cell; }).concat(it.extra);
        cells.forEach(function (c) {
          if (!c.seg && c.code) out.push([c, "code", c.code]);
          if (c.stdout) out.push([c, "stdout", c.stdout]);
          if (c.stderr) out.push([c, "stderr", c.stderr]);
          if (c.error) out.push([c, "error", c.error]);
          if (c.notice) out.push([c, "notice", c.notice]);
          c.subs.forEach(function (s) {
            out.push([s, "prompt", s.prompt]);
            if (s.response) out.push([s, "response", s.response]);
            if (s.error) out.push([s, "error", s.error]);
          });
        });
        it.notes.forEach(function (m) { out.push([m, "text", JSON.stringify(m.ev)]); });
      });
      if (r.response) out.push([r, "response", r.response]);
    });
    run.misc.forEach(function (m) { out.push([m, "text", JSON.stringify(m.ev)]); });
    return out;
  };

  RunView.prototype.search = function (query) {
    this._clearSearch();
    this._query = query;
    var q = query.trim().toLowerCase();
    if (!q) { this.searchCountEl.textContent = ""; return 0; }
    var texts = this._texts(), hits = [], total = 0;
    for (var i = 0; i < texts.length; i++) {
      var low = texts[i][2].toLowerCase(), at = low.indexOf(q), n = 0;
      while (at >= 0) { n++; at = low.indexOf(q, at + q.length); }
      if (n) { hits.push({obj: texts[i][0], field: texts[i][1], count: n}); total += n; }
    }
    this._hits = hits;
    this._hitTotal = total;
    this._hitAt = -1;
    this._q = q;
    if (!hits.length) { this.searchCountEl.textContent = "no match"; return 0; }
    this.searchStep(1);
    return total;
  };

  RunView.prototype.searchStep = function (dir) {
    if (!this._hits || !this._hits.length) return;
    this._hitAt = (this._hitAt + dir + this._hits.length) % this._hits.length;
    var hit = this._hits[this._hitAt];
    this._unmark();
    if (hit.obj === this.run) { this.summaryEl.scrollIntoView({block: "start"}); }
    else this._ensure(hit.obj);
    var els = ((hit.obj.fields && hit.obj.fields[hit.field]) || []).filter(function (x) { return x.isConnected; });
    var first = null;
    for (var i = 0; i < els.length; i++) {
      if (els[i]._expand) els[i]._expand();
      var marks = this._markIn(els[i], this._q);
      if (!first && marks.length) first = marks[0];
    }
    // Marks in the other visible places, so every rendered match stands out.
    for (var j = 0; j < this._hits.length && this._marks.length < SEARCH_MARKS_MAX; j++) {
      if (j === this._hitAt) continue;
      var other = this._hits[j], oels = (other.obj.fields && other.obj.fields[other.field]) || [];
      for (var k = 0; k < oels.length; k++) if (oels[k].isConnected) this._markIn(oels[k], this._q);
    }
    var target = first || els[0];
    if (first) first.classList.add("current");
    else if (target) { target.classList.add("search-hit"); this._outlined = target; }
    if (target) target.scrollIntoView({block: "center"});
    this.searchCountEl.textContent = (this._hitAt + 1) + " / " + this._hits.length +
        (this._hitTotal !== this._hits.length ? " (" + fmtInt(this._hitTotal) + ")" : "");
  };

  // Wrap each occurrence of q in the text nodes under el in a <mark> (made with textContent).
  RunView.prototype._markIn = function (el, q) {
    var walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), nodes = [], n, made = [];
    while ((n = walker.nextNode())) {
      if (n.parentNode && (n.parentNode.nodeName === "BUTTON" || n.parentNode.nodeName === "MARK")) continue;
      if (n.nodeValue.toLowerCase().indexOf(q) >= 0) nodes.push(n);
    }
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i], text = node.nodeValue, low = text.toLowerCase(), frag = document.createDocumentFragment(), pos = 0, at;
      while ((at = low.indexOf(q, pos)) >= 0) {
        if (at > pos) frag.appendChild(document.createTextNode(text.slice(pos, at)));
        var mk = h("mark", null, text.slice(at, at + q.length));
        frag.appendChild(mk);
        made.push(mk);
        pos = at + q.length;
      }
      if (pos < text.length) frag.appendChild(document.createTextNode(text.slice(pos)));
      node.parentNode.replaceChild(frag, node);
    }
    this._marks = (this._marks || []).concat(made);
    return made;
  };

  RunView.prototype._unmark = function () {
    var parents = new Set();
    (this._marks || []).forEach(function (mk) {
      var p = mk.parentNode;
      if (!p) return;
      p.replaceChild(document.createTextNode(mk.textContent), mk);
      parents.add(p);
    });
    parents.forEach(function (p) { p.normalize(); });
    this._marks = [];
    if (this._outlined) { this._outlined.classList.remove("search-hit"); this._outlined = null; }
  };

  RunView.prototype._clearSearch = function () {
    this._unmark();
    this._hits = [];
    this._hitAt = -1;
    if (this.searchCountEl) this.searchCountEl.textContent = "";
  };

  // ---- the timeline: one canvas, lanes per RLM -------------------------------------------------

  RunView.prototype._lanes = function () {
    var lanes = [], self = this;
    function walk(r) {
      if (lanes.length >= TL_MAX_LANES) return;
      var items = [], boot0 = isNum(r.endT) && isNum(r.seconds) ? r.endT - r.seconds : r.startT;
      if (r.plain) {
        var end = isNum(r.endT) ? r.endT : self._now();
        if (isNum(r.startT)) items.push({start: r.startT, end: end, color: COLORS.plain, obj: r, label: "plain model call"});
      } else {
        self._boxItems(r, boot0, items);
        r.iterations.forEach(function (it) {
          if (it.n === 0 || !isNum(it.start)) return;
          items.push({start: it.start, end: it.t, color: COLORS.model, obj: it, label: "model call"});
          it.segs.forEach(function (s) { if (s.cell) cellItem(s.cell); });
          it.extra.forEach(cellItem);
        });
        if (r.thinking && !r.status && isNum(r.thinking.t)) {
          items.push({start: r.thinking.t, end: null, color: COLORS.model, obj: r, label: "model call (waiting for the reply)"});
        }
      }
      function cellItem(c) {
        if (!c.done || !isNum(c.start)) return;
        items.push({start: c.start, end: c.t, color: c.status === "ok" ? COLORS.cell : COLORS.failed, obj: c,
                    label: "cell" + (c.status === "ok" ? "" : " (" + c.status + ")")});
      }
      var span = [isNum(boot0) ? boot0 : null, isNum(r.endT) ? r.endT : null];
      lanes.push({kind: "main", rlm: r, label: "RLM " + r.id, items: items, span: span, tracks: 1,
                  strip: items.some(function (x) { return x.strip; })});
      var subs = [];
      r.iterations.forEach(function (it) {
        it.segs.forEach(function (s) { if (s.cell) subs.push.apply(subs, s.cell.subs); });
        it.extra.forEach(function (c) { subs.push.apply(subs, c.subs); });
      });
      if (r.pendingCell && !r.pendingCell.seg && r.pendingCell.iter.extra.indexOf(r.pendingCell) < 0) subs.push.apply(subs, r.pendingCell.subs);
      if (subs.length) {
        var sorted = subs.filter(function (s) { return isNum(s.start); }).sort(function (a, b) { return a.start - b.start; });
        var ends = [], maxTracks = 8, sitems = [];
        sorted.forEach(function (s) {
          var t = -1;
          for (var i = 0; i < ends.length; i++) if (ends[i] <= s.start) { t = i; break; }
          if (t < 0 && ends.length < maxTracks) { t = ends.length; ends.push(0); }
          if (t < 0) { t = 0; for (var j = 1; j < ends.length; j++) if (ends[j] < ends[t]) t = j; }
          ends[t] = Math.max(ends[t], s.t);
          sitems.push({start: s.start, end: s.t, track: t, obj: s, label: s.call,
                       color: s.status !== "ok" ? COLORS.subFailed : s.tool ? COLORS.tool : COLORS.sub});
        });
        var tools = subs.filter(function (x) { return x.tool; }).length;
        lanes.push({kind: "subs", rlm: r, items: sitems, tracks: Math.max(1, ends.length),
                    label: !tools ? plural(subs.length, "sub-call") : tools === subs.length ? plural(tools, "tool call") :
                      fmtInt(subs.length - tools) + " sub · " + fmtInt(tools) + " tool"});
      }
      r.children.forEach(walk);
    }
    this.run.roots.forEach(walk);
    return lanes;
  };

  // The sandbox strip under an RLM's lane: the wait for a start slot, the start, the context upload and
  // setup (from sandbox_ready's times); on a live page, what is still under way.
  RunView.prototype._boxItems = function (r, boot0, items) {
    var box = r.sandbox, ready = box.ready, live = this.live && !r.status;
    function item(start, end, color, label) {
      if (isNum(start)) start = Math.max(0, start);  // times derived from durations can fall before the run
      if (isNum(start) && (end === null || isNum(end) && end - start > 0.0005)) {
        items.push({start: start, end: end, color: color, obj: r, label: label, strip: true});
      }
    }
    if (ready && isNum(ready.t) && isNum(ready.seconds)) {
      var at = ready.t - ready.seconds;
      if (ready.new === false) { item(at, ready.t, COLORS.upload, "context upload (box reused)"); return; }
      var waited = isNum(ready.wait_s) ? ready.wait_s : box.wait ? box.wait.seconds : 0;
      item(at, at + waited, COLORS.queue, "waiting for a sandbox start slot");
      var started = isNum(ready.start_s) ? at + waited + ready.start_s : ready.t;
      item(at + waited, started, COLORS.boot, "sandbox start");
      item(started, ready.t, COLORS.upload, "context upload and setup");
    } else if (ready) {
      return;
    } else if (box.wait && isNum(box.wait.t)) {
      item(box.wait.t - box.wait.seconds, box.wait.t, COLORS.queue, "waited for a sandbox start slot");
      if (live) item(box.wait.t, null, COLORS.boot, "sandbox starting");
    } else if (box.queued && live) {
      item(box.queued.t, null, COLORS.queue, "waiting for a sandbox start slot");
    } else if (live && r.box) {
      item(r.startT, null, COLORS.boot, "sandbox starting");
    } else {  // a log from before sandbox_ready: the gap before the first reply
      var first = r.iterations.filter(function (x) { return isNum(x.start) && x.n !== 0; })[0];
      if (first) item(boot0, first.start, COLORS.boot, "sandbox start-up and context upload");
    }
  };

  RunView.prototype._drawTimeline = function () {
    var canvas = this.canvas, lanes = this._lanes();
    var width = this.tlWrap.clientWidth || 900, labelW = 110, padR = 14, axisH = 22, total = Math.max(this._wall(), 0.001);
    var now = this._now();
    var y = axisH + 4, i;
    lanes.forEach(function (l) {
      l.y = y;
      l.h = l.kind === "main" ? 16 : Math.max(8, l.tracks * 6);
      l.stripH = l.strip ? 6 : 0;
      y += l.h + l.stripH + (l.kind === "main" ? 6 : 10);
    });
    var height = Math.max(y + 4, 60), dpr = global.devicePixelRatio || 1;
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    var ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var plotW = Math.max(50, width - labelW - padR);
    function X(t) { return labelW + (t / total) * plotW; }
    this._tl = {lanes: lanes, X: X, total: total, labelW: labelW, plotW: plotW};
    // axis
    var step = niceStep(total / 8);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (var t = 0; t <= total + 1e-9; t += step) {
      var x = Math.round(X(t)) + 0.5;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath(); ctx.moveTo(x, axisH - 4); ctx.lineTo(x, height); ctx.stroke();
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.fillText(t === 0 ? "0" : fmtS(t), Math.min(Math.max(x, labelW + 14), width - 22), 9);
    }
    var marks = this.marks, marked = [];
    for (i = 0; i < lanes.length; i++) {
      var l = lanes[i];
      ctx.textAlign = "left";
      ctx.fillStyle = l.kind === "main" ? COLORS.label : COLORS.muted;
      ctx.font = (l.kind === "main" ? "600 " : "") + "11px system-ui, sans-serif";
      var indent = Math.min(l.rlm.depth, 4) * 8;
      ctx.fillText(clipLabel(ctx, l.label, labelW - 8 - indent), 4 + indent, l.y + l.h / 2);
      if (l.kind === "main" && l.span[0] !== null) {
        ctx.fillStyle = COLORS.span;
        var s1 = l.span[1] === null ? now : l.span[1];
        ctx.fillRect(X(l.span[0]), l.y - 2, Math.max(1, X(s1) - X(l.span[0])), l.h + 4);
      }
      var th = l.kind === "main" ? l.h : Math.max(3, Math.floor(l.h / l.tracks) - 1);
      var lastColor = null;
      for (var k = 0; k < l.items.length; k++) {
        var it = l.items[k], x0 = X(it.start), w = Math.max(1, X(isNum(it.end) ? it.end : now) - x0);
        var yy = it.strip ? l.y + l.h + 1 : l.kind === "main" ? l.y : l.y + it.track * (th + 1);
        var ih = it.strip ? l.stripH - 1 : th;
        if (it.color !== lastColor) { ctx.fillStyle = it.color; lastColor = it.color; }
        ctx.fillRect(x0, yy, w, ih);
        it.box = [x0, yy, w, ih];
        if (it.obj === marks.slowCall || it.obj === marks.slowCell || it.obj === marks.costly) marked.push(it);
      }
    }
    ctx.strokeStyle = COLORS.mark;
    ctx.lineWidth = 1.5;
    marked.forEach(function (it) { ctx.strokeRect(it.box[0] - 1.5, it.box[1] - 1.5, it.box[2] + 3, it.box[3] + 3); });
    var rlmCount = this.rlms.size, laneRlms = new Set(lanes.map(function (l) { return l.rlm; })).size;
    this.tlNote.textContent = rlmCount > laneRlms ? "The timeline shows the first " + fmtInt(laneRlms) + " of " +
        fmtInt(rlmCount) + " RLMs." : "Hover a bar for details; click it to jump to the step. Outlined bars: slowest and costliest steps.";
  };

  function niceStep(raw) {
    var p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-6)))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }

  function clipLabel(ctx, text, maxW) {
    if (ctx.measureText(text).width <= maxW) return text;
    while (text.length > 1 && ctx.measureText(text + "…").width > maxW) text = text.slice(0, -1);
    return text + "…";
  }

  RunView.prototype._tlHit = function (e) {
    if (!this._tl) return null;
    var rect = this.canvas.getBoundingClientRect(), x = e.clientX - rect.left, y = e.clientY - rect.top, best = null;
    var lanes = this._tl.lanes;
    for (var i = 0; i < lanes.length; i++) {
      var l = lanes[i];
      if (y < l.y - 3 || y > l.y + l.h + l.stripH + 3) continue;
      for (var k = 0; k < l.items.length; k++) {
        var b = l.items[k].box;
        if (!b || x < b[0] - 2 || x > b[0] + b[2] + 2 || y < b[1] - 2 || y > b[1] + b[3] + 2) continue;
        if (!best || b[2] < best.box[2]) best = l.items[k];
      }
    }
    return best;
  };

  RunView.prototype._tlHover = function (e) {
    var hit = this._tlHit(e), tip = this.tipEl;
    if (!hit) { tip.hidden = true; this.canvas.style.cursor = "default"; return; }
    this.canvas.style.cursor = "pointer";
    var o = hit.obj, lines = [];
    if (o.kind === "sub" && o.tool) {
      lines.push("tool " + o.call + " · " + o.status, fmtS(o.seconds), "arguments: " + oneLine(o.prompt, 160),
                 o.error ? "error: " + oneLine(o.error, 160) : "result: " + oneLine(o.response, 160));
    } else if (o.kind === "sub") {
      lines.push(o.call + (o.model ? " · " + o.model : "") + " · " + o.status, fmtS(o.seconds) + " · " +
                 fmtInt(o.inTok) + " → " + fmtInt(o.outTok) + " tokens" + (isNum(o.cost) ? " · " + fmtUsd(o.cost) : ""),
                 "prompt: " + oneLine(o.prompt, 160), o.error ? "error: " + oneLine(o.error, 160) : "answer: " + oneLine(o.response, 160));
    } else if (o.kind === "iter") {
      lines.push("RLM " + o.rlm.id + " · iteration " + o.n + " · model call", fmtS(o.modelS) + " · " + fmtInt(o.inTok) +
                 " → " + fmtInt(o.outTok) + " tokens" + (isNum(o.cost) ? " · " + fmtUsd(o.cost) : ""));
    } else if (o.kind === "cell") {
      lines.push("RLM " + o.rlm.id + " · iteration " + o.iter.n + " · cell " + (o.index || "") + " · " + o.status,
                 fmtS(o.wall) + (o.subs.length ? " · " + plural(o.subs.length, "sub-call") : ""), oneLine(o.code, 160));
    } else {
      var end = isNum(hit.end) ? hit.end : this._now();
      lines.push("RLM " + o.id + " · " + hit.label, fmtS(end - hit.start) + (isNum(hit.end) ? "" : " so far"));
    }
    lines.push("from " + fmtS(hit.start) + " to " + (isNum(hit.end) ? fmtS(hit.end) : "now"));
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, global.innerWidth - 440) + "px";
    tip.style.top = (e.clientY + 16) + "px";
  };

  // ---- the page: embedded events, and optionally a live stream ------------------------------------

  function readJson(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (err) { return null; }
  }

  function create(root, options) { return new RunView(root, options || {}); }

  function boot() {
    var config = readJson("rlm-config") || {}, events = readJson("rlm-events") || [];
    var root = document.getElementById("rlm-run");
    if (!root) return null;
    var view = create(root, {prices: config.prices, live: !!config.live_url});
    view.render(events);
    if (config.live_url && global.EventSource) {
      var source = new EventSource(config.live_url), lastId = -1;
      var onMessage = function (m) {
        var id = parseInt(m.lastEventId, 10);
        if (isFinite(id)) { if (id <= lastId) return; lastId = id; }
        var ev;
        try { ev = JSON.parse(m.data); } catch (err) { ev = {event: "unreadable", data: m.data}; }
        view.addEvent(ev);
        if (ev && ev.event === "final") source.close();
      };
      source.addEventListener("message", onMessage);
      (config.sse_event_names || []).forEach(function (name) { source.addEventListener(name, onMessage); });
      view.source = source;
    }
    global.rlmView = view;
    global.requestAnimationFrame(function () {
      setTimeout(function () {
        global.rlmRenderedAt = global.performance.now();
        document.documentElement.setAttribute("data-rendered", "true");
      }, 0);
    });
    return view;
  }

  global.RLMRunView = {create: create, boot: boot, highlightPython: highlightPython, splitReply: splitReply,
                       dom: {h: h, add: add, clear: clear}};
  if (document.getElementById("rlm-run")) boot();
})(window);
