/* One experiment's dashboard: polls <name>/data and redraws in place. No network beyond this server. */
(function () {
  "use strict";

  const NAME = document.body.dataset.experiment;
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7f7f7f", "#F0E442"];
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.max(1, Number(params.get("refresh") || 5)) * 1000;
  const state = { data: null, charts: {}, renders: 0, timer: null, colors: {}, marks: [], segments: null };
  window.banditgate = state;

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (v, digits = 3) => (isNum(v) ? Number(v.toPrecision(digits)).toLocaleString() : "–");
  const pct = (v, digits = 1) => (isNum(v) ? (100 * v).toFixed(digits) + "%" : "–");
  const int = (v) => (isNum(v) ? Math.round(v).toLocaleString() : "–");
  const time = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
  const ago = (ms) => {
    if (!ms) return "never";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  };

  function colorOf(arm) {
    if (!(arm in state.colors)) state.colors[arm] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
    return state.colors[arm];
  }

  // -- charts ------------------------------------------------------------------------------

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  // Policy versions as dashed vertical lines on every time axis (activation times).
  function marksPlugin() {
    return {
      hooks: {
        draw: [
          (u) => {
            const ctx = u.ctx;
            const ratio = window.devicePixelRatio || 1;
            ctx.save();
            ctx.strokeStyle = cssVar("--muted");
            ctx.fillStyle = cssVar("--muted");
            ctx.setLineDash([4 * ratio, 3 * ratio]);
            ctx.lineWidth = ratio;
            ctx.font = `${10 * ratio}px sans-serif`;
            for (const mark of state.marks) {
              const x = u.valToPos(mark.t, "x", true);
              if (!(x >= u.bbox.left && x <= u.bbox.left + u.bbox.width)) continue;
              ctx.beginPath();
              ctx.moveTo(x, u.bbox.top);
              ctx.lineTo(x, u.bbox.top + u.bbox.height);
              ctx.stroke();
              ctx.fillText(`v${mark.version}`, x + 3 * ratio, u.bbox.top + 10 * ratio);
            }
            ctx.restore();
          },
        ],
      },
    };
  }

  function lineChart(key, el, xs, series, yRange, yFormat) {
    const data = [xs, ...series.map((s) => s.values)];
    const signature = series.map((s) => s.label).join("\u0000");
    const existing = state.charts[key];
    if (existing && existing.signature === signature) {
      existing.plot.setData(data);
      return existing.plot;
    }
    if (existing) existing.plot.destroy();
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 }, ticks: { stroke: cssVar("--grid") } };
    const opts = {
      width: Math.max(el.clientWidth, 300),
      height: 240,
      scales: { x: { time: true }, y: { range: yRange } },
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, dash: s.dash, spanGaps: false, value: (u, v) => yFormat(v) }))],
      axes: [axis, { ...axis, size: 56, values: (u, vals) => vals.map(yFormat) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      plugins: [marksPlugin()],
    };
    const plot = new uPlot(opts, data, el);
    state.charts[key] = { plot, signature };
    return plot;
  }

  function drawTimeseries(ts, stats) {
    const xs = ts.t.map((ms) => ms / 1000);
    const arms = Object.keys(ts.arms);
    lineChart(
      "traffic",
      $("chart-traffic"),
      xs,
      arms.map((a) => ({ label: a, color: colorOf(a), values: ts.arms[a].share })),
      [0, 1],
      (v) => pct(v, 0),
    );
    const probabilities = [];
    for (const a of arms) {
      probabilities.push({ label: `${a} action`, color: colorOf(a), values: ts.arms[a].action_p });
      probabilities.push({ label: `${a} sampled`, color: colorOf(a), dash: [6, 4], values: ts.arms[a].sampled_p });
    }
    lineChart("probabilities", $("chart-probabilities"), xs, probabilities, [0, 1], (v) => pct(v, 0));
    const r = stats.reward;
    lineChart(
      "reward",
      $("chart-reward"),
      xs,
      arms.map((a) => ({ label: a, color: colorOf(a), values: ts.arms[a].rolling_reward })),
      [r.min, r.max],
      (v) => num(v, 3),
    );
    $("caption-reward").textContent = `Rolling mean reward (trailing ${num(ts.rolling_s / 60, 2)} min, by join time)`;

    const c = ts.cumulative;
    const flat = (v) => xs.map(() => (isNum(v) ? v : null));
    lineChart(
      "cumulative",
      $("chart-cumulative"),
      xs,
      [
        { label: "obtained", color: cssVar("--text"), values: c.mean_reward },
        { label: `best arm (${c.best_arm || "–"})`, color: c.best_arm ? colorOf(c.best_arm) : "#888", dash: [6, 4], values: flat(c.best_value) },
        { label: "uniform split", color: "#7f7f7f", dash: [2, 3], values: flat(c.uniform_value) },
      ],
      null,
      (v) => num(v, 3),
    );
    lineChart(
      "regret",
      $("chart-regret"),
      xs,
      [
        { label: "this experiment", color: cssVar("--text"), values: c.regret },
        { label: "uniform split", color: "#7f7f7f", dash: [2, 3], values: c.uniform_regret },
      ],
      null,
      (v) => num(v, 3),
    );
    const latency = [];
    for (const a of arms) {
      latency.push({ label: `${a} p50`, color: colorOf(a), values: ts.arms[a].latency_p50_ms });
      latency.push({ label: `${a} p99`, color: colorOf(a), dash: [6, 4], values: ts.arms[a].latency_p99_ms });
    }
    lineChart("latency", $("chart-latency"), xs, latency, null, (v) => `${num(v, 3)} ms`);
    lineChart(
      "errors",
      $("chart-errors"),
      xs,
      arms.map((a) => ({ label: a, color: colorOf(a), values: ts.arms[a].error_rate })),
      [0, 1],
      (v) => pct(v, 1),
    );
    lineChart(
      "volume",
      $("chart-volume"),
      xs,
      arms.map((a) => ({ label: a, color: colorOf(a), values: ts.arms[a].decisions })),
      null,
      (v) => int(v),
    );
  }

  // The monitoring worker's latest check per arm (monitor/, through /v1/.../monitor).
  async function refreshMonitor() {
    try {
      const response = await fetch(`../v1/experiments/${encodeURIComponent(NAME)}/monitor`, { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      drawMonitor(await response.json());
    } catch (err) {
      $("monitor").innerHTML = `<p class="muted">monitoring unavailable (${esc(err.message)})</p>`;
    }
  }

  function qualityTable(q) {
    if (!q || !q.configured) return "";
    const arms = Object.keys(q.arms).sort();
    if (!arms.length) return `<p class="muted">Model quality: no report yet (${int(q.labels_received)} labels received).</p>`;
    const rows = arms.map((arm) => {
      const r = q.arms[arm];
      const c = r.current || {};
      const p = r.previous || {};
      const main = r.problem === "regression" ? `MAE ${num(c.mae, 4)}` : `accuracy ${pct(c.accuracy, 1)}`;
      const ci = c.accuracy_ci || c.mae_ci;
      const before = r.problem === "regression" ? num(p.mae, 4) : pct(p.accuracy, 1);
      return `<tr data-arm="${esc(arm)}"><td>${esc(arm)}</td><td class="quality">${main}</td><td>${ci ? `[${num(ci[0], 3)}, ${num(ci[1], 3)}]` : "–"}</td><td>${isNum(c.f1) ? num(c.f1, 3) : isNum(c.rmse) ? `RMSE ${num(c.rmse, 4)}` : "–"}</td><td>${int(c.n)}</td><td>${before}</td><td class="left">${r.alert ? `<span class="bad">${esc(r.alert)}</span>` : '<span class="good">ok</span>'}</td></tr>`;
    });
    return `<h2 style="margin-top:12px">Model quality on ground truth</h2><table id="quality-table"><thead><tr><th>arm</th><th>this window</th><th>95% CI</th><th>F1</th><th>labels</th><th>previous window</th><th class="left">alert</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }

  function drawMonitor(m) {
    state.monitor = m;
    const panel = $("monitor-panel");
    panel.hidden = !m.configured && !(m.quality && m.quality.configured);
    if (panel.hidden) return;
    const arms = Object.keys(m.arms).sort();
    const quality = qualityTable(m.quality);
    if (!m.configured) {
      $("monitor").innerHTML = quality;
      return;
    }
    if (!m.baseline || !arms.length) {
      $("monitor").innerHTML = `<p class="muted">${m.baseline ? "No check has run yet." : "No baseline yet: banditgate monitor baseline -e " + esc(NAME) + " --from training-data.parquet"}</p>` + quality;
      return;
    }
    const rows = arms.map((arm) => {
      const r = m.arms[arm];
      const found = r.violations || [];
      const worst = Object.entries(r.distances || {}).sort((a, b) => b[1] - a[1])[0];
      const list = found.map((v) => `<li>${esc(v.feature_name)}: ${esc(v.description)}</li>`).join("");
      return `<tr data-arm="${esc(arm)}"><td><span class="swatch" style="background:${colorOf(arm)}"></span>${esc(arm)}</td><td>${time(r.finished_ms)}</td><td>${int(r.records)}</td>` +
        `<td class="violations">${found.length ? `<span class="bad">${found.length}</span>` : '<span class="good">0</span>'}</td>` +
        `<td>${worst ? `${esc(worst[0])} ${num(worst[1], 3)}` : "–"}</td><td class="left"><ul class="history">${list}</ul></td></tr>`;
    });
    $("monitor").innerHTML = `<table id="monitor-table"><thead><tr><th>arm</th><th>checked</th><th>records</th><th>violations</th><th>largest distance</th><th class="left">what</th></tr></thead><tbody>${rows.join("")}</tbody></table>` + quality;
  }

  // Reward per arm for each value of one context feature (the segments API).
  async function refreshSegments() {
    const select = $("segment-feature");
    const feature = select.value || params.get("segment") || "";
    const query = new URLSearchParams({ window_s: $("window").value });
    if (feature) query.set("feature", feature);
    try {
      const response = await fetch(`../v1/experiments/${encodeURIComponent(NAME)}/segments?${query}`, { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      drawSegments(await response.json());
    } catch (err) {
      $("segments").innerHTML = `<p class="muted">segments unavailable (${esc(err.message)})</p>`;
    }
  }

  function drawSegments(s) {
    state.segments = s;
    const select = $("segment-feature");
    const names = s.features.map((f) => f.name);
    if (s.feature && !names.includes(s.feature)) names.unshift(s.feature);
    const options = ['<option value="">pick a feature</option>'].concat(names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`));
    if (select.options.length !== options.length) select.innerHTML = options.join("");
    select.value = s.feature || "";
    if (!s.feature) {
      $("segments").innerHTML = `<p class="muted">${names.length ? "Pick a context feature to compare the arms in each of its values." : "No joined examples in this window yet."}</p>`;
      return;
    }
    const arms = [...new Set(s.segments.flatMap((g) => Object.keys(g.arms)))];
    const rows = s.segments.map(
      (g) =>
        `<tr data-segment="${esc(g.segment)}"><td class="left">${esc(g.segment)}</td><td>${int(g.n)}</td>` +
        arms.map((a) => {
          const cell = g.arms[a];
          if (!cell) return "<td>–</td>";
          const value = isNum(cell.value) ? cell.value : cell.mean_reward;
          const best = g.best_arm === a ? ' class="good"' : "";
          return `<td${best}>${num(value, 3)} <span class="muted">(${int(cell.n)})</span></td>`;
        }).join("") +
        "</tr>",
    );
    $("segments").innerHTML =
      `<table id="segments-table"><thead><tr><th class="left">${esc(s.feature)}</th><th>examples</th>${arms.map((a) => `<th>${esc(a)}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>` +
      `<p class="note">IPS value per arm (mean reward where none was randomised), examples in brackets; green: the segment's best arm. ${int(s.examples)} newest joined examples of the window${s.truncated ? " (truncated)" : ""}.</p>`;
  }

  function drawCi(stats) {
    const arms = stats.arms.filter((a) => a.in_spec || a.decisions > 0);
    const low = stats.reward.min;
    const high = stats.reward.max;
    const width = Math.max($("chart-ci").clientWidth, 320);
    const rowH = 34;
    const left = 110;
    const right = 20;
    const top = 10;
    const height = top + rowH * arms.length + 26;
    const x = (v) => left + ((Math.min(Math.max(v, low), high) - low) / (high - low)) * (width - left - right);
    const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" role="img" aria-label="mean reward per arm with 95% confidence intervals">`];
    for (let i = 0; i <= 4; i++) {
      const v = low + ((high - low) * i) / 4;
      parts.push(`<line class="zero" x1="${x(v)}" x2="${x(v)}" y1="${top}" y2="${height - 22}"></line>`);
      parts.push(`<text x="${x(v)}" y="${height - 6}" text-anchor="middle">${num(v, 3)}</text>`);
    }
    arms.forEach((a, i) => {
      const y = top + rowH * i + rowH / 2;
      const color = colorOf(a.arm);
      const ci = a.mean_reward_ci;
      const attrs = `data-arm="${esc(a.arm)}" data-mean="${isNum(a.mean_reward) ? a.mean_reward : ""}" data-lo="${ci ? ci[0] : ""}" data-hi="${ci ? ci[1] : ""}" data-n="${a.reward_n}" data-value="${isNum(a.value) ? a.value : ""}"`;
      parts.push(`<g class="ci-row" ${attrs}>`);
      parts.push(`<text class="label" x="4" y="${y + 4}">${esc(a.arm)}</text>`);
      if (ci) {
        parts.push(`<line x1="${x(ci[0])}" x2="${x(ci[1])}" y1="${y}" y2="${y}" stroke="${color}" stroke-width="2"></line>`);
        for (const end of ci) parts.push(`<line x1="${x(end)}" x2="${x(end)}" y1="${y - 6}" y2="${y + 6}" stroke="${color}" stroke-width="2"></line>`);
      }
      if (isNum(a.mean_reward)) {
        parts.push(`<circle cx="${x(a.mean_reward)}" cy="${y}" r="5" fill="${color}"><title>${esc(a.arm)}: ${num(a.mean_reward, 4)}${ci ? ` [${num(ci[0], 4)}, ${num(ci[1], 4)}]` : ""}, n = ${a.reward_n}</title></circle>`);
      } else {
        parts.push(`<text x="${left}" y="${y + 4}">no rewards yet</text>`);
      }
      if (stats.prob_best_method === "normal_ips" && isNum(a.value)) {
        parts.push(`<rect x="${x(a.value) - 4}" y="${y - 4}" width="8" height="8" fill="none" stroke="${color}" stroke-width="1.5"><title>IPS value ${num(a.value, 4)}</title></rect>`);
      }
      parts.push("</g>");
    });
    parts.push("</svg>");
    $("chart-ci").innerHTML = parts.join("");
    $("ci-note").textContent =
      (stats.reward.binary ? "Wilson score intervals (0/1 rewards). " : "Student t intervals. ") +
      (stats.prob_best_method === "normal_ips" ? "Squares: each arm's IPS value (what it would earn on all traffic). " : "") +
      "Randomised traffic only; whiskers are clipped to the reward range.";
  }

  // -- panels ------------------------------------------------------------------------------

  function card(label, value, sub) {
    return `<div class="card"><div class="label">${esc(label)}</div><div class="value">${value}</div>${sub ? `<div class="sub">${sub}</div>` : ""}</div>`;
  }

  function drawCards(d) {
    const t = d.stats.totals;
    const rw = d.stats.rewards;
    const regret = d.stats.regret;
    const errRate = t.decisions ? t.errors / t.decisions : null;
    $("cards").innerHTML = [
      card("Decisions", int(t.decisions), `${int(t.forced)} forced · last ${ago(t.last_decision_ms)}`),
      card("Joined", int(t.joined), `${int(t.rewarded)} with a real reward`),
      card("Mean reward", num(t.mean_reward, 4), "randomised traffic"),
      card("Errors", int(t.errors), `${pct(errRate, 2)} of decisions`),
      card("Regret / decision", num(regret.per_decision, 3), regret.best_arm ? `vs ${esc(regret.best_arm)} · total ${num(regret.total, 3)}` : "not enough data"),
      card("Late / orphaned rewards", `${int(rw.late)} / ${int(rw.orphaned)}`, `${int(rw.received)} received`),
      card("Policy version", d.experiment.policy_version == null ? "cold start" : esc(d.experiment.policy_version), `spec version ${esc(d.experiment.version)}`),
    ].join("");
  }

  function drawHeader(d) {
    const e = d.experiment;
    $("mode").textContent = e.spec.mode;
    const status = $("status");
    status.textContent = e.status === "ended" ? `ended · winner ${e.winner}` : e.status;
    status.className = `badge ${e.status}`;
    document.title = `${NAME} · ${e.status} · banditgate`;
  }

  function drawSrm(srm) {
    const banner = $("srm");
    if (srm.flagged) {
      banner.hidden = false;
      banner.className = "banner bad";
      banner.innerHTML = `<strong>Sample ratio mismatch.</strong> ${esc(srm.reason || "")} The split of traffic does not match ${srm.method === "configured_weights" ? "the configured weights" : "the logged probabilities"}: results may be biased until the cause is found.`;
    } else {
      banner.hidden = true;
    }
    const rows = Object.keys(srm.observed || {}).map(
      (a) => `<tr><td><span class="swatch" style="background:${colorOf(a)}"></span>${esc(a)}</td><td>${int(srm.observed[a])}</td><td>${num(srm.expected[a], 5)}</td></tr>`,
    );
    const verdict = srm.flagged ? `<span class="bad">flagged</span>` : `<span class="good">ok</span>`;
    $("srm-detail").innerHTML =
      `<dl class="kv"><dt>check</dt><dd id="srm-state" data-flagged="${srm.flagged ? "1" : "0"}">${verdict}</dd>` +
      `<dt>method</dt><dd>${esc((srm.method || "").replace(/_/g, " "))}</dd>` +
      `<dt>chi-square</dt><dd>${num(srm.chi2, 4)} on ${esc(srm.df ?? "–")} df</dd>` +
      `<dt>p-value</dt><dd>${isNum(srm.p_value) ? srm.p_value.toExponential(2) : "–"} (flag below ${esc(srm.threshold ?? "")})</dd>` +
      (srm.reason ? `<dt>note</dt><dd>${esc(srm.reason)}</dd>` : "") +
      (srm.n_other_pmf ? `<dt>excluded</dt><dd>${int(srm.n_other_pmf)} decisions logged with another split (rules, earlier weights)</dd>` : "") +
      `</dl>` +
      (rows.length ? `<table><thead><tr><th>arm</th><th>observed</th><th>expected</th></tr></thead><tbody>${rows.join("")}</tbody></table>` : "");
  }

  function drawArms(stats) {
    const ips = stats.prob_best_method === "normal_ips";
    const head = ["arm", "decisions", "share", "weight", "action p", "sampled p", "joined", "rewarded", "mean reward", "95% CI"]
      .concat(ips ? ["IPS value", "95% CI"] : [])
      .concat(["rolling", "P(best)", "errors", "latency"]);
    const rows = stats.arms.map((a) => {
      const ci = a.mean_reward_ci;
      const vci = a.value_ci;
      const cells = [
        `<span class="swatch" style="background:${colorOf(a.arm)}"></span>${esc(a.arm)}${a.in_spec ? "" : ' <span class="muted">(removed)</span>'}`,
        int(a.decisions),
        pct(a.traffic_share),
        a.configured_weight == null ? "–" : pct(a.configured_weight),
        pct(a.mean_action_probability),
        pct(a.mean_sampled_probability),
        int(a.joined),
        int(a.rewarded),
        num(a.mean_reward, 4),
        ci ? `[${num(ci[0], 3)}, ${num(ci[1], 3)}]` : "–",
      ];
      if (ips) cells.push(num(a.value, 4), vci ? `[${num(vci[0], 3)}, ${num(vci[1], 3)}]` : "–");
      cells.push(
        num(a.rolling_mean_reward, 4),
        isNum(a.prob_best) ? `${pct(a.prob_best)}<span class="bar" style="width:${Math.round(60 * a.prob_best)}px"></span>` : "–",
        a.errors ? `<span class="bad">${int(a.errors)} (${pct(a.error_rate, 2)})</span>` : "0",
        isNum(a.mean_latency_ms) ? `${num(a.mean_latency_ms, 3)} ms` : "–",
      );
      return `<tr data-arm="${esc(a.arm)}">${cells.map((c) => `<td>${c}</td>`).join("")}</tr>`;
    });
    $("arms").innerHTML = `<table id="arms-table"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }

  function drawSequential(seq) {
    const panel = $("sequential-panel");
    if (!seq || !seq.comparisons) {
      panel.hidden = !seq;
      if (seq) $("sequential").innerHTML = `<p class="muted">${esc(seq.reason || "")}</p>`;
      return;
    }
    panel.hidden = false;
    const rows = seq.comparisons.map((c) => {
      const verdict = c.significant
        ? `<span class="${c.effect > 0 ? "good" : "bad"}">${esc(c.arm)} ${c.effect > 0 ? "better" : "worse"} than ${esc(c.control)}</span>`
        : '<span class="muted">no difference shown yet</span>';
      return `<tr data-arm="${esc(c.arm)}"><td>${esc(c.arm)} vs ${esc(c.control)}</td><td>${int(c.units)}</td><td>${num(c.mean_treatment, 4)}</td><td>${num(c.mean_control, 4)}</td><td>${num(c.effect, 3)}</td><td>${c.ci ? `[${num(c.ci[0], 3)}, ${num(c.ci[1], 3)}]` : "–"}</td><td>${pct(c.relative_lift)}</td><td>${isNum(c.p_value) ? c.p_value.toPrecision(3) : "–"}</td><td class="left">${verdict}</td><td class="left to-significance">${toSignificance(c)}</td></tr>`;
    });
    $("sequential").innerHTML =
      `<table><thead><tr><th>comparison</th><th>units</th><th>mean</th><th>control mean</th><th>effect</th><th>${pct(1 - seq.alpha_per_comparison, 1)} CS</th><th>lift</th><th>anytime p</th><th class="left">verdict</th><th class="left">expected units to significance</th></tr></thead><tbody>${rows.join("")}</tbody></table>` +
      `<p class="note">Anytime-valid (${esc(seq.method)}): look as often as you like; the chance of ever declaring a difference that is not there stays below ${pct(seq.alpha, 0)} (Bonferroni over ${seq.comparisons.length} comparison${seq.comparisons.length === 1 ? "" : "s"}).</p>`;
  }

  // Each shadow arm against the primary it mirrors (experiments/shadow_results.py).
  function drawShadow(shadow) {
    const panel = $("shadow-panel");
    panel.hidden = !shadow;
    if (!shadow) return;
    const ms = (l) => (l && isNum(l.p50) ? `${num(l.p50, 3)} / ${num(l.p99, 3)} ms` : "–");
    const rows = shadow.arms.map(
      (a) =>
        `<tr data-arm="${esc(a.arm)}"><td><span class="swatch" style="background:${colorOf(a.arm)}"></span>${esc(a.arm)}</td>` +
        `<td>${int(a.mirrored)}</td>` +
        `<td class="agreement">${a.compared ? pct(a.agreement_rate, 1) : '<span class="muted">not compared</span>'}</td>` +
        `<td>${pct(a.status_differs_rate, 1)}</td>` +
        `<td>${a.shadow_error_rate ? `<span class="bad">${pct(a.shadow_error_rate, 1)}</span>` : pct(a.shadow_error_rate, 1)}</td>` +
        `<td>${pct(a.primary_error_rate, 1)}</td>` +
        `<td>${ms(a.shadow_latency_ms)}</td><td>${ms(a.primary_latency_ms)}</td></tr>`,
    );
    $("shadow").innerHTML = rows.length
      ? `<table id="shadow-table"><thead><tr><th>shadow arm</th><th>mirrored</th><th>agrees with ${esc(shadow.primary || "primary")}</th><th>status differs</th><th>shadow errors</th><th>primary errors</th><th>shadow p50 / p99</th><th>primary p50 / p99</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
      : '<p class="muted">No mirrored requests in this window yet.</p>';
  }

  // Units the anytime-valid test needs for 80% power at the effect seen so far, and the
  // hours that takes at the current traffic (experiments.planning via the stats API).
  function toSignificance(c) {
    const plan = c.to_significance;
    if (c.significant) return '<span class="muted">reached</span>';
    if (!plan) return '<span class="muted">–</span>';
    const hours = isNum(plan.remaining_hours)
      ? ` (~${plan.remaining_hours < 48 ? `${num(plan.remaining_hours, 2)} h` : `${num(plan.remaining_hours / 24, 2)} days`} at current traffic)`
      : "";
    return `~${int(plan.sequential_units)} units for an effect of ${num(plan.effect, 3)}: ${int(plan.remaining_units)} more${hours}; a fixed-horizon test would need ${int(plan.fixed_horizon_units)}`;
  }

  function weightsBar(weights) {
    const total = Object.values(weights).reduce((s, w) => s + (isNum(w) ? w : 0), 0) || 1;
    return `<div class="weights">${Object.entries(weights)
      .filter(([, w]) => isNum(w) && w > 0)
      .map(([a, w]) => `<div style="width:${(100 * w) / total}%;background:${colorOf(a)}" title="${esc(a)} ${pct(w / total)}">${esc(a)} ${pct(w / total, 0)}</div>`)
      .join("")}</div>`;
  }

  function historyItem(item) {
    if (item === null || typeof item !== "object") return `<li>${esc(item)}</li>`;
    const ts = item.ts_ms || item.at_ms || item.time_ms;
    const rest = Object.entries(item)
      .filter(([k]) => !["ts_ms", "at_ms", "time_ms"].includes(k))
      .map(([k, v]) => `${esc(k)}=${esc(typeof v === "object" ? JSON.stringify(v) : v)}`)
      .join(" ");
    return `<li>${ts ? `<time>${time(ts)}</time>` : ""}${rest}</li>`;
  }

  function drawRollout(d) {
    const rollout = d.rollout;
    const override = d.experiment.override;
    const parts = [];
    if (rollout) {
      parts.push(`<dl class="kv"><dt>phase</dt><dd id="rollout-phase">${esc(rollout.phase ?? "–")}</dd></dl>`);
      if (rollout.weights && typeof rollout.weights === "object") parts.push(weightsBar(rollout.weights));
      const history = Array.isArray(rollout.history) ? rollout.history.slice(-30).reverse() : [];
      parts.push(history.length ? `<ul class="history">${history.map(historyItem).join("")}</ul>` : '<p class="muted">no rollout events yet</p>');
    } else {
      parts.push(`<p class="muted" id="rollout-phase">No rollout running (${esc(d.experiment.spec.mode)} mode).</p>`);
    }
    if (override) {
      parts.push(`<dl class="kv"><dt>static weights</dt><dd>${esc(override.reason || "")} · since ${time(override.ts_ms)}</dd></dl>`);
      parts.push(weightsBar(override.weights || {}));
    }
    $("rollout").innerHTML = parts.join("");
  }

  function drawVersions(d) {
    const rows = d.versions.map((v) => {
      const changes = (v.changes || []).map((c) => `${esc(c.op)} ${esc(c.path)}`).join(", ");
      return `<tr><td>${esc(v.version)}</td><td>${time(v.ts_ms)}</td><td class="left">${esc(v.reason || "")}</td><td class="left">${changes}</td></tr>`;
    });
    $("versions").innerHTML = `<table><thead><tr><th>version</th><th>when</th><th class="left">why</th><th class="left">what changed</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
    const p = d.policies;
    const prows = p.versions.map((v) => {
      const ope = ((v.ope || {}).candidate || {}).dr;
      return `<tr><td>${esc(v.version)}${v.version === p.current ? ' <span class="badge running">serving</span>' : ""}</td><td>${esc(v.parent ?? "–")}</td><td>${esc(v.source)}</td><td>${int(v.n_examples)}</td><td>${time(v.created_ms)}</td><td>${ope ? `${num(ope.value, 4)} [${num(ope.lo, 3)}, ${num(ope.hi, 3)}]` : "–"}</td></tr>`;
    });
    const activations = p.history.map((h) => historyItem({ ts_ms: h.ts_ms, version: h.version, reason: h.reason }));
    $("policies").innerHTML = prows.length
      ? `<table><thead><tr><th>version</th><th>parent</th><th>source</th><th>examples</th><th>created</th><th>OPE (DR)</th></tr></thead><tbody>${prows.join("")}</tbody></table>` +
        (activations.length ? `<h2 style="margin-top:12px">Activations</h2><ul class="history">${activations.join("")}</ul>` : "")
      : '<p class="muted">No policy published yet: the cold-start policy is serving.</p>';
  }

  function render(d) {
    state.data = d;
    state.marks = (d.policies.history || []).filter((h) => isNum(h.ts_ms)).map((h) => ({ t: h.ts_ms / 1000, version: h.version }));
    drawHeader(d);
    drawSrm(d.stats.srm);
    drawCards(d);
    drawTimeseries(d.timeseries, d.stats);
    drawCi(d.stats);
    drawArms(d.stats);
    drawSequential(d.stats.sequential);
    drawShadow(d.stats.shadow);
    drawRollout(d);
    drawVersions(d);
    state.renders += 1;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    const windowS = $("window").value;
    try {
      const response = await fetch(`${encodeURIComponent(NAME)}/data?window_s=${windowS}`, { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      await refreshSegments();
      await refreshMonitor();
    } catch (err) {
      $("updated").textContent = `refresh failed (${err.message}); retrying`;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = $("live").checked ? setInterval(refresh, REFRESH_MS) : null;
  }

  const initialWindow = params.get("window");
  if (initialWindow && [...$("window").options].some((o) => o.value === initialWindow)) $("window").value = initialWindow;
  $("window").addEventListener("change", () => {
    params.set("window", $("window").value);
    history.replaceState(null, "", `?${params}`);
    refresh();
  });
  $("segment-feature").addEventListener("change", () => {
    const feature = $("segment-feature").value;
    if (feature) params.set("segment", feature);
    else params.delete("segment");
    history.replaceState(null, "", `?${params}`);
    refreshSegments();
  });
  $("live").addEventListener("change", schedule);
  window.addEventListener("resize", () => {
    for (const [key, chart] of Object.entries(state.charts)) {
      const el = $(`chart-${key}`);
      chart.plot.setSize({ width: Math.max(el.clientWidth, 300), height: 240 });
    }
    if (state.data) drawCi(state.data.stats);
  });
  refresh().then(schedule);
})();
