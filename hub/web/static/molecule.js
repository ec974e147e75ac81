// The pool as a molecule: the hub at the centre, each connected worker an atom bonded to it.
// Atom size follows the hub's measured speed, colour the hardware (hue) and trust (saturation),
// an outer ring the slots in use; a bond pulses when its worker served tokens since the last
// snapshot. Peer pools are small neighbouring molecules. Fed by GET /pool/events (event: pool).
// The figure is an extra: the server-rendered table beside it says the same without JS.
(function () {
  "use strict";

  const HUE = { gpu: 280, cpu: 200 };
  const PEER_COLOUR = { ok: "#3a7d44", failing: "#c98a1b", down: "#a33" };

  function radius(worker) {
    const speed = worker.tokens_per_s || 0;
    return 10 + Math.min(22, 4 * Math.log2(1 + speed));
  }

  function colour(worker) {
    if (worker.excluded) return "hsl(0, 0%, 60%)";
    const hue = HUE[worker.hardware] || 40;
    return "hsl(" + hue + ", " + (25 + 25 * worker.trust) + "%, 50%)";
  }

  function Molecule(root) {
    this.root = root;
    this.canvas = root.querySelector("canvas");
    this.card = root.querySelector("[data-card]");
    this.table = root.querySelector("[data-pool-table] tbody");
    this.labels = JSON.parse(root.dataset.labels || "{}");
    this.snapshot = { workers: [], peers: [] };
    this.atoms = [];
    this.pulses = [];
    this.selected = null;
    this.canvas.addEventListener("mousemove", (e) => this.hover(e, false));
    this.canvas.addEventListener("click", (e) => this.hover(e, true));
    this.canvas.addEventListener("mouseleave", () => { if (!this.selected) this.showCard(null); });
    window.addEventListener("resize", () => this.layout());
    const source = new EventSource(root.dataset.events);
    source.addEventListener("pool", (e) => this.update(JSON.parse(e.data)));
    this.frame = this.frame.bind(this);
    window.requestAnimationFrame(this.frame);
  }

  Molecule.prototype.update = function (snapshot) {
    const before = {};
    this.snapshot.workers.forEach((w) => { before[w.id] = w; });
    snapshot.workers.forEach((w) => {
      const old = before[w.id];
      if (old && w.tokens_served > old.tokens_served) this.pulses.push({ id: w.id, t: 0 });
    });
    this.snapshot = snapshot;
    this.layout();
    this.fillTable();
    if (this.selected) this.showCard(this.atoms.find((a) => a.worker.id === this.selected) || null);
  };

  Molecule.prototype.layout = function () {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    const cx = width / 2;
    const cy = height / 2;
    const orbit = Math.min(width, height) * 0.32;
    const workers = this.snapshot.workers;
    this.hub = { x: cx, y: cy, r: 16 };
    this.atoms = workers.map((w, i) => {
      const angle = (2 * Math.PI * i) / Math.max(workers.length, 1) - Math.PI / 2;
      return { worker: w, x: cx + orbit * Math.cos(angle), y: cy + orbit * Math.sin(angle), r: radius(w) };
    });
    const peers = this.snapshot.peers || [];
    this.peers = peers.map((p, i) => {
      const angle = (2 * Math.PI * (i + 0.5)) / peers.length;
      const far = Math.min(width, height) * 0.46;
      return { peer: p, x: cx + far * Math.cos(angle), y: cy + far * Math.sin(angle) };
    });
    canvas.dataset.atoms = String(this.atoms.length);
    canvas.dataset.peers = String(this.peers.length);
    canvas.dataset.live = "true"; // drawn from the stream, not only from the page's first render
  };

  Molecule.prototype.frame = function () {
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.canvas.clientWidth, this.canvas.clientHeight);
    if (this.hub) this.draw(ctx);
    window.requestAnimationFrame(this.frame);
  };

  Molecule.prototype.draw = function (ctx) {
    const hub = this.hub;
    ctx.setLineDash([4, 4]);
    this.peers.forEach((p) => {
      ctx.strokeStyle = PEER_COLOUR[p.peer.state] || "#888";
      line(ctx, hub, p);
      [0, 1, 2].forEach((k) => {
        const a = (2 * Math.PI * k) / 3;
        disc(ctx, p.x + 9 * Math.cos(a), p.y + 9 * Math.sin(a), 5, PEER_COLOUR[p.peer.state] || "#888");
      });
    });
    ctx.setLineDash([]);
    this.atoms.forEach((a) => {
      ctx.strokeStyle = a.worker.in_flight > 0 ? "#555" : "#bbb";
      ctx.lineWidth = a.worker.in_flight > 0 ? 3 : 1.5;
      line(ctx, hub, a);
    });
    this.atoms.forEach((a) => {
      // A job in flight streams tokens: keep its bond pulsing, one dot every ~40 frames.
      if (a.worker.in_flight > 0 && Math.random() < 0.025 * a.worker.in_flight) this.pulses.push({ id: a.worker.id, t: 0 });
    });
    this.pulses = this.pulses.filter((p) => p.t <= 1);
    this.pulses.forEach((p) => {
      const atom = this.atoms.find((a) => a.worker.id === p.id);
      p.t += 0.02;
      if (atom) disc(ctx, atom.x + (hub.x - atom.x) * p.t, atom.y + (hub.y - atom.y) * p.t, 4, "#f5a623");
    });
    disc(ctx, hub.x, hub.y, hub.r, "#222");
    this.atoms.forEach((a) => {
      disc(ctx, a.x, a.y, a.r, colour(a.worker));
      ctx.fillStyle = "#333";
      ctx.font = "12px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText(a.worker.name, a.x, a.y + a.r + 18);
      const used = a.worker.slots ? a.worker.in_flight / a.worker.slots : 0;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#e4572e";
      ctx.beginPath();
      ctx.arc(a.x, a.y, a.r + 4, -Math.PI / 2, -Math.PI / 2 + 2 * Math.PI * Math.min(used, 1));
      if (used > 0) ctx.stroke();
      if (a.worker.id === this.selected) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.arc(a.x, a.y, a.r + 8, 0, 2 * Math.PI);
        ctx.stroke();
      }
    });
  };

  Molecule.prototype.hover = function (event, click) {
    const box = this.canvas.getBoundingClientRect();
    const x = event.clientX - box.left;
    const y = event.clientY - box.top;
    const atom = this.atoms.find((a) => Math.hypot(a.x - x, a.y - y) <= a.r + 4) || null;
    if (click) this.selected = atom ? atom.worker.id : null;
    if (click || !this.selected) this.showCard(atom);
  };

  Molecule.prototype.showCard = function (atom) {
    if (!atom) { this.card.hidden = true; return; }
    const w = atom.worker;
    const L = this.labels;
    const rows = [
      [L.models || "Models", w.models.join(", ") || "-"],
      [L.speed || "Speed", w.tokens_per_s == null ? "-" : w.tokens_per_s.toFixed(1) + " tok/s"],
      [L.share || "Share vs target", pct(w.served_share) + " / " + pct(w.target_share)],
      [L.trust || "Trust", w.trust + " (" + w.trust_name + ")"],
      [L.in_flight || "In flight", w.in_flight + " / " + w.slots],
      [L.served || "Tokens served", String(w.tokens_served)],
    ];
    if (w.excluded) rows.push([L.excluded || "Excluded", w.excluded]);
    this.card.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = w.name + " (" + w.hardware + ")";
    this.card.appendChild(title);
    const list = document.createElement("dl");
    rows.forEach(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      list.append(dt, dd);
    });
    this.card.appendChild(list);
    this.card.dataset.worker = w.name;
    this.card.hidden = false;
  };

  Molecule.prototype.fillTable = function () {
    if (!this.table) return;
    this.table.replaceChildren();
    this.snapshot.workers.forEach((w) => {
      const tr = document.createElement("tr");
      [
        w.name, w.hardware, w.trust_name,
        w.tokens_per_s == null ? "-" : w.tokens_per_s.toFixed(1),
        pct(w.served_share) + " / " + pct(w.target_share),
        w.in_flight + " / " + w.slots, w.models.join(", "),
      ].forEach((text) => {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      this.table.appendChild(tr);
    });
  };

  function pct(x) { return (100 * x).toFixed(1) + "%"; }

  function line(ctx, a, b) {
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  function disc(ctx, x, y, r, fill) {
    ctx.fillStyle = fill;
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fill();
  }

  document.querySelectorAll("[data-molecule]").forEach((root) => new Molecule(root));
})();
