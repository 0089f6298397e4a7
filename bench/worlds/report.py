"""One Markdown table per world: mean and worst seed of every metric."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("reward", "reward", "{:.4f}"),
    ("of_oracle", "/ oracle", "{:.3f}"),
    ("best_share_last", "best arm, last 2,000", "{:.2f}"),
    ("after_change_of_oracle", "after change / oracle", "{:.3f}"),
    ("recovery", "recovery (requests)", "{:.0f}"),
    ("publishes", "publishes", "{:.0f}"),
    ("alarms", "change alarms", "{:.1f}"),
)


def _cell(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    mean, worst = fmt.format(value["mean"]), fmt.format(value["worst"])
    return mean if mean == worst else f"{mean} ({worst})"


def table(report: dict[str, Any]) -> str:
    policies = report["policies"]
    keys = [
        (key, title, fmt)
        for key, title, fmt in COLUMNS
        if any(key in metrics for metrics in policies.values())
    ]
    seeds = report["seeds"]
    lines = [
        f"### {report['world']}",
        "",
        f"{report['description']}. {report['requests']:,} requests, seeds "
        f"{seeds[0]}-{seeds[-1]}; smallest gap {report['min_gap']:.2f}. "
        "Mean over seeds (worst seed).",
        "",
        "| policy | " + " | ".join(title for _, title, _ in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, metrics in policies.items():
        cells = [_cell(metrics, key, fmt) for key, _, fmt in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(reports: list[dict[str, Any]], policy: str) -> str:
    """Issue 11's targets for one policy over the worlds run, one line each."""
    lines = [f"Targets for `{policy}`:", ""]
    alarms = events = 0.0
    for report in reports:
        metrics = report["policies"].get(policy)
        if metrics is None:
            continue
        name, gap = report["world"], report["min_gap"]
        checks = []
        if report["stationary"]:
            reference = report["policies"]["thompson"]["reward"]["mean"]
            mean = metrics["reward"]["mean"]
            checks.append(
                f"reward {mean:.4f} vs Thompson - 0.005 = {reference - 0.005:.4f}: "
                + ("met" if mean >= reference - 0.005 else "NOT met")
            )
            if gap >= 0.03:
                of = metrics["of_oracle"]["mean"]
                checks.append(f"/oracle {of:.3f} >= 0.97: " + ("met" if of >= 0.97 else "NOT met"))
            if gap >= 0.05:
                worst = metrics["best_share_last"]["worst"]
                checks.append(
                    f"worst best-arm share {worst:.2f} >= 0.5: "
                    + ("met" if worst >= 0.5 else "NOT met")
                )
            per_seed = [seed[policy].get("alarms") for seed in report["per_seed"]]
            alarms += sum(a or 0.0 for a in per_seed)
            events += len(per_seed) * report["requests"]
        elif "recovery" in metrics:
            worst = metrics["recovery"]["worst"]
            after = metrics["after_change_of_oracle"]["worst"]
            checks.append(
                f"worst recovery {worst:.0f} <= 1,000: " + ("met" if worst <= 1000 else "NOT met")
            )
            checks.append(
                f"worst after-change /oracle {after:.3f} >= 0.9: "
                + ("met" if after >= 0.9 else "NOT met")
            )
        lines.append(f"- {name}: " + "; ".join(checks))
    if events:
        rate = alarms / events * 100_000
        lines.append(
            f"- change alarms on stationary worlds: {alarms:.0f} in {events:,.0f} events "
            f"= {rate:.2f} per 100,000: " + ("met" if rate < 1 else "NOT met")
        )
    return "\n".join(lines)
