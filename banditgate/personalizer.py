"""The Personalizer REST surface's shared contract: its paths, its error shape, its settings.

Every component that answers part of the surface (router: rank and activate; reward
intake: rewards; control plane: configurations and model) reads its paths and renders its
errors with this module, so a Personalizer SDK pointed at `http://host/loops/{experiment}`
gets the shapes it was written for.

Paths: `/loops/{experiment}/personalizer/{version}/{operation}` where the version is
`v1.0` or `v1.1-preview.N`, or absent (the newest SDK, which sends `?api-version=`).
Errors: `{"error": {"code", "message"}}` with Personalizer's codes; 422s become 400s,
as Personalizer answers every invalid request with 400.

Service configuration maps onto the spec: rewardWaitTime <-> reward.window_s,
defaultReward <-> reward.default, rewardAggregation <-> reward.aggregation,
explorationPercentage <-> policy.exploration (epsilon), modelExportFrequency <->
policy.update.every_s. logRetentionDays and modelRetrainDays have no spec field: they are
kept beside the spec (`keys.personalizer_settings`) and reported back, not enforced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from banditgate.errors import BanditgateError, InvalidInput

LOOPS_PREFIX = "/loops/"
API_SEGMENT = "personalizer"
_VERSION = re.compile(r"^v1\.0$|^v1\.1-preview\.\d+$")
MAX_CONTEXT_FEATURES_CHARS = 256


@dataclass(frozen=True)
class PersonalizerPath:
    experiment: str
    version: str  # "v1.0", "v1.1-preview.3", or "" for the api-version style
    operation: tuple[str, ...]  # e.g. ("rank",), ("events", id, "reward"), ("multislot", "rank")


def parse_path(path: str) -> PersonalizerPath | None:
    """The parts of a Personalizer path under /loops/{experiment}/, or None if it is not one."""
    if not path.startswith(LOOPS_PREFIX):
        return None
    parts = path[len(LOOPS_PREFIX) :].split("/")
    if len(parts) < 3 or parts[1] != API_SEGMENT or not parts[0]:
        return None
    rest = parts[2:]
    version = ""
    if rest and _VERSION.match(rest[0]):
        version, rest = rest[0], rest[1:]
    if not rest or not all(rest):
        return None
    return PersonalizerPath(parts[0], version, tuple(rest))


# -- errors -------------------------------------------------------------------------------------


def error_code(error: BanditgateError, invalid: str) -> str:
    """Personalizer's code for one of our errors; `invalid`: the code of a bad request here."""
    status = error.status
    if status in (400, 409, 422):
        return invalid
    return {
        401: "Unauthorized",
        403: "InvalidApiAccess",
        404: "ResourceNotFound",
        405: "BadRequest",
        412: "BadRequest",
        413: "PayloadSizeExceeded",
        503: "OperationNotAllowed",
    }.get(status, "InternalServerError")


def error_status(error: BanditgateError) -> int:
    if error.status in (409, 412, 422):
        return 400
    if error.status == 413:
        return 400
    return error.status


def error_body(error: BanditgateError, invalid: str) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error_code(error, invalid), "message": error.message}
    if error.field is not None:
        body["target"] = error.field
    return {"error": body}


def authorization(headers: dict[str, str]) -> str | None:
    """The Authorization header, or `Ocp-Apim-Subscription-Key` as a bearer key (same key sets)."""
    given = headers.get("authorization")
    if given:
        return given
    key = headers.get("ocp-apim-subscription-key")
    return f"Bearer {key}" if key else None


# -- service configuration ----------------------------------------------------------------------

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")

AGGREGATIONS_IN = {
    "earliest": "earliest",
    "average": "mean",
    "mean": "mean",
    "sum": "sum",
    "max": "max",
    "min": "min",
}
AGGREGATIONS_OUT = {"earliest": "earliest", "mean": "average", "sum": "sum"}
# Beside the spec: reported back, not enforced.
SIDE_SETTINGS = ("logRetentionDays", "modelRetrainDays", "logMirrorEnabled", "learningMode")
SERVICE_KEYS = frozenset(
    {
        "rewardWaitTime",
        "defaultReward",
        "rewardAggregation",
        "explorationPercentage",
        "modelExportFrequency",
        "lastConfigurationEditDate",
        "logMirrorSasUri",
        "isAutoOptimizationEnabled",
        "autoOptimizationFrequency",
        "autoOptimizationStartDate",
        "latestApprenticeModeMetrics",
        *SIDE_SETTINGS,
    }
)


def parse_duration(value: Any, where: str) -> float:
    """Seconds of an ISO 8601 duration (PT10M, P1DT2H) or a .NET TimeSpan (00:10:00)."""
    if isinstance(value, str):
        match = _DURATION.match(value) or _TIMESPAN.match(value)
        if match is not None and any(match.groupdict().values()):
            parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
            return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    raise InvalidInput(
        f"{where}: a duration such as PT10M (ISO 8601) or 00:10:00, not {value!r}", field=where
    )


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9:
        return f"PT{seconds:g}S"
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    time += f"{secs}S" if secs or not (days or hours or minutes) else ""
    return out + ("T" + time if time else "")


def service_configuration(spec: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    """A spec document (and the side settings) as Personalizer's ServiceConfiguration."""
    reward = spec.get("reward", {})
    policy = spec.get("policy", {})
    exploration = policy.get("exploration", {})
    epsilon = (
        exploration.get("epsilon", 0.02)
        if exploration.get("type", "epsilon")
        in (
            "epsilon",
            "bag",
        )
        else 0.0
    )
    aggregation = reward.get("aggregation", "earliest")
    return {
        "rewardWaitTime": format_duration(float(reward.get("window_s", 600.0))),
        "defaultReward": float(reward.get("default", 0.0)),
        "rewardAggregation": AGGREGATIONS_OUT.get(aggregation, aggregation),
        "explorationPercentage": float(epsilon),
        "modelExportFrequency": format_duration(
            float(policy.get("update", {}).get("every_s", 5.0))
        ),
        "logRetentionDays": int(side.get("logRetentionDays", -1)),
        "modelRetrainDays": int(side.get("modelRetrainDays", 0)),
        "learningMode": side.get("learningMode", "Online"),
        "logMirrorEnabled": bool(side.get("logMirrorEnabled", False)),
    }


def apply_service_configuration(
    spec: dict[str, Any], config: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(new spec document, side settings) with a ServiceConfiguration applied to `spec`."""
    if not isinstance(config, dict):
        raise InvalidInput("the service configuration is a JSON object", field="body")
    unknown = sorted(str(k) for k in config if k not in SERVICE_KEYS)
    if unknown:
        raise InvalidInput(f"unknown keys {unknown}", field=unknown[0])
    document = {**spec}
    reward = dict(document.get("reward", {}))
    policy = dict(document.get("policy", {}))
    if "rewardWaitTime" in config:
        reward["window_s"] = parse_duration(config["rewardWaitTime"], "rewardWaitTime")
    if "defaultReward" in config:
        reward["default"] = _number(config["defaultReward"], "defaultReward")
    if "rewardAggregation" in config:
        raw = config["rewardAggregation"]
        aggregation = AGGREGATIONS_IN.get(str(raw).lower()) if isinstance(raw, str) else None
        if aggregation is None:
            raise InvalidInput(
                f"rewardAggregation: one of {sorted(AGGREGATIONS_IN)}, not {raw!r}",
                field="rewardAggregation",
            )
        reward["aggregation"] = aggregation
    if "explorationPercentage" in config:
        share = _number(config["explorationPercentage"], "explorationPercentage")
        if not 0 <= share <= 1:
            raise InvalidInput(
                "explorationPercentage: a share between 0 and 1", field="explorationPercentage"
            )
        exploration = dict(policy.get("exploration", {}))
        if exploration.get("type", "epsilon") not in ("epsilon", "bag"):
            exploration = {"type": "epsilon"}
        exploration["epsilon"] = share
        policy["exploration"] = exploration
    if "modelExportFrequency" in config:
        update = dict(policy.get("update", {}))
        update["every_s"] = parse_duration(config["modelExportFrequency"], "modelExportFrequency")
        policy["update"] = update
    side: dict[str, Any] = {}
    for key in SIDE_SETTINGS:
        if key in config:
            side[key] = config[key]
    if "logRetentionDays" in side:
        days = side["logRetentionDays"]
        if isinstance(days, bool) or not isinstance(days, int) or (days < 1 and days != -1):
            raise InvalidInput(
                "logRetentionDays: a positive number of days, or -1 (keep forever)",
                field="logRetentionDays",
            )
    if "learningMode" in side and side["learningMode"] not in ("Online",):
        raise InvalidInput(
            f"learningMode: only Online is served here, not {side['learningMode']!r}",
            field="learningMode",
        )
    document["reward"] = reward
    document["policy"] = policy
    return document, side


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: a number", field=where)
    return float(value)


# -- policy (VW arguments) ----------------------------------------------------------------------

# Arguments kept as given (they change how VW learns, not what banditgate manages).
_PASSTHROUGH_WITH_VALUE = frozenset({"--power_t", "--l1", "--l2", "-b", "--bit_precision"})
_PASSTHROUGH_FLAGS = frozenset({"--noconstant"})
# Arguments that are implied or that make no sense in a served policy: dropped.
_IGNORED_FLAGS = frozenset({"--cb_explore_adf", "--quiet", "--dsjson", "--json", "--first_only"})
_IGNORED_WITH_VALUE = frozenset({"--id", "--cb_force_legacy"})


def policy_arguments(arguments: Any, current: dict[str, Any]) -> dict[str, Any]:
    """A spec's `policy` section with Personalizer's VW argument string applied."""
    if not isinstance(arguments, str) or "--cb_explore_adf" not in arguments.split():
        raise InvalidInput(
            "arguments: a VW argument string with --cb_explore_adf", field="arguments"
        )
    tokens = arguments.split()
    policy = dict(current)
    exploration: dict[str, Any] = {"type": "epsilon"}
    passthrough: list[str] = []
    interactions: list[str] = []
    index = 0

    def value(name: str) -> str:
        nonlocal index
        if index + 1 >= len(tokens):
            raise InvalidInput(f"arguments: {name} needs a value", field="arguments")
        index += 1
        return tokens[index]

    while index < len(tokens):
        token = tokens[index]
        lowered = token.lower()
        if token == "--epsilon":
            exploration["epsilon"] = _float(value(token), token)
        elif token in ("--cover", "--bag"):
            exploration["type"] = token[2:]
            exploration["n"] = int(_float(value(token), token))
        elif token == "--psi":
            exploration["psi"] = _float(value(token), token)
        elif token == "--softmax":
            exploration["type"] = "softmax"
        elif token == "--lambda":
            exploration["lambda"] = _float(value(token), token)
        elif token == "--squarecb":
            exploration["type"] = "squarecb"
        elif token == "--gamma_scale":
            exploration["gamma_scale"] = _float(value(token), token)
        elif lowered == "--cb_type":
            kind = value(token).lower()
            if kind not in ("mtr", "dm", "ips", "dr"):
                raise InvalidInput(f"arguments: --cb_type {kind} is not served", field="arguments")
            policy["cb_type"] = kind
        elif token in ("-l", "--learning_rate"):
            policy["learning_rate"] = _float(value(token), token)
        elif token in ("-q", "--quadratic", "--interactions"):
            interactions.append(value(token))
        elif token in _PASSTHROUGH_WITH_VALUE:
            passthrough += [token, value(token)]
        elif token in _PASSTHROUGH_FLAGS:
            passthrough.append(token)
        elif token in _IGNORED_WITH_VALUE:
            value(token)
        elif token in _IGNORED_FLAGS or token.startswith("--cb_explore_adf"):
            pass
        else:
            raise InvalidInput(
                f"arguments: {token} is not supported here (see docs/migration-personalizer.md)",
                field="arguments",
            )
        index += 1
    policy["exploration"] = exploration
    if interactions:
        # Personalizer's namespaces are the caller's feature groups; ours are c (context),
        # t (text) and a (action): any interaction of context with action becomes ca and ta.
        policy["interactions"] = ["ca", "ta"]
    policy["vw_args"] = " ".join(passthrough)
    return policy


def _float(raw: str, where: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(
            f"arguments: {where} needs a number, not {raw!r}", field="arguments"
        ) from None
