// The live-calls page: one EventSource on /api/events ("calls" every half second, "recent" when
// it changes). Plain DOM, no build step, nothing from the internet.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
const $ = (sel, root = document) => root.querySelector(sel);

function fmtDuration(s) {
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  return m + ":" + String(r).padStart(2, "0");
}

function renderCall(el, c) {
  $(".agent", el).textContent = c.agent;
  $(".caller", el).textContent = c.caller || "anonymous";
  $(".duration", el).textContent = fmtDuration(c.duration_s);
  $(".codec", el).textContent = c.codec + (c.state === "ringing" ? " (ringing)" : "");
  const lin = c.level_in_db ?? -90, lout = c.level_out_db ?? -90;
  $(".level-in", el).value = lin;
  $(".level-out", el).value = lout;
  $(".db-in", el).textContent = lin.toFixed(0) + " dB";
  $(".db-out", el).textContent = lout.toFixed(0) + " dB";
  const q = c.quality || {}, lat = c.latency_ms || {};
  const fa = lat.first_audio || {}, inb = lat.inbound || {};
  $(".figures", el).textContent =
    `rtp in ${q.packets_in ?? 0} / out ${q.packets_out ?? 0} · loss ${q.loss_pct ?? 0}% · ` +
    `late ${q.late ?? 0} · gaps ${q.skipped_frames ?? 0} · underruns ${q.underruns ?? 0} · ` +
    `first audio p50 ${fa.p50 ?? 0} ms · inbound p99 ${inb.p99 ?? 0} ms`;
  const list = $(".transcript", el);
  const lines = (c.transcript || []).map((t) => [t.role, t.text, false]);
  for (const [role, text] of Object.entries(c.partial || {})) lines.push([role, text, true]);
  const key = JSON.stringify(lines);
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...lines.map(([role, text, partial]) => {
      const li = document.createElement("li");
      li.className = role + (partial ? " partial" : "");
      li.textContent = role + ": " + text;
      return li;
    }));
    list.scrollTop = list.scrollHeight;
  }
}

function showCalls(calls) {
  const box = $("#calls");
  const seen = new Set();
  for (const c of calls) {
    seen.add(c.call_id);
    let el = box.querySelector(`[data-call-id="${CSS.escape(c.call_id)}"]`);
    if (!el) {
      el = $("#call-template").content.firstElementChild.cloneNode(true);
      el.dataset.callId = c.call_id;
      box.appendChild(el);
    }
    renderCall(el, c);
  }
  for (const el of [...box.children]) if (!seen.has(el.dataset.callId)) el.remove();
  $("#live-count").textContent = calls.length;
  $("#no-calls").hidden = calls.length > 0;
}

// Rows are kept by id: a row already shown (and its <audio>, maybe playing) is not rebuilt.
function keepRows(body, items, key, build) {
  const old = new Map([...body.children].map((tr) => [tr.dataset.key, tr]));
  body.replaceChildren(...items.map((item) => {
    const tr = old.get(key(item)) || build(item);
    tr.dataset.key = key(item);
    return tr;
  }));
}

function showRecent(calls) {
  keepRows($("#recent tbody"), calls, (c) => c.call_id, (c) => {
    const tr = document.createElement("tr");
    tr.dataset.callId = c.call_id;
    const fa = ((c.latency_ms || {}).first_audio || {}).p99 ?? 0;
    const ended = new Date((c.start + c.duration_s) * 1000).toLocaleTimeString();
    const cells = [ended, c.agent, c.caller || "anonymous", fmtDuration(c.duration_s), c.reason,
      c.turns, c.rtp_lost, fa + " ms"];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    if (c.recording_url) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = withToken(c.recording_url);
      td.appendChild(audio);
    }
    tr.appendChild(td);
    const transcript = (c.transcript || []).map((t) => t.role + ": " + t.text).join("\n");
    if (transcript) tr.title = transcript;
    return tr;
  });
}

async function loadRecords() {
  let data;
  try {
    const response = await fetch(withToken("api/records"));
    if (!response.ok) return;
    data = await response.json();
  } catch (e) { return; }
  $("#records-section").hidden = !data.enabled;
  keepRows($("#records tbody"), data.calls, (r) => r.id, (r) => {
    const tr = document.createElement("tr");
    tr.dataset.recordId = r.id;
    const cells = [new Date(r.started * 1000).toLocaleString(), r.agent || "-", r.caller || "anonymous",
      r.did, r.outcome, r.end_reason || (r.sip_status ? String(r.sip_status) : "-"), r.turns];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    if (r.has_recording) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = withToken("recordings/" + encodeURIComponent(r.id));
      td.appendChild(audio);
    }
    tr.appendChild(td);
    tr.addEventListener("click", () => showRecord(r.id));
    return tr;
  });
}

async function showRecord(id) {
  const response = await fetch(withToken("api/records/" + encodeURIComponent(id)));
  if (!response.ok) return;
  const r = await response.json();
  const lines = (r.lines || []).map((l) => l.role + ": " + l.text);
  const detail = $("#record-detail");
  detail.textContent = `${r.id} ${r.agent || ""} ${r.outcome} ${r.end_reason || ""}\n` +
    (lines.length ? lines.join("\n") : "(no transcript)");
  detail.hidden = false;
}

function connect() {
  const source = new EventSource(withToken("api/events"));
  source.onopen = () => { $("#conn").textContent = "live"; $("#conn").className = "badge"; };
  source.onerror = () => { $("#conn").textContent = "reconnecting…"; $("#conn").className = "badge off"; };
  source.addEventListener("calls", (e) => {
    const data = JSON.parse(e.data);
    $("#drain").hidden = !data.draining;
    showCalls(data.calls);
  });
  source.addEventListener("recent", (e) => {
    showRecent(JSON.parse(e.data).calls);
    setTimeout(loadRecords, 1500);  // the records writer batches: give it a moment
  });
}
connect();
