// millstream console: CSRF header on htmx requests, charts (uPlot), data ages, and the chat
// panel (the agent's steps streamed from /console/chat). No inline script: this file is the
// page's only code besides the vendored htmx, its SSE extension and uPlot.
(() => {
  "use strict";
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

  document.addEventListener("htmx:config:request", (e) => {
    e.detail.ctx.request.headers["X-CSRF-Token"] = csrf();
  });

  // --- data ages ("12 s ago") next to every as-of time -------------------------------------
  function ages() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time[data-age]")) {
      const at = Date.parse(t.getAttribute("datetime"));
      if (Number.isNaN(at)) continue;
      const s = Math.max(0, Math.round((now - at) / 1000));
      const text = s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
      t.textContent = text;
      t.title = t.getAttribute("datetime");
    }
  }

  // --- charts -------------------------------------------------------------------------------
  const charts = new Map();
  function width(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width || 480) - 4);
  }
  function drawCharts() {
    if (!window.uPlot) return;
    for (const fig of document.querySelectorAll("figure.chart:not([data-drawn])")) {
      fig.setAttribute("data-drawn", "1");
      let s;
      try {
        s = JSON.parse(fig.querySelector('script[type="application/json"]').textContent);
      } catch {
        continue;
      }
      const band = fig.dataset.kind === "band" && s.data.length === 4;
      const series = [{}, { label: s.sensor, stroke: "#1f5fa8", width: 2 }];
      if (band) {
        series.push({ label: "min", stroke: "#9bb7d8", width: 1, dash: [4, 4] });
        series.push({ label: "max", stroke: "#9bb7d8", width: 1, dash: [4, 4] });
      }
      const opts = {
        width: width(fig),
        height: 180,
        series,
        axes: [{}, { size: 80 }],
        legend: { show: true },
      };
      const plot = new uPlot(opts, band ? s.data : s.data.slice(0, 2), fig);
      charts.set(fig, plot);
    }
    for (const [fig, plot] of charts) {
      if (!fig.isConnected) {
        plot.destroy();
        charts.delete(fig);
      }
    }
  }
  window.addEventListener("resize", () => {
    for (const [fig, plot] of charts) plot.setSize({ width: width(fig), height: 180 });
  });

  function refresh() {
    ages();
    drawCharts();
  }
  document.addEventListener("htmx:after:settle", refresh);
  document.addEventListener("htmx:after:swap", refresh);
  document.addEventListener("DOMContentLoaded", refresh);
  setInterval(ages, 1000);

  document.addEventListener("htmx:after:request", (e) => {
    const ctx = e.detail.ctx;
    if (ctx?.response?.status === 401) location.assign("/console/login");
  });

  // --- chat -----------------------------------------------------------------------------------
  let conversation = null;

  function line(cls, text) {
    const log = document.getElementById("chat-log");
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    log.appendChild(p);
    log.scrollTop = log.scrollHeight;
    return p;
  }

  function confirmation(step, message) {
    const log = document.getElementById("chat-log");
    const box = document.createElement("div");
    box.className = "confirm";
    const text = document.createElement("p");
    text.textContent = `The agent asks to run ${step.name} ${JSON.stringify(step.arguments)}.`;
    const yes = document.createElement("button");
    yes.type = "button";
    yes.textContent = "Approve";
    yes.addEventListener("click", () => {
      box.remove();
      send(message, [{ tool: step.name, arguments: step.arguments }]);
    });
    const no = document.createElement("button");
    no.type = "button";
    no.className = "link";
    no.textContent = "Decline";
    no.addEventListener("click", () => {
      box.remove();
      line("note", "Declined.");
    });
    box.append(text, yes, no);
    log.appendChild(box);
    yes.focus();
  }

  // The log is busy (aria-busy) while a turn streams; assistive technology then waits for the
  // whole answer instead of reading it word by word.
  async function send(message, approve = []) {
    const log = document.getElementById("chat-log");
    log.setAttribute("aria-busy", "true");
    try {
      await stream(message, approve);
    } finally {
      log.setAttribute("aria-busy", "false");
    }
  }

  async function stream(message, approve) {
    const body = { message, approve };
    if (conversation) body.conversation_id = conversation;
    let resp;
    try {
      resp = await fetch("/console/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body),
      });
    } catch (err) {
      line("error", `The server could not be reached: ${err}`);
      return;
    }
    if (!resp.ok) {
      let why = `${resp.status}`;
      try {
        why = (await resp.json()).error ?? why;
      } catch {}
      line("error", resp.status === 503 ? `The agent is not available: ${why}` : `Refused: ${why}`);
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let answer = null;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        let data = "";
        for (const l of raw.split("\n")) {
          if (l.startsWith("event:")) event = l.slice(6).trim();
          else if (l.startsWith("data:")) data += l.slice(5).trimStart();
        }
        if (!data) continue;
        let step;
        try {
          step = JSON.parse(data);
        } catch {
          continue;
        }
        if (event === "text") {
          answer ??= line("agent", "");
          answer.textContent += step.delta ?? "";
        } else if (event === "tool_call") {
          line("tool", `→ ${step.name} ${JSON.stringify(step.arguments ?? {})}`);
        } else if (event === "tool_result") {
          line("tool", `← ${step.name}${step.is_error ? " failed" : ""}`);
        } else if (event === "confirmation" && !step.approved) {
          confirmation(step, message);
        } else if (event === "answer") {
          if (!answer) line("agent", step.text ?? "");
          answer = null;
        } else if (event === "done") {
          conversation = step.conversation_id ?? conversation;
          // Turns completed in this page (the browser test counts them).
          const log = document.getElementById("chat-log");
          log.dataset.turns = String(Number(log.dataset.turns ?? 0) + 1);
        } else if (event === "error") {
          line("error", step.error ?? "The turn failed.");
        }
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("chat-form");
    if (!form) return;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const input = document.getElementById("chat-input");
      const message = input.value.trim();
      if (!message) return;
      line("user", message);
      input.value = "";
      send(message);
    });
  });
})();
