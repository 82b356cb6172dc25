// Browser client for the voice agent. Two routes, one set of session messages:
// direct, one RTCPeerConnection to POST /api/offer (events over its data channel);
// or, when the server is in LiveKit mode, a LiveKit room that a `voice worker`
// is dispatched to (events as data packets). Plain ES module, no build step.

const $ = (id) => document.getElementById(id);

const ui = {
  state: $("state"), stateLabel: $("state-label"), mic: $("mic"), pipeline: $("pipeline"),
  aec: $("aec"), ns: $("ns"), agc: $("agc"), connect: $("connect"), session: $("session"),
  route: $("route"), routeRow: $("route-row"),
  error: $("error"), micMeter: $("mic-meter"), agentMeter: $("agent-meter"),
  transcript: $("transcript"), empty: $("transcript-empty"), latency: $("latency").tBodies[0],
  audio: $("agent-audio"),
};

const STATE_LABELS = {
  idle: "Not connected", connecting: "Connecting…", listening: "Listening",
  user_speaking: "Hearing you", user_paused: "Hearing you", thinking: "Thinking…",
  agent_speaking: "Speaking", ended: "Session ended",
};

// Everything about the current call; exposed as window.voiceApp for diagnostics and tests.
const app = {
  pc: null, channel: null, room: null, mic: null, audioCtx: null, pcId: null, sessionId: null,
  state: "idle", heartbeat: null, meterTimer: null, pendingCandidates: [],
  stats: { micPeak: 0, agentPeak: 0, messages: 0, events: {} },
  turns: new Map(), // turn -> {user: li, agent: li}
  connecting: false,
};
window.voiceApp = app;

// ------------------------------------------------------------------ UI helpers

function setState(state) {
  app.state = state;
  ui.state.className = `state state-${state}`;
  ui.state.dataset.state = state;
  ui.stateLabel.textContent = STATE_LABELS[state] || state;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setConnected(connected) {
  ui.connect.textContent = connected ? "Disconnect" : "Connect";
  ui.connect.classList.toggle("connected", connected);
  for (const el of [ui.mic, ui.aec, ui.ns, ui.agc, ui.route]) el.disabled = connected;
  // In a LiveKit room the engine is the worker's own.
  ui.pipeline.disabled = connected || usesLiveKit();
}

function usesLiveKit() {
  return !!app.liveKitAvailable && ui.route.value === "livekit";
}

function turnEntry(turn) {
  const key = turn ?? "?";
  if (!app.turns.has(key)) app.turns.set(key, { user: null, agent: null });
  return app.turns.get(key);
}

function addLine(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = kind.startsWith("user") ? "You" : kind.startsWith("agent") ? "Agent"
    : kind.startsWith("tool") ? "Tool" : "";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  if (who.textContent) li.append(who);
  li.append(body);
  ui.transcript.append(li);
  ui.empty.hidden = true;
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return li;
}

function setLineText(li, text) {
  li.querySelector(".text").textContent = text;
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function userText(turn, text, final) {
  if (!text || !text.trim()) return;
  const entry = turnEntry(turn);
  if (!entry.user) entry.user = addLine("user partial", text.trim());
  else setLineText(entry.user, text.trim());
  entry.user.classList.toggle("partial", !final);
  if (final) entry.user.dataset.final = "1";
}

function agentText(turn, text) {
  if (!text) return;
  const entry = turnEntry(turn);
  if (!entry.agent) {
    entry.agent = addLine("agent", text.trim());
    entry.agentText = text.trim();
  } else {
    entry.agentText = `${entry.agentText} ${text.trim()}`.trim();
    setLineText(entry.agent, entry.agentText);
  }
}

// Tool calls (voice/tools): one line per call, completed by its result.
const toolLines = new Map();

function toolArgs(args) {
  try { return JSON.stringify(args ?? {}); } catch { return "{}"; }
}

function toolCall(e) {
  toolLines.set(e.id, addLine("tool pending", `${e.name} ${toolArgs(e.arguments)} …`));
}

function toolResult(e) {
  const what = e.ok ? `→ ${String(e.result ?? "").slice(0, 160)}` : `→ error: ${e.error}`;
  const text = `${e.name} ${what}`;
  const li = toolLines.get(e.id);
  if (li) {
    setLineText(li, `${li.querySelector(".text").textContent.replace(/ …$/, "")} ${what}`);
    li.classList.remove("pending");
    li.classList.toggle("failed", !e.ok);
    toolLines.delete(e.id);
  } else {
    addLine(e.ok ? "tool" : "tool failed", text);
  }
}

function markInterrupted() {
  // The agent line being spoken when the user barged in.
  const lines = [...ui.transcript.querySelectorAll("li.agent")];
  const last = lines[lines.length - 1];
  if (last && !last.classList.contains("interrupted")) last.classList.add("interrupted");
  else addLine("note", "you interrupted the agent");
}

function fmt(v) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(3) : "–";
}

function latencyRow(m) {
  const tr = document.createElement("tr");
  for (const v of [m.turn ?? "?", fmt(m.voice_to_voice), fmt(m.endpoint_delay), fmt(m.asr_time),
                   fmt(m.llm_ttft), fmt(m.tts_first_audio)]) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.append(td);
  }
  ui.latency.append(tr);
}

// ------------------------------------------------------------------ devices

async function listMicrophones() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const current = ui.mic.value;
  const mics = devices.filter((d) => d.kind === "audioinput");
  ui.mic.replaceChildren(new Option("Default microphone", ""));
  mics.forEach((d, i) => {
    if (d.deviceId === "default" || !d.deviceId) return;
    ui.mic.append(new Option(d.label || `Microphone ${i + 1}`, d.deviceId));
  });
  if ([...ui.mic.options].some((o) => o.value === current)) ui.mic.value = current;
}

function micError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return window.isSecureContext
        ? "Microphone access was denied. Allow the microphone for this page and try again."
        : "The browser only allows the microphone on https:// or localhost pages.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No usable microphone was found. Plug one in or pick another one.";
    case "NotReadableError":
      return "The microphone is in use by another application.";
    default:
      return `Could not open the microphone: ${err?.message || err}`;
  }
}

// ------------------------------------------------------------------ level meters

function analyser(stream) {
  const node = app.audioCtx.createAnalyser();
  node.fftSize = 1024;
  app.audioCtx.createMediaStreamSource(stream).connect(node);
  return node;
}

function level(node, buf) {
  node.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const x of buf) sum += x * x;
  const rms = Math.sqrt(sum / buf.length);
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  return { rms, pct: Math.max(0, Math.min(100, ((db + 60) / 60) * 100)) };
}

function showLevel(meter, pct) {
  meter.firstElementChild.style.width = `${pct.toFixed(0)}%`;
  meter.setAttribute("aria-valuenow", pct.toFixed(0));
}

function startMeters() {
  const buf = new Float32Array(1024);
  app.meterTimer = setInterval(() => {
    if (app.micAnalyser) {
      const { rms, pct } = level(app.micAnalyser, buf);
      app.stats.micPeak = Math.max(app.stats.micPeak, rms);
      showLevel(ui.micMeter, pct);
    }
    if (app.agentAnalyser) {
      const { rms, pct } = level(app.agentAnalyser, buf);
      app.stats.agentPeak = Math.max(app.stats.agentPeak, rms);
      showLevel(ui.agentMeter, pct);
    }
  }, 50);
}

// ------------------------------------------------------------------ signalling

// ------------------------------------------------------------------ access token
// A server bound beyond localhost needs a token (or its API key) to start a session.
// Open the page as /?token=...: the token moves to sessionStorage (this tab only)
// and out of the address bar, and goes to the server as an Authorization header.
const TOKEN_KEY = "voice-token";

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

takeTokenFromUrl();

async function postJSON(method, url, body) {
  let res;
  try {
    res = await fetch(url, { method, headers: { "Content-Type": "application/json", ...authHeaders() },
                             body: JSON.stringify(body) });
  } catch {
    throw new Error("Cannot reach the server. Is `voice serve` running?");
  }
  let data = {};
  try { data = await res.json(); } catch { /* not JSON */ }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error(`This server needs an access token (${data.detail || "unauthorized"}). ` +
                    "Open the page with ?token=YOUR_TOKEN.");
  }
  if (res.status === 503 && data.error === "shutting down") {
    throw new Error("The server is shutting down. Try again in a moment.");
  }
  if (res.status === 503 && data.error === "busy") {
    throw new Error(`The agent is busy (${data.detail || "all sessions are in use"}). Try again in a moment.`);
  }
  if (!res.ok) {
    const why = [data.error, data.detail].filter(Boolean).join(": ") || `HTTP ${res.status}`;
    throw new Error(`The server rejected the session: ${why}`);
  }
  return data;
}

function waitForIceGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function flushCandidates() {
  if (!app.pcId || !app.pendingCandidates.length) return;
  const candidates = app.pendingCandidates.splice(0);
  try {
    await postJSON("PATCH", "/api/offer", { pc_id: app.pcId, candidates });
  } catch (e) {
    console.warn("trickle ICE failed", e);
  }
}

// ------------------------------------------------------------------ session events

function onMessage(raw) {
  let msg;
  try { msg = JSON.parse(raw); } catch { return; }
  app.stats.messages += 1;
  switch (msg.type) {
    case "session":
      app.sessionId = msg.session;
      ui.session.textContent = `session ${msg.session}`;
      break;
    case "ready":
      if (app.state === "connecting") setState("listening");
      break;
    case "end":
      showError(`The server ended the session (${msg.reason}).`);
      disconnect(false);
      break;
    case "signalling":
      if (msg.message?.type === "peerLeft") disconnect(false);
      break;
    case "event":
      onEvent(msg);
      break;
  }
}

function onEvent(e) {
  app.stats.events[e.event] = (app.stats.events[e.event] || 0) + 1;
  switch (e.event) {
    case "state":
      setState(e.state);
      break;
    case "asr_partial":
      userText(e.turn, e.text, false);
      break;
    case "asr_text":
      userText(e.turn, e.text, false);
      break;
    case "endpoint":
      userText(e.turn, e.text, true);
      break;
    case "agent_text":
      agentText(e.turn, e.text);
      break;
    case "barge_in":
      markInterrupted();
      break;
    case "tool_call":
      toolCall(e);
      break;
    case "tool_result":
      toolResult(e);
      break;
    case "call_action":
      addLine("note", e.action === "hangup" ? "the agent ended the call"
        : e.action === "transfer" ? `the agent transferred the call to ${e.target}` : `the agent pressed ${e.target}`);
      break;
    case "turn_metrics":
      latencyRow(e);
      break;
    case "error":
      showError(`Agent error: ${e.error}`);
      break;
  }
}

// ------------------------------------------------------------------ connect / disconnect

async function connect() {
  if (app.connecting || app.pc || app.room) return;
  app.connecting = true;
  showError("");
  setState("connecting");
  setConnected(true);
  ui.connect.disabled = true;
  try {
    // The click is the user gesture that lets audio play and WebAudio run.
    app.audioCtx = app.audioCtx || new AudioContext();
    await app.audioCtx.resume().catch(() => {});

    let config = { ice_servers: [] };
    try {
      // With the token: a server that requires one gives TURN credentials only to its holders.
      const r = await fetch("/api/config", { headers: authHeaders() });
      if (r.ok) config = await r.json();
    } catch {
      throw new Error("Cannot reach the server. Is `voice serve` running?");
    }

    const constraints = {
      echoCancellation: ui.aec.checked, noiseSuppression: ui.ns.checked, autoGainControl: ui.agc.checked,
      channelCount: 1,
    };
    if (ui.mic.value) constraints.deviceId = { exact: ui.mic.value };
    try {
      app.mic = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    } catch (err) {
      throw new Error(micError(err));
    }
    listMicrophones().catch(() => {}); // labels are visible once permission is granted
    app.micAnalyser = analyser(app.mic);

    if (config.livekit && usesLiveKit()) await joinLiveKitRoom();
    else await connectDirect(config);
  } catch (err) {
    showError(err.message || String(err));
    await disconnect(false, false);
    loadConfig(); // an engine that failed to load is no longer offered
  } finally {
    app.connecting = false;
    ui.connect.disabled = false;
  }
}

// ------------------------------------------------------------------ direct route

async function connectDirect(config) {
  const pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
  app.pc = pc;
  app.pendingCandidates = [];
  const channel = pc.createDataChannel("events", { ordered: true });
  app.channel = channel;
  channel.onmessage = (ev) => onMessage(ev.data);
  channel.onopen = () => {
    app.heartbeat = setInterval(() => {
      if (channel.readyState === "open") channel.send(JSON.stringify({ type: "heartbeat" }));
    }, 1000);
  };
  pc.addTransceiver(app.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [app.mic] });
  pc.ontrack = (ev) => {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    ui.audio.srcObject = stream;
    ui.audio.play().catch(() => {});
    app.agentAnalyser = analyser(stream);
  };
  pc.onicecandidate = (ev) => {
    if (!ev.candidate || !app.sentOffer) return;
    app.pendingCandidates.push({
      candidate: ev.candidate.candidate, sdp_mid: ev.candidate.sdpMid, sdp_mline_index: ev.candidate.sdpMLineIndex,
    });
    flushCandidates();
  };
  pc.onconnectionstatechange = () => {
    if (pc !== app.pc) return;
    if (pc.connectionState === "failed") {
      showError("The connection to the agent was lost (ICE failed). Check the network and connect again.");
      disconnect(false);
    } else if (pc.connectionState === "disconnected") {
      setState("connecting");
    } else if (pc.connectionState === "connected" && app.state === "connecting" && app.sessionId) {
      // "ready" arrives over the data channel; this is a fallback label only.
    }
  };

  app.sentOffer = false;
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc, 2000);
  app.sentOffer = true;
  const answer = await postJSON("POST", "/api/offer", {
    sdp: pc.localDescription.sdp, type: "offer", pipeline: ui.pipeline.value,
  });
  if (pc !== app.pc) return; // disconnected meanwhile
  app.pcId = answer.pc_id;
  app.sessionId = answer.session;
  ui.session.textContent = `session ${answer.session}`;
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  await flushCandidates();
  startMeters();
}

// ------------------------------------------------------------------ LiveKit route

const LIVEKIT_CLIENT = "/vendor/livekit-client.umd.js";
const AGENT_WAIT_MS = 20000; // a room with no agent after this: no worker took the job

function loadScript(src) {
  if (window.LivekitClient) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = () => resolve();
    script.onerror = () => reject(new Error(`Could not load the LiveKit client (${src}).`));
    document.head.append(script);
  });
}

async function joinLiveKitRoom() {
  await loadScript(LIVEKIT_CLIENT);
  const LK = window.LivekitClient;
  // A fresh room per call; the token asks LiveKit to dispatch the agent into it.
  const grant = await postJSON("GET", "/api/livekit/token");
  const room = new LK.Room({ adaptiveStream: false, dynacast: false });
  app.room = room;
  app.liveKit = { url: grant.url, room: grant.room, identity: grant.identity };
  room.on(LK.RoomEvent.TrackSubscribed, (track) => {
    if (room !== app.room || track.kind !== LK.Track.Kind.Audio) return;
    track.attach(ui.audio);
    ui.audio.play().catch(() => {});
    app.agentAnalyser = analyser(new MediaStream([track.mediaStreamTrack]));
  });
  room.on(LK.RoomEvent.DataReceived, (payload) => {
    if (room === app.room) onMessage(new TextDecoder().decode(payload));
  });
  room.on(LK.RoomEvent.ParticipantDisconnected, (participant) => {
    if (room !== app.room || !participant.isAgent) return;
    showError("The agent left the room.");
    disconnect(false);
  });
  let joined = false; // a failed join is reported by room.connect() below, with the server's reason
  room.on(LK.RoomEvent.Disconnected, (reason) => {
    if (room !== app.room || !joined) return; // our own hang-up, or the join failing
    showError(`The LiveKit room closed (${LK.DisconnectReason?.[reason] ?? reason ?? "connection lost"}).`);
    disconnect(false);
  });
  try {
    await room.connect(grant.url, grant.token, { autoSubscribe: true });
    joined = true;
  } catch (err) {
    if (room !== app.room) return; // the user hung up while it was joining
    throw new Error(`Cannot join the LiveKit room at ${grant.url}: ${err.message || err}`);
  }
  if (room !== app.room) return; // disconnected meanwhile
  // The microphone the page already opened (device, processing and meter as chosen);
  // no DTX: the agent hears a steady stream, as on the direct route.
  await room.localParticipant.publishTrack(app.mic.getAudioTracks()[0],
                                           { source: LK.Track.Source.Microphone, dtx: false });
  ui.session.textContent = `room ${grant.room}`;
  startMeters();
  app.agentTimer = setTimeout(() => {
    if (room !== app.room || app.sessionId) return;
    showError("No agent joined the room. Is a `voice worker` registered with this LiveKit server?");
    disconnect(false);
  }, AGENT_WAIT_MS);
}

async function disconnect(sayBye = true, keepError = true) {
  const { pc, channel, room } = app;
  app.room = null; // first: the room's own Disconnected event is then ours, not an error
  clearTimeout(app.agentTimer);
  if (room) room.disconnect().catch(() => {});
  if (sayBye && channel?.readyState === "open") {
    try { channel.send(JSON.stringify({ type: "bye" })); } catch { /* closing anyway */ }
  }
  clearInterval(app.heartbeat);
  clearInterval(app.meterTimer);
  app.heartbeat = app.meterTimer = null;
  app.pc = app.channel = null;
  app.pcId = app.sessionId = null;
  if (pc) pc.close();
  app.mic?.getTracks().forEach((t) => t.stop());
  app.mic = null;
  app.micAnalyser = app.agentAnalyser = null;
  ui.audio.srcObject = null;
  showLevel(ui.micMeter, 0);
  showLevel(ui.agentMeter, 0);
  setConnected(false);
  setState(keepError && ui.error.hidden === false ? "ended" : "idle");
}

ui.connect.addEventListener("click", () => (app.pc || app.room || app.connecting ? disconnect(true) : connect()));
ui.route.addEventListener("change", () => setConnected(false));
window.addEventListener("pagehide", () => disconnect(true));
navigator.mediaDevices?.addEventListener?.("devicechange", () => listMicrophones().catch(() => {}));

// Engines the server can run now, and its default.
async function loadConfig(first = false) {
  let cfg = null;
  try {
    const r = await fetch("/api/config");
    if (r.ok) cfg = await r.json();
  } catch {
    if (first) showError("Cannot reach the server. Is `voice serve` running?");
    return;
  }
  if (!cfg) return;
  app.authRequired = !!cfg.auth_required;
  app.liveKitAvailable = !!cfg.livekit;
  ui.routeRow.hidden = !cfg.livekit;
  if (!app.room && !app.pc) setConnected(false);
  if (first && app.authRequired && !sessionStorage.getItem(TOKEN_KEY)) {
    showError("This server needs an access token: open the page with ?token=YOUR_TOKEN.");
  }
  const available = cfg.pipelines || [];
  for (const o of [...ui.pipeline.options]) {
    o.disabled = !available.includes(o.value);
    o.title = o.disabled ? "not available on this server" : "";
  }
  if (first && available.includes(cfg.pipeline)) ui.pipeline.value = cfg.pipeline;
  if (ui.pipeline.selectedOptions[0]?.disabled && available.length) ui.pipeline.value = available[0];
}
loadConfig(true);
listMicrophones().catch(() => {});
setState("idle");
