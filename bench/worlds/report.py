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
