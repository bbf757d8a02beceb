// sup dashboard: read-only, fed by server-sent events from /api/v1/stream.
// The server sends only nodes whose summary changed, so this script touches
// only those nodes' elements: at 2,000 nodes a quiet second costs nothing.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const nodesEl = $("nodes");
  const nodes = new Map(); // id -> {el, data}
  const history = new Map(); // job -> [{t, v}]
  const HISTORY_MS = 10 * 60 * 1000;
  const MAX_EVENTS = 300;
  let summary = null;
  let jobs = [];
  let selected = null;
  let filter = "";

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // ---- nodes ----------------------------------------------------------
  function stateClass(d) {
    return "node s-" + d.state + (d.spare ? " spare" : "");
  }
  function nodeTitle(d) {
    const lines = [d.id, "state: " + d.state + (d.spare ? " (spare)" : "") + (d.connected ? "" : ", agent not connected")];
    if (d.job) lines.push("job: " + d.job);
    if (d.cordon) lines.push("cordoned: " + d.cordon);
    if (d.slurm) lines.push("slurm " + d.slurm + " (no work placed)");
    for (const p of d.problems) lines.push(p);
    return lines.join("\n");
  }
  function matches(d) {
    if (!filter) return true;
    const hay = (d.id + " " + d.state + " " + (d.spare ? "spare " : "") + (d.job || "") + " " + (d.cordon || "") + " " + (d.slurm ? "slurm " + d.slurm : "")).toLowerCase();
    return hay.includes(filter);
  }
  function render(entry, d) {
    const e = entry.el;
    const old = entry.data;
    e.className = stateClass(d) + (matches(d) ? "" : " hidden");
    e.dataset.state = d.state;
    e.dataset.spare = d.spare ? "1" : "0";
    e.dataset.cordon = d.cordon || "";
    e.title = nodeTitle(d);
    const meta = d.state === "cordoned" ? "cordoned" : d.spare ? "spare" : d.job ? d.job : d.slurm ? "slurm " + d.slurm.split(":")[0] : d.state;
    if (!old || meta !== entry.meta) { e.children[1].textContent = meta; entry.meta = meta; }
    if (!old || old.gpus !== d.gpus) {
      const cells = el("div", "cells");
      for (const h of d.gpus) cells.appendChild(el("i", "gpu h-" + h));
      e.replaceChild(cells, e.children[2]);
    }
    entry.data = d;
    if (selected === d.id) showDetail(d);
  }
  function create(d) {
    const e = el("div", "node");
    e.id = "node-" + d.id;
    e.dataset.id = d.id;
    e.appendChild(el("div", "id", d.id));
    e.appendChild(el("div", "meta"));
    e.appendChild(el("div", "cells"));
    e.addEventListener("click", () => { selected = selected === d.id ? null : d.id; showDetail(selected ? nodes.get(selected).data : null); });
    return { el: e, data: null, meta: null };
  }
  function showDetail(d) {
    const box = $("detail");
    if (!d) { box.classList.add("hidden"); return; }
    box.classList.remove("hidden");
    box.textContent = nodeTitle(d) + "\nGPUs: " + d.gpus.split("").map((h, i) => i + ":" + ({ o: "ok", d: "degraded", f: "failed" }[h] || h)).join(" ");
  }
  // An update comes in parts of at most 1,000 nodes (delta.more: another
  // part follows): new nodes are held back and placed once, after the last
  // part, so a 16,384-node snapshot is laid out in one go.
  let pending = [];
  function onNodes(delta) {
    if (delta.full) { nodes.clear(); nodesEl.textContent = ""; pending = []; }
    for (const d of delta.upsert) {
      let entry = nodes.get(d.id);
      if (!entry) { entry = create(d); nodes.set(d.id, entry); pending.push(entry); }
      render(entry, d);
    }
    for (const id of delta.remove) {
      const entry = nodes.get(id);
      if (entry) { entry.el.remove(); nodes.delete(id); }
    }
    if (delta.more) return;
    // A node can join and leave within one update's parts.
    const added = pending.filter((e) => nodes.get(e.data.id) === e);
    pending = [];
    if (added.length) placeNew(added);
    counts();
  }
  // New nodes go to their sorted place; a snapshot (or a registration storm:
  // many new nodes at once) is laid out again in one go, since finding each
  // one's place would scan the grid once per node.
  function placeNew(added) {
    if (added.length === nodes.size || added.length > 64) {
      const frag = document.createDocumentFragment();
      [...nodes.values()].sort((a, b) => (a.data.id < b.data.id ? -1 : 1)).forEach((x) => frag.appendChild(x.el));
      nodesEl.appendChild(frag);
      return;
    }
    for (const entry of added) {
      let before = null;
      for (const c of nodesEl.children) { if (c.dataset.id > entry.data.id) { before = c; break; } }
      nodesEl.insertBefore(entry.el, before);
    }
  }
  function counts() {
    const by = {};
    let spares = 0;
    for (const { data } of nodes.values()) { by[data.state] = (by[data.state] || 0) + 1; if (data.spare) spares++; }
    const parts = [nodes.size + " nodes"];
    for (const s of ["ready", "suspect", "unreachable", "cordoned", "draining", "joining"]) if (by[s]) parts.push(by[s] + " " + s);
    parts.push(spares + " spare");
    $("node-counts").textContent = parts.join(" · ");
    attention(by);
  }
  $("filter").addEventListener("input", (ev) => {
    filter = ev.target.value.trim().toLowerCase();
    for (const { el: e, data } of nodes.values()) e.classList.toggle("hidden", !matches(data));
  });

  // ---- what needs attention -------------------------------------------
  function attention(by) {
    by = {};
    for (const { data } of nodes.values()) by[data.state] = (by[data.state] || 0) + 1;
    const box = $("attention");
    box.textContent = "";
    const add = (cls, text, title) => { const i = el("span", "item " + cls, text); if (title) i.title = title; box.appendChild(i); };
    const cordoned = [...nodes.values()].filter((x) => x.data.state === "cordoned");
    if (cordoned.length) add("bad", cordoned.length + " cordoned", cordoned.map((x) => x.data.id + ": " + x.data.cordon).join("\n"));
    if (by.suspect) add("warn", by.suspect + " suspect");
    if (by.unreachable) add("warn", by.unreachable + " unreachable");
    if (by.draining) add("warn", by.draining + " draining");
    for (const j of jobs) if (j.state !== "running" && j.state !== "stopped" && j.state !== "completed") add(j.state === "failed" ? "bad" : "warn", "job " + j.name + " " + j.state, j.reason || "");
    if (summary) {
      const cls = summary.spares < summary.spares_target ? "warn" : "good";
      const lent = summary.spares_lent ? " (" + summary.spares_lent + " lent)" : "";
      add(cls, "spares " + summary.spares + "/" + summary.spares_target + lent,
          "spare reserve: " + summary.spares + " healthy node(s) free of normal work, target " + summary.spares_target +
          (summary.spares_lent ? "; " + summary.spares_lent + " running low-priority work, taken back when a normal job needs a spare" : ""));
      if (summary.breaker_open) add("bad", "breaker open", summary.breaker_reason || "");
    }
    if (!box.children.length) add("good", "all clear");
  }

  // ---- jobs and throughput -------------------------------------------
  const fmt = (v, d) => (v === undefined || v === null ? "–" : typeof v === "number" ? v.toLocaleString(undefined, { maximumFractionDigits: d || 0 }) : String(v));
  function rate(j) {
    // tokens/s when the job reports it, otherwise steps/s from step deltas.
    if (typeof j.tokens_per_s === "number") return { v: j.tokens_per_s, unit: "tokens/s" };
    return null;
  }
  function onJobs(list) {
    jobs = list;
    const tb = $("jobs").tBodies[0];
    tb.textContent = "";
    if (!list.length) { const r = el("tr", "empty"); const c = el("td", null, "no jobs"); c.colSpan = 12; r.appendChild(c); tb.appendChild(r); }
    const now = Date.now();
    for (const j of list) {
      const r = el("tr");
      r.id = "job-" + j.name;
      r.dataset.state = j.state;
      const st = el("span", "st st-" + j.state, j.state);
      const cells = [j.name, st, j.generation, j.world_size, (typeof j.node_count === "number" ? j.node_count : (j.nodes || []).length) + "/" + j.desired_nodes, fmt(j.step),
        fmt(j.tokens_per_s), j.mfu === undefined || j.mfu === null ? "–" : (j.mfu * 100).toFixed(1) + "%",
        j.checkpoint ? "step " + j.checkpoint.step : "–", j.restarts, goodputBar(j.goodput), j.reason || ""];
      cells.forEach((c, i) => { const td = el("td", i === 11 ? "reason" : null); if (c instanceof Node) td.appendChild(c); else td.textContent = String(c); r.appendChild(td); });
      tb.appendChild(r);
      sample(j, now);
    }
    attention(null);
    counts();
  }
  // Where the job's wall time went: one stacked bar of the goodput buckets
  // (live accounting), ETTR beside it, seconds in each segment's title.
  const BUCKETS = ["productive", "redone", "detection", "restart", "checkpoint_save", "waiting", "stopped"];
  function goodputBar(g) {
    const box = el("span", "gpbox");
    if (!g || !(g.wall_s > 0)) { box.textContent = "–"; return box; }
    const bar = el("span", "gpbar");
    bar.title = BUCKETS.map((b) => b + " " + fmt((g.seconds || {})[b], 1) + " s").join("\n");
    for (const b of BUCKETS) {
      const s = (g.seconds || {})[b] || 0;
      if (s <= 0) continue;
      const seg = el("span", "gp gp-" + b);
      seg.dataset.bucket = b;
      seg.style.width = ((s / g.wall_s) * 100).toFixed(2) + "%";
      seg.title = b + ": " + fmt(s, 1) + " s (" + ((s / g.wall_s) * 100).toFixed(1) + "%)";
      bar.appendChild(seg);
    }
    box.appendChild(bar);
    box.appendChild(el("span", "gpv", typeof g.ettr === "number" ? (g.ettr * 100).toFixed(1) + "%" : "–"));
    return box;
  }
  function sample(j, now) {
    let h = history.get(j.name);
    if (!h) { h = []; history.set(j.name, h); }
    const r = rate(j);
    let v = null, unit = "tokens/s";
    if (r) { v = r.v; unit = r.unit; }
    else if (typeof j.step === "number") {
      unit = "steps/s";
      const prev = h.length ? h[h.length - 1] : null;
      if (prev && prev.step !== undefined && now > prev.t && j.step >= prev.step) v = ((j.step - prev.step) * 1000) / (now - prev.t);
      else if (prev && prev.step !== undefined && j.step < prev.step) v = 0; // resumed from an older checkpoint
    }
    h.push({ t: now, v: j.state === "running" ? v : 0, step: j.step, unit });
    while (h.length && h[0].t < now - HISTORY_MS) h.shift();
  }
  // The stream sends jobs only when they change; keep the chart moving.
  setInterval(() => { const now = Date.now(); for (const j of jobs) { const h = history.get(j.name); if (h && h.length && now - h[h.length - 1].t > 2000 && !rate(j)) h.push({ t: now, v: 0, step: j.step, unit: "steps/s" }); } draw(); }, 1000);
  const colors = ["#8ab4f8", "#7fe0ad", "#ffd77a", "#ff8a80", "#c58af9", "#78d9ec"];
  function draw() {
    const c = $("chart");
    const w = (c.width = c.clientWidth || 900), hgt = (c.height = 160);
    const g = c.getContext("2d");
    g.clearRect(0, 0, w, hgt);
    const now = Date.now();
    let max = 0, unit = "";
    for (const h of history.values()) for (const p of h) { if (p.v > max) max = p.v; unit = p.unit; }
    $("chart-title").textContent = "Throughput, " + (unit || "tokens/s") + " (last 10 minutes)";
    g.strokeStyle = "#252a33"; g.fillStyle = "#8a93a3"; g.font = "11px sans-serif";
    for (let i = 0; i <= 4; i++) { const y = 10 + ((hgt - 30) * i) / 4; g.beginPath(); g.moveTo(40, y); g.lineTo(w, y); g.stroke(); g.fillText(fmt((max * (4 - i)) / 4, 1), 0, y + 4); }
    g.fillText("-10 min", 40, hgt - 4); g.fillText("now", w - 24, hgt - 4);
    let k = 0;
    for (const [name, h] of history) {
      g.strokeStyle = colors[k++ % colors.length]; g.lineWidth = 2; g.beginPath();
      let started = false;
      for (const p of h) {
        if (p.v === null) continue;
        const x = 40 + ((w - 40) * (p.t - (now - HISTORY_MS))) / HISTORY_MS;
        const y = 10 + (hgt - 30) * (1 - (max ? p.v / max : 0));
        if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
      }
      g.stroke();
      g.fillStyle = g.strokeStyle; g.fillText(name, 50 + 90 * (k - 1), 22);
    }
  }

  // ---- events ---------------------------------------------------------
  function onEvents(list) {
    const ol = $("events");
    const frag = document.createDocumentFragment();
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i];
      const li = el("li");
      li.dataset.seq = e.seq;
      li.appendChild(el("div", "t", new Date(e.at).toLocaleTimeString() + (e.node ? " · " + e.node : "") + (e.job ? " · " + e.job : "")));
      li.appendChild(el("span", "k k-" + e.kind, e.kind));
      if (e.reason) li.appendChild(el("div", "r", e.reason));
      frag.appendChild(li);
    }
    ol.insertBefore(frag, ol.firstChild);
    while (ol.children.length > MAX_EVENTS) ol.lastChild.remove();
  }

  // ---- the stream -----------------------------------------------------
  // With http.api_token_file set, open the page as /#token=TOKEN: the
  // fragment never reaches a server; the stream gets it in its query
  // because EventSource cannot send an Authorization header.
  function streamUrl() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    return token ? "/api/v1/stream?access_token=" + encodeURIComponent(token) : "/api/v1/stream";
  }

  function connect() {
    const es = new EventSource(streamUrl());
    const conn = $("conn");
    es.onopen = () => { conn.className = "conn up"; conn.textContent = "live"; };
    es.onerror = () => { conn.className = "conn down"; conn.textContent = "reconnecting…"; };
    const on = (name, f) => es.addEventListener(name, (m) => { try { f(JSON.parse(m.data)); } catch (err) { console.error(name, err); } });
    on("nodes", onNodes);
    on("jobs", onJobs);
    on("summary", (s) => { summary = s; attention(null); counts(); });
    on("events", onEvents);
    // EventSource reconnects by itself; a fresh connection starts with a
    // full snapshot, so the page never shows half of two states. Events
    // would be sent again, so drop the list on reconnect.
    es.addEventListener("open", () => { $("events").textContent = ""; });
  }
  connect();
  draw();
})();
