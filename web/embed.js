/*! Leaseline embed v1 - per-visitor phone numbers for classified ads. */
(function (w, d) {
  "use strict";
  if (w.Leaseline) return;
  var me = d.currentScript || d.querySelector("script[data-leaseline-key]");
  var KEY = me && me.getAttribute("data-leaseline-key");
  var BASE = (me && me.getAttribute("data-leaseline-endpoint")) || (me ? new URL(me.src, location.href).origin : "");
  var P = "leaseline.";

  function store(k, v) {
    try {
      if (v === undefined) return w.sessionStorage.getItem(P + k);
      w.sessionStorage.setItem(P + k, v);
    } catch (e) { return null; }
  }

  // The visitor's session: random, per tab, no cookie needed.
  function session() {
    var s = store("session");
    if (!s) {
      var a = new Uint8Array(16);
      crypto.getRandomValues(a);
      s = Array.prototype.map.call(a, function (b) { return (b + 256).toString(16).slice(1); }).join("");
      store("session", s);
    }
    return s;
  }

  function api(method, path, body) {
    var h = { "Content-Type": "application/json" };
    if (KEY) h.Authorization = "Bearer " + KEY;
    return fetch(BASE + path, { method: method, headers: h, credentials: "omit", body: body ? JSON.stringify(body) : undefined })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) { var e = new Error(j.detail || r.status); e.status = r.status; throw e; }
          return j;
        });
      });
  }

  function attr(el, k) { return el.getAttribute("data-leaseline-" + k); }
  function state(el, s) { el.setAttribute("data-leaseline-state", s); }

  function missing(el, l) {
    var m = el.querySelector(".leaseline-missing");
    if (m) m.textContent = l.paid ? " \u2713 pay\u00e9" : " appels restants : " + l.calls_missing;
  }

  // The price beside the number (SVA "cartouche"): "2,99 \u20ac/appel", "CHF 3.13/min".
  function price(t) {
    var v = t.per_call || t.per_minute, c = t.currency, s = "\u00a0";
    return (c == "EUR" ? v.replace(".", ",") + s + "\u20ac" : c == "CHF" ? c + s + v : v + s + c) + (t.per_call ? "/appel" : "/min");
  }

  function span(el, cls, text) {
    var s = d.createElement("span");
    s.className = cls;
    s.textContent = text;
    el.appendChild(s);
  }

  function render(el, l) {
    el.textContent = "";
    var a = d.createElement("a");
    a.className = "leaseline-number";
    a.href = "tel:" + l.number + (l.code ? "," + l.code : "");
    a.textContent = l.display;
    el.appendChild(a);
    if (l.code) span(el, "leaseline-code", " code " + l.code);
    if (l.tariff && attr(el, "price") != "off") span(el, "leaseline-price", " \u2014 " + price(l.tariff));
    if (l.calls_required > 1) {
      span(el, "leaseline-missing", "");
      missing(el, l);
    }
    if (l.lease_id) {
      el.setAttribute("data-leaseline-lease", l.lease_id);
      el.setAttribute("data-leaseline-expires", l.expires_at);
    }
    state(el, l.lease_id ? (l.paid && l.calls_required > 1 ? "paid" : l.code ? "code" : "leased") : "fallback");
  }

  // Renews while the tab is visible (hidden, it lapses); an ended lease starts over.
  function beat(el, l, slot, ended) {
    var t;
    function tick() {
      if (d.visibilityState !== "visible") return;
      api("POST", "/v1/leases/" + l.lease_id + "/renew", {}).then(function (n) {
        el.setAttribute("data-leaseline-expires", n.expires_at);
      }, function (e) {
        if (e.status !== 410 && e.status !== 404) return;
        clearInterval(t); d.removeEventListener("visibilitychange", tick);
        store(slot, ""); ended();
      });
    }
    t = setInterval(tick, (+attr(el, "heartbeat") || 60) * 1000);
    d.addEventListener("visibilitychange", tick);
  }

  // Shows the calls still missing of a multi-call offer, live.
  function follow(el, l) {
    if (!w.EventSource) return;
    var es = new EventSource(BASE + "/v1/leases/" + l.lease_id + "/events");
    function up(e) {
      var x = JSON.parse(e.data);
      l.calls_missing = x.calls_missing;
      l.paid = x.paid;
      missing(el, l);
      if (x.paid) state(el, "paid");
    }
    ["lease", "call_started", "call_ended", "paid"].forEach(function (k) { es.addEventListener(k, up); });
    ["expired", "released"].forEach(function (k) { es.addEventListener(k, function () { es.close(); }); });
  }

  function fill(el) {
    if (el.__leaseline) return;
    el.__leaseline = 1;
    var pool = attr(el, "pool"), listing = attr(el, "listing") || "";
    var slot = "lease." + pool + "." + listing, fallback = attr(el, "fallback");
    var label = el.textContent.trim() || "Afficher le num\u00e9ro";

    function show(l) {
      store(slot, l.lease_id);
      render(el, l);
      beat(el, l, slot, start);
      if (l.calls_required > 1 && !l.paid) follow(el, l);
    }
    // Never an empty box: the site's own number, or a plain apology.
    function fail() {
      if (fallback) render(el, { display: fallback, number: fallback.replace(/[^\d+]/g, "") });
      else { el.textContent = "Num\u00e9ro indisponible"; state(el, "error"); }
    }
    function alloc() {
      var b = { pool: pool, session: session() };
      if (listing) b.listing = listing;
      if (+attr(el, "calls")) b.calls_required = +attr(el, "calls");
      if (+attr(el, "min-secs")) b.min_call_secs = +attr(el, "min-secs");
      state(el, "loading");
      api("POST", "/v1/leases", b).then(show, fail);
    }
    function start() {
      if (attr(el, "mode") === "load") return alloc();
      var btn = d.createElement("button");
      btn.type = "button";
      btn.className = "leaseline-show";
      btn.textContent = label;
      btn.onclick = alloc;
      el.textContent = "";
      el.appendChild(btn);
      state(el, "ready");
    }
    var known = store(slot);
    if (known) api("GET", "/v1/leases/" + known).then(function (l) { l.state === "active" ? show(l) : start(); }, start);
    else start();
  }

  function scan(root) {
    if (root.matches && root.matches("[data-leaseline-pool]")) fill(root);
    Array.prototype.forEach.call(root.querySelectorAll("[data-leaseline-pool]"), fill);
  }

  function boot() {
    scan(d);
    new MutationObserver(function (ms) {
      ms.forEach(function (m) {
        Array.prototype.forEach.call(m.addedNodes, function (n) { if (n.nodeType === 1) scan(n); });
      });
    }).observe(d.body, { childList: true, subtree: true });
  }

  w.Leaseline = { version: "1", scan: scan };
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", boot);
  else boot();
})(window, document);
