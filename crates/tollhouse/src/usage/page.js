// The usage page: asks for an API key, keeps it in this tab's sessionStorage, sends it as a bearer
// header to the JSON routes beside this page, and draws what they return. No framework, no other
// host; every piece of data goes into the page as text, never as markup.
"use strict";

(function () {
  var STORAGE_KEY = "tollhouse.usage.key";
  // The JSON routes, relative to this page (the server writes it when it mounts the page).
  var API = document.querySelector('meta[name="usage-api"]').getAttribute("content");
  var SVG_NS = "http://www.w3.org/2000/svg";
  var numberFormat = new Intl.NumberFormat();

  var key = null;
  var loading = false;

  function $(id) {
    return document.getElementById(id);
  }

  function fmt(n) {
    return numberFormat.format(n);
  }

  // An element with attributes (class, data-*, aria-*, ...) and text or element children.
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (name) {
      if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, String(attrs[name]));
    });
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- the key -------------------------------------------------------------------------------

  function storedKey() {
    try {
      return window.sessionStorage.getItem(STORAGE_KEY);
    } catch (e) {
      return null;
    }
  }

  function keepKey(value) {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, value);
    } catch (e) {
      // Storage refused (private mode): the key lives in this page only.
    }
  }

  function forgetKey() {
    key = null;
    try {
      window.sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      // Nothing stored.
    }
  }

  function masked(value) {
    return "\u2026" + Array.from(value).slice(-4).join("");
  }

  function setStatus(text, isError) {
    var status = $("status");
    status.textContent = text;
    status.classList.toggle("error", !!isError);
  }

  function showSignedIn(signedIn) {
    $("key-section").hidden = signedIn;
    $("session-actions").hidden = !signedIn;
    $("usage").hidden = !signedIn;
    $("org-line").hidden = !signedIn;
    $("key-label").textContent = signedIn && key ? "Key " + masked(key) : "";
  }

  // ---- fetching ------------------------------------------------------------------------------

  function getJson(path) {
    return fetch(path, {
      headers: { Authorization: "Bearer " + key, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      if (response.ok) return response.json();
      return response
        .json()
        .catch(function () {
          return {};
        })
        .then(function (problem) {
          var error = new Error(problem.detail || problem.title || "HTTP " + response.status);
          error.status = response.status;
          throw error;
        });
    });
  }

  function load() {
    if (!key) return Promise.resolve();
    // One load at a time; a key given meanwhile is loaded when this one ends.
    if (loading) return Promise.resolve();
    loading = true;
    var asked = key;
    setStatus("Loading usage\u2026", false);
    return Promise.all([
      getJson(API),
      getJson(API + "/calls"),
      getJson(API + "/billing?days=31"),
      getJson(API + "/report")
    ])
      .then(function (results) {
        // Another key was given (or the key forgotten) meanwhile: these numbers are not its.
        if (asked !== key) return;
        keepKey(asked);
        render(results[0], results[1], results[2], results[3]);
        showSignedIn(true);
        var zone = results[0].time_zone;
        var clockTime = dateTimeFormat(zone, {
          hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
        });
        setStatus("Updated at " + clockTime.format(new Date()) + " (" + zone + ").", false);
      })
      .catch(function (error) {
        if (asked !== key) return;
        if (error.status === 401) {
          forgetKey();
          showSignedIn(false);
          setStatus("That key was not accepted: " + error.message, true);
          $("api-key").focus();
        } else {
          setStatus("Could not load usage: " + error.message, true);
        }
      })
      .then(function () {
        loading = false;
        if (key && asked !== key) load();
      });
  }

  // ---- time in the org's zone ----------------------------------------------------------------

  function dateTimeFormat(zone, options) {
    var withZone = Object.assign({}, options, { timeZone: zone });
    try {
      return new Intl.DateTimeFormat(undefined, withZone);
    } catch (e) {
      return new Intl.DateTimeFormat(undefined, options);
    }
  }

  function Clock(zone, today) {
    var isoDate = dateTimeFormat(zone, { year: "numeric", month: "2-digit", day: "2-digit" });
    var time = dateTimeFormat(zone, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    var timeSeconds = dateTimeFormat(zone, {
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
    });
    var dayTime = dateTimeFormat(zone, {
      weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23"
    });
    var dayTimeSeconds = dateTimeFormat(zone, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
    });

    function localDate(instant) {
      // YYYY-MM-DD of the instant in the zone, whatever the browser's locale.
      var parts = {};
      isoDate.formatToParts(instant).forEach(function (part) {
        parts[part.type] = part.value;
      });
      return parts.year + "-" + parts.month + "-" + parts.day;
    }

    this.reset = function (rfc3339) {
      var instant = new Date(rfc3339);
      if (isNaN(instant)) return rfc3339;
      return localDate(instant) === today ? "today at " + time.format(instant) : dayTime.format(instant);
    };

    this.logTime = function (rfc3339) {
      var instant = new Date(rfc3339);
      if (isNaN(instant)) return rfc3339;
      return localDate(instant) === today ? timeSeconds.format(instant) : dayTimeSeconds.format(instant);
    };
  }

  var plainDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
  var longDate = new Intl.DateTimeFormat(undefined, {
    weekday: "short", year: "numeric", month: "short", day: "numeric", timeZone: "UTC"
  });

  function dateLabel(isoDate, long) {
    var date = new Date(isoDate + "T00:00:00Z");
    if (isNaN(date)) return isoDate;
    return (long ? longDate : plainDate).format(date);
  }

  function interval(seconds) {
    // Sub-second polling is common in runaway loops; "every 0 s" would hide it.
    if (seconds < 1) return Math.max(1, Math.round(seconds * 1000)) + " ms";
    if (seconds < 10) return (Math.round(seconds * 10) / 10) + " s";
    if (seconds < 90) return Math.round(seconds) + " s";
    var minutes = seconds / 60;
    if (minutes < 10) return (Math.round(minutes * 10) / 10) + " min";
    if (minutes < 90) return Math.round(minutes) + " min";
    return (Math.round(minutes / 6) / 10) + " h";
  }

  // ---- drawing -------------------------------------------------------------------------------

  var UNITS = { requests: "requests", points: "points", latency_ms: "ms" };
  var UNIT = { requests: "request", points: "point", latency_ms: "ms" };

  // The dimension's unit for `n` of it: "1 point", "2 points".
  function unitOf(dimension, n) {
    return (n === 1 ? UNIT : UNITS)[dimension] || dimension;
  }
  var WINDOW_NAMES = {
    second: "second", minute: "minute", hour: "hour", day: "day", week: "week", month: "month", year: "year"
  };

  function render(usage, calls, billing, report) {
    var clock = new Clock(usage.time_zone, usage.date);

    $("org-name").textContent = usage.org;
    $("org-date").textContent = dateLabel(usage.date, true);
    $("org-zone").textContent = usage.time_zone;
    Array.prototype.forEach.call(document.querySelectorAll(".zone-name"), function (node) {
      node.textContent = usage.time_zone;
    });

    $("calls-today").textContent = fmt(usage.calls_today);
    $("billable-today").textContent = fmt(usage.billable_today);
    $("in-flight").textContent = fmt(usage.in_flight);
    $("concurrency-note").textContent =
      usage.concurrency === null || usage.concurrency === undefined
        ? "no limit on requests in flight"
        : "of at most " + fmt(usage.concurrency) + " at once";

    renderLimits(usage.limits, clock);
    renderBilling(billing.days, usage.date);
    renderEndpoints(report.endpoints);
    renderRepeated(report.repeated);
    renderLog(calls.calls, clock);
  }

  function renderLimits(limits, clock) {
    var list = $("limits");
    clear(list);
    limits.forEach(function (limit) {
      var unit = UNITS[limit.dimension] || limit.dimension;
      var used = Math.max(0, limit.limit - limit.remaining);
      var share = limit.limit > 0 ? limit.remaining / limit.limit : 0;
      var level = share <= 0.1 ? "bad" : share <= 0.25 ? "warn" : "ok";
      // The bar shows what is left, as its numbers do: full when nothing is used.
      var fill = el("span", { "class": "bar-fill " + level });
      fill.style.width = (Math.min(1, share) * 100).toFixed(1) + "%";
      var windows = limit.rate
        ? [fmt(limit.rate.amount) + " per " + (WINDOW_NAMES[limit.rate.per] || limit.rate.per) +
            ", bursts of " + fmt(limit.rate.burst)]
        : limit.tiers.map(function (tier) {
          return WINDOW_NAMES[tier.window] || tier.window;
        });

      var tiers = null;
      if (limit.tiers.length > 1) {
        tiers = el(
          "ul",
          { "class": "tiers", "aria-label": limit.name + " by window" },
          limit.tiers.map(function (tier) {
            return el("li", { "data-window": tier.window }, [
              "per " + (WINDOW_NAMES[tier.window] || tier.window) + ": " + fmt(tier.remaining) + " of " +
                fmt(tier.capacity) + " left, refills " + clock.reset(tier.reset)
            ]);
          })
        );
      }

      var remainingClass = level === "bad" ? (limit.remaining === 0 ? "empty" : "low") : level === "warn" ? "low" : null;
      list.appendChild(
        el("li", { "class": "limit", "data-limit": limit.name }, [
          el("div", { "class": "limit-head" }, [
            el("span", null, [
              el("span", { "class": "limit-name" }, limit.name),
              el("span", { "class": "limit-dim" },
                limit.rate ? unit + ", " + windows[0] : unit + " per " + windows.join(" \u2192 "))
            ]),
            el("span", { "class": "limit-numbers" }, [
              el("strong", { "class": "limit-remaining" }, fmt(limit.remaining)),
              " of " + fmt(limit.limit) + " " + unitOf(limit.dimension, limit.limit) + " left"
            ])
          ]),
          el(
            "div",
            {
              "class": "bar",
              role: "meter",
              "aria-label": limit.name + " remaining",
              "aria-valuemin": 0,
              "aria-valuemax": limit.limit,
              "aria-valuenow": limit.remaining,
              "aria-valuetext": fmt(limit.remaining) + " of " + fmt(limit.limit) + " " +
                unitOf(limit.dimension, limit.limit) + " left"
            },
            fill
          ),
          limit.rate ? el("div", { "class": "limit-meta", "data-rate": "bucket" }, [
            el("span", { "class": "rate-available" }, fmt(limit.rate.available) + " " +
              unitOf(limit.dimension, limit.rate.available) + " there now"),
            el("span", { "class": "rate-full" }, limit.rate.available >= limit.rate.burst
              ? "full" : "full " + clock.reset(limit.rate.full_at))
          ]) : el("div", { "class": "limit-meta" }, [
            el("span", remainingClass ? { "class": remainingClass } : null, fmt(used) + " " + unitOf(limit.dimension, used) + " used"),
            el("span", { "class": "limit-reset" }, "resets " + clock.reset(limit.reset))
          ]),
          tiers
        ])
      );
    });
    if (limits.length === 0) list.appendChild(el("li", { "class": "hint" }, "Your plan sets no limits."));
  }

  function niceStep(max) {
    var rough = Math.max(1, max) / 4;
    var power = Math.pow(10, Math.floor(Math.log10(rough)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= rough) return Math.max(1, steps[i] * power);
    }
    return 10 * power;
  }

  function renderBilling(days, today) {
    var chart = $("billing-chart");
    var rows = $("billing-rows");
    clear(chart);
    clear(rows);
    var width = 760, height = 230, left = 48, right = 8, top = 16, bottom = 30;
    var plotWidth = width - left - right, plotHeight = height - top - bottom;
    var max = days.reduce(function (m, day) {
      return Math.max(m, day.billable);
    }, 0);
    var step = niceStep(max);
    var top_value = Math.max(step, Math.ceil(max / step) * step);
    var total = days.reduce(function (sum, day) {
      return sum + day.billable;
    }, 0);
    var todayCount = days.length ? days[days.length - 1].billable : 0;

    var root = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      role: "img",
      "aria-label": "Billable calls per day for the last " + days.length + " days: " + fmt(total) +
        " in total, " + fmt(todayCount) + " today"
    });
    for (var value = 0; value <= top_value; value += step) {
      var y = top + plotHeight - (value / top_value) * plotHeight;
      root.appendChild(svg("line", { "class": "grid", x1: left, x2: width - right, y1: y, y2: y }));
      root.appendChild(
        svg("text", { "class": "axis-label", x: left - 6, y: y + 4, "text-anchor": "end" }, fmt(value))
      );
    }
    var band = plotWidth / Math.max(1, days.length);
    var barWidth = Math.max(2, band * 0.68);
    var showValues = String(fmt(max)).length * 6.2 < band;
    days.forEach(function (day, index) {
      var isToday = day.date === today;
      var barHeight = (day.billable / top_value) * plotHeight;
      var x = left + index * band + (band - barWidth) / 2;
      var y = top + plotHeight - barHeight;
      var label = dateLabel(day.date, true) + ": " + fmt(day.billable) + " billable calls";
      root.appendChild(
        svg(
          "rect",
          {
            "class": "bar-rect" + (isToday ? " today" : ""),
            x: x.toFixed(1),
            y: y.toFixed(1),
            width: barWidth.toFixed(1),
            height: Math.max(day.billable > 0 ? 1 : 0, barHeight).toFixed(1),
            rx: 2,
            "data-date": day.date,
            "data-billable": day.billable
          },
          svg("title", null, label)
        )
      );
      if (showValues && day.billable > 0) {
        root.appendChild(
          svg("text", { "class": "value-label", x: (x + barWidth / 2).toFixed(1), y: (y - 3).toFixed(1), "text-anchor": "middle" },
            fmt(day.billable))
        );
      }
      var fromEnd = days.length - 1 - index;
      if (isToday || fromEnd % 7 === 0) {
        root.appendChild(
          svg("text", {
            "class": "axis-label",
            x: (x + barWidth / 2).toFixed(1),
            y: height - 10,
            "text-anchor": "middle"
          }, isToday ? "today" : dateLabel(day.date, false))
        );
      }
      rows.appendChild(el("tr", null, [el("td", null, dateLabel(day.date, true)), el("td", null, fmt(day.billable))]));
    });
    chart.appendChild(root);
    $("billing-caption").textContent =
      "Last " + days.length + " days in your organisation's zone: " + fmt(total) + " billable calls, " +
      fmt(todayCount) + " of them today.";
  }

  function methodBadge(method) {
    return el("span", { "class": "method" }, method);
  }

  function renderEndpoints(endpoints) {
    var body = $("endpoint-rows");
    clear(body);
    var total = endpoints.reduce(function (sum, endpoint) {
      return sum + endpoint.calls;
    }, 0);
    endpoints.slice(0, 20).forEach(function (endpoint) {
      var share = el("span", { "class": "share", "aria-hidden": "true" }, el("span"));
      share.firstChild.style.width = (total > 0 ? (endpoint.calls / total) * 100 : 0).toFixed(1) + "%";
      body.appendChild(
        el("tr", null, [
          el("td", { "class": "path" }, [methodBadge(endpoint.method), endpoint.route, share]),
          el("td", { "class": "num" }, fmt(endpoint.calls)),
          el("td", { "class": "num" }, fmt(endpoint.points))
        ])
      );
    });
    $("endpoints-empty").hidden = endpoints.length > 0;
  }

  function renderRepeated(repeated) {
    var list = $("repeated");
    clear(list);
    repeated.forEach(function (request) {
      var every = request.mean_interval_s;
      var reads = request.method === "GET" || request.method === "HEAD";
      var tip;
      if (!reads) {
        tip = "The same " + request.method + " again and again: send the changes together in one batched call, " +
          "or check whether a retry loop sends it more often than needed.";
      } else if (every > 0) {
        tip = "Polling every " + interval(every * 2) + " instead of every " + interval(every) +
          " would have saved about " + fmt(Math.floor(request.count / 2)) +
          " of today's calls; a webhook would save nearly all of them.";
      } else {
        tip = "Sent in a burst: ask once after the batch of work is done, not after each step.";
      }
      list.appendChild(
        el("li", { "data-path": request.path, "data-count": request.count }, [
          el("div", null, [
            methodBadge(request.method),
            el("span", { "class": "req" }, request.path)
          ]),
          el("div", null, [
            el("span", { "class": "count" }, fmt(request.count) + " times"),
            " today" + (every > 0 ? ", about every " + interval(every) + "." : ".")
          ]),
          el("p", { "class": "tip" }, tip)
        ])
      );
    });
    $("repeated-empty").hidden = repeated.length > 0;
    $("advice").hidden = repeated.length === 0;
  }

  function renderLog(calls, clock) {
    var body = $("log-rows");
    clear(body);
    calls.forEach(function (call) {
      var statusClass = call.status >= 500 ? "status-5xx" : call.status >= 400 ? "status-4xx" : null;
      var outcome = call.outcome + (call.limit ? " \u00b7 " + call.limit : "");
      body.appendChild(
        el("tr", { "data-outcome": call.outcome }, [
          el("td", null, el("time", { datetime: call.at }, clock.logTime(call.at))),
          el("td", null, call.key),
          el("td", null, methodBadge(call.method)),
          el("td", { "class": "path", title: call.route ? "route " + call.route : null }, call.path),
          el("td", { "class": "num" + (statusClass ? " " + statusClass : "") }, String(call.status)),
          el("td", { "class": "num" }, fmt(call.cost)),
          el("td", { "class": "num" }, fmt(call.latency_ms) + " ms"),
          el("td", null, el("span", { "class": "outcome " + call.outcome }, outcome))
        ])
      );
    });
    $("logs-count").textContent =
      calls.length === 0 ? "(no calls yet)" : "(the last " + fmt(calls.length) + " calls, newest first)";
  }

  // ---- wiring --------------------------------------------------------------------------------

  function start() {
    $("key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = $("api-key");
      var value = input.value.trim();
      if (!value) {
        setStatus("Paste an API key first.", true);
        input.focus();
        return;
      }
      input.value = "";
      key = value;
      load();
    });
    $("refresh").addEventListener("click", function () {
      load();
    });
    $("forget-key").addEventListener("click", function () {
      forgetKey();
      showSignedIn(false);
      setStatus("The key was removed from this tab.", false);
      $("api-key").focus();
    });

    key = storedKey();
    if (key) {
      load();
    } else {
      showSignedIn(false);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
