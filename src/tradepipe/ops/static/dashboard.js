// The live dashboard's client: folds the server's Server-Sent Events (a "snapshot", then
// "update"s carrying new series items and changed sections) into one state object, and redraws
// at most once per animation frame. Charts are plain SVG; no library, nothing from a CDN.
"use strict";
(() => {
  const SERIES = ["signals", "fills", "closed", "equity", "latency", "alertLog"];
  const SECTIONS = ["quotes", "positions", "breakers", "alerts", "counts", "trading", "performance",
                    "latencyStats", "lag"];
  const ROWS = 30; // table rows shown, newest first
  const SVG = "http://www.w3.org/2000/svg";

  const state = { seq: 0, limits: {}, prices: {} };
  let symbol = null;
  let drawPending = false;

  // --- state ---------------------------------------------------------------------------------

  function keepLast(items, limit) {
    return limit && items.length > limit ? items.slice(items.length - limit) : items;
  }

  function apply(message, reset) {
    if (reset) {
      state.limits = message.limits || state.limits;
      state.prices = {};
      for (const name of SERIES) state[name] = [];
      for (const name of SECTIONS) delete state[name];
    }
    state.seq = message.seq;
    for (const [sym, points] of Object.entries(message.prices || {})) {
      state.prices[sym] = keepLast((state.prices[sym] || []).concat(points), state.limits.prices);
    }
    for (const name of SERIES) {
      if (message[name]) state[name] = keepLast(state[name].concat(message[name]), state.limits[name]);
    }
    for (const name of SECTIONS) if (name in message) state[name] = message[name];
    document.body.dataset.seq = String(state.seq);
    if (!drawPending) {
      drawPending = true;
      requestAnimationFrame(draw);
    }
  }

  function connect() {
    const source = new EventSource("dashboard/stream");
    source.addEventListener("snapshot", (e) => { setConnected(true); apply(JSON.parse(e.data), true); });
    source.addEventListener("update", (e) => apply(JSON.parse(e.data), false));
    source.addEventListener("open", () => setConnected(true));
    // EventSource reconnects by itself (the server asks for 2 s) and then gets a fresh snapshot
    source.addEventListener("error", () => setConnected(false));
  }

  function setConnected(on) {
    const badge = byId("conn");
    badge.textContent = on ? "live" : "disconnected";
    badge.className = "badge " + (on ? "on" : "off");
  }

  // --- formatting ----------------------------------------------------------------------------

  function byId(id) { return document.getElementById(id); }

  function price(value) {
    if (value == null || !isFinite(value)) return "—";
    return value.toFixed(Math.abs(value) >= 100 ? 3 : 5);
  }

  function money(value) {
    if (value == null || !isFinite(value)) return "—";
    return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function amount(value) { return value == null ? "—" : value.toLocaleString("en-US"); }

  function percent(fraction) { return fraction == null ? "—" : (fraction * 100).toFixed(2) + " %"; }

  function ms(value) { return value == null ? "—" : value.toFixed(value < 10 ? 2 : 1) + " ms"; }

  function utc(t, withDate) {
    if (t == null) return "—";
    const iso = new Date(t).toISOString();
    return withDate ? iso.slice(0, 10) + " " + iso.slice(11, 19) : iso.slice(11, 19);
  }

  function short(id) { return id && id.length > 14 ? id.slice(0, 14) + "…" : id; }

  function signed(cell, value, text) {
    cell.textContent = text;
    if (value > 0) cell.classList.add("pos");
    else if (value < 0) cell.classList.add("neg");
  }

  // --- DOM helpers ---------------------------------------------------------------------------

  function node(tag, attrs, parent, text) {
    const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    if (parent) parent.appendChild(el);
    return el;
  }

  function fillTable(id, items, row) {
    const body = byId(id).tBodies[0];
    body.replaceChildren();
    for (const item of items) row(node("tr", {}, body), item);
    byId(id + "-empty").classList.toggle("hidden", items.length > 0);
  }

  function cells(tr, values, numeric) {
    return values.map((v, i) => node("td", numeric && numeric.includes(i) ? { class: "num" } : {}, tr, v));
  }

  function newestFirst(items) { return items.slice(-ROWS).reverse(); }

  // --- charts --------------------------------------------------------------------------------

  const PAD = { left: 58, right: 10, top: 8, bottom: 20 };

  function frame(svg) {
    svg.replaceChildren();
    const width = svg.clientWidth || 600, height = svg.clientHeight || 260;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    return { width, height };
  }

  function scale(d0, d1, r0, r1) {
    const span = d1 - d0 || 1;
    return (v) => r0 + ((v - d0) / span) * (r1 - r0);
  }

  function axes(svg, box, x, y, t0, t1, lo, hi, format) {
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4, py = y(v);
      node("svg:line", { x1: box.left, x2: box.right, y1: py, y2: py, class: "grid" }, svg);
      node("svg:text", { x: box.left - 6, y: py + 3, "text-anchor": "end" }, svg, format(v));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      node("svg:text", { x: x(t), y: box.bottom + 14, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
           svg, utc(t).slice(0, 5));
    }
  }

  function polyline(svg, points, cls) {
    node("svg:polyline", { points: points.map(([px, py]) => px.toFixed(1) + "," + py.toFixed(1)).join(" "), class: cls }, svg);
  }

  function note(svg, size, text) {
    node("svg:text", { x: size.width / 2, y: size.height / 2, "text-anchor": "middle", class: "empty-note" }, svg, text);
  }

  function drawPrice() {
    const svg = byId("price-chart"), size = frame(svg);
    const points = state.prices[symbol] || [];
    if (points.length < 2) return note(svg, size, "waiting for closed bars…");
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const inView = (item) => item.symbol === symbol && item.time >= t0 && item.time <= t1 && item.price != null;
    const signals = state.signals.filter(inView), fills = state.fills.filter(inView);
    const entries = (state.positions || []).filter((p) => p.symbol === symbol);
    const values = points.map((p) => p[1]).concat(signals.map((s) => s.price), fills.map((f) => f.price),
                                                  entries.map((p) => p.entryPrice));
    let lo = Math.min(...values), hi = Math.max(...values);
    const margin = (hi - lo) * 0.06 || hi * 1e-4;
    lo -= margin; hi += margin;
    const box = { left: PAD.left, right: size.width - PAD.right, top: PAD.top, bottom: size.height - PAD.bottom };
    const x = scale(t0, t1, box.left, box.right), y = scale(lo, hi, box.bottom, box.top);
    axes(svg, box, x, y, t0, t1, lo, hi, price);
    polyline(svg, points.map(([t, v]) => [x(t), y(v)]), "price");
    for (const p of entries) {
      node("svg:line", { x1: Math.max(box.left, x(p.openedAt)), x2: box.right, y1: y(p.entryPrice), y2: y(p.entryPrice),
                         class: "entry " + p.side }, svg);
    }
    for (const s of signals) {
      const px = x(s.time), py = y(s.price), d = s.direction === "SELL" ? -1 : 1, tip = py + d * 12;
      const shape = node("svg:path", { d: `M${px},${tip - d * 7} l-5,${d * 8} h10 z`,
                                       class: s.accepted ? s.direction : "rejected" }, svg);
      node("svg:title", {}, shape, `${s.accepted ? "validated" : "rejected"} ${s.direction} signal @ ${price(s.price)}` +
                                    (s.rule ? ` (${s.rule})` : ""));
    }
    for (const f of fills) {
      const dot = node("svg:circle", { cx: x(f.time), cy: y(f.price), r: 4.5, class: "fill " + f.side,
                                       "data-order-id": f.orderId }, svg);
      node("svg:title", {}, dot, `${f.orderId} ${f.side} ${amount(f.volume)} @ ${price(f.price)}`);
    }
  }

  function drawEquity() {
    const svg = byId("equity-chart"), size = frame(svg);
    const points = state.equity;
    if (points.length < 2) return note(svg, size, "waiting for performance events…");
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const split = PAD.top + (size.height - PAD.top - PAD.bottom) * 0.7;
    const box = { left: PAD.left, right: size.width - PAD.right, top: PAD.top, bottom: split - 16 };
    const equities = points.map((p) => p[1]);
    let lo = Math.min(...equities), hi = Math.max(...equities);
    if (hi - lo < 1) { lo -= 1; hi += 1; }
    const x = scale(t0, t1, box.left, box.right), y = scale(lo, hi, box.bottom, box.top);
    for (let i = 0; i <= 3; i++) {
      const v = lo + ((hi - lo) * i) / 3;
      node("svg:line", { x1: box.left, x2: box.right, y1: y(v), y2: y(v), class: "grid" }, svg);
      node("svg:text", { x: box.left - 6, y: y(v) + 3, "text-anchor": "end" }, svg, Math.round(v).toLocaleString("en-US"));
    }
    polyline(svg, points.map(([t, v]) => [x(t), y(v)]), "equity");
    // drawdown below, growing downwards from its zero line
    const worst = Math.max(...points.map((p) => p[2]), 0.0001), ddTop = split, ddBottom = size.height - PAD.bottom;
    const dy = scale(0, worst, ddTop, ddBottom);
    node("svg:text", { x: box.left - 6, y: ddTop + 3, "text-anchor": "end" }, svg, "0 %");
    node("svg:text", { x: box.left - 6, y: ddBottom, "text-anchor": "end" }, svg, "-" + percent(worst));
    node("svg:line", { x1: box.left, x2: box.right, y1: ddTop, y2: ddTop, class: "grid" }, svg);
    polyline(svg, [[x(t0), ddTop]].concat(points.map(([t, , dd]) => [x(t), dy(dd)]), [[x(t1), ddTop]]), "drawdown");
    node("svg:text", { x: box.left, y: size.height - 4 }, svg, utc(t0).slice(0, 5));
    node("svg:text", { x: box.right, y: size.height - 4, "text-anchor": "end" }, svg, utc(t1).slice(0, 5));
  }

  function drawLatency() {
    const svg = byId("latency-chart"), size = frame(svg);
    const samples = state.latency;
    if (samples.length < 2) return note(svg, size, "no tick → order samples yet");
    const worst = Math.max(...samples.map((s) => s[1]), 0.001);
    const x = scale(0, samples.length - 1, 4, size.width - 4), y = scale(0, worst, size.height - 4, 12);
    polyline(svg, samples.map((s, i) => [x(i), y(s[1])]), "latency");
    node("svg:text", { x: 4, y: 10 }, svg, "max " + ms(worst));
  }

  // --- panels --------------------------------------------------------------------------------

  function drawHeader() {
    const counts = state.counts || {}, trading = state.trading, perf = state.performance;
    byId("events").textContent = amount(counts.events || 0);
    byId("event-time").textContent = counts.lastEventTime ? utc(counts.lastEventTime, true) : "—";
    const badge = byId("trading");
    badge.textContent = "trading " + (trading ? trading.state : "—");
    badge.className = "badge " + (trading ? trading.state : "");
    badge.title = trading && trading.reason ? trading.reason : "";
    const last = state.equity[state.equity.length - 1];
    byId("equity").textContent = last ? money(last[1]) : "—";
    byId("drawdown").textContent = last ? percent(last[2]) : "—";
    byId("realized").textContent = perf ? money(perf.realizedPnl) : "—";
  }

  function drawSymbols() {
    const symbols = Object.keys(state.prices).sort();
    if (!symbols.includes(symbol)) symbol = symbols[0] || null;
    const tabs = byId("symbols");
    if (tabs.dataset.symbols !== symbols.join(",") || tabs.dataset.active !== symbol) {
      tabs.replaceChildren();
      for (const s of symbols) {
        const button = node("button", { type: "button", class: s === symbol ? "active" : "" }, tabs, s);
        button.addEventListener("click", () => { symbol = s; draw(); });
      }
      tabs.dataset.symbols = symbols.join(",");
      tabs.dataset.active = symbol || "";
    }
    const quote = (state.quotes || {})[symbol];
    byId("quote").textContent = quote ? `bid ${price(quote.bid)} · ask ${price(quote.ask)} · ${utc(quote.time)}` : "";
  }

  function drawPositions() {
    const quotes = state.quotes || {}, positions = state.positions || [];
    byId("open-count").textContent = positions.length ? String(positions.length) : "";
    fillTable("positions", positions, (tr, p) => {
      const quote = quotes[p.symbol];
      const unrealized = quote ? (quote.mid - p.entryPrice) * p.volume * (p.side === "BUY" ? 1 : -1) : null;
      tr.dataset.positionId = p.positionId;
      const [, , side] = cells(tr, [short(p.positionId), p.symbol, p.side, amount(p.volume), price(p.entryPrice),
                                    price(quote && quote.mid)], [3, 4, 5]);
      side.className = p.side;
      signed(node("td", { class: "num" }, tr), unrealized, money(unrealized));
    });
  }

  function drawFills() {
    byId("fill-count").textContent = state.fills.length ? String(state.fills.length) : "";
    fillTable("fills", newestFirst(state.fills), (tr, f) => {
      tr.dataset.orderId = f.orderId;
      const [, order, , side] = cells(tr, [utc(f.time), f.orderId, f.symbol, f.side, amount(f.volume), price(f.price)], [4, 5]);
      order.title = `${f.orderId} (${f.opens ? "opens" : "closes"} ${f.positionId})`;
      side.className = f.side;
    });
  }

  function drawClosed() {
    byId("closed-count").textContent = state.closed.length ? String(state.closed.length) : "";
    fillTable("closed", newestFirst(state.closed), (tr, c) => {
      tr.dataset.positionId = c.positionId;
      const [, , , side] = cells(tr, [utc(c.time), short(c.positionId), c.symbol, c.side]);
      side.className = c.side;
      signed(node("td", { class: "num" }, tr), c.pnl, money(c.pnl));
      node("td", {}, tr, c.reason);
    });
  }

  function stats(id, pairs) {
    const box = byId(id);
    box.replaceChildren();
    for (const [label, value] of pairs) {
      const item = node("div", {}, box);
      node("span", {}, item, label);
      node("b", {}, item, value);
    }
  }

  function drawPipeline() {
    const latency = state.latencyStats;
    stats("latency", [["tick → order p50", ms(latency && latency.p50)], ["p95", ms(latency && latency.p95)],
                      ["max", ms(latency && latency.max)], ["samples", amount(latency ? latency.samples : 0)]]);
    drawLatency();
    const lag = Object.entries(state.lag || {});
    fillTable("lag", lag, (tr, [name, behind]) => cells(tr, [name, typeof behind === "number" ? amount(behind) : String(behind)], [1]));
    const topics = byId("topics").tBodies[0];
    topics.replaceChildren();
    for (const [topic, count] of Object.entries((state.counts || {}).byTopic || {}).sort()) {
      cells(node("tr", {}, topics), [topic, amount(count)], [1]);
    }
  }

  function drawPerformance() {
    const perf = state.performance, metrics = (perf && perf.metrics) || {};
    const number = (v, digits) => (v == null ? "—" : v.toFixed(digits));
    stats("performance", [["trades", amount(perf ? perf.trades : null)], ["unrealized", money(perf && perf.unrealizedPnl)],
                          ["max drawdown", percent(metrics.max_drawdown)], ["win rate", percent(metrics.win_rate)],
                          ["sharpe", number(metrics.sharpe, 2)], ["profit factor", number(metrics.profit_factor, 2)]]);
  }

  function listItem(list, badgeClass, badgeText, what, time) {
    const li = node("li", {}, list);
    node("span", { class: "badge " + badgeClass }, li, badgeText);
    node("span", { class: "what" }, li, what);
    node("time", {}, li, time);
    return li;
  }

  function drawBreakers() {
    const list = byId("breakers"), breakers = Object.values(state.breakers || {});
    list.replaceChildren();
    for (const b of breakers.sort((a, c) => a.breaker.localeCompare(c.breaker))) {
      const li = listItem(list, b.state, b.state, `${b.breaker}` + (b.failures ? ` · ${b.failures} failures` : "") +
                                                  (b.reason ? ` · ${b.reason}` : ""), utc(b.time));
      li.dataset.breaker = b.breaker;
    }
    byId("breakers-empty").classList.toggle("hidden", breakers.length > 0);
  }

  function drawAlerts() {
    const list = byId("alerts"), alerts = state.alerts || [];
    byId("alert-count").textContent = alerts.length ? String(alerts.length) : "";
    list.replaceChildren();
    for (const a of alerts) {
      const li = listItem(list, a.severity, a.severity, `${a.rule}${a.subject ? " (" + a.subject + ")" : ""}: ${a.message}`, utc(a.time));
      li.dataset.rule = a.rule;
    }
    byId("alerts-empty").classList.toggle("hidden", alerts.length > 0);
    const log = byId("alert-log");
    log.replaceChildren();
    for (const a of newestFirst(state.alertLog).slice(0, 10)) {
      listItem(log, a.resolved ? "CLOSED" : a.severity, a.resolved ? "resolved" : a.severity, `${a.rule}: ${a.message}`, utc(a.time));
    }
  }

  function draw() {
    drawPending = false;
    drawHeader();
    drawSymbols();
    drawPrice();
    drawEquity();
    drawPerformance();
    drawPositions();
    drawFills();
    drawClosed();
    drawPipeline();
    drawBreakers();
    drawAlerts();
  }

  for (const name of SERIES) state[name] = [];
  window.addEventListener("resize", () => { if (!drawPending) { drawPending = true; requestAnimationFrame(draw); } });
  connect();
  draw();
})();
