"""The demo's HTML report: one self-contained file (charting library and data inlined)."""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>banditgate demo: {title}</title>
<style>{uplot_css}
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #1d1d1f; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} .sub {{ color: #666; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 12px 0 24px; }}
td, th {{ padding: 4px 12px; border-bottom: 1px solid #e5e5e5; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }}
.chart h2 {{ font-size: 15px; margin: 0 0 4px; }}
</style></head>
<body>
<h1>banditgate demo: {title}</h1>
<p class="sub">{subtitle}</p>
<table><tr><th>policy on this traffic</th><th>average reward</th></tr>{comparison}</table>
<table><tr><th>arm</th><th>traffic share</th><th>requests</th><th>mean reward [95% CI]</th></tr>{arms}</table>
<div class="grid">
  <div class="chart"><h2>Cumulative average reward</h2><div id="cumulative"></div></div>
  <div class="chart"><h2>Cumulative regret against the per-context oracle</h2><div id="regret"></div></div>
  <div class="chart"><h2>Traffic split over time</h2><div id="share"></div></div>
  <div class="chart"><h2>Rolling 100-event mean reward</h2><div id="reward"></div></div>
  <div class="chart"><h2>Mean action probability per arm</h2><div id="action"></div></div>
  <div class="chart"><h2>Mean sampled probability per arm (when chosen)</h2><div id="sampled"></div></div>
</div>
<script>{uplot_js}</script>
<script>
const DATA = {data};
const COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00"];
function chart(id, x, seriesByName, yLabel, extra) {{
  const names = Object.keys(seriesByName);
  const series = [{{label: "requests"}}].concat(names.map((n, i) => ({{label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true}})));
  (extra || []).forEach(e => series.push(e.series));
  const data = [x].concat(names.map(n => seriesByName[n])).concat((extra || []).map(e => e.data));
  new uPlot({{width: 520, height: 260, series: series, axes: [{{}}, {{label: yLabel}}],
             scales: {{x: {{time: false}}}}}}, data, document.getElementById(id));
}}
const t = DATA.timeline;
const c = t.cumulative;
const BASELINES = [
  ["uniform", "uniform A/B", "#999", [6, 4]],
  ["best_arm", "best fixed arm (" + c.best_arm_name + ")", "#555", [2, 3]],
  ["oracle", "per-context oracle", "#2a9d2a", [8, 3]],
];
chart("cumulative", c.x, {{bandit: c.bandit}}, "average reward",
      BASELINES.map(([k, label, color, dash]) => ({{series: {{label: label, stroke: color, dash: dash}}, data: c[k]}})));
chart("regret", c.x, {{bandit: c.bandit_regret}}, "regret (rewards)",
      BASELINES.slice(0, 2).map(([k, label, color, dash]) => ({{series: {{label: label, stroke: color, dash: dash}}, data: c[k + "_regret"]}})));
chart("share", t.x, t.share, "share");
chart("action", t.x, t.action_prob, "probability");
chart("sampled", t.x, t.sampled_prob, "probability");
const r = t.rolling_reward;
const flat = (v) => r.x.map(() => v);
chart("reward", r.x, {{bandit: r.y}}, "reward", [
  {{series: {{label: "uniform A/B", stroke: "#999", dash: [6, 4]}}, data: flat(DATA.summary.ab_reward)}},
  {{series: {{label: "best fixed arm", stroke: "#555", dash: [2, 3]}}, data: flat(DATA.summary.best_arm_reward)}},
  {{series: {{label: "per-context oracle", stroke: "#2a9d2a", dash: [8, 3]}}, data: flat(DATA.summary.oracle_reward)}},
]);
</script>
</body></html>
"""


def _static(name: str) -> str:
    return (resources.files("experiments") / "static" / name).read_text(encoding="utf-8")


def render(summary: dict[str, Any], timeline: dict[str, Any], title: str, subtitle: str) -> str:
    comparison = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{summary[key]:.4f}</td></tr>"
        for label, key in (
            ("banditgate (this run)", "avg_reward"),
            ("uniform A/B split", "ab_reward"),
            (f"best fixed arm ({summary['best_arm']})", "best_arm_reward"),
            ("per-context oracle", "oracle_reward"),
        )
    )
    arms = ""
    for name, row in summary["arms"].items():
        ci = row["ci95"]
        mean = (
            "n/a"
            if row["mean_reward"] is None
            else f"{row['mean_reward']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        )
        arms += f"<tr><td>{html.escape(name)}</td><td>{row['share']:.3f}</td><td>{row['requests']}</td><td>{mean}</td></tr>"
    data = orjson.dumps(
        {"summary": summary, "timeline": timeline}, option=orjson.OPT_SERIALIZE_NUMPY
    ).decode()
    return PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(subtitle),
        comparison=comparison,
        arms=arms,
        data=data.replace("</", "<\\/"),
        uplot_js=_static("uPlot.iife.min.js"),
        uplot_css=_static("uPlot.min.css"),
    )


def write(path: Path, page: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
