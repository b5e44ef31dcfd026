"""The `/ops` page's HTML, script and style, kept in this module so every install ships them.

Plain HTML and JavaScript, no framework and nothing fetched from elsewhere: the script polls
`/ops/status.json` every 2 s and redraws from it with DOM calls (`textContent`, never HTML
strings). Rows carry `data-*` attributes so tests and scrapers can read the numbers.
"""

from __future__ import annotations

POLL_MS = 2000

PAGE = """\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Atlas ops</title>
  <link rel="stylesheet" href="/ops/ops.css">
</head>
<body data-state="loading">
  <header>
    <h1>Atlas ops</h1>
    <p>Last update: <time id="updated">never</time>
      <span class="muted">(server time <time id="generated">-</time>)</span></p>
  </header>
  <div id="error" class="banner" role="alert" hidden></div>
  <noscript><div class="banner">This page needs JavaScript.</div></noscript>
  <main>
    <section id="lag-section">
      <h2>Consumer lag</h2>
      <p>Group <code id="lag-group">-</code>: <span id="lag-status" class="status">-</span>,
        <span id="lag-total">-</span> messages behind.
        <span id="lag-error" class="muted"></span></p>
      <table>
        <thead><tr><th>topic</th><th>partition</th><th>committed</th><th>end</th>
          <th>lag</th><th>time lag</th><th>status</th></tr></thead>
        <tbody id="lag-rows"><tr><td colspan="7" class="muted">not measured yet</td></tr></tbody>
      </table>
    </section>
    <div class="grid">
      <section id="backlog-section">
        <h2>Outbox backlog</h2>
        <dl>
          <dt>unpublished rows</dt><dd id="backlog-rows">-</dd>
          <dt>oldest row age</dt><dd id="backlog-oldest">-</dd>
          <dt>set aside (atlas outbox failed)</dt><dd id="backlog-failed">-</dd>
          <dt>shedding limit</dt><dd id="backlog-limit">-</dd>
          <dt>shedding writes</dt><dd id="backlog-shedding">-</dd>
          <dt>reading age</dt><dd id="backlog-reading">-</dd>
        </dl>
      </section>
      <section id="breakers-section">
        <h2>Circuit breakers</h2>
        <table><tbody id="breaker-rows"></tbody></table>
      </section>
      <section id="dead-letters-section">
        <h2>Dead letters <span class="muted">(this worker, since start)</span></h2>
        <p>Total: <span id="dead-letters-total">-</span></p>
        <table><tbody id="dead-letter-rows"></tbody></table>
      </section>
      <section id="relay-section">
        <h2>Outbox relay</h2>
        <p>This worker <span id="relay-leader">-</span></p>
      </section>
    </div>
  </main>
  <script src="/ops/ops.js"></script>
</body>
</html>
"""

STYLE = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #1b1f24; }
header { display: flex; align-items: baseline; gap: 2rem; }
h1 { font-size: 1.4rem; }
h2 { font-size: 1.1rem; margin: 1.2rem 0 0.4rem; }
table { border-collapse: collapse; }
th, td { padding: 0.2rem 0.7rem; border-bottom: 1px solid #d8dee4; text-align: right; }
th:first-child, td:first-child { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; margin: 0; }
dd { margin: 0; font-variant-numeric: tabular-nums; }
td { font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: 1rem; }
.muted { color: #656d76; }
.banner { background: #ffebe9; border: 1px solid #cf222e; color: #82071e;
  padding: 0.5rem 0.8rem; margin: 0.5rem 0; }
.status { font-weight: 600; padding: 0 0.35rem; border-radius: 3px; }
.ok, .closed, .leader { background: #dafbe1; color: #116329; }
.warn, .half-open { background: #fff8c5; color: #7d4e00; }
.err, .stop, .stall, .rewind, .open, .shedding { background: #ffebe9; color: #82071e; }
body[data-state="error"] main { opacity: 0.6; }
"""

SCRIPT = """\
"use strict";
(function () {
  const POLL_MS = __POLL_MS__;
  const byId = (id) => document.getElementById(id);

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function badge(target, text) {
    target.textContent = text;
    target.className = "status " + String(text).toLowerCase();
  }

  function seconds(s) {
    if (s === null || s === undefined) return "-";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function clock(date) {
    return date.toTimeString().slice(0, 8);
  }

  function renderLag(lag) {
    const rows = byId("lag-rows");
    rows.replaceChildren();
    if (!lag) {
      const row = rows.insertRow();
      cell(row, "not measured yet", "muted").colSpan = 7;
      return;
    }
    byId("lag-group").textContent = lag.group;
    badge(byId("lag-status"), lag.status);
    byId("lag-total").textContent = lag.lag;
    byId("lag-error").textContent = lag.error || "";
    for (const p of lag.partitions) {
      const row = rows.insertRow();
      row.className = "partition";
      row.dataset.topic = p.topic;
      row.dataset.partition = p.partition;
      row.dataset.lag = p.lag;
      row.dataset.status = p.status;
      cell(row, p.topic);
      cell(row, p.partition);
      cell(row, p.committed === null ? "none" : p.committed);
      cell(row, p.end);
      cell(row, p.lag);
      cell(row, seconds(p.lag_seconds));
      badge(cell(row, ""), p.status);
    }
  }

  function renderBacklog(b) {
    byId("backlog-rows").textContent = b.rows;
    byId("backlog-oldest").textContent = seconds(b.oldest_s);
    byId("backlog-failed").textContent = b.failed;
    byId("backlog-limit").textContent = b.limit;
    const shedding = byId("backlog-shedding");
    shedding.textContent = b.shedding ? "yes" : "no";
    shedding.className = b.shedding ? "status shedding" : "";
    byId("backlog-reading").textContent =
      b.reading_age_s === null ? "not measured yet" : seconds(b.reading_age_s) + " ago";
  }

  function renderBreakers(breakers) {
    const rows = byId("breaker-rows");
    rows.replaceChildren();
    for (const [dependency, state] of Object.entries(breakers)) {
      const row = rows.insertRow();
      row.className = "breaker";
      row.dataset.dependency = dependency;
      row.dataset.state = state;
      cell(row, dependency);
      badge(cell(row, ""), state);
    }
  }

  function renderDeadLetters(letters) {
    byId("dead-letters-total").textContent = letters.total;
    const rows = byId("dead-letter-rows");
    rows.replaceChildren();
    const topics = Object.entries(letters.by_topic);
    if (topics.length === 0) {
      cell(rows.insertRow(), "none", "muted");
    }
    for (const [topic, count] of topics) {
      const row = rows.insertRow();
      row.className = "dead-letter";
      row.dataset.topic = topic;
      row.dataset.count = count;
      cell(row, topic);
      cell(row, count);
    }
  }

  function renderRelay(relay) {
    const leader = byId("relay-leader");
    leader.textContent = relay.leader ? "leads the relay" : "stands by";
    leader.className = relay.leader ? "status leader" : "";
    leader.dataset.leader = relay.leader;
  }

  function showError(message) {
    const banner = byId("error");
    banner.textContent = "Update failed at " + clock(new Date()) + ": " + message +
      ". Showing the last good data; retrying every " + POLL_MS / 1000 + " s.";
    banner.hidden = false;
    document.body.dataset.state = "error";
  }

  async function refresh() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), POLL_MS);
    try {
      const response = await fetch("/ops/status.json", {
        cache: "no-store",
        signal: abort.signal,
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      renderLag(doc.lag);
      renderBacklog(doc.backlog);
      renderBreakers(doc.breakers);
      renderDeadLetters(doc.dead_letters);
      renderRelay(doc.relay);
      byId("updated").textContent = clock(new Date());
      byId("generated").textContent = doc.generated_at;
      byId("error").hidden = true;
      document.body.dataset.state = "live";
    } catch (err) {
      showError(err.name === "AbortError" ? "timed out" : String(err.message || err));
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, POLL_MS);
    }
  }

  refresh();
})();
""".replace("__POLL_MS__", str(POLL_MS))
