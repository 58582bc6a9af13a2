/* medtwin dashboard: keeps the server-rendered pages live over /ws/events.
 *
 * Page settings come from <script type="application/json" id="page-data">.
 * Everything from the server or the socket is written with textContent or
 * attributes, never as HTML. Formatting mirrors medtwin/apps/dashboard/routes.py.
 */
(function () {
  "use strict";

  var DASH = "\u2013";

  function pageData() {
    var el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  }

  // -- formatting (same rules as routes.py) -----------------------------------

  // The glucose and dosing sections' charts and tables: a plot's width in its panel (px),
  // a number to fixed decimals and one to three significant digits (a dash for none).
  function width(el) {
    return Math.max(280, el.querySelector(".plot").clientWidth || 480);
  }

  function fmt(v, decimals) {
    return typeof v === "number" && isFinite(v) ? roundHalfAway(v, decimals) : DASH;
  }

  function sig(v) {
    if (typeof v !== "number" || !isFinite(v)) return DASH;
    return Number(v.toPrecision(3)).toString();
  }

  function roundHalfAway(value, decimals) {
    var factor = Math.pow(10, decimals);
    var scaled = Math.round(value * factor * 1e9) / 1e9;
    var whole = Math.sign(scaled) * Math.floor(Math.abs(scaled) + 0.5);
    return (whole / factor + 0).toFixed(decimals);
  }

  function numberText(vital, decimals) {
    if (!vital) return DASH;
    return typeof vital.value === "number" ? roundHalfAway(vital.value, decimals) : String(vital.value);
  }

  function isStale(vital, twinTime, windowS) {
    if (!vital) return false;
    return (Date.parse(twinTime) - Date.parse(vital.time)) / 1000 > windowS;
  }

  function formatTime(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return iso;
    var sameDay = date.toDateString() === new Date().toDateString();
    var options = sameDay
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" };
    return date.toLocaleString(undefined, options);
  }

  function localizeTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var iso = times[i].getAttribute("datetime");
      times[i].textContent = formatTime(iso);
      times[i].title = iso;
    }
  }

  function cellModel(field, twin, data) {
    var vitals = twin.vitals || {};
    var first = vitals[field.codes[0]];
    var text;
    if (field.kind === "bp") {
      var second = vitals[field.codes[1]];
      text = !first && !second ? DASH : numberText(first, 0) + "/" + numberText(second, 0);
    } else if (field.kind === "o2") {
      if (!first || typeof first.value !== "number") {
        text = DASH;
      } else {
        var fio2 = roundHalfAway(first.value, 0);
        text = Number(fio2) > data.air_fio2 ? "O2 " + fio2 + "%" : "Air";
      }
    } else if (field.kind === "text") {
      text = first ? String(first.value) : DASH;
    } else {
      text = numberText(first, field.decimals);
    }
    var measured = field.codes.filter(function (c) { return vitals[c]; }).map(function (c) { return vitals[c]; });
    var parts = measured.slice(0, 1).map(function (v) { return "measured " + v.time; });
    var flagSet = {};
    measured.forEach(function (v) { (v.flags || []).forEach(function (f) { flagSet[f] = true; }); });
    var flags = Object.keys(flagSet).sort();
    if (flags.length) parts.push("flags: " + flags.join(", "));
    var stale = isStale(first, twin.time, data.window_s);
    if (stale) parts.push("older than the NEWS2 window");
    return { field: field.field, text: text, title: parts.join("; "), stale: stale, flagged: flags.length > 0 };
  }

  function news2Cell(news2, labels) {
    var band = news2.band || "none";
    if (news2.score === null || news2.score === undefined) {
      var missing = (news2.missing || []).map(function (p) { return labels[p] || p; });
      return {
        text: "partial " + news2.partial_score,
        band: band,
        title: missing.length ? "Missing: " + missing.join(", ") : "Not determinable",
      };
    }
    return { text: String(news2.score), band: band, title: "NEWS2 " + news2.score + ", " + band + " risk" };
  }

  function setTitle(el, title) {
    if (title) el.title = title;
    else el.removeAttribute("title");
  }

  // -- the event socket -------------------------------------------------------

  function connect(data, handlers) {
    var live = document.getElementById("live");
    var delay = 1000;
    function setState(state, text) {
      if (!live) return;
      live.dataset.state = state;
      live.textContent = text;
    }
    function open() {
      var scheme = location.protocol === "https:" ? "wss:" : "ws:";
      var socket = new WebSocket(scheme + "//" + location.host + data.root + "/ws/events");
      var opened = false;
      socket.addEventListener("open", function () {
        opened = true;
        delay = 1000;
        setState("open", "live");
        handlers.onOpen();
      });
      socket.addEventListener("message", function (message) {
        var event;
        try {
          event = JSON.parse(message.data);
        } catch (e) {
          return;
        }
        handlers.onEvent(event);
      });
      socket.addEventListener("close", function () {
        if (opened) handlers.onClose();
        setState("closed", "reconnecting\u2026");
        var wait = delay * (0.75 + Math.random() * 0.5);
        delay = Math.min(delay * 2, 30000);
        setTimeout(open, wait);
      });
    }
    open();
  }

  // -- the ward ---------------------------------------------------------------

  function initWard(data) {
    var tbody = document.getElementById("ward-rows");
    var rows = new Map();
    tbody.querySelectorAll("tr[data-patient]").forEach(function (tr) {
      rows.set(tr.dataset.patient, tr);
    });

    function createRow(patient) {
      var tr = document.createElement("tr");
      tr.dataset.patient = patient;
      var th = document.createElement("th");
      th.scope = "row";
      th.dataset.field = "patient";
      var link = document.createElement("a");
      link.href = data.root + "/patients/" + encodeURIComponent(patient);
      link.textContent = patient;
      th.appendChild(link);
      tr.appendChild(th);
      data.fields.forEach(function (field) {
        var td = document.createElement("td");
        td.dataset.field = field.field;
        tr.appendChild(td);
      });
      var news2 = document.createElement("td");
      news2.dataset.field = "news2";
      tr.appendChild(news2);
      var before = null;
      rows.forEach(function (other, id) {
        if (id > patient && (before === null || id < before.dataset.patient)) before = other;
      });
      tbody.insertBefore(tr, before);
      var empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      rows.set(patient, tr);
      return tr;
    }

    function update(twin) {
      var tr = rows.get(twin.patient) || createRow(twin.patient);
      var held = tr.dataset.time ? Date.parse(tr.dataset.time) : -Infinity;
      if (Date.parse(twin.time) < held) return; // an older snapshot than shown
      tr.dataset.time = twin.time;
      data.fields.forEach(function (field) {
        var cell = cellModel(field, twin, data);
        var td = tr.querySelector('td[data-field="' + field.field + '"]');
        td.textContent = cell.text;
        setTitle(td, cell.title);
        td.classList.toggle("stale", cell.stale);
        td.classList.toggle("flagged", cell.flagged);
      });
      var model = news2Cell(twin.news2, data.parameter_labels);
      var td = tr.querySelector('td[data-field="news2"]');
      var changed = td.textContent !== model.text || td.dataset.band !== model.band;
      td.textContent = model.text;
      td.dataset.band = model.band;
      td.className = "news2 band-" + model.band;
      setTitle(td, model.title);
      if (changed) {
        td.classList.add("updated");
        setTimeout(function () { td.classList.remove("updated"); }, 3000);
      }
    }

    function resync() {
      fetch(data.root + "/api/v1/twins", { headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (twins) { twins.forEach(update); })
        .catch(function () { /* the socket's reconnect will try again */ });
    }

    var alarms = initAlarms(data);
    connect(data, {
      onOpen: function () {
        resync();
        alarms.resync();
      },
      onClose: function () {},
      onEvent: function (event) {
        document.dispatchEvent(new CustomEvent("medtwin:event", { detail: event }));
        if (event.type === "twin.updated") update(event);
        else if (event.type === "events.dropped") {
          resync();
          alarms.resync();
        } else alarms.onEvent(event);
      },
    });
  }

  // -- alarms on the ward page -------------------------------------------------

  var PRIORITY_RANK = { high: 0, medium: 1, low: 2 };

  function initAlarms(data) {
    var tbody = document.getElementById("alarm-rows");
    var count = document.getElementById("alarm-count");
    var dialog = document.getElementById("ack-dialog");
    var form = document.getElementById("ack-form");
    var reason = document.getElementById("ack-reason");
    var what = document.getElementById("ack-what");
    var error = document.getElementById("ack-error");
    var alarms = new Map(); // id -> alarm JSON
    var taking = null; // the alarm the dialog acknowledges

    function cell(tr, field, text) {
      var td = document.createElement("td");
      td.className = field;
      td.dataset.field = field;
      if (text !== undefined) td.textContent = text;
      tr.appendChild(td);
      return td;
    }

    function row(alarm) {
      var tr = document.createElement("tr");
      tr.dataset.alarm = alarm.id;
      tr.dataset.priority = alarm.priority;
      tr.className = "alarm priority-" + alarm.priority + " " + alarm.status;
      cell(tr, "priority", alarm.priority);
      var patient = cell(tr, "patient");
      var link = document.createElement("a");
      link.href = data.root + "/patients/" + encodeURIComponent(alarm.patient);
      link.textContent = alarm.patient;
      patient.appendChild(link);
      cell(tr, "title", alarm.title).title = alarm.rule;
      var since = document.createElement("time");
      since.setAttribute("datetime", alarm.raised);
      since.textContent = formatTime(alarm.raised);
      since.title = alarm.raised;
      cell(tr, "since").appendChild(since);
      cell(tr, "escalation", "level " + alarm.level + " \u00b7 " + alarm.recipient);
      var status = cell(tr, "status");
      var action = cell(tr, "action");
      if (alarm.status === "acknowledged" && alarm.acknowledged) {
        status.textContent = "acknowledged by " + alarm.acknowledged.by;
        status.title = alarm.acknowledged.reason;
      } else {
        status.textContent = alarm.status;
        var button = document.createElement("button");
        button.type = "button";
        button.className = "ack";
        button.textContent = "Acknowledge";
        button.addEventListener("click", function () { ask(alarm); });
        action.appendChild(button);
      }
      return tr;
    }

    function render() {
      var list = Array.from(alarms.values()).sort(function (a, b) {
        var rank = PRIORITY_RANK[a.priority] - PRIORITY_RANK[b.priority];
        return rank !== 0 ? rank : Date.parse(a.raised) - Date.parse(b.raised);
      });
      tbody.textContent = "";
      if (!list.length) {
        var empty = document.createElement("tr");
        empty.className = "empty";
        var td = document.createElement("td");
        td.colSpan = 7;
        td.textContent = "No active alarms.";
        empty.appendChild(td);
        tbody.appendChild(empty);
      }
      list.forEach(function (alarm) { tbody.appendChild(row(alarm)); });
      count.textContent = String(list.length);
      count.classList.toggle("some", list.some(function (a) { return a.status === "active"; }));
    }

    function put(alarm) {
      if (alarm.status === "resolved") alarms.delete(alarm.id);
      else alarms.set(alarm.id, alarm);
    }

    function resync() {
      fetch(data.root + "/api/v1/alarms", { headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (list) {
          if (!list) return;
          alarms.clear();
          list.forEach(put);
          render();
        })
        .catch(function () { /* the socket's reconnect will try again */ });
    }

    function ask(alarm) {
      taking = alarm;
      what.textContent = alarm.priority.toUpperCase() + " \u00b7 " + alarm.patient + " \u00b7 " + alarm.title;
      reason.value = "";
      error.textContent = "";
      dialog.showModal();
      reason.focus();
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = reason.value.trim();
      if (!text || !taking) {
        error.textContent = "A reason is required.";
        return;
      }
      var alarm = taking;
      fetch(data.root + "/api/v1/alarms/" + encodeURIComponent(alarm.id) + "/acknowledge", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ reason: text }),
      })
        .then(function (r) {
          return r.json().then(function (body) { return { ok: r.ok, status: r.status, body: body }; });
        })
        .then(function (answer) {
          if (!answer.ok) {
            var detail = answer.body && (answer.body.error ? answer.body.error.message : answer.body.detail);
            error.textContent = "Not acknowledged: " + (detail || "HTTP " + answer.status);
            if (answer.status === 409) resync();
            return;
          }
          put(answer.body);
          render();
          taking = null;
          dialog.close();
        })
        .catch(function () { error.textContent = "Not acknowledged: the server did not answer."; });
    });
    document.getElementById("ack-cancel").addEventListener("click", function () {
      taking = null;
      dialog.close();
    });

    return {
      resync: resync,
      onEvent: function (event) {
        if (event.alarm && String(event.type).indexOf("alarm.") === 0) {
          put(event.alarm);
          render();
        }
      },
    };
  }

  // -- the patient page -------------------------------------------------------

  var COLORS = ["#0b6e99", "#c05621", "#2f855a", "#6b46c1"];

  function initPatient(data) {
    var acvpu = data.acvpu;
    var rangeS = data.default_range_s;
    var clock = { server: Date.parse(data.now), client: Date.now() };
    var values = {}; // code -> Map(time s -> value)
    var charts = []; // {el, cfg, plot}
    var news2Chart = null;
    var status = document.getElementById("chart-status");
    var current = document.getElementById("current");

    function serverNow() {
      return clock.server + (Date.now() - clock.client);
    }
    function windowRange() {
      var end = serverNow() / 1000;
      return [end - rangeS, end + 60];
    }

    function numeric(code, value) {
      if (typeof value === "number") return value;
      if (code === "80288-4") {
        var index = acvpu.indexOf(value);
        return index < 0 ? null : index;
      }
      return null;
    }

    function axisFor(unit, coded) {
      var axis = { label: unit, labelSize: 18, size: 48 };
      if (coded) {
        axis.splits = function () { return [0, 1, 2, 3, 4]; };
        axis.values = function (u, splits) {
          return splits.map(function (v) { return acvpu[v] || ""; });
        };
      }
      return axis;
    }

    // Room around the data; a flat line sits mid-chart instead of stretching the axis to 0.
    function padRange(u, min, max) {
      if (min === null || max === null || !isFinite(min) || !isFinite(max)) return [0, 1];
      var pad = Math.max((max - min) * 0.1, Math.abs(max) * 0.02, 1);
      return [min - pad, max + pad];
    }

    function plotWidth(el) {
      return Math.max(240, el.querySelector(".plot").clientWidth || 400);
    }

    function makePlot(el, series, yAxis, yScale, hooks) {
      var opts = {
        width: plotWidth(el),
        height: 180,
        cursor: { sync: { key: "medtwin" } },
        scales: { x: { time: true, range: function () { return windowRange(); } }, y: yScale },
        axes: [{ label: "time", labelSize: 18 }, yAxis],
        series: [{}].concat(series),
        hooks: hooks || {},
      };
      var empty = [[]].concat(series.map(function () { return []; }));
      return new uPlot(opts, empty, el.querySelector(".plot"));
    }

    data.charts.forEach(function (cfg) {
      var el = document.getElementById("chart-" + cfg.id);
      var series = cfg.series.map(function (pair, i) {
        return {
          label: pair[1],
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: true,
          points: { show: true, size: 4 },
          value: function (u, v) {
            if (v === null || v === undefined) return DASH;
            return cfg.coded ? acvpu[v] || DASH : String(v);
          },
        };
      });
      cfg.series.forEach(function (pair) { values[pair[0]] = values[pair[0]] || new Map(); });
      var yScale = cfg.coded ? { range: [-0.5, 4.5] } : { range: padRange };
      charts.push({ el: el, cfg: cfg, plot: makePlot(el, series, axisFor(cfg.unit, cfg.coded), yScale) });
    });

    function shadeBands(u) {
      var ctx = u.ctx;
      var box = u.bbox;
      function band(from, to, color) {
        var top = Math.max(box.top, u.valToPos(to, "y", true));
        var bottom = Math.min(box.top + box.height, u.valToPos(from, "y", true));
        if (bottom <= top) return;
        ctx.save();
        ctx.fillStyle = color;
        ctx.fillRect(box.left, top, box.width, bottom - top);
        ctx.restore();
      }
      band(4.5, 6.5, "rgba(255, 179, 102, 0.18)");
      band(6.5, 40, "rgba(198, 40, 40, 0.10)");
    }

    var news2El = document.getElementById("chart-news2");
    news2Chart = {
      el: news2El,
      plot: makePlot(
        news2El,
        [
          { label: "NEWS2", stroke: "#102a43", width: 2, points: { show: true, size: 5 } },
          { label: "partial", stroke: "#9aa5b1", width: 1, dash: [4, 4], points: { show: false } },
        ],
        axisFor("score", false),
        { range: function (u, min, max) { return [0, Math.max(8, (max || 0) + 1)]; } },
        { drawClear: [shadeBands] }
      ),
    };

    function redraw(chart) {
      var codes = chart.cfg.series.map(function (pair) { return pair[0]; });
      var times = new Set();
      codes.forEach(function (code) { values[code].forEach(function (v, t) { times.add(t); }); });
      var xs = Array.from(times).sort(function (a, b) { return a - b; });
      var points = 0;
      var ys = codes.map(function (code) {
        return xs.map(function (t) {
          var v = values[code].has(t) ? values[code].get(t) : null;
          if (v !== null) points++;
          return v;
        });
      });
      chart.plot.setData([xs].concat(ys));
      chart.el.dataset.points = String(points);
    }

    function fetchJson(url) {
      return fetch(url, { headers: { Accept: "application/json" } }).then(function (r) {
        if (!r.ok) throw new Error(url + ": " + r.status);
        return r.json();
      });
    }

    function loadHistory() {
      var codes = Object.keys(values);
      var from = new Date(serverNow() - rangeS * 1000).toISOString();
      var latest = new Map();
      function page(cursor, count) {
        var params = new URLSearchParams();
        codes.forEach(function (c) { params.append("code", c); });
        params.set("from", from);
        params.set("limit", "5000");
        if (cursor) params.set("cursor", cursor);
        return fetchJson(data.observations_url + "?" + params.toString()).then(function (answer) {
          answer.items.forEach(function (item) {
            var key = item.source + "\u0000" + item.id;
            var held = latest.get(key);
            if (!held || held.version <= item.version) latest.set(key, item);
          });
          if (answer.next_cursor && count < 200) return page(answer.next_cursor, count + 1);
          return latest;
        });
      }
      return page(null, 0).then(function (items) {
        codes.forEach(function (code) { values[code] = new Map(); });
        items.forEach(function (item) {
          if (item.status === "entered-in-error" || !values[item.code]) return;
          var v = numeric(item.code, item.value);
          if (v !== null) values[item.code].set(Date.parse(item.time) / 1000, v);
        });
        charts.forEach(redraw);
      });
    }

    function loadNews2() {
      var from = new Date(serverNow() - rangeS * 1000).toISOString();
      return fetchJson(data.news2_url + "?from=" + encodeURIComponent(from)).then(function (points) {
        var xs = [], score = [], partial = [];
        points.forEach(function (p) {
          xs.push(Date.parse(p.time) / 1000);
          score.push(p.score);
          partial.push(p.partial_score);
        });
        news2Chart.plot.setData([xs, score, partial]);
        news2El.dataset.points = String(xs.length);
      });
    }

    function loadAll() {
      if (status) status.textContent = "loading\u2026";
      return Promise.all([loadHistory(), loadNews2()])
        .then(function () { if (status) status.textContent = ""; })
        .catch(function () { if (status) status.textContent = "history unavailable; retrying on reconnect"; });
    }

    var news2Timer = null;
    function refreshNews2Soon() {
      clearTimeout(news2Timer);
      news2Timer = setTimeout(function () { loadNews2().catch(function () {}); }, 300);
    }

    function refreshCurrent() {
      if (window.htmx && current) window.htmx.trigger(current, "twin-updated");
    }

    function onEvent(event) {
      document.dispatchEvent(new CustomEvent("medtwin:event", { detail: event }));
      if (event.type === "events.dropped") {
        loadAll();
        refreshCurrent();
        return;
      }
      if (event.type !== "twin.updated" || event.patient !== data.patient) return;
      clock = { server: Date.parse(event.time), client: Date.now() };
      var vitals = event.vitals || {};
      charts.forEach(function (chart) {
        var touched = false;
        chart.cfg.series.forEach(function (pair) {
          var vital = vitals[pair[0]];
          if (!vital) return;
          var v = numeric(pair[0], vital.value);
          if (v === null) return;
          var t = Date.parse(vital.time) / 1000;
          if (values[pair[0]].get(t) !== v) {
            values[pair[0]].set(t, v);
            touched = true;
          }
        });
        if (touched) redraw(chart);
      });
      refreshNews2Soon();
      refreshCurrent();
    }

    var reconnecting = false;
    connect(data, {
      onOpen: function () {
        if (reconnecting) loadAll();
        else refreshNews2Soon();
        reconnecting = false;
        refreshCurrent();
      },
      onClose: function () { reconnecting = true; },
      onEvent: onEvent,
    });

    document.getElementById("range").addEventListener("change", function (e) {
      rangeS = Number(e.target.value) || data.default_range_s;
      loadAll();
    });

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        charts.concat([news2Chart]).forEach(function (chart) {
          chart.plot.setSize({ width: plotWidth(chart.el), height: 180 });
        });
      }, 150);
    });

    document.body.addEventListener("htmx:afterSwap", function (e) { localizeTimes(e.target); });

    loadAll();
  }

  // == glucose twin (issue 8): forecast band, personal parameters, what-if ========
  //
  // Shown on the patient page when the patient has a glucose twin (GET .../glucose
  // answers 200); redrawn when a glucose.forecast result is announced on the socket
  // (the patient page forwards its events as "medtwin:event" DOM events).

  var GLUCOSE_MODULE = "glucose.forecast";
  var BRANCH_COLORS = ["#102a43", "#0b6e99", "#c05621", "#2f855a", "#6b46c1"];
  var MAX_BRANCHES = 4;
  var PLANNED_TEXT = {
    "meal": function (i) { return "meal " + sig(i.amount) + " g"; },
    "insulin-bolus": function (i) { return "bolus " + sig(i.amount) + " U"; },
    "insulin-basal": function (i) { return "basal " + sig(i.amount) + " U/h"; },
  };

  function rgba(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + ", " + ((n >> 8) & 255) + ", " + (n & 255) + ", " + alpha + ")";
  }

  function initGlucose(data) {
    var section = document.getElementById("glucose");
    if (!section || typeof uPlot === "undefined") return;
    var url = data.root + "/api/v1/patients/" + encodeURIComponent(data.patient) + "/glucose";
    var whatifUrl = data.root + "/api/v1/twins/" + encodeURIComponent(data.patient) + "/whatif";
    var status = document.getElementById("glucose-status");
    var chartEl = document.getElementById("glucose-chart");
    var whatifEl = document.getElementById("whatif-chart");
    var form = document.getElementById("whatif-form");
    var error = document.getElementById("whatif-error");
    var plot = null;
    var whatifPlot = null;
    var latest = null; // the last GET .../glucose answer
    var scenarios = []; // the branches the form added
    var loading = null;

    // Measures the drawn 90 % band (canvas pixels at the last horizon): tests and
    // screen readers can tell that the band is really on the chart.
    function markBand(u) {
      var n = u.data[0].length;
      if (!n || u.data[4][n - 1] === null || u.data[4][n - 1] === undefined) return;
      var top = u.valToPos(u.data[4][n - 1], "y");
      var bottom = u.valToPos(u.data[3][n - 1], "y");
      chartEl.dataset.band90Px = String(Math.round(bottom - top));
    }

    function glucosePlot() {
      var opts = {
        width: width(chartEl),
        height: 220,
        legend: { show: false },
        cursor: { sync: { key: "medtwin" } },
        scales: { x: { time: true }, y: { range: function (u, min, max) {
          return [Math.min(40, min === null ? 40 : min - 10), Math.max(250, max === null ? 250 : max + 10)];
        } } },
        axes: [{ label: "time", labelSize: 18 }, { label: "mg/dL", labelSize: 18, size: 48 }],
        series: [
          {},
          { label: "CGM", stroke: "#52606d", width: 1, spanGaps: true, points: { show: true, size: 4 } },
          { label: "median", stroke: "#0b6e99", width: 2, dash: [6, 4], spanGaps: true, points: { show: false } },
          { label: "90% low", stroke: "transparent", spanGaps: true, points: { show: false } },
          { label: "90% high", stroke: "transparent", spanGaps: true, points: { show: false } },
          { label: "50% low", stroke: "transparent", spanGaps: true, points: { show: false } },
          { label: "50% high", stroke: "transparent", spanGaps: true, points: { show: false } },
        ],
        bands: [
          { series: [4, 3], fill: "rgba(11, 110, 153, 0.14)" },
          { series: [6, 5], fill: "rgba(11, 110, 153, 0.30)" },
        ],
        hooks: { draw: [markBand] },
      };
      return new uPlot(opts, [[], [], [], [], [], [], []], chartEl.querySelector(".plot"));
    }

    function readingsMap(answer) {
      var map = new Map();
      (answer.readings || []).forEach(function (r) { map.set(Date.parse(r.time) / 1000, r.value); });
      return map;
    }

    // The band fans out from the newest reading at the twin's time (else its estimate).
    function anchor(answer, readings) {
      var t = Date.parse(answer.time) / 1000;
      var value = answer.glucose_now;
      readings.forEach(function (v, at) { if (at <= t && at > t - 600) value = v; });
      return { t: t, value: value };
    }

    function drawForecast(answer) {
      var readings = readingsMap(answer);
      var start = anchor(answer, readings);
      var forecast = new Map();
      forecast.set(start.t, { median: start.value, lower50: start.value, upper50: start.value, lower90: start.value, upper90: start.value });
      answer.forecast.forEach(function (p) { forecast.set(Date.parse(p.time) / 1000, p); });
      var xs = Array.from(new Set(Array.from(readings.keys()).concat(Array.from(forecast.keys()))));
      xs.sort(function (a, b) { return a - b; });
      function column(name) {
        return xs.map(function (t) { var p = forecast.get(t); return p ? p[name] : null; });
      }
      var series = [
        xs,
        xs.map(function (t) { return readings.has(t) ? readings.get(t) : null; }),
        column("median"),
        column("lower90"),
        column("upper90"),
        column("lower50"),
        column("upper50"),
      ];
      if (!plot) plot = glucosePlot();
      plot.setData(series);
      chartEl.dataset.points = String(readings.size);
      chartEl.dataset.forecast = answer.id;
    }

    function fillTables(answer) {
      var body = document.querySelector("#glucose-forecast tbody");
      body.replaceChildren();
      answer.forecast.forEach(function (p) {
        var tr = document.createElement("tr");
        tr.dataset.horizon = String(p.horizon_min);
        [p.horizon_min + " min", fmt(p.median, 0), fmt(p.lower50, 0) + DASH + fmt(p.upper50, 0),
         fmt(p.lower90, 0) + DASH + fmt(p.upper90, 0)].forEach(function (text, i) {
          var td = document.createElement(i ? "td" : "th");
          if (!i) td.scope = "row";
          td.textContent = text;
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      var params = document.querySelector("#glucose-parameters tbody");
      params.replaceChildren();
      answer.parameters.forEach(function (p) {
        var tr = document.createElement("tr");
        tr.dataset.parameter = p.name;
        var th = document.createElement("th");
        th.scope = "row";
        th.textContent = p.name;
        th.title = p.description;
        var value = document.createElement("td");
        value.textContent = sig(p.value);
        var unit = document.createElement("span");
        unit.className = "unit";
        unit.textContent = p.unit;
        value.appendChild(unit);
        var range = document.createElement("td");
        range.textContent = sig(p.lower90) + DASH + sig(p.upper90);
        tr.append(th, value, range);
        params.appendChild(tr);
      });
      // What the forecast counts on: interventions recorded for after the twin's time.
      var planned = document.getElementById("glucose-planned");
      planned.replaceChildren();
      (answer.planned || []).forEach(function (item) {
        var li = document.createElement("li");
        li.dataset.kind = item.kind;
        var when = document.createElement("time");
        when.setAttribute("datetime", item.time);
        li.append(PLANNED_TEXT[item.kind] ? PLANNED_TEXT[item.kind](item) : item.kind + " " + sig(item.amount) + " " + item.unit, " at ", when);
        planned.appendChild(li);
      });
      document.getElementById("glucose-planned-block").hidden = !(answer.planned || []).length;
      document.getElementById("glucose-statement").textContent = answer.statement;
      var when = document.getElementById("glucose-time");
      when.setAttribute("datetime", answer.time);
      var last = document.getElementById("glucose-last");
      last.setAttribute("datetime", answer.last_reading);
      localizeTimes(section);
      document.getElementById("glucose-basal").textContent = fmt(answer.basal_u_per_h, 2);
      document.getElementById("glucose-provenance").href = data.root + answer.provenance;
    }

    function load() {
      if (loading) return loading;
      loading = fetch(url, { headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 404) return null; // no glucose twin (yet)
          if (!r.ok) throw new Error(String(r.status));
          return r.json();
        })
        .then(function (answer) {
          if (!answer) return;
          latest = answer;
          section.hidden = false;
          fillTables(answer);
          drawForecast(answer);
          if (status) status.textContent = "";
        })
        .catch(function () { if (status) status.textContent = "forecast unavailable; retrying on the next update"; })
        .finally(function () { loading = null; });
      return loading;
    }

    // -- what-if ----------------------------------------------------------------

    function number(id) {
      var v = Number(document.getElementById(id).value);
      return isFinite(v) ? v : NaN;
    }

    function scenarioName(sc) {
      var parts = [];
      if (sc.bolus_u) parts.push("bolus " + sc.bolus_u + " U");
      if (sc.meal_g) parts.push("meal " + sc.meal_g + " g");
      if (sc.basal_change_u_per_h) parts.push("basal " + (sc.basal_change_u_per_h > 0 ? "+" : "") + sc.basal_change_u_per_h + " U/h");
      var name = parts.length ? parts.join(", ") : "as planned";
      return sc.at_min ? name + " in " + sc.at_min + " min" : name;
    }

    function drawBranches(answer) {
      var readings = latest ? readingsMap(latest) : new Map();
      var branchTimes = answer.branches[0].time.map(function (iso) { return Date.parse(iso) / 1000; });
      var start = Date.parse(answer.time) / 1000;
      var xs = Array.from(new Set(Array.from(readings.keys()).concat([start], branchTimes)));
      xs.sort(function (a, b) { return a - b; });
      var index = new Map(branchTimes.map(function (t, i) { return [t, i]; }));
      var startValue = latest ? anchor(latest, readings).value : null;
      var series = [{}, { label: "CGM", stroke: "#52606d", width: 1, spanGaps: true, points: { show: true, size: 3 } }];
      var columns = [xs, xs.map(function (t) { return readings.has(t) ? readings.get(t) : null; })];
      var bands = [];
      var legend = document.getElementById("whatif-legend");
      legend.replaceChildren();
      answer.branches.forEach(function (branch, b) {
        var color = BRANCH_COLORS[b % BRANCH_COLORS.length];
        ["median", "lower90", "upper90"].forEach(function (band) {
          columns.push(xs.map(function (t) {
            if (t === start) return startValue;
            return index.has(t) ? branch[band][index.get(t)] : null;
          }));
        });
        var first = series.length;
        series.push({ label: branch.name, stroke: color, width: 2, spanGaps: true, points: { show: false } });
        series.push({ label: branch.name + " 90% low", stroke: "transparent", spanGaps: true, points: { show: false } });
        series.push({ label: branch.name + " 90% high", stroke: "transparent", spanGaps: true, points: { show: false } });
        bands.push({ series: [first + 2, first + 1], fill: rgba(color, 0.12) });
        var li = document.createElement("li");
        li.dataset.branch = branch.name;
        var swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.backgroundColor = color;
        li.append(swatch, document.createTextNode(branch.name));
        legend.appendChild(li);
      });
      if (whatifPlot) whatifPlot.destroy();
      whatifEl.hidden = false;
      whatifPlot = new uPlot(
        {
          width: width(whatifEl),
          height: 260,
          legend: { show: false },
          scales: { x: { time: true }, y: { range: function (u, min, max) {
            return [Math.min(40, min === null ? 40 : min - 10), Math.max(250, max === null ? 250 : max + 10)];
          } } },
          axes: [{ label: "time", labelSize: 18 }, { label: "mg/dL", labelSize: 18, size: 48 }],
          series: series,
          bands: bands,
        },
        columns,
        whatifEl.querySelector(".plot")
      );
      whatifEl.dataset.branches = String(answer.branches.length);
    }

    // Runs ``wanted`` (the branches to show); they become the form's list once drawn.
    function simulate(wanted) {
      error.textContent = "";
      return fetch(whatifUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ scenarios: wanted, horizon_min: 240 }),
      })
        .then(function (r) {
          return r.json().then(function (body) { return { ok: r.ok, body: body }; });
        })
        .then(function (answer) {
          if (!answer.ok) {
            var e = answer.body.error || {};
            error.textContent = (e.location ? e.location + ": " : "") + (e.message || "the what-if failed");
            return;
          }
          scenarios = wanted;
          drawBranches(answer.body);
        })
        .catch(function () { error.textContent = "the what-if could not be run"; });
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var sc = {
        bolus_u: number("whatif-bolus"),
        meal_g: number("whatif-meal"),
        basal_change_u_per_h: number("whatif-basal"),
        at_min: Math.round(number("whatif-start")),
      };
      // The limits of the API, checked here first so a slip is named at once.
      var problem = null;
      if ([sc.bolus_u, sc.meal_g, sc.basal_change_u_per_h, sc.at_min].some(isNaN)) problem = "Enter a number in every field.";
      else if (sc.bolus_u < 0 || sc.bolus_u > 75) problem = "Bolus must be 0" + DASH + "75 U.";
      else if (sc.meal_g < 0 || sc.meal_g > 500) problem = "Meal must be 0" + DASH + "500 g.";
      else if (Math.abs(sc.basal_change_u_per_h) > 35) problem = "Basal change must be within \u00b135 U/h.";
      else if (sc.at_min < 0 || sc.at_min >= 240) problem = "Start must be 0" + DASH + "235 min from now.";
      if (problem) {
        error.textContent = problem;
        return;
      }
      sc.name = scenarioName(sc);
      var wanted = scenarios.filter(function (other) { return other.name !== sc.name; });
      if (wanted.length >= MAX_BRANCHES) wanted.shift();
      wanted.push(sc);
      simulate(wanted);
    });

    document.getElementById("whatif-clear").addEventListener("click", function () {
      scenarios = [];
      error.textContent = "";
      if (whatifPlot) whatifPlot.destroy();
      whatifPlot = null;
      whatifEl.hidden = true;
      document.getElementById("whatif-legend").replaceChildren();
      whatifEl.dataset.branches = "0";
    });

    document.addEventListener("medtwin:event", function (e) {
      var event = e.detail || {};
      // Missed events: reload, if this patient has (or had) a twin to show.
      if (event.type === "events.dropped") {
        if (latest || section.dataset.twin === "yes") load();
      }
      else if (event.type === "derived.updated" && event.module === GLUCOSE_MODULE && event.patient === data.patient) load();
    });

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        if (plot) plot.setSize({ width: width(chartEl), height: 220 });
        if (whatifPlot) whatifPlot.setSize({ width: width(whatifEl), height: 260 });
      }, 150);
    });

    if (section.dataset.twin === "yes") load();
  }

  // == deterioration risk (issue 9): learned risk with its SHAP factors ============
  //
  // Patient page: the "Deterioration risk" section, filled from GET .../risk (hidden
  // while no model is served: 404), reloaded when a risk.deterioration result is
  // announced. Ward page: the risk column, updated from the same announcements.

  var RISK_MODULE = "risk.deterioration";
  var RISK_CHANNELS = {
    HR: "Heart rate", O2Sat: "SpO\u2082", Temp: "Temperature", SBP: "Systolic BP",
    MAP: "Mean arterial pressure", DBP: "Diastolic BP", Resp: "Respiration rate",
    GCS: "Glasgow coma score", Lactate: "Lactate", Creatinine: "Creatinine",
    Bilirubin_total: "Bilirubin", Platelets: "Platelets", WBC: "White cells",
    Age: "Age", Gender: "Gender", HospAdmTime: "Hours since hospital admission",
    ICULOS: "Hours in ICU",
  };

  // "HR_mean6h" -> "Heart rate, mean over 6 h" (names of medtwin.models.learning.features).
  function riskFeatureLabel(name) {
    var channel = name;
    var kind = "";
    var best = 0;
    Object.keys(RISK_CHANNELS).forEach(function (c) {  // the longest channel prefix
      if (c.length <= best) return;
      if (name === c) { channel = c; kind = ""; best = c.length; }
      else if (name.indexOf(c + "_") === 0) { channel = c; kind = name.slice(c.length + 1); best = c.length; }
    });
    var label = RISK_CHANNELS[channel] || channel;
    var m;
    if (!kind) return label;
    if (kind === "last") return label + ", newest";
    if (kind === "since_h") return label + ", hours since measured";
    if ((m = /^(mean|min|max|slope|delta)(\d+)h$/.exec(kind))) {
      var what = { mean: "mean", min: "lowest", max: "highest", slope: "trend (per h)",
        delta: "newest minus mean" }[m[1]];
      return label + ", " + what + " over " + m[2] + " h";
    }
    if ((m = /^n(\d+)h$/.exec(kind))) return label + ", measurements in " + m[1] + " h";
    return label + ", " + kind;
  }

  function riskPercent(p) {
    if (p === null || p === undefined || isNaN(p)) return DASH;
    var pct = 100 * p;
    if (pct < 1) return "<1%";
    if (pct > 99) return ">99%";
    return Math.round(pct) + "%";
  }

  function riskValueText(v) {
    if (v === null || v === undefined) return "missing";
    var a = Math.abs(v);
    var decimals = a >= 100 ? 0 : a >= 10 ? 1 : 2;
    return String(Number(v.toFixed(decimals)));
  }

  function riskLevel(p, threshold) {
    if (p === null || p === undefined || isNaN(p)) return "none";
    if (threshold !== null && threshold !== undefined && p >= threshold) return "high";
    return "low";
  }

  function initRisk(data) {
    var section = document.getElementById("risk");
    if (!section) return;
    var url = data.root + "/api/v1/patients/" + encodeURIComponent(data.patient) + "/risk";
    var status = document.getElementById("risk-status");
    var tbody = document.querySelector("#risk-factors tbody");

    function row(factor, scale) {
      var tr = document.createElement("tr");
      tr.dataset.feature = factor.feature;
      var name = document.createElement("th");
      name.scope = "row";
      name.textContent = riskFeatureLabel(factor.feature);
      name.title = factor.feature;
      var value = document.createElement("td");
      value.className = "risk-factor-value";
      value.textContent = riskValueText(factor.value);
      var effect = document.createElement("td");
      var bar = document.createElement("div");
      bar.className = "risk-bar";
      var fill = document.createElement("span");
      var up = factor.contribution > 0;
      fill.className = up ? "risk-up" : "risk-down";
      fill.style.width = (scale > 0 ? (50 * Math.abs(factor.contribution)) / scale : 0) + "%";
      bar.appendChild(fill);
      var size = document.createElement("span");
      size.className = "risk-contribution";
      size.textContent = (up ? "+" : "\u2212") + Math.abs(factor.contribution).toFixed(2);
      effect.title = (up ? "raises" : "lowers") + " the risk: SHAP " + factor.contribution.toFixed(3) + " log-odds";
      effect.appendChild(bar);
      effect.appendChild(size);
      tr.appendChild(name);
      tr.appendChild(value);
      tr.appendChild(effect);
      return tr;
    }

    function show(body) {
      section.hidden = false;
      var value = document.getElementById("risk-value");
      value.textContent = riskPercent(body.risk);
      value.dataset.level = riskLevel(body.risk, null);
      document.getElementById("risk-model").textContent =
        "model " + body.model.name + " v" + body.model.version;
      document.getElementById("risk-statement").textContent = body.statement;
      var time = document.getElementById("risk-time");
      if (body.as_of) {
        time.setAttribute("datetime", body.as_of);
        time.textContent = formatTime(body.as_of);
      } else {
        time.removeAttribute("datetime");
        time.textContent = DASH;
      }
      var link = document.getElementById("risk-provenance");
      link.href = data.root + body.provenance;
      var factors = body.factors || [];
      var scale = 0;
      factors.forEach(function (f) { scale = Math.max(scale, Math.abs(f.contribution)); });
      tbody.replaceChildren.apply(tbody, factors.map(function (f) { return row(f, scale); }));
      if (!factors.length) {
        var tr = document.createElement("tr");
        tr.className = "empty";
        var td = document.createElement("td");
        td.colSpan = 3;
        td.textContent = "No readings yet: no risk.";
        tr.appendChild(td);
        tbody.appendChild(tr);
      }
      status.textContent = "";
    }

    // Asked for only while a model is served (GET /api/v1/models says which), so the
    // page never fetches a 404; a risk result announced later means one is.
    var served = false;
    var loading = false;
    var again = false;  // asked again while loading: load once more after
    function load() {
      if (loading) { again = true; return; }
      loading = true;
      var ready = served
        ? Promise.resolve(true)
        : fetch(data.root + "/api/v1/models", { headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : { served: null }; })
          .then(function (body) { served = !!body.served; return served; });
      ready
        .then(function (ok) {
          if (!ok) return { status: 404, ok: false };
          return fetch(url, { headers: { Accept: "application/json" } });
        })
        .then(function (r) {
          if (r.status === 404) { section.hidden = true; return null; }
          if (!r.ok) throw new Error(String(r.status));
          return r.json();
        })
        .then(function (body) { if (body) show(body); })
        .catch(function () { status.textContent = "could not load the risk"; })
        .then(function () {
          loading = false;
          if (again) { again = false; load(); }
        });
    }

    document.addEventListener("medtwin:event", function (e) {
      var event = e.detail || {};
      if (event.type === "events.dropped") load();
      else if (event.type === "derived.updated" && event.module === RISK_MODULE && event.patient === data.patient) {
        served = true;
        load();
      }
    });
    load();
  }

  function initWardRisk(data) {
    var risk = data.risk;
    if (!risk) return; // no model served: no column
    var tbody = document.getElementById("ward-rows");

    function cellOf(patient) {
      var tr = tbody.querySelector('tr[data-patient="' + CSS.escape(patient) + '"]');
      if (!tr) return null;
      var td = tr.querySelector('td[data-field="risk"]');
      if (!td) { // a row the ward made live: give it the column
        td = document.createElement("td");
        td.dataset.field = "risk";
        td.className = "risk-cell";
        tr.appendChild(td);
      }
      return td;
    }

    function put(patient, p) {
      var td = cellOf(patient);
      if (!td) return;
      var text = riskPercent(p);
      var changed = td.textContent !== text;
      td.textContent = text;
      td.dataset.level = riskLevel(p, risk.threshold);
      if (changed) {
        td.classList.add("updated");
        setTimeout(function () { td.classList.remove("updated"); }, 3000);
      }
    }

    function resync() {
      tbody.querySelectorAll("tr[data-patient]").forEach(function (tr) {
        var patient = tr.dataset.patient;
        fetch(data.root + "/api/v1/patients/" + encodeURIComponent(patient) + "/risk",
          { headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (body) { if (body) put(patient, body.risk); })
          .catch(function () {});
      });
    }

    document.addEventListener("medtwin:event", function (e) {
      var event = e.detail || {};
      if (event.type === "events.dropped") resync();
      else if (event.type === "twin.updated") cellOf(event.patient);
      else if (event.type === "derived.updated" && event.module === RISK_MODULE) {
        var out = event.outputs && event.outputs.risk;
        put(event.patient, out ? out.value : null);
      }
    });
  }

  // == vancomycin dosing (issue 8): MAP fit, dose, predicted curve with its band ====
  //
  // Patient page: the "Vancomycin dosing" section, shown when GET .../dosing/vancomycin
  // lists vancomycin doses or levels. The form POSTs a target and draws the answer:
  // measured levels as points, the predicted steady-state interval (from the next
  // 5-minute mark) with its 5-95 % band. A stored recommendation is redrawn on load
  // with its own request (the same data give the same result id).

  function initDosing(data) {
    var section = document.getElementById("dosing");
    if (!section || typeof uPlot === "undefined") return;
    var url = data.root + "/api/v1/patients/" + encodeURIComponent(data.patient) + "/dosing/vancomycin";
    var form = document.getElementById("dosing-form");
    var error = document.getElementById("dosing-error");
    var status = document.getElementById("dosing-status");
    var chartEl = document.getElementById("dosing-chart");
    var result = document.getElementById("dosing-result");
    var kind = document.getElementById("dosing-kind");
    var plot = null;
    var summary = null;
    var loading = null;
    var DEFAULTS = { auc24: [400, 600], trough: [10, 15] };

    function timeCell(iso) {
      var t = document.createElement("time");
      t.setAttribute("datetime", iso);
      t.textContent = iso;
      return t;
    }

    function row(cells, key) {
      var tr = document.createElement("tr");
      cells.forEach(function (cell, i) {
        var td = document.createElement(i ? "td" : "th");
        if (!i) td.scope = "row";
        if (cell instanceof Node) td.appendChild(cell);
        else td.textContent = cell;
        tr.appendChild(td);
      });
      if (key) tr.dataset.key = key;
      return tr;
    }

    function fillLevels(levels, doses) {
      var body = document.querySelector("#dosing-levels tbody");
      body.replaceChildren();
      levels.forEach(function (lv) {
        var fitted = typeof lv.predicted_mg_l === "number" ? fmt(lv.predicted_mg_l, 1) : DASH;
        body.appendChild(row([timeCell(lv.time), lv.kind, fmt(lv.conc_mg_l, 1) + " mg/L", fitted], lv.id));
      });
      var total = doses.reduce(function (s, d) { return s + (d.amount_mg || 0); }, 0);
      document.getElementById("dosing-doses").textContent = doses.length
        ? doses.length + " vancomycin dose" + (doses.length === 1 ? "" : "s") + ", " + fmt(total, 0) + " mg in all, the last at " + formatTime(doses[doses.length - 1].time) + "."
        : "No vancomycin doses on record.";
      localizeTimes(section);
    }

    // Measures the drawn band (canvas pixels at the curve's peak): tests and screen
    // readers can tell that it is really on the chart.
    function markBand(u) {
      var hi = u.data[4];
      var lo = u.data[3];
      var best = -1;
      for (var i = 0; i < hi.length; i++) {
        if (hi[i] === null || lo[i] === null) continue;
        var px = u.valToPos(lo[i], "y") - u.valToPos(hi[i], "y");
        if (px > best) best = px;
      }
      if (best >= 0) chartEl.dataset.band90Px = String(Math.round(best));
    }

    function draw(answer) {
      var levels = new Map();
      answer.levels.forEach(function (lv) { levels.set(Date.parse(lv.time) / 1000, lv.conc_mg_l); });
      var curve = new Map();
      answer.curve.time.forEach(function (iso, i) { curve.set(Date.parse(iso) / 1000, i); });
      var xs = Array.from(new Set(Array.from(levels.keys()).concat(Array.from(curve.keys()))));
      xs.sort(function (a, b) { return a - b; });
      var trough = answer.target.kind === "trough";
      function col(name) {
        return xs.map(function (t) { return curve.has(t) ? answer.curve[name][curve.get(t)] : null; });
      }
      function flat(value) {
        return xs.map(function (t) { return trough && curve.has(t) ? value : null; });
      }
      var columns = [
        xs,
        xs.map(function (t) { return levels.has(t) ? levels.get(t) : null; }),
        col("conc_mg_l"),
        col("lower90"),
        col("upper90"),
        flat(answer.target.low),
        flat(answer.target.high),
      ];
      if (plot) plot.destroy();
      plot = new uPlot(
        {
          width: width(chartEl),
          height: 240,
          legend: { show: false },
          scales: { x: { time: true }, y: { range: function (u, min, max) {
            return [0, Math.max(25, max === null ? 25 : max * 1.1)];
          } } },
          axes: [{ label: "time", labelSize: 18 }, { label: "mg/L", labelSize: 18, size: 48 }],
          series: [
            {},
            { label: "levels", stroke: "#c05621", width: 0, paths: function () { return null; }, points: { show: true, size: 8, fill: "#c05621" } },
            { label: "predicted", stroke: "#0b6e99", width: 2, points: { show: false } },
            { label: "5%", stroke: "transparent", points: { show: false } },
            { label: "95%", stroke: "transparent", points: { show: false } },
            { label: "target low", stroke: "#2f855a", width: 1, dash: [4, 4], points: { show: false } },
            { label: "target high", stroke: "#2f855a", width: 1, dash: [4, 4], points: { show: false } },
          ],
          bands: [{ series: [4, 3], fill: "rgba(11, 110, 153, 0.18)" }],
          hooks: { draw: [markBand] },
        },
        columns,
        chartEl.querySelector(".plot")
      );
      chartEl.dataset.levels = String(levels.size);
      chartEl.dataset.curvePoints = String(curve.size);
      chartEl.dataset.result = answer.id;
    }

    function fill(answer) {
      result.hidden = false;
      var t = answer.target;
      var unit = t.kind === "trough" ? "mg/L" : "mg\u00b7h/L";
      var what = t.kind === "trough" ? "Trough" : "AUC24";
      document.getElementById("dosing-dose").textContent =
        fmt(answer.dose_mg, 0) + " mg every " + fmt(answer.interval_h, 0) + " h, infused over " +
        fmt(answer.infusion_h, 2) + " h (" + fmt(answer.daily_dose_mg, 0) + " mg/day)";
      document.getElementById("dosing-predicted").textContent =
        what + " predicted at steady state " + sig(answer.predicted) + " " + unit +
        " (90% range " + sig(answer.predicted_lower90) + DASH + sig(answer.predicted_upper90) +
        "); target " + sig(t.low) + DASH + sig(t.high) + " " + unit +
        (answer.in_target ? "." : answer.dose_chosen ? ": this dose misses it." : ": the nearest dose step misses it.") +
        (t.kind === "trough" ? " AUC24 " + fmt(answer.auc24_mg_h_l, 0) + " mg\u00b7h/L." : " Trough " + fmt(answer.trough_mg_l, 1) + " mg/L.");
      var params = document.querySelector("#dosing-parameters tbody");
      params.replaceChildren();
      answer.parameters.forEach(function (p) {
        var value = document.createElement("span");
        value.textContent = sig(p.value) + " ";
        var u = document.createElement("span");
        u.className = "unit";
        u.textContent = p.unit;
        value.appendChild(u);
        var range = p.lower90 === null ? DASH : sig(p.lower90) + DASH + sig(p.upper90);
        params.appendChild(row([p.name, value, range, sig(p.typical)], p.name));
      });
      var c = answer.covariates;
      document.getElementById("dosing-covariates").textContent =
        "Weight " + fmt(c.weight_kg, 1) + " kg, creatinine " + fmt(c.creatinine_mg_dl, 2) +
        " mg/dL, CrCL (Cockcroft-Gault) " + fmt(c.crcl_ml_min, 0) + " mL/min" +
        (c.dialysis ? ", on hemodialysis" : "") + (answer.converged ? "." : "; the fit did not converge.");
      document.getElementById("dosing-model").textContent = "Model: " + answer.model + ".";
      document.getElementById("dosing-model").title = answer.citation;
      document.getElementById("dosing-provenance").href = data.root + answer.provenance;
      document.getElementById("dosing-statement").textContent = answer.statement;
      fillLevels(answer.levels, answer.doses);
      draw(answer);
    }

    function request() {
      var low = Number(document.getElementById("dosing-low").value);
      var high = Number(document.getElementById("dosing-high").value);
      var infusion = Number(document.getElementById("dosing-infusion").value);
      var interval = Number(document.getElementById("dosing-interval").value);
      var problem = null;
      if (!isFinite(low) || !isFinite(high) || low <= 0 || high <= low) problem = "The target needs 0 < from < to.";
      else if (!isFinite(infusion) || infusion <= 0 || infusion >= interval) problem = "The infusion must be shorter than the interval.";
      var doseText = document.getElementById("dosing-what-if").value.trim();
      var dose = Number(doseText);
      if (!problem && doseText && (!isFinite(dose) || dose <= 0 || dose > 4000)) problem = "A dose to try must be over 0 and at most 4000 mg.";
      if (problem) {
        error.textContent = problem;
        return null;
      }
      var body = {
        target: { kind: kind.value, low: low, high: high },
        interval_h: interval,
        infusion_h: infusion,
        dialysis: document.getElementById("dosing-dialysis").checked,
      };
      if (doseText) body.dose_mg = dose; // what if this dose: predicted, not recommended
      return body;
    }

    function recommend(body) {
      error.textContent = "";
      if (status) status.textContent = "fitting\u2026";
      return fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      })
        .then(function (r) {
          return r.json().then(function (answer) { return { ok: r.ok, body: answer }; });
        })
        .then(function (answer) {
          if (status) status.textContent = "";
          if (!answer.ok) {
            var e = answer.body.error || {};
            error.textContent = (e.location ? e.location + ": " : "") + (e.message || "no recommendation");
            return;
          }
          fill(answer.body);
        })
        .catch(function () {
          if (status) status.textContent = "";
          error.textContent = "the recommendation could not be computed";
        });
    }

    function restore(parameters) {
      var t = parameters.target || {};
      if (t.kind) kind.value = t.kind;
      if (typeof t.low === "number") document.getElementById("dosing-low").value = String(t.low);
      if (typeof t.high === "number") document.getElementById("dosing-high").value = String(t.high);
      if (parameters.interval_h) document.getElementById("dosing-interval").value = String(parameters.interval_h);
      if (parameters.infusion_h) document.getElementById("dosing-infusion").value = String(parameters.infusion_h);
      document.getElementById("dosing-dialysis").checked = !!parameters.dialysis;
      document.getElementById("dosing-what-if").value = parameters.dose_mg ? String(parameters.dose_mg) : "";
    }

    function load() {
      if (loading) return loading;
      loading = fetch(url, { headers: { Accept: "application/json" } })
        .then(function (r) {
          if (!r.ok) throw new Error(String(r.status));
          return r.json();
        })
        .then(function (answer) {
          var first = summary === null;
          summary = answer;
          if (!answer.doses.length && !answer.levels.length) return;
          section.hidden = false;
          document.getElementById("dosing-statement").textContent = answer.statement;
          if (result.hidden) fillLevels(answer.levels, answer.doses);
          // A stored recommendation: drawn again with its own request, once.
          if (first && answer.latest && answer.latest.parameters) {
            restore(answer.latest.parameters);
            var body = request();
            if (body) recommend(body);
          }
        })
        .catch(function () {})
        .finally(function () { loading = null; });
      return loading;
    }

    kind.addEventListener("change", function () {
      var d = DEFAULTS[kind.value];
      document.getElementById("dosing-low").value = String(d[0]);
      document.getElementById("dosing-high").value = String(d[1]);
    });

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var body = request();
      if (body) recommend(body);
    });

    // A new dose or level of this patient: show the section (the form stays as it is).
    var reloadTimer = null;
    document.addEventListener("medtwin:event", function (e) {
      var event = e.detail || {};
      var mine = event.patient === data.patient;
      if (event.type === "events.dropped" || (mine && (event.type === "twin.intervention" || event.type === "twin.updated"))) {
        clearTimeout(reloadTimer);
        reloadTimer = setTimeout(load, 500);
      }
    });

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        if (plot) plot.setSize({ width: width(chartEl), height: 240 });
      }, 150);
    });

    load();
  }

  // -- start ------------------------------------------------------------------

  var data = pageData();
  localizeTimes(document);
  if (data.page === "ward") {
    initWard(data);
    initWardRisk(data);
  }
  else if (data.page === "patient") {
    initPatient(data);
    initGlucose(data);
    initRisk(data);
    initDosing(data);
  }
})();
