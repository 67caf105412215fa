"use strict";
(function () {
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function token() { return sessionStorage.getItem("ghgate-admin-token") || ""; }

  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
  function fmtPct(x) { return (x * 100).toFixed(1) + "%"; }
  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }
  function fmtDuration(s) {
    if (s < 90) return Math.max(0, Math.round(s)) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.round(s / 86400) + " d";
  }
  function fmtClock(epochSeconds) {
    const d = new Date(epochSeconds * 1000);
    return d.toTimeString().slice(0, 8);
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function ratio(local, answers) { return answers === 0 ? null : local / answers; }

  function renderTiles(s) {
    const hour = s.minutes.reduce((a, m) => ({
      spent: a.spent + m.spent, saved: a.saved + m.saved, answers: a.answers + m.answers, local: a.local + m.local,
    }), { spent: 0, saved: 0, answers: 0, local: 0 });
    const hr = ratio(hour.local, hour.answers);
    $("hit-ratio-hour").textContent = hr === null ? "–" : fmtPct(hr);
    const tr = ratio(s.totals.local, s.totals.answers);
    $("hit-ratio-total").textContent = (tr === null ? "no requests yet" : fmtPct(tr) + " since start") +
      " · " + fmtInt(s.totals.answers) + " requests";
    $("saved-hour").textContent = fmtInt(hour.saved);
    $("saved-total").textContent = fmtInt(s.totals.saved) + " since start";
    $("spent-hour").textContent = fmtInt(hour.spent);
    $("spent-total").textContent = fmtInt(s.totals.spent) + " since start";
    $("store-entries").textContent = fmtInt(s.store.entries) + " entries";
    $("store-bytes").textContent = fmtBytes(s.store.bytes) + " of " + fmtBytes(s.store.max_bytes) + " · " + s.store.location;
    $("store-fill").style.width = Math.min(100, 100 * s.store.bytes / Math.max(1, s.store.max_bytes)) + "%";
  }

  function renderChart(s) {
    const chart = $("chart");
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    const W = 960, H = 220, left = 44, bottom = 20, top = 8;
    const plotW = W - left - 4, plotH = H - bottom - top;
    const n = s.minutes.length;
    const max = Math.max(1, ...s.minutes.map((m) => m.spent + m.saved));
    const slot = plotW / Math.max(1, n);
    const barW = Math.max(1, slot * 0.8);
    chart.appendChild(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: W - 4, y2: top + plotH }));
    chart.appendChild(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
    chart.appendChild(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, fmtInt(max)));
    chart.appendChild(svg("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, "0"));
    s.minutes.forEach((m, i) => {
      const x = left + i * slot + (slot - barW) / 2;
      const hSpent = plotH * m.spent / max, hSaved = plotH * m.saved / max;
      const title = fmtClock(m.start) + ": " + fmtInt(m.saved) + " saved, " + fmtInt(m.spent) + " spent";
      const spent = svg("rect", { class: "bar-spent", x: x, y: top + plotH - hSpent, width: barW, height: hSpent });
      spent.appendChild(svg("title", {}, title));
      const saved = svg("rect", { class: "bar-saved", x: x, y: top + plotH - hSpent - hSaved, width: barW, height: hSaved });
      saved.appendChild(svg("title", {}, title));
      chart.appendChild(spent);
      chart.appendChild(saved);
    });
    if (n > 0) {
      const labels = [[0, "−" + (n - 1) + " min"], [Math.floor((n - 1) / 2), "−" + Math.ceil((n - 1) / 2) + " min"], [n - 1, "now"]];
      for (const [i, text] of labels) {
        chart.appendChild(svg("text", { x: left + i * slot + slot / 2, y: H - 4, "text-anchor": "middle" }, text));
      }
    }
  }

  function renderBudgets(s) {
    const body = $("budgets").tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    $("budgets-empty").hidden = s.budgets.length > 0;
    for (const b of s.budgets) {
      const row = el("tr", { class: "budget" });
      const who = el("td");
      if (b.label) who.appendChild(el("span", { class: "label" }, b.label + " "));
      who.appendChild(el("code", { title: b.identity }, b.identity.slice(0, 12)));
      row.appendChild(who);
      row.appendChild(el("td", {}, b.resource));
      const share = b.limit > 0 ? b.remaining / b.limit : 0;
      const bar = el("div", { class: "bar" + (share < 0.1 ? " low" : share < 0.3 ? " mid" : "") });
      const fill = el("div");
      fill.style.width = (100 * share).toFixed(1) + "%";
      bar.appendChild(fill);
      bar.appendChild(el("span", {}, fmtInt(b.remaining) + " / " + fmtInt(b.limit)));
      const cell = el("td");
      cell.appendChild(bar);
      row.appendChild(cell);
      const resets = el("td", {}, b.reset > s.now ? "in " + fmtDuration(b.reset - s.now) + " (" + fmtClock(b.reset) + ")" : "passed");
      if (b.blocked_until) resets.appendChild(el("span", { class: "held" }, "held back until " + fmtClock(b.blocked_until)));
      row.appendChild(resets);
      body.appendChild(row);
    }
  }

  function renderEvents(s) {
    const list = $("events");
    while (list.firstChild) list.removeChild(list.firstChild);
    $("events-empty").hidden = s.events.length > 0;
    for (const e of s.events) {
      const item = el("li", { class: "event" });
      item.appendChild(el("span", { class: "time" }, fmtClock(e.at / 1000)));
      item.appendChild(el("span", { class: "kind " + e.kind }, e.kind));
      item.appendChild(el("span", { class: "what" }, e.what));
      if (e.count > 1) item.appendChild(el("span", { class: "count" }, "×" + fmtInt(e.count)));
      list.appendChild(item);
    }
  }

  // With replicas sharing the store, the tiles and the chart show the fleet (this replica's
  // own figures are its row in the table).
  function renderFleet(s) {
    const fleet = s.fleet;
    $("fleet").hidden = !fleet;
    $("chart-scope").textContent = fleet ? "· all " + fleet.replicas.length + " replicas" : "";
    if (!fleet) return;
    const body = $("replicas").tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    const rows = fleet.replicas.concat([{ name: "all replicas", answers: fleet.answers, local: fleet.local,
      saved: fleet.saved, spent: fleet.spent, total: true }]);
    for (const r of rows) {
      const row = el("tr", { class: r.total ? "replica total" : "replica" });
      const name = r.name + (r.name === s.replica ? " (this one)" : "");
      row.appendChild(el("td", {}, name));
      row.appendChild(el("td", {}, fmtInt(r.answers)));
      const hr = ratio(r.local, r.answers);
      row.appendChild(el("td", {}, hr === null ? "–" : fmtPct(hr)));
      row.appendChild(el("td", {}, fmtInt(r.saved)));
      row.appendChild(el("td", {}, fmtInt(r.spent)));
      row.appendChild(el("td", {}, r.total ? "" : fmtDuration(Math.max(0, s.now - r.at)) + " ago"));
      body.appendChild(row);
    }
  }

  // The figures the tiles and the chart draw: the fleet's when there is one.
  function scope(s) {
    if (!s.fleet) return s;
    const f = s.fleet;
    return Object.assign({}, s, {
      minutes: f.minutes.slice(-s.minutes.length),
      totals: { answers: f.answers, local: f.local, spent: f.spent, saved: f.saved },
    });
  }

  function render(s) {
    $("version").textContent = s.version;
    $("meta").textContent = "up " + fmtDuration(s.uptime_seconds) + " · store " + s.store.health +
      " · updated " + fmtClock(s.now);
    renderFleet(s);
    renderTiles(scope(s));
    renderChart(scope(s));
    renderBudgets(s);
    renderEvents(s);
    $("main").hidden = false;
    document.body.setAttribute("data-rendered", String(s.now));
  }

  function problem(text) {
    $("problem").textContent = text;
    $("problem").hidden = !text;
  }

  async function refresh() {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    try {
      const r = await fetch("status.json", { headers: headers, cache: "no-store" });
      if (r.status === 401) {
        $("login").hidden = false;
        $("main").hidden = true;
        problem(token() ? "The admin token was not accepted." : "");
        return;
      }
      if (!r.ok) { problem("status.json answered " + r.status); return; }
      $("login").hidden = true;
      problem("");
      render(await r.json());
    } catch (err) {
      problem("Cannot reach the gateway: " + err.message);
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("ghgate-admin-token", $("token").value);
    refresh();
  });
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
  window.addEventListener("beforeunload", () => clearInterval(timer));
})();
