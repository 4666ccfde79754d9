// stepmap dashboard: keeps the page current by polling the JSON API.
// Every string from a run is written with textContent (never innerHTML), so a workload error
// holding markup shows as text; the server's Content-Security-Policy allows only this file.
"use strict";

(function () {
  const body = document.body;
  const pollMs = Number(body.dataset.pollMs) || 1000;
  const FAILURES_ON_PAGE = 200;

  function count(n) { return (n === null || n === undefined) ? "?" : Number(n).toLocaleString("en-US"); }
  function duration(s) {
    if (typeof s !== "number") return "-";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60), sec = Math.floor(s % 60);
    if (m < 60) return m + " min " + sec + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }
  function format(value, kind) {
    if (kind === "duration") return duration(value);
    if (kind === "count") return count(value);
    if (kind === "rate") return value ? value.toLocaleString("en-US", {maximumFractionDigits: 1}) + "/s" : "-";
    if (kind === "time") return value ? String(value).replace("T", " ") : "-";
    if (kind === "percent") return (typeof value === "number") ? value.toFixed(1) + " %" : "-";
    return (value === null || value === undefined) ? "" : String(value);
  }
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
    return tr;
  }
  function numCell(text) { return el("td", text, "num"); }
  function fill(tbody, rows, empty, columns) {
    tbody.replaceChildren(...(rows.length ? rows : [emptyRow(empty, columns)]));
  }
  function emptyRow(text, columns) {
    const td = el("td", text); td.colSpan = columns;
    const tr = document.createElement("tr"); tr.className = "empty"; tr.appendChild(td);
    return tr;
  }
  function statusBadge(node, status) {
    node.textContent = status;
    node.className = "status status-" + String(status).toLowerCase().replace(/[^a-z-]/g, "");
  }
  function runLink(id) {
    const a = el("a", id); a.href = "/runs/" + encodeURIComponent(id); return a;
  }

  let failures = 0;
  // keepGoing(data): false to stop, or the milliseconds until the next look
  async function poll(url, apply, keepGoing) {
    let next = pollMs;
    const notice = document.getElementById("connection");
    try {
      const response = await fetch(url, {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      failures = 0;
      notice.hidden = true;
      apply(data);
      body.dataset.polled = String(Number(body.dataset.polled || 0) + 1);
      const wait = keepGoing(data);
      if (!wait) { body.dataset.polling = "done"; return; }
      next = (wait === true) ? pollMs : wait;
    } catch (err) {
      failures += 1;
      notice.hidden = false;
      next = pollMs * Math.min(2 ** failures, 30);
    }
    body.dataset.polling = "on";
    setTimeout(() => poll(url, apply, keepGoing), next);
  }

  // ------------------------------------------------------------ the list of runs
  function applyRuns(rows) {
    const tbody = document.getElementById("runs");
    fill(tbody, rows.map((r) => {
      const status = el("span"); statusBadge(status, r.status);
      const link = el("td"); link.appendChild(runLink(r.run_id));
      const state = el("td"); state.appendChild(status);
      const tr = row([link, el("td", r.workload), el("td", r.engine), state,
        numCell(count(r.succeeded)), numCell(count(r.failed)), numCell(count(r.pending)),
        numCell(count(r.items)), el("td", (r.started || "-").replace("T", " ")),
        numCell(duration(r.seconds))]);
      tr.dataset.runId = r.run_id;
      return tr;
    }), "no runs yet", 10);
  }

  // ------------------------------------------------------------ one run
  function applyRun(run) {
    statusBadge(document.getElementById("status"), run.status);
    body.dataset.live = run.live ? "yes" : "no";
    document.querySelectorAll("[data-field]").forEach((node) => {
      node.textContent = format(run[node.dataset.field], node.dataset.format);
    });
    const done = run.succeeded + run.failed;
    document.getElementById("done").textContent = count(done);
    const bar = document.getElementById("progress");
    bar.max = run.items || Math.max(done, 1);
    bar.value = done;
    document.getElementById("reason").hidden = !run.reason;
    document.getElementById("total").hidden = (run.total_preview === null);
    applyReport(run);
    applyAws(run.aws);
    applyFailures(run);
  }

  function applyReport(run) {
    const r = run.report;
    document.querySelectorAll("[data-report]").forEach((node) => {
      node.textContent = format(r[node.dataset.report], node.dataset.format || "count");
    });
    const img = document.getElementById("timeline");
    const placeholder = document.getElementById("no-chart");
    placeholder.hidden = r.tasks > 0;
    if (r.tasks > 0 && (body.dataset.chartVersion !== run.chart_version || img.hidden)) {
      body.dataset.chartVersion = run.chart_version;
      img.src = "/runs/" + encodeURIComponent(run.run_id) + "/timeline.png?v=" +
        encodeURIComponent(run.chart_version);
      img.hidden = false;
    }
    fill(document.getElementById("stragglers"), r.stragglers.map((s) =>
      row([s.name, s.lane, s.status, numCell(s.seconds.toFixed(3))])), "none", 4);
  }

  function applyAws(aws) {
    const panel = document.getElementById("aws");
    panel.hidden = !aws;
    if (!aws) return;
    const text = {
      execution_status: aws.execution_status || "-",
      map_run_status: aws.map_run_status || "-",
      item_counts: aws.item_counts ? JSON.stringify(aws.item_counts) : "-",
      execution_counts: aws.execution_counts ? JSON.stringify(aws.execution_counts) : "-",
      age_seconds: (aws.age_seconds === null ? "-" : aws.age_seconds) +
        " s ago (DescribeMapRun, at most every " + aws.poll_interval_seconds + " s)",
      error: aws.error || "",
    };
    panel.querySelectorAll("[data-aws]").forEach((node) => {
      node.textContent = text[node.dataset.aws];
    });
  }

  function applyFailures(run) {
    document.getElementById("failures-count").textContent = count(run.failures.length) + " task(s)";
    document.getElementById("failures-more").hidden = run.failures.length <= FAILURES_ON_PAGE;
    fill(document.getElementById("failures"), run.failures.slice(0, FAILURES_ON_PAGE).map((f) => {
      const input = el("td"); input.appendChild(el("code", f.input, "input"));
      const detail = el("td");
      detail.appendChild(el("div", f.message, "error-message"));
      if (f.traceback) {
        const box = el("details"); box.appendChild(el("summary", "traceback"));
        box.appendChild(el("pre", f.traceback, "traceback"));
        detail.appendChild(box);
      }
      return row([f.name, input, el("td", f.error, "error-name"), detail,
        numCell(f.attempts === null || f.attempts === undefined ? "-" : f.attempts),
        f.worker || "-"]);
    }), "no failed items", 6);
  }

  async function waitForRun() {
    try {
      const response = await fetch("/api/runs/" + encodeURIComponent(body.dataset.runId),
        {cache: "no-store"});
      if (response.ok) { window.location.reload(); return; }
    } catch (err) { /* not up yet: try again */ }
    setTimeout(waitForRun, pollMs);
  }

  if (body.dataset.page === "waiting") {
    waitForRun();
  } else if (body.dataset.page === "runs") {
    // every second while a run is live, else every 5 s (each look reads every run.json)
    poll("/api/runs", applyRuns, (rows) => rows.some((r) => r.live) ? pollMs : 5 * pollMs);
  } else if (body.dataset.page === "run") {
    const url = "/api/runs/" + encodeURIComponent(body.dataset.runId);
    // a finished run is looked at every 5 s: a resume brings it back to life
    poll(url, applyRun, (run) => run.live ? pollMs : 5 * pollMs);
  }
})();
