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

  // -- start ------------------------------------------------------------------

  var data = pageData();
  localizeTimes(document);
  if (data.page === "ward") initWard(data);
  else if (data.page === "patient") initPatient(data);
})();
