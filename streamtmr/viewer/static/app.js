// streamtmr live viewer: anonymized bodies in 3-D (2-D canvas, perspective projection, orbit
// camera) beside the node's live metrics. Fed only by the node's WebSocket (/ws), which carries
// the frames the node publishes: see streamtmr/viewer/server.py for the message layout.
"use strict";

(() => {
  const PALETTE = ["#ff5a5f", "#3ddc84", "#4c9aff", "#ffb347", "#c77dff", "#2ee6d6",
                   "#ff7ac6", "#c6e94a"];
  const BACKGROUND = "#101418";
  const JOINT_VALUES = 25 * 3;

  // What the tests (and a curious user) can read: window.streamtmrViewer.
  const view = { frames: 0, metrics: 0, bodies: 0, seq: null, connected: false, colours: {} };
  window.streamtmrViewer = view;

  let topology = null;                // {parents, stages, edges_ms} from the hello message
  let latest = null;                  // {seq, ids, joints: Float32Array [n*75]}
  const colourOf = new Map();
  const camera = { yaw: 0.45, pitch: 0.3, dist: 4.5, target: null, floor: null };
  const $ = (id) => document.getElementById(id);

  // ---- connection ------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/ws");
    ws.binaryType = "arraybuffer";
    ws.onopen = () => setStatus("live", true);
    ws.onclose = () => { setStatus("disconnected, retrying…", false); setTimeout(connect, 1000); };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onJson(JSON.parse(ev.data));
      else onFrame(ev.data);
    };
  }

  function setStatus(text, live) {
    view.connected = live;
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("live", live);
  }

  function onJson(msg) {
    if (msg.type === "hello") topology = msg;
    else if (msg.type === "metrics") { view.metrics++; showMetrics(msg); }
  }

  function onFrame(buf) {
    const dv = new DataView(buf);
    if (dv.getUint32(0, true) !== 1) return;  // an unknown layout version
    const n = dv.getUint32(4, true);
    const seq = dv.getFloat64(8, true);
    const ids = [];
    for (let i = 0; i < n; i++) ids.push(dv.getBigUint64(16 + 8 * i, true).toString());
    const joints = new Float32Array(buf.slice(16 + 8 * n, 16 + 8 * n + 4 * JOINT_VALUES * n));
    for (const id of ids) {
      if (!colourOf.has(id)) colourOf.set(id, PALETTE[colourOf.size % PALETTE.length]);
      view.colours[id] = colourOf.get(id);
    }
    latest = { seq, ids, joints };
    view.frames++;
    view.bodies = n;
    view.seq = seq;
    $("bodies").textContent = n + (n === 1 ? " body" : " bodies");
    $("seq").textContent = String(seq);
    $("received").textContent = String(view.frames);
  }

  // ---- 3-D: camera, projection, drawing ----------------------------------------------------

  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                           a[0] * b[1] - a[1] * b[0]];
  const norm = (a) => { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; };

  // Camera basis: yaw 0, pitch 0 looks from the sensor along +Z (Kinect camera space: X to the
  // sensor's left, Y up), so the picture is what the sensor sees.
  function cameraFrame(width, height) {
    const cp = Math.cos(camera.pitch), sp = Math.sin(camera.pitch);
    const f = [Math.sin(camera.yaw) * cp, -sp, Math.cos(camera.yaw) * cp];
    const t = camera.target || [0, 0, 3];
    const eye = [t[0] - camera.dist * f[0], t[1] - camera.dist * f[1], t[2] - camera.dist * f[2]];
    const r = norm(cross(f, [0, 1, 0]));
    const u = cross(r, f);
    const focal = height / (2 * Math.tan((50 * Math.PI / 180) / 2));
    return { eye, f, r, u, focal, cx: width / 2, cy: height / 2 };
  }

  const NEAR = 0.05;
  const toCamera = (c, p) => { const d = sub(p, c.eye); return [dot(d, c.r), dot(d, c.u), dot(d, c.f)]; };
  const toScreen = (c, q) => [c.cx + c.focal * q[0] / q[2], c.cy - c.focal * q[1] / q[2]];

  // A world segment on screen, clipped at the near plane (null when wholly behind the camera).
  function segment(c, a, b) {
    let p = toCamera(c, a), q = toCamera(c, b);
    if (p[2] < NEAR && q[2] < NEAR) return null;
    if (p[2] < NEAR || q[2] < NEAR) {
      const s = (NEAR - p[2]) / (q[2] - p[2]);
      const m = [p[0] + s * (q[0] - p[0]), p[1] + s * (q[1] - p[1]), NEAR];
      if (p[2] < NEAR) p = m; else q = m;
    }
    return [toScreen(c, p), toScreen(c, q)];
  }

  function line(ctx, c, a, b) {
    const s = segment(c, a, b);
    if (!s) return;
    ctx.moveTo(s[0][0], s[0][1]);
    ctx.lineTo(s[1][0], s[1][1]);
  }

  function joint(frame, b, j) {
    const o = b * JOINT_VALUES + j * 3;
    return [frame.joints[o], frame.joints[o + 1], frame.joints[o + 2]];
  }

  // The camera follows the bodies' centre and the floor under their feet, smoothly.
  function follow(frame) {
    const n = frame.ids.length;
    if (!n) return;
    let x = 0, z = 0, y = 0, low = Infinity;
    for (let b = 0; b < n; b++) {
      for (let j = 0; j < 25; j++) {
        const p = joint(frame, b, j);
        x += p[0]; y += p[1]; z += p[2];
        low = Math.min(low, p[1]);
      }
    }
    const centre = [x / (25 * n), y / (25 * n), z / (25 * n)];
    const k = 0.08;
    camera.target = camera.target
      ? camera.target.map((v, i) => v + k * (centre[i] - v)) : centre;
    camera.floor = camera.floor === null ? low : camera.floor + k * (low - camera.floor);
  }

  function drawGrid(ctx, c) {
    const t = camera.target || [0, 0, 3];
    const y = camera.floor === null ? -1 : camera.floor;
    const x0 = Math.round(t[0]), z0 = Math.round(t[2]), half = 5, step = 0.5;
    ctx.strokeStyle = "#2b3440";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let k = -half; k <= half + 1e-9; k += step) {
      line(ctx, c, [x0 + k, y, z0 - half], [x0 + k, y, z0 + half]);
      line(ctx, c, [x0 - half, y, z0 + k], [x0 + half, y, z0 + k]);
    }
    ctx.stroke();
    // the sensor: a short Z axis from the camera-space origin, on the floor
    ctx.strokeStyle = "#5cc8ff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    line(ctx, c, [0, y, 0], [0, y, 0.5]);
    ctx.stroke();
  }

  function drawBodies(ctx, c, frame) {
    const parents = topology ? topology.parents : null;
    if (!parents) return;
    for (let b = 0; b < frame.ids.length; b++) {
      const colour = colourOf.get(frame.ids[b]);
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 4;
      ctx.lineCap = "round";
      ctx.beginPath();
      for (let j = 0; j < 25; j++) {
        if (parents[j] >= 0) line(ctx, c, joint(frame, b, parents[j]), joint(frame, b, j));
      }
      ctx.stroke();
      for (let j = 0; j < 25; j++) {
        const q = toCamera(c, joint(frame, b, j));
        if (q[2] < NEAR) continue;
        const s = toScreen(c, q);
        ctx.beginPath();
        ctx.arc(s[0], s[1], j === 3 ? 7 : 3.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }

  function render() {
    const canvas = $("scene");
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, w, h);
    ctx.scale(dpr, dpr);
    const c = cameraFrame(w / dpr, h / dpr);
    if (latest) follow(latest);
    drawGrid(ctx, c);
    if (latest) drawBodies(ctx, c, latest);
    requestAnimationFrame(render);
  }

  function orbitControls() {
    const canvas = $("scene");
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      drag = [e.clientX, e.clientY];
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointerup", () => { drag = null; });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      camera.yaw -= (e.clientX - drag[0]) * 0.01;
      camera.pitch = Math.max(-1.4, Math.min(1.4, camera.pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      camera.dist = Math.max(1, Math.min(30, camera.dist * Math.exp(e.deltaY * 0.001)));
    }, { passive: false });
    canvas.addEventListener("dblclick", () => {
      Object.assign(camera, { yaw: 0.45, pitch: 0.3, dist: 4.5 });
    });
  }

  // ---- metrics -------------------------------------------------------------------------------

  const fmt = (v, digits = 1) => (typeof v === "number" ? v.toFixed(digits) : "–");

  function setRows(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const text of [k, v]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  // A nested card as "a.b: value" rows (numbers and strings only), at most 24 of them.
  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      if (out.length >= 24) break;
      const key = prefix ? prefix + "." + k : k;
      if (v !== null && typeof v === "object") flatten(v, key, out);
      else out.push([key, typeof v === "number" ? +v.toFixed(4) : v]);
    }
    return out;
  }

  function showMetrics(m) {
    $("fps").textContent = fmt(m.fps);
    $("fps-in").textContent = fmt(m.fps_in);
    const c = m.counters || {};
    $("frames-in").textContent = String(c.frames_in || 0);
    $("frames-out").textContent = String(c.frames_out || 0);
    $("bodies-out").textContent = String(c.bodies_out || 0);
    const v = m.viewer || {};
    const slow = (v.dropped || {}).slow_client || 0;
    $("viewer-line").textContent = `${(v.clients || []).length} page(s), ${v.frames_pushed || 0} frames ` +
      `pushed, ${v.throttled || 0} above the page rate, ${slow} dropped for slow pages`;
    const drops = Object.entries(m.dropped || {}).sort((a, b) => b[1] - a[1]);
    setRows($("drops"), drops.length ? drops : [["none", 0]]);
    if (m.model) {
      const card = m.model.card;
      const rows = [["model", m.model.model || "–"], ["sha256", m.model.sha256 || "–"]];
      if (m.model.graph_sha256 && m.model.graph_sha256 !== m.model.sha256) {
        rows.push(["graph sha256", m.model.graph_sha256]);
      }
      rows.push(["method", m.model.method || "–"],
                ["engine", `${m.model.backend || "–"} on ${m.model.device || "–"}`]);
      if (m.model.unevaluated) rows.push(["privacy card", "NONE: running unevaluated"]);
      else if (!card) rows.push(["privacy card", "none reported by the node"]);
      setRows($("card"), [...rows, ...(card ? flatten(card, "card") : [])]);
    }
    if (m.histograms && topology) drawHistograms(m.histograms, m.latency || {});
  }

  // One row per stage: a bar per latency bin (height ∝ share of the recent samples), p50/p99.
  function drawHistograms(hist, latency) {
    const canvas = $("hist");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#171c22";
    ctx.fillRect(0, 0, w, h);
    const stages = topology.stages, edges = topology.edges_ms;
    const bins = edges.length - 1, label = 58, right = 96, axis = 16;
    const rowH = (h - axis) / stages.length, colW = (w - label - right) / bins;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    stages.forEach((stage, i) => {
      const counts = hist[stage] || [];
      const total = counts.reduce((a, b) => a + b, 0);
      const y0 = i * rowH;
      ctx.fillStyle = "#8b96a3";
      ctx.fillText(stage, 2, y0 + rowH / 2);
      counts.forEach((n, k) => {
        if (!n) return;
        const bh = Math.max(1, (rowH - 4) * n / total);
        ctx.fillStyle = "#5cc8ff";
        ctx.fillRect(label + k * colW + 1, y0 + rowH - 2 - bh, colW - 2, bh);
      });
      const s = latency[stage] || {};
      ctx.fillStyle = "#d8dee6";
      ctx.fillText(s.count ? `${fmt(s.p50_ms, 2)} / ${fmt(s.p99_ms, 2)}` : "–",
                   w - right + 6, y0 + rowH / 2);
    });
    ctx.fillStyle = "#8b96a3";
    ctx.textBaseline = "top";
    const ms = (v) => (v < 1 ? `${Math.round(v * 1000)}µs` : v < 1000 ? `${v}ms` : `${v / 1000}s`);
    edges.forEach((v, k) => {  // decades only, so the labels never overlap
      if (k > 0 && k < bins && Math.log10(v) % 1 === 0) ctx.fillText(ms(v), label + k * colW - 12, h - axis + 2);
    });
    ctx.fillText("p50 / p99 ms", w - right + 6, h - axis + 2);
  }

  orbitControls();
  connect();
  requestAnimationFrame(render);
})();
