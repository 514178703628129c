// agent-service dashboard. Plain JavaScript, no build step, no dependencies.
// Every server string is written with textContent, so nothing the API returns is ever parsed as HTML.
"use strict";

(() => {
  const API = "/api/v1";
  const KEY_STORAGE = "agent-service.api-key";
  const FINISHED = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
  const RETRYABLE = new Set(["FAILURE", "REVOKED"]);
  const LIST_EVERY_MS = 1000;       // the task list
  const PROGRESS_EVERY_MS = 300;    // status of unfinished tasks (the list carries no progress)
  const PENDING_EVERY_MS = 1000;    // queued/deferred tasks change rarely: poll them less
  const OVERVIEW_EVERY_MS = 2000;   // queue depth, workers, throughput
  const LIST_LIMIT = 20;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, detail, body) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.body = body;
    }
  }

  let apiKey = null;
  let generation = 0;          // bumped on sign-out: stale loops and streams stop
  let isAdmin = null;          // from the key's scopes (/auth/me); /jobs answering 403 also says no
  let canCancel = true;
  const rows = new Map();      // task_id -> row state
  let detail = null;           // the open task detail
  const errors = new Map();    // source -> message for the banner

  // ---------------------------------------------------------------- helpers

  function el(tag, opts = {}, children = []) {
    const node = document.createElement(tag);
    if (opts.className) node.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    if (opts.title) node.title = String(opts.title);
    if (opts.data) for (const [k, v] of Object.entries(opts.data)) node.dataset[k] = String(v);
    for (const child of children) node.appendChild(child);
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const now = () => performance.now();

  function shortId(id) {
    return id.length > 12 ? id.slice(0, 8) + "…" : id;
  }

  function age(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "–";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function clock(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? "–" : new Date(t).toLocaleTimeString();
  }

  function problemText(body, status) {
    if (body && typeof body === "object" && typeof body.detail === "string") {
      const fields = Array.isArray(body.errors)
        ? body.errors.map((e) => `${e.path}: ${e.message}`).join("\n")
        : "";
      return fields ? `${body.detail}\n${fields}` : body.detail;
    }
    return `HTTP ${status}`;
  }

  async function api(method, path, body) {
    const headers = { "X-API-Key": apiKey || "", Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, "The service did not answer.");
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok) throw new ApiError(resp.status, problemText(data, resp.status), data);
    return data;
  }

  function showError(source, err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your API key was rejected: " + err.detail);
      return;
    }
    const message = err instanceof ApiError ? err.detail : "Unexpected error: " + (err && err.message);
    errors.set(source, `${source}: ${message}`);
    renderErrors();
  }

  function clearError(source) {
    if (errors.delete(source)) renderErrors();
  }

  function renderErrors() {
    const banner = $("global-error");
    banner.textContent = [...errors.values()].join("\n");
    banner.hidden = errors.size === 0;
  }

  function inlineError(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }

  // a loop that never overlaps itself and stops on sign-out
  function loop(source, fn, everyMs) {
    const gen = generation;
    const tick = async () => {
      if (gen !== generation) return;
      try {
        await fn();
        clearError(source);
      } catch (e) {
        if (gen === generation) showError(source, e);
      }
      if (gen === generation) setTimeout(tick, everyMs);
    };
    tick();
  }

  function setProgress(bar, value, state) {
    const v = Math.max(0, Math.min(100, Math.round(Number(value) || 0)));
    bar.dataset.progress = String(v);
    bar.setAttribute("aria-valuenow", String(v));
    if (state) bar.dataset.state = state;
    bar.querySelector(".bar").style.width = v + "%";  // CSSOM, allowed under style-src 'self'
    bar.querySelector(".pct").textContent = v + " %";
  }

  function progressBar(label) {
    const bar = el("div", { className: "progress", data: { progress: 0 } },
      [el("div", { className: "bar" }), el("span", { className: "pct", text: "0 %" })]);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", "0");
    bar.setAttribute("aria-label", label);
    return bar;
  }

  function setStateBadge(node, state) {
    node.textContent = state || "";
    node.dataset.state = state || "";
  }

  // ---------------------------------------------------------------- sign in / out

  async function signIn(key, { remember }) {
    apiKey = key;
    const gen = ++generation;
    let me;
    let agents;
    try {
      me = await api("GET", "/auth/me");
      agents = await api("GET", "/agents");
    } catch (e) {
      if (gen !== generation) return;
      apiKey = null;
      sessionStorage.removeItem(KEY_STORAGE);
      inlineError($("signin-error"), e instanceof ApiError && e.status === 401
        ? "This API key was rejected: " + e.detail : "Sign-in failed: " + (e.detail || e.message));
      return;
    }
    if (gen !== generation) return;
    if (remember) sessionStorage.setItem(KEY_STORAGE, key);
    inlineError($("signin-error"), "");
    $("api-key").value = "";
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("session").hidden = false;
    const scopes = Array.isArray(me.scopes) ? me.scopes : [];
    isAdmin = scopes.includes("admin");
    canCancel = scopes.includes("tasks:cancel");
    $("session-info").textContent = `${me.email} · key ${key.slice(0, 12)}… · ${isAdmin ? "admin" : "not an admin"}`;
    $("admin-note").hidden = isAdmin;
    $("dashboard").classList.toggle("not-admin", !isAdmin);
    fillAgents(agents);
    loop("Tasks", refreshTasks, LIST_EVERY_MS);
    loop("Progress", refreshProgress, PROGRESS_EVERY_MS);
    if (isAdmin) loop("Jobs overview", refreshOverview, OVERVIEW_EVERY_MS);
  }

  function signOut(message) {
    generation++;
    closeDetail();
    apiKey = null;
    isAdmin = null;
    sessionStorage.removeItem(KEY_STORAGE);
    rows.clear();
    errors.clear();
    renderErrors();
    $("task-list").replaceChildren();
    $("workers-body").replaceChildren();
    $("failures").replaceChildren();
    $("throughput").replaceChildren();
    for (const id of ["q-queued", "q-deferred", "q-in-progress", "q-retrying"]) $(id).textContent = "–";
    $("agent").replaceChildren();
    $("admin-note").hidden = true;
    $("dashboard").classList.remove("not-admin");
    inlineError($("task-form-error"), "");
    $("task-form-result").hidden = true;
    $("dashboard").hidden = true;
    $("session").hidden = true;
    $("signin").hidden = false;
    inlineError($("signin-error"), message || "");
    $("api-key").focus();
  }

  function fillAgents(list) {
    const select = $("agent");
    select.replaceChildren();
    for (const agent of (list && list.agents) || []) {
      const option = el("option", {
        text: agent.available ? agent.id : `${agent.id} (unavailable)`,
        title: agent.description,
      });
      option.value = agent.id;
      option.disabled = !agent.available;
      if (agent.id === list.default_agent) option.selected = true;
      select.appendChild(option);
    }
  }

  // ---------------------------------------------------------------- overview (admin)

  async function refreshOverview() {
    if (isAdmin === false) return;
    let ov;
    try {
      ov = await api("GET", "/jobs");
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {  // the key lost its admin scope meanwhile
        isAdmin = false;
        $("admin-note").hidden = false;
        $("dashboard").classList.add("not-admin");
        return;
      }
      throw e;
    }
    $("q-queued").textContent = ov.queue.queued;
    $("q-deferred").textContent = ov.queue.deferred;
    $("q-in-progress").textContent = ov.queue.in_progress;
    $("q-retrying").textContent = ov.queue.retrying;
    renderWorkers(ov.workers);
    renderThroughput(ov.throughput, ov.window_minutes);
    renderFailures(ov.recent_failures);
    if (detail) updateDetailButtons(detail);
  }

  function renderWorkers(workers) {
    const body = $("workers-body");
    body.replaceChildren(...workers.map((w) => {
      const beat = Date.parse(w.last_heartbeat);
      const stale = !Number.isNaN(beat) && Date.now() - beat > 10_000;
      const beatCell = el("td", { text: age(w.last_heartbeat), title: w.last_heartbeat, data: { field: "heartbeat" } });
      if (stale) beatCell.className = "stale";
      return el("tr", { data: { workerId: w.worker_id } }, [
        el("td", { className: "mono", text: `${w.host}:${w.pid}`, title: w.worker_id }),
        beatCell,
        el("td", { text: w.running }),
        el("td", { text: w.jobs_started }),
        el("td", { text: w.jobs_succeeded }),
        el("td", { text: w.jobs_failed }),
        el("td", { text: w.jobs_retried }),
        el("td", { text: w.jobs_cancelled }),
      ]);
    }));
    $("worker-count").textContent = `(${workers.length})`;
    $("workers-empty").hidden = workers.length > 0;
  }

  function renderThroughput(minutes, windowMinutes) {
    $("window-minutes").textContent = windowMinutes;
    const max = Math.max(1, ...minutes.map((m) => m.completed + m.failed + m.cancelled));
    $("throughput").replaceChildren(...minutes.map((m) => {
      const col = el("div", {
        className: "col",
        title: `${clock(m.minute)}: ${m.completed} completed, ${m.failed} failed, ${m.cancelled} cancelled`,
      });
      for (const [cls, n] of [["ok", m.completed], ["bad", m.failed], ["cancel", m.cancelled]]) {
        const seg = el("div", { className: "seg " + cls });
        seg.style.height = (100 * n / max) + "%";
        col.appendChild(seg);
      }
      return col;
    }));
  }

  function renderFailures(failures) {
    $("failures").replaceChildren(...failures.slice(0, 8).map((t) => {
      const open = el("button", { className: "link", text: shortId(t.task_id), title: t.task_id });
      open.type = "button";
      open.addEventListener("click", () => openDetail(t.task_id));
      return el("li", { data: { taskId: t.task_id } }, [
        open,
        el("span", { className: "muted", text: ` ${t.agent_id || t.kind} · ${clock(t.completed_at || t.created_at)}` }),
        el("span", { className: "err", text: t.error || "(no error text)" }),
      ]);
    }));
    $("failures-empty").hidden = failures.length > 0;
  }

  // ---------------------------------------------------------------- task list

  function makeRow(t) {
    const open = el("button", { className: "link", text: shortId(t.task_id), title: t.task_id });
    open.type = "button";
    const state = el("span", { className: "state", data: { field: "state" } });
    const bar = progressBar("Progress of task " + t.task_id);
    const cells = {
      agent: el("td"), kind: el("td"), owner: el("td", { className: "mono" }), tries: el("td"), created: el("td"),
    };
    const tr = el("tr", { data: { taskId: t.task_id } }, [
      el("td", {}, [open]), cells.agent, cells.kind, cells.owner, el("td", {}, [state]), el("td", {}, [bar]),
      cells.tries, cells.created,
    ]);
    tr.addEventListener("click", () => openDetail(t.task_id));
    return { id: t.task_id, tr, state: null, stateNode: state, bar, cells, stamp: -1, final: false, polled: 0 };
  }

  // updates are stamped with the time their request was sent: an older answer never overwrites a newer one
  function applyState(row, state, stamp) {
    if (stamp < row.stamp) return false;
    row.stamp = stamp;
    if (state !== row.state) {
      row.state = state;
      row.final = false;  // a finished task's exact progress is fetched once
      setStateBadge(row.stateNode, state);
      row.tr.dataset.state = state;
      row.bar.dataset.state = state;
      if (state === "SUCCESS") setProgress(row.bar, 100, state);
      if (state === "PENDING") setProgress(row.bar, 0, state);
    }
    return true;
  }

  async function refreshTasks() {
    const stamp = now();
    const page = await api("GET", `/agents/tasks?limit=${LIST_LIMIT}`);
    const body = $("task-list");
    const seen = new Set();
    page.items.forEach((t, i) => {
      seen.add(t.task_id);
      let row = rows.get(t.task_id);
      if (!row) {
        row = makeRow(t);
        rows.set(t.task_id, row);
      }
      applyState(row, t.state, stamp);
      row.cells.agent.textContent = t.agent_id || "–";
      row.cells.kind.textContent = t.kind;
      row.cells.owner.textContent = t.owner_id ? shortId(t.owner_id) : "–";
      row.cells.owner.title = t.owner_id || "";
      row.cells.tries.textContent = t.tries;
      row.cells.created.textContent = clock(t.created_at);
      row.cells.created.title = t.created_at;
      row.tr.classList.toggle("selected", detail !== null && detail.taskId === t.task_id);
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    $("tasks-empty").hidden = page.items.length > 0;
    $("tasks-updated").textContent = "· updated " + new Date().toLocaleTimeString();
  }

  async function refreshProgress() {
    const t = now();
    const due = [...rows.values()].filter((row) => row.state !== null && !row.final &&
      (row.state !== "PENDING" || t - row.polled >= PENDING_EVERY_MS));
    await Promise.all(due.map(async (row) => {
      row.polled = t;
      const stamp = now();
      let s;
      try {
        s = await api("GET", `/agents/tasks/${encodeURIComponent(row.id)}`);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) { row.final = true; return; }
        throw e;
      }
      if (!applyState(row, s.state, stamp)) return;
      setProgress(row.bar, s.progress, s.state);
      row.cells.tries.textContent = s.tries;
      if (FINISHED.has(s.state)) row.final = true;
    }));
  }

  // ---------------------------------------------------------------- queue a task

  async function submitTask(event) {
    event.preventDefault();
    const formError = $("task-form-error");
    const result = $("task-form-result");
    inlineError(formError, "");
    result.hidden = true;
    const agent = $("agent").value;
    const body = { message: $("message").value, stream: $("stream").checked };
    const rawMeta = $("metadata").value.trim();
    if (rawMeta) {
      let meta;
      try {
        meta = JSON.parse(rawMeta);
      } catch (e) {
        inlineError(formError, "Metadata is not valid JSON: " + e.message);
        return;
      }
      if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
        inlineError(formError, "Metadata must be a JSON object, e.g. {\"delay\": 0.1}.");
        return;
      }
      body.metadata = meta;
    }
    if (!agent) {
      inlineError(formError, "Choose an agent.");
      return;
    }
    const button = $("task-submit");
    button.disabled = true;
    try {
      const accepted = await api("POST", `/agents/${encodeURIComponent(agent)}/invoke-async`, body);
      result.textContent = `Queued task ${accepted.task_id} (${accepted.status}).`;
      result.dataset.taskId = accepted.task_id;
      result.hidden = false;
      refreshTasks().catch((e) => showError("Tasks", e));
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) showError("Queue", e);
      else inlineError(formError, e instanceof ApiError ? e.detail : String(e));
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- task detail + live events

  function openDetail(taskId) {
    closeDetail();
    const d = {
      taskId, gen: generation, controller: new AbortController(), lastEventId: null, retryMs: 1000,
      chunkIndexes: new Set(), state: null, following: false, restart: false,
      stamp: -1,  // when the newest applied update (status answer or event) was requested/received
    };
    detail = d;
    $("detail").hidden = false;
    $("detail").dataset.taskId = taskId;
    $("detail-id").textContent = taskId;
    setStateBadge($("detail-state"), "");
    $("detail-status").textContent = "";
    setProgress($("detail-progress"), 0, "");
    clearChunks(d);
    $("detail-result").textContent = "–";
    inlineError($("detail-error"), "");
    for (const row of rows.values()) row.tr.classList.toggle("selected", row.id === taskId);
    updateDetailButtons(d);
    refreshDetailStatus(d).catch(() => {});
    follow(d);
    $("detail").scrollIntoView({ block: "nearest" });
  }

  function closeDetail() {
    if (detail) detail.controller.abort();
    detail = null;
    $("detail").hidden = true;
    delete $("detail").dataset.taskId;
    for (const row of rows.values()) row.tr.classList.remove("selected");
  }

  const isOpen = (d) => d === detail && d.gen === generation;

  function clearChunks(d) {
    d.chunkIndexes.clear();
    $("detail-chunks").replaceChildren();
    $("detail-chunk-count").textContent = "";
  }

  function addChunk(d, index, content) {
    if (d.chunkIndexes.has(index)) return;
    d.chunkIndexes.add(index);
    const box = $("detail-chunks");
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    box.appendChild(el("span", { className: "chunk", text: content, data: { index } }));
    if (nearBottom) box.scrollTop = box.scrollHeight;
    $("detail-chunk-count").textContent = `(${d.chunkIndexes.size} chunks)`;
  }

  function setDetailState(d, state) {
    d.state = state;
    setStateBadge($("detail-state"), state);
    $("detail-progress").dataset.state = state;
    updateDetailButtons(d);
    const row = rows.get(d.taskId);
    if (row && applyState(row, state, now()) && state === "SUCCESS") setProgress(row.bar, 100, state);
  }

  function setDetailProgress(d, value) {
    setProgress($("detail-progress"), value);
    const row = rows.get(d.taskId);
    if (row && !FINISHED.has(row.state)) setProgress(row.bar, value);
  }

  function updateDetailButtons(d) {
    $("cancel-btn").disabled = !d.state || FINISHED.has(d.state) || !canCancel;
    $("retry-btn").disabled = !RETRYABLE.has(d.state) || isAdmin === false;
    $("retry-btn").title = isAdmin === false ? "Retrying needs an admin key." : "";
  }

  function showStatus(d, s) {
    setDetailState(d, s.state);
    setProgress($("detail-progress"), s.progress, s.state);
    $("detail-status").textContent = `${s.status} · ${s.agent_id || s.kind || ""} · tries ${s.tries}`;
    inlineError($("detail-error"), s.error || "");
    if (s.result) {
      $("detail-result").textContent = typeof s.result.content === "string"
        ? s.result.content + (s.result.incomplete ? "\n[incomplete]" : "")
        : JSON.stringify(s.result, null, 2);
      // the events have expired (or never had chunks): show the kept chunks
      if (d.chunkIndexes.size === 0 && Array.isArray(s.result.chunks)) {
        s.result.chunks.forEach((c, i) => addChunk(d, i, c));
      }
    } else {
      $("detail-result").textContent = "–";
    }
  }

  async function refreshDetailStatus(d) {
    const stamp = now();
    try {
      const s = await api("GET", `/agents/tasks/${encodeURIComponent(d.taskId)}`);
      // an answer older than the last event applied would move the view back: skip it
      if (isOpen(d) && stamp >= d.stamp) {
        d.stamp = stamp;
        showStatus(d, s);
      }
      return s;
    } catch (e) {
      if (!isOpen(d)) return null;
      if (e instanceof ApiError && e.status === 401) showError("Task", e);
      else inlineError($("detail-error"), e.detail || String(e));
      return null;
    }
  }

  // Server-Sent Events over fetch (EventSource cannot send the X-API-Key header).
  // Calls onEvent({event, data, id}) per event; returns true when onEvent says the stream is over.
  async function readSse(body, d, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let ev = { event: "", data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (ev.data.length) {
              if (ev.id) d.lastEventId = ev.id;
              if (onEvent({ event: ev.event || "message", data: ev.data.join("\n"), id: ev.id })) return true;
            }
            ev = { event: "", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) continue;  // keep-alive comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") ev.data.push(val);
          else if (field === "event") ev.event = val;
          else if (field === "id") ev.id = val;
          else if (field === "retry" && /^\d+$/.test(val)) d.retryMs = Math.min(Number(val), 10_000);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function handleEvent(d, ev) {
    if (!isOpen(d)) return true;
    let data;
    try { data = JSON.parse(ev.data); } catch (e) { return false; }
    d.stamp = now();
    if (ev.event === "state") {
      // a new attempt (worker retry, admin retry) starts its stream output afresh
      if (data.state === "STARTED" || data.state === "PENDING") clearChunks(d);
      if (data.state === "PENDING" || data.state === "STARTED") setDetailProgress(d, 0);
      setDetailState(d, data.state);
      if (data.state === "SUCCESS") setProgress($("detail-progress"), 100, "SUCCESS");
      if (data.error) inlineError($("detail-error"), data.error);
      return FINISHED.has(data.state);
    }
    if (ev.event === "progress") setDetailProgress(d, data.progress);
    else if (ev.event === "chunk") addChunk(d, data.index, data.content);
    return false;
  }

  async function follow(d) {
    if (d.following) {
      d.restart = true;  // the running loop may be about to stop: make it go on
      return;
    }
    d.following = true;
    d.restart = false;
    const streamStatus = $("detail-stream-status");
    try {
      while (isOpen(d)) {
        const headers = { "X-API-Key": apiKey || "", Accept: "text/event-stream" };
        if (d.lastEventId) headers["Last-Event-ID"] = d.lastEventId;
        streamStatus.textContent = "· connecting…";
        let resp;
        try {
          resp = await fetch(`${API}/agents/tasks/${encodeURIComponent(d.taskId)}/events`,
            { headers, signal: d.controller.signal, cache: "no-store" });
        } catch (e) {
          if (!isOpen(d)) return;
          streamStatus.textContent = "· disconnected, reconnecting…";
          await sleep(d.retryMs);
          continue;
        }
        if (!resp.ok) {
          let body = null;
          try { body = await resp.json(); } catch (e) { body = null; }
          const err = new ApiError(resp.status, problemText(body, resp.status), body);
          if (!isOpen(d)) return;
          streamStatus.textContent = "· not following";
          if (err.status === 401) showError("Task events", err);
          else inlineError($("detail-error"), err.detail);
          return;
        }
        streamStatus.textContent = "· live";
        let ended = false;
        try {
          ended = await readSse(resp.body, d, (ev) => handleEvent(d, ev));
        } catch (e) {
          if (!isOpen(d)) return;
        }
        if (!isOpen(d)) return;
        if (ended) {
          const s = await refreshDetailStatus(d);
          // the event log still holds an earlier run's end (e.g. before an admin retry): carry on after it
          if (d.restart || (s && !FINISHED.has(s.state))) {
            d.restart = false;
            await sleep(250);
            continue;
          }
          streamStatus.textContent = "· ended";
          return;
        }
        streamStatus.textContent = "· reconnecting…";
        await sleep(d.retryMs);
      }
    } finally {
      d.following = false;
    }
  }

  async function cancelTask() {
    const d = detail;
    if (!d) return;
    $("cancel-btn").disabled = true;
    try {
      const stamp = now();
      const s = await api("POST", `/agents/tasks/${encodeURIComponent(d.taskId)}/cancel`);
      if (!isOpen(d)) return;
      inlineError($("detail-error"), "");
      // 202 answers the state before the worker stopped it; the REVOKED event may already be here
      if (stamp >= d.stamp && !FINISHED.has(d.state)) {
        d.stamp = stamp;
        setDetailState(d, s.state);
        $("detail-status").textContent = s.state === "REVOKED" ? "cancelled" : "cancelling…";
      }
    } catch (e) {
      if (!isOpen(d)) return;
      if (e instanceof ApiError && e.status === 401) showError("Cancel", e);
      else inlineError($("detail-error"), e.detail || String(e));
      updateDetailButtons(d);
    }
  }

  async function retryTask() {
    const d = detail;
    if (!d) return;
    $("retry-btn").disabled = true;
    try {
      const stamp = now();
      const s = await api("POST", `/jobs/${encodeURIComponent(d.taskId)}/retry`);
      if (!isOpen(d)) return;
      inlineError($("detail-error"), "");
      if (stamp >= d.stamp) {  // else the new run's events are already here
        d.stamp = stamp;
        clearChunks(d);
        showStatus(d, s);
      }
      follow(d);  // resumes after the last event seen (Last-Event-ID)
    } catch (e) {
      if (!isOpen(d)) return;
      if (e instanceof ApiError && e.status === 401) showError("Retry", e);
      else inlineError($("detail-error"), e.detail || String(e));
      updateDetailButtons(d);
    }
  }

  // ---------------------------------------------------------------- wiring

  function start() {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        inlineError($("signin-error"), "Enter an API key.");
        return;
      }
      signIn(key, { remember: true });
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("task-form").addEventListener("submit", submitTask);
    $("cancel-btn").addEventListener("click", cancelTask);
    $("retry-btn").addEventListener("click", retryTask);
    $("close-detail").addEventListener("click", closeDetail);
    const stored = sessionStorage.getItem(KEY_STORAGE);
    if (stored) signIn(stored, { remember: true });
  }

  start();
})();
