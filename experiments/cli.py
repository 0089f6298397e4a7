"""`banditgate exp ...`: experiments through the control plane's HTTP API."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from banditgate.client import DEFAULT_URL, quoted
from banditgate.console import (
    AdminKey,
    AsJson,
    Url,
    call,
    console,
    control_client,
    dump,
    fail,
    print_table,
)
from banditgate.errors import InvalidSpec
from banditgate.spec import load_specs
from experiments.planning import PlanError, parse_split, plan

Name = Annotated[str, typer.Argument(help="Experiment name.")]
Wide = Annotated[
    bool, typer.Option("--wide", help="One table however wide (default: fit the terminal).")
]


def parse_window(text: str | None) -> float | None:
    """'90s', '15m', '6h', '7d' or plain seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        fail(f"--window: {text!r} is not a duration like 15m, 6h or 7d", code=2)
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_weights(pairs: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for pair in pairs:
        arm, sep, value = pair.partition("=")
        try:
            if not sep or not arm:
                raise ValueError
            weights[arm] = float(value)
        except ValueError:
            fail(f"{pair!r}: weights are written arm=weight, e.g. a=0.9 b=0.1", code=2)
    return weights


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def interval(pair: list[float] | None) -> str:
    return "-" if not pair else f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def when(ms: int | None) -> str:
    return "-" if not ms else dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


# -- commands ------------------------------------------------------------------------------


def apply(
    file: Annotated[list[Path], typer.Option("--file", "-f", help="Spec file(s), YAML or JSON.")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Create or update experiments from spec files (like kubectl apply)."""
    specs = []
    for path in file:
        try:
            specs.extend(load_specs(path))
        except InvalidSpec as exc:
            fail(exc.message, code=2)
    api = control_client(url, admin_key)
    for spec in specs:
        entry = call(
            api, "PUT", f"/v1/experiments/{quoted(spec.name)}", orjson.loads(spec.to_json())
        )
        if entry.get("unchanged"):
            console.print(f"experiment/{spec.name} unchanged (version {entry['version']})")
        elif entry.get("created"):
            console.print(f"experiment/{spec.name} created (version {entry['version']})")
        else:
            changes = ", ".join(f"{c['op']} {c['path']}" for c in entry.get("changes", []))
            console.print(
                f"experiment/{spec.name} configured (version {entry['version']}): {changes}"
            )


def list_(url: Url = DEFAULT_URL, as_json: AsJson = False, wide: Wide = False) -> None:
    """Every experiment with its mode, status and versions."""
    data = call(control_client(url), "GET", "/v1/experiments")
    if as_json:
        dump(data)
        return
    rows = []
    for e in data["experiments"]:
        status = f"ended ({e['winner']})" if e["status"] == "ended" else e["status"]
        rows.append(
            [
                e["name"],
                e["mode"],
                status,
                ", ".join(e["arms"]),
                str(e["version"]),
                fmt(e["policy_version"]),
                when(e["updated_ms"]),
            ]
        )
    columns = ["name", "mode", "status", "arms", "spec", "policy", "updated"]
    print_table("experiments", columns, rows, wide=wide)


def show(name: Name, url: Url = DEFAULT_URL, as_json: AsJson = False, wide: Wide = False) -> None:
    """The spec, status, traffic override and version history of one experiment."""
    api = control_client(url)
    described = call(api, "GET", f"/v1/experiments/{quoted(name)}")
    versions = call(api, "GET", f"/v1/experiments/{quoted(name)}/versions")["versions"]
    if as_json:
        dump({**described, "versions": versions})
        return
    status = described["status"] + (
        f" (winner {described['winner']})" if described["winner"] else ""
    )
    console.print(f"{name}  {described['spec']['mode']}  {status}", style="bold")
    console.print(
        f"spec version {described['version']} · policy version {fmt(described['policy_version'])} "
        f"· updated {when(described['updated_ms'])}"
    )
    override = described.get("override")
    if override:
        weights = ", ".join(f"{a}={w:g}" for a, w in override["weights"].items())
        console.print(
            f"static weights: {weights} ({override.get('reason')}, {when(override.get('ts_ms'))})"
        )
    console.print()
    console.print(yaml.safe_dump(described["spec"], sort_keys=False).rstrip())
    rows = [
        [
            str(v["version"]),
            when(v["ts_ms"]),
            v.get("reason", ""),
            ", ".join(f"{c['op']} {c['path']}" for c in v.get("changes", [])),
        ]
        for v in versions[-10:]
    ]
    print_table("spec versions", ["version", "when", "why", "what changed"], rows, wide=wide)


def stats(
    name: Name,
    window: Annotated[str | None, typer.Option(help="Only the last 15m, 6h, 7d...")] = None,
    url: Url = DEFAULT_URL,
    as_json: AsJson = False,
    wide: Wide = False,
) -> None:
    """Per-arm statistics, SRM check, regret and, for A/B tests, the sequential test."""
    seconds = parse_window(window)
    query = f"?window_s={seconds:g}" if seconds else ""
    data = call(control_client(url), "GET", f"/v1/experiments/{quoted(name)}/stats{query}")
    if as_json:
        dump(data)
        return
    ips = data["prob_best_method"] == "normal_ips"
    title = f"{name} · {data['mode']} · {'last ' + window if window else 'all data'}"
    columns = ["arm", "decisions", "share", "action p", "sampled p", "joined", "rewarded"]
    columns += ["mean reward", "95% CI"] + (["IPS value", "IPS 95% CI"] if ips else [])
    columns += ["P(best)", "errors"]
    rows = []
    for a in data["arms"]:
        row = [
            a["arm"],
            str(a["decisions"]),
            pct(a["traffic_share"]),
            pct(a["mean_action_probability"]),
            pct(a["mean_sampled_probability"]),
            str(a["joined"]),
            str(a["rewarded"]),
            fmt(a["mean_reward"]),
            interval(a["mean_reward_ci"]),
        ]
        if ips:
            row += [fmt(a["value"]), interval(a["value_ci"])]
        row += [pct(a["prob_best"]), str(a["errors"])]
        rows.append(row)
    print_table(title, columns, rows, wide=wide, right=tuple(columns[1:]))
    srm = data["srm"]
    flagged = bool(srm.get("flagged"))
    detail = (
        f"chi2 {fmt(srm.get('chi2'))} on {srm.get('df', '-')} df, p {fmt(srm.get('p_value'), 3)}"
    )
    console.print(
        f"sample ratio: {'FLAGGED' if flagged else 'ok'} ({srm.get('method')}; {detail})",
        style="bold red" if flagged else None,
    )
    if srm.get("reason"):
        console.print(f"  {srm['reason']}")
    regret = data["regret"]
    if regret.get("best_arm"):
        console.print(
            f"regret vs {regret['best_arm']}: {fmt(regret['per_decision'])} per decision, "
            f"{fmt(regret['total'])} total"
        )
    rewards = data["rewards"]
    console.print(
        f"rewards: {rewards['received']} received, {rewards['late']} late, "
        f"{rewards['orphaned']} orphaned, {rewards['duplicate']} duplicate"
    )
    sequential = data.get("sequential")
    if sequential and sequential.get("comparisons"):
        rows = []
        for c in sequential["comparisons"]:
            verdict = (
                ("better" if c["effect"] > 0 else "worse") + f" than {c['control']}"
                if c["significant"]
                else "no difference shown yet"
            )
            rows.append(
                [
                    f"{c['arm']} vs {c['control']}",
                    str(c["units"]),
                    fmt(c["effect"]),
                    interval(c["ci"]),
                    pct(c["relative_lift"]),
                    fmt(c["p_value"], 3),
                    verdict,
                ]
            )
        print_table(
            f"sequential test (anytime-valid, alpha {sequential['alpha']:g})",
            ["comparison", "units", "effect", "CS", "lift", "p", "verdict"],
            rows,
            wide=wide,
            right=("units", "effect", "CS", "lift", "p"),
        )


def plan_(
    effect: Annotated[float, typer.Option(help="Difference to detect: treatment - control.")],
    rate: Annotated[
        float | None, typer.Option(help="Control rate (default with -e: the control's so far).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help='"control/treatment" percentages (90/10) or the treatment share.'),
    ] = None,
    units: Annotated[
        int | None, typer.Option(help="A committed sample size: power and MDE at it.")
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", "-e", help="Plan at this experiment's current traffic."),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power wanted.")] = 0.8,
    url: Url = DEFAULT_URL,
    as_json: AsJson = False,
    wide: Wide = False,
) -> None:
    """Units an A/B test needs: fixed-horizon power and MDE, and the anytime-valid test's units."""
    if experiment is not None:
        query: dict[str, float | int | str] = {"effect": effect, "alpha": alpha, "power": power}
        query |= {k: v for k, v in (("rate", rate), ("split", split), ("units", units)) if v}
        path = f"/v1/experiments/{quoted(experiment)}/plan?{urllib.parse.urlencode(query)}"
        data = call(control_client(url), "GET", path)
    else:
        try:
            if rate is None:
                raise PlanError("rate", "give the control's rate (or --experiment to read it)")
            data = plan(
                rate=rate,
                effect=effect,
                share=parse_split(split) if split is not None else 0.5,
                alpha=alpha,
                power=power,
                units=units,
            )
        except PlanError as exc:
            fail(f"--{exc.field}: {exc.message}", code=2)
    if as_json:
        dump(data)
        return
    fixed, sequential = data["fixed_horizon"], data["sequential"]
    hours = data.get("hours") or {}
    print_table(
        f"rate {fmt(data['rate'])} -> {fmt(data['rate'] + data['effect'])} "
        f"({pct(data['relative_effect'])}), treatment share {pct(data['share'])}, "
        f"alpha {data['alpha']:g}, power {data['power']:g}",
        ["test", "units", "treatment", "control", "hours at current traffic"],
        [
            [
                "fixed horizon (analyse once)",
                str(fixed["units"]),
                str(fixed["treatment"]),
                str(fixed["control"]),
                fmt(hours.get("fixed_horizon"), 3),
            ],
            [
                f"anytime-valid (look any time; {sequential['factor']:g}x)",
                str(sequential["units"]),
                "-",
                "-",
                fmt(hours.get("sequential"), 3),
            ],
        ],
        wide=wide,
        right=("units", "treatment", "control", "hours at current traffic"),
    )
    if data.get("units_per_hour"):
        console.print(f"current traffic: {data['units_per_hour']:.0f} joined units per hour")
    at = data.get("at_units")
    if at:
        console.print(
            f"at {at['units']} units: power {pct(at['power'])}, "
            f"minimum detectable effect {fmt(at['minimum_detectable_effect'])}"
        )


def weights(
    name: Name,
    pairs: Annotated[list[str] | None, typer.Argument(help="arm=weight ... (none: show)")] = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Show the traffic split, or set static weights (arm=weight ...) through the rollout API."""
    api = control_client(url, admin_key)
    if pairs:
        body = {"weights": parse_weights(pairs)}
        result = call(api, "PUT", f"/v1/experiments/{quoted(name)}/weights", body)
        shown = (
            result.get("weights", body["weights"]) if isinstance(result, dict) else body["weights"]
        )
        console.print(
            f"{name}: weights set to " + ", ".join(f"{a}={w:g}" for a, w in shown.items())
        )
        return
    rollout = call(api, "GET", f"/v1/experiments/{quoted(name)}/rollout")
    console.print(f"{name}: phase {rollout.get('phase', '-')}")
    for arm, weight in (rollout.get("weights") or {}).items():
        console.print(f"  {arm}: {weight:g}")


def promote(name: Name, url: Url = DEFAULT_URL, admin_key: AdminKey = None) -> None:
    """Move a canary or blue/green rollout forward (to full traffic)."""
    result = call(
        control_client(url, admin_key), "POST", f"/v1/experiments/{quoted(name)}/rollout/promote"
    )
    phase = result.get("phase", "-") if isinstance(result, dict) else "-"
    console.print(f"{name}: promoted (phase {phase})")


def rollback(
    name: Name,
    to: Annotated[int | None, typer.Option("--to", help="Policy version to serve.")] = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Roll back: a rollout to its baseline, a bandit to its previous (or --to) policy version."""
    api = control_client(url, admin_key)
    path = f"/v1/experiments/{quoted(name)}"
    if to is None:
        mode = call(api, "GET", path)["spec"]["mode"]
        if mode in ("canary", "bluegreen"):
            result = call(api, "POST", f"{path}/rollout/abort")
            phase = result.get("phase", "-") if isinstance(result, dict) else "-"
            console.print(f"{name}: rolled back to the baseline (phase {phase})")
            return
        policies = call(api, "GET", f"{path}/policies")
        current = policies["current"]
        earlier = [h["version"] for h in policies["history"] if h["version"] != current]
        if not earlier:
            fail(f"{name} has no earlier policy version to roll back to", code=1)
        to = earlier[0]
    call(api, "POST", f"{path}/policies/{to}/activate")
    console.print(f"{name}: now serving policy version {to}")


def pause(
    name: Name,
    pairs: Annotated[
        list[str] | None, typer.Argument(help="arm=weight ... (none: freeze now)")
    ] = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Freeze traffic at static weights: the given ones, or the split served now."""
    body = {"weights": parse_weights(pairs)} if pairs else None
    result = call(
        control_client(url, admin_key), "POST", f"/v1/experiments/{quoted(name)}/pause", body
    )
    frozen = ", ".join(f"{a}={w:.4g}" for a, w in result["override"]["weights"].items())
    console.print(f"{name}: {result['status']} at {frozen}")


def resume(name: Name, url: Url = DEFAULT_URL, admin_key: AdminKey = None) -> None:
    """Undo pause or end."""
    result = call(control_client(url, admin_key), "POST", f"/v1/experiments/{quoted(name)}/resume")
    override = result.get("override")
    tail = f" (weights from {override.get('reason')})" if override else ""
    console.print(f"{name}: running{tail}")


def end(
    name: Name,
    winner: Annotated[str, typer.Option("--winner", help="Arm that gets all traffic.")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """End the experiment: 100% of traffic to the winner (resume undoes it)."""
    call(
        control_client(url, admin_key),
        "POST",
        f"/v1/experiments/{quoted(name)}/end",
        {"winner": winner},
    )
    console.print(f"{name}: ended, all traffic to {winner}")


def delete(
    name: Name,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Delete an experiment with its streams, policies and history."""
    if not yes:
        typer.confirm(f"delete {name} and all of its data?", abort=True)
    call(control_client(url, admin_key), "DELETE", f"/v1/experiments/{quoted(name)}")
    console.print(f"experiment/{name} deleted")


def register(app: typer.Typer) -> None:
    exp = typer.Typer(
        no_args_is_help=True,
        help="Experiments through the control plane's API (--url / BANDITGATE_URL).",
    )
    exp.command()(apply)
    exp.command("list")(list_)
    exp.command()(show)
    exp.command()(stats)
    exp.command()(weights)
    exp.command("plan")(plan_)
    exp.command()(promote)
    exp.command()(rollback)
    exp.command()(pause)
    exp.command()(resume)
    exp.command()(end)
    exp.command()(delete)
    app.add_typer(exp, name="exp")
