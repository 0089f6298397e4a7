/* The experiments list: polls dashboard/_data and redraws the table. */
(function () {
  "use strict";

  const REFRESH_MS = 10000;
  const state = { data: null, renders: 0 };
  window.banditgate = state;

  const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (v, digits = 3) => (isNum(v) ? Number(v.toPrecision(digits)).toLocaleString() : "–");
  const int = (v) => (isNum(v) ? Math.round(v).toLocaleString() : "–");
  const ago = (ms) => {
    if (!ms) return "never";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  };

  function render(d) {
    state.data = d;
    const rows = d.experiments.map((e) => {
      const status = e.status === "ended" ? `ended · ${esc(e.winner)}` : esc(e.status);
      return (
        `<tr data-experiment="${esc(e.name)}">` +
        `<td><a href="dashboard/${encodeURIComponent(e.name)}">${esc(e.name)}</a>${e.description ? `<div class="muted">${esc(e.description)}</div>` : ""}</td>` +
        `<td class="left">${esc(e.mode)}</td>` +
        `<td class="left"><span class="badge ${esc(e.status)}">${status}</span></td>` +
        `<td class="left">${e.arms.map(esc).join(", ")}</td>` +
        `<td>${int(e.decisions)}</td><td>${int(e.joined)}</td><td>${num(e.mean_reward, 4)}</td><td>${int(e.errors)}</td>` +
        `<td>${e.srm_flagged ? '<span class="badge bad">SRM</span>' : isNum(e.srm_p_value) ? '<span class="good">ok</span>' : '<span class="muted">–</span>'}</td>` +
        `<td>${e.policy_version == null ? "–" : esc(e.policy_version)}</td><td>${esc(e.version)}</td><td>${ago(e.last_decision_ms)}</td></tr>`
      );
    });
    document.getElementById("experiments").innerHTML = rows.length
      ? `<table><thead><tr><th>experiment</th><th class="left">mode</th><th class="left">status</th><th class="left">arms</th><th>decisions</th><th>joined</th><th>mean reward</th><th>errors</th><th>sample ratio</th><th>policy</th><th>spec</th><th>last decision</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
      : '<p class="muted">No experiments yet. Create one with <code>banditgate exp apply -f spec.yaml</code>.</p>';
    state.renders += 1;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    try {
      const response = await fetch("dashboard/_data", { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
    } catch (err) {
      document.getElementById("updated").textContent = `refresh failed (${err.message}); retrying`;
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
