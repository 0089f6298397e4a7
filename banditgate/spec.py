"""The experiment spec: what users write in YAML or JSON, validated with pydantic."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from banditgate.errors import InvalidSpec
from banditgate.pointers import PointerError, parse_pointer

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ARM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

Mode = Literal["bandit", "ab", "canary", "bluegreen", "shadow"]
Protocol = Literal["sagemaker", "v2", "http", "sagemaker-runtime"]
FeatureValue = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Set by the router or the HTTP client itself: an arm cannot override them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "te", "upgrade", "keep-alive"}
)


class ArmAuth(_Strict):
    """Credentials the router adds to every request to the arm, read from its environment."""

    bearer_env: Annotated[
        str,
        Field(
            pattern=ENV_NAME_PATTERN,
            description="Environment variable (of the router) holding a token, sent as "
            "Authorization: Bearer <token>.",
        ),
    ]


class Arm(_Strict):
    """A backend that can answer the experiment's requests."""

    name: Annotated[
        str,
        Field(
            pattern=ARM_NAME_PATTERN,
            description="The arm's name: logged with every decision, returned as the variant.",
        ),
    ]
    url: str | None = Field(
        default=None,
        description="Backend base URL (http:// or https://). Unset: the arm is an action that "
        "only the rank routes choose; the caller serves it (no backend).",
    )
    protocol: Protocol = Field(
        default="http",
        description="How a request is forwarded: sagemaker (POST {url}{path}), "
        "v2 (Open Inference Protocol), http (the /proxy path passed through), "
        "sagemaker-runtime (a SageMaker endpoint: POST {url}/endpoints/{model}/invocations, "
        "signed with SigV4 from the usual AWS credential chain).",
    )
    model: str | None = Field(
        default=None,
        description="Model name in the v2 path /v2/models/{model}/infer (default: the arm name).",
    )
    path: str | None = Field(
        default=None,
        description="Path appended to url for the sagemaker protocol (default: /invocations).",
    )
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, description="Action features the policy sees for this arm."
    )
    weight: float | None = Field(
        default=None,
        ge=0,
        description="Traffic weight in ab mode, and for the static learner when policy.weights "
        "is unset; weights are normalised.",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="Backend response timeout (default: BANDITGATE_BACKEND_TIMEOUT_S).",
    )
    connect_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="Backend connect timeout (default: BANDITGATE_BACKEND_CONNECT_TIMEOUT_S).",
    )
    health_path: str | None = Field(
        default=None,
        pattern=r"^/[\x21-\x7e]*$",
        description="Path a router GETs to check an ejected arm (e.g. /ping): a 2xx re-admits "
        "it, and no client request is used as a probe (default: none, a request probes).",
    )
    instances: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Instances serving this arm, if known: /metrics then reports its load per "
        "instance (banditgate_arm_invocations_per_instance).",
    )

    # None rather than empty by default: a spec that uses neither stays readable by
    # routers that predate them (the stored JSON leaves out None).
    headers: dict[str, str] | None = Field(
        default=None,
        description="Headers sent with every request to this arm (the spec is readable: "
        "put secrets in auth, which reads them from the router's environment).",
    )
    auth: ArmAuth | None = Field(
        default=None, description="Credentials from the router's environment for this arm."
    )
    forward_headers: list[str] | None = Field(
        default=None,
        description="Client request headers passed on to this arm too (e.g. authorization, "
        "cookie); none by default.",
    )
    region: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]{1,40}$",
        description="sagemaker-runtime: the AWS region to sign for (default: from a "
        "runtime.sagemaker.<region>.amazonaws.com URL).",
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        out: dict[str, str] = {}
        for name, text in value.items():
            _check_header_name(name)
            if "\r" in text or "\n" in text:
                raise ValueError(f"{name}: a header value cannot hold a line break")
            out[name.lower()] = text
        return out

    @field_validator("forward_headers")
    @classmethod
    def _forward_headers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for name in value:
            _check_header_name(name)
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _signed(self) -> Arm:
        runtime = self.protocol == "sagemaker-runtime"
        if runtime and self.region is None and sagemaker_region(self.url or "") is None:
            raise ValueError(
                "region: required for sagemaker-runtime unless the url is "
                "https://runtime.sagemaker.<region>.amazonaws.com"
            )
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @property
    def model_name(self) -> str:
        return self.model or self.name


def _check_header_name(name: str) -> None:
    if not re.match(HEADER_NAME_PATTERN, name):
        raise ValueError(f"{name!r}: not a valid header name")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{name!r}: set by the router, not by the spec")


def sagemaker_region(url: str) -> str | None:
    """The region of a runtime.sagemaker.<region>.amazonaws.com URL."""
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if (
        len(parts) >= 5
        and parts[:2] == ["runtime", "sagemaker"]
        and host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    ):
        return parts[2]
    return None


class ContextSpec(_Strict):
    """What the policy sees of a request."""

    body: list[str] = Field(
        default_factory=list,
        description="Pointers into the JSON body (user.tier, features[0] or RFC 6901 /a/b).",
    )
    headers: list[str] = Field(
        default_factory=list, description="Request headers whose values are features."
    )
    text: str | None = Field(
        default=None, description="Pointer to a text field for the built-in text featurizer."
    )
    max_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=4 * 1024 * 1024,
        description="Largest context, as logged (JSON bytes); a request with more gets 413.",
    )

    @field_validator("body")
    @classmethod
    def _pointers(cls, value: list[str]) -> list[str]:
        for pointer in value:
            try:
                parse_pointer(pointer)
            except PointerError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_pointer(value)
            except PointerError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return [h.lower() for h in value]


class Exploration(_Strict):
    """How the VW policy explores (VW's --cb_explore_adf algorithms)."""

    # Defaults measured in the world suite (bench/worlds, BENCHMARKS.md "World suite"): bag 5
    # with -l 0.03 against epsilon 0.02 with -l 0.01, which left the best arm starved.
    type: Literal["epsilon", "cover", "bag", "softmax", "squarecb"] = Field(
        default="bag", description="Exploration algorithm."
    )
    epsilon: float = Field(
        default=0.02, ge=0, le=1, description="epsilon: share of traffic spread over all arms."
    )
    n: int = Field(default=5, ge=1, le=64, description="Policies for cover and bag.")
    psi: float = Field(default=0.1, ge=0, description="Cover's disagreement parameter.")
    lambda_: float = Field(
        default=10.0, alias="lambda", gt=0, description="Softmax inverse temperature."
    )
    gamma_scale: float = Field(default=10.0, gt=0, description="SquareCB's exploration scale.")


class UpdateSpec(_Strict):
    """When the trainer judges (and may publish) a new policy."""

    every_events: int = Field(
        default=200, ge=1, description="After this many new joined examples..."
    )
    every_s: float = Field(default=5.0, gt=0, description="...or after this many seconds.")
    warmup_events: int = Field(
        default=0,
        ge=0,
        description="The cold-start (uniform) policy serves until the learner has this many examples.",
    )


class GateSpec(_Strict):
    """The off-policy check a candidate policy passes before it is published."""

    min_examples: int = Field(
        default=100, ge=0, description="Examples scored before a candidate is judged."
    )
    estimator: Literal["ips", "snips", "dr"] = Field(
        default="dr", description="Off-policy estimator of the expected reward."
    )
    margin: float = Field(
        default=0.02, ge=0, description="How much worse than the serving policy is tolerated."
    )
    rule: Literal["paired", "unpaired"] = Field(
        default="paired",
        description="paired: lower bound of candidate - current >= -margin; "
        "unpaired: candidate lower bound >= current estimate - margin.",
    )
    enabled: bool = Field(
        default=True, description="false: publish every candidate without judging it."
    )


class ChangeSpec(_Strict):
    """Detecting a change in an arm's reward on the joined stream, and the response."""

    detector: Literal["window", "off"] = Field(
        default="window",
        description="window: each arm's recent rewards per context cell against its older ones "
        "(a z test); off: no detection.",
    )
    window: int = Field(
        default=200, ge=20, le=100_000, description="Recent rewards per arm and cell compared."
    )
    threshold: float = Field(
        default=5.0,
        ge=3,
        le=50,
        description="|z| that signals a change (higher: fewer false alarms).",
    )
    min_shift: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Smallest change of the mean that counts, as a share of the reward range.",
    )
    discount: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="On a change the learner restarts from recent examples: one n events old "
        "is kept with probability discount^n (1: keep them all).",
    )
    memory: int = Field(
        default=2_000, ge=0, le=100_000, description="Recent examples kept for that restart."
    )
    explore_events: int = Field(
        default=2_000,
        ge=0,
        le=1_000_000,
        description="After a change, explore wider for this many examples...",
    )
    explore_epsilon: float = Field(
        default=0.3, ge=0, le=1, description="...with at least this epsilon (vw learner)."
    )


class PolicySpec(_Strict):
    """How arms are chosen in bandit mode, and how the policy learns."""

    learner: Literal["vw", "thompson", "linear_thompson", "static", "auto"] = Field(
        default="vw",
        description="vw: contextual bandit; thompson: Beta-Bernoulli per arm, no context; "
        "linear_thompson: contextual Thompson sampling (Bayesian linear regression per arm); "
        "static: fixed weights; auto: the trainer trains vw and linear_thompson side by side "
        "and publishes whichever the gate finds best on recent data.",
    )
    exploration: Exploration = Field(
        default_factory=Exploration, description="Exploration of the vw learner."
    )
    min_arm_share: float = Field(
        default=0.01, ge=0, lt=1, description="No arm's probability falls below this."
    )
    update: UpdateSpec = Field(
        default_factory=UpdateSpec, description="When a new policy is considered."
    )
    gate: GateSpec = Field(
        default_factory=GateSpec, description="The off-policy check before publishing."
    )
    weights: dict[str, float] | None = Field(
        default=None, description="Weights per arm of the static learner (else the arms' weight)."
    )
    interactions: list[str] | Literal["auto"] = Field(
        default_factory=lambda: ["ca", "ta"],
        description="Namespace interactions (c: body and headers, t: text, a: arm), "
        "or auto: VW's --automl interaction search (about 4x the learning CPU).",
    )
    cb_type: Literal["mtr", "dm", "ips", "dr"] = Field(
        default="mtr", description="How the learner estimates costs (VW --cb_type)."
    )
    max_importance_weight: float = Field(
        default=10.0,
        ge=1,
        description="Cap on 1/p when learning: a rarely logged action cannot jerk the model.",
    )
    learning_rate: float = Field(default=0.03, gt=0, le=10, description="Learning rate (VW -l).")
    vw_args: str = Field(default="", description="Extra VW arguments, appended as given.")
    change: ChangeSpec = Field(
        default_factory=ChangeSpec, description="Change detection and the response to it."
    )

    @field_validator("interactions")
    @classmethod
    def _interactions(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        for item in value:
            if len(item) < 2 or not set(item) <= set("cta"):
                raise ValueError(f"{item!r}: interactions combine namespaces c, t and a")
        return value

    @model_validator(mode="after")
    def _cb_type(self) -> PolicySpec:
        allowed = {"squarecb": {"mtr"}, "cover": {"mtr", "ips", "dr"}}.get(self.exploration.type)
        if (
            allowed is not None
            and self.cb_type not in allowed
            and "cb_type" in self.model_fields_set
        ):
            raise _FieldError(
                ("cb_type",),
                f"{self.exploration.type} exploration needs cb_type in {sorted(allowed)}",
            )
        return self

    @field_validator("vw_args")
    @classmethod
    def _vw_args(cls, value: str) -> str:
        forbidden = {
            "-i",
            "--initial_regressor",
            "-f",
            "--final_regressor",
            "-d",
            "--data",
            "--cb_type",
            "-l",
            "--learning_rate",
        }
        for token in value.split():
            if token in forbidden:
                raise ValueError(f"{token} is managed by banditgate (see the policy fields)")
        return value


class RewardSpec(_Strict):
    """How rewards are joined to decisions."""

    window_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="How long after a decision its rewards count; later ones are late.",
    )
    default: float = Field(
        default=0.0, description="The reward of a decision that got none within the window."
    )
    aggregation: Literal["earliest", "sum", "mean", "max", "min"] = Field(
        default="earliest",
        description="How several rewards combine; earliest joins at the first reward.",
    )
    min: float = Field(default=0.0, description="Smallest valid reward (below: rejected).")
    max: float = Field(default=1.0, description="Largest valid reward (above: rejected).")
    backward_window_s: float = Field(
        default=120.0,
        ge=0,
        le=86400,
        description="How long a reward that arrives before its decision is held for it.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> RewardSpec:
        for name in ("default", "min", "max"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if self.min >= self.max:
            raise ValueError("min must be below max")
        if not self.min <= self.default <= self.max:
            raise ValueError("default must lie within [min, max]")
        return self


class StickySpec(_Strict):
    """Where the key comes from that keeps a user on one arm (set exactly one)."""

    header: str | None = Field(default=None, description="A request header.")
    cookie: str | None = Field(default=None, description="A cookie name.")
    body: str | None = Field(default=None, description="A pointer into the JSON body.")

    @model_validator(mode="after")
    def _one(self) -> StickySpec:
        given = [k for k in ("header", "cookie", "body") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of header, cookie or body")
        if self.body:
            try:
                parse_pointer(self.body)
            except PointerError as exc:
                raise ValueError(str(exc)) from None
        if self.header:
            self.header = self.header.lower()
        return self


def _as_text(value: Any) -> Any:
    """Rule values are compared as text; YAML's `1` or `true` mean the strings "1" and "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class RuleSpec(_Strict):
    """A targeting rule: a request that matches goes to `arm` (p = 1)."""

    header: str | None = Field(default=None, description="Match on this request header...")
    body: str | None = Field(default=None, description="...or on this pointer into the body.")
    equals: str | None = Field(default=None, description="The value must equal this...")
    in_: list[str] | None = Field(
        default=None, alias="in", description="...or be one of these (compared as text)."
    )
    arm: str = Field(description="The arm matching requests go to.")

    @field_validator("equals", mode="before")
    @classmethod
    def _equals(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("in_", mode="before")
    @classmethod
    def _in(cls, value: Any) -> Any:
        return [_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("body")
    @classmethod
    def _body(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_pointer(value)
            except PointerError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _match(self) -> RuleSpec:
        if (self.header is None) == (self.body is None):
            raise ValueError("set exactly one of header or body")
        if (self.equals is None) == (self.in_ is None):
            raise ValueError("set exactly one of equals or in")
        if self.header:
            self.header = self.header.lower()
        return self


class Guardrails(_Strict):
    """What a candidate arm must not do worse than the baseline; a breach rolls back."""

    min_samples: int = Field(
        default=50, ge=1, description="Requests per arm before a step is judged (per interval)."
    )
    max_error_rate_delta: float = Field(
        default=0.02, ge=0, le=1, description="Largest tolerated rise of the 5xx/error rate."
    )
    max_p99_latency_ratio: float = Field(
        default=1.5,
        gt=0,
        description="A p99 latency above baseline x this (and above the delta) breaches.",
    )
    max_p99_latency_delta_ms: float = Field(
        default=50.0,
        ge=0,
        description="A p99 latency above baseline + this (and above the ratio) breaches.",
    )
    min_reward_delta: float | None = Field(
        default=None,
        description="Least mean reward of candidate minus baseline (unset: rewards not judged).",
    )
    min_reward_samples: int = Field(
        default=100, ge=1, description="Rewards per arm before the reward is judged."
    )


class AbSpec(_Strict):
    """Static A/B split by arm weights."""

    sticky: StickySpec | None = Field(
        default=None, description="Keep each user on one arm (unset: each request drawn anew)."
    )
    rules: list[RuleSpec] = Field(
        default_factory=list, description="Targeting rules, the first match wins."
    )


class CanarySpec(_Strict):
    """A canary: the candidate's share rises step by step while the guardrails hold."""

    baseline: str = Field(description="The arm serving today.")
    canary: str = Field(description="The candidate arm.")
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0],
        description="The canary's traffic percentages, increasing, the last one <= 100.",
    )
    interval_s: float = Field(default=60.0, gt=0, description="How long each step runs.")
    guardrails: Guardrails = Field(
        default_factory=Guardrails, description="Checked at the end of each step."
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one step")
        for before, after in itertools.pairwise(value):
            if after <= before:
                raise ValueError("steps must increase")
        if value[0] <= 0 or value[-1] > 100:
            raise ValueError("steps are percentages in (0, 100]")
        return value


class BlueGreenSpec(_Strict):
    """Blue/green: all traffic switches to the preview, which bakes before promotion."""

    active: str = Field(description="The arm serving today.")
    preview: str = Field(
        description="The new arm; reachable with the target-variant header until the switch."
    )
    bake_s: float = Field(
        default=300.0, ge=0, description="How long the preview is judged after the switch."
    )
    termination_wait_s: float = Field(
        default=600.0,
        ge=0,
        description="After promotion, how long the old arm stays ready for a rollback.",
    )
    guardrails: Guardrails = Field(
        default_factory=Guardrails, description="Checked during the bake."
    )


class CaptureSpec(_Strict):
    """Data capture: a sample of each arm's requests and responses, as JSON lines on disk."""

    sample_percent: float = Field(
        default=10.0, ge=0, le=100, description="Share of requests captured (by event id)."
    )
    request: bool = Field(default=True, description="Capture the request body.")
    response: bool = Field(default=True, description="Capture the response body.")
    max_body_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        le=16 * 1024 * 1024,
        description="A longer body is cut here and marked truncated.",
    )
    s3_url: str | None = Field(
        default=None,
        description="Upload closed capture files to s3://bucket/prefix (boto3, the s3 extra).",
    )

    @field_validator("s3_url")
    @classmethod
    def _s3(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("s3://") or len(value) <= 5):
            raise ValueError("must look like s3://bucket/prefix")
        return value


class MonitorThresholds(_Strict):
    """Distances above which a feature has drifted from the baseline."""

    numeric: float = Field(
        default=0.1, gt=0, le=1, description="Kolmogorov-Smirnov distance for numeric features."
    )
    categorical: float = Field(
        default=0.1, gt=0, le=1, description="L-infinity distance for categorical features."
    )
    completeness: float = Field(
        default=0.05, ge=0, le=1, description="How far completeness may fall below the baseline's."
    )


class MonitorSpec(_Strict):
    """Data-quality and drift monitoring of captured traffic against a baseline."""

    every_s: float = Field(
        default=3600.0, ge=10, le=7 * 86400, description="How often each arm is checked."
    )
    window_s: float | None = Field(
        default=None,
        ge=10,
        le=30 * 86400,
        description="How much captured traffic each check reads (default: every_s).",
    )
    features: list[str] | None = Field(
        default=None, description="Features to check (default: every feature in the baseline)."
    )
    thresholds: MonitorThresholds = Field(
        default_factory=MonitorThresholds, description="Distances that count as drift."
    )


class QualitySpec(_Strict):
    """Model quality per arm from ground-truth labels posted later (POST /v1/ground-truth)."""

    problem: Literal["classification", "regression"] = Field(
        default="classification", description="What the arms predict."
    )
    prediction: str = Field(
        default="predicted_label",
        description="Pointer to the prediction in an arm's (captured) response body.",
    )
    every_s: float = Field(default=300.0, ge=10, le=86400, description="How often it is computed.")
    window_s: float = Field(
        default=3600.0, ge=60, le=30 * 86400, description="Labels and captures each report reads."
    )
    min_labels: int = Field(
        default=30, ge=1, description="Labelled requests an arm needs before it is judged."
    )
    alert_drop: float = Field(
        default=0.05,
        gt=0,
        description="Alert when accuracy falls (or MAE rises) by more than this against the "
        "previous window.",
    )

    @field_validator("prediction")
    @classmethod
    def _prediction(cls, value: str) -> str:
        parse_pointer(value)
        return value


class ShadowSpec(_Strict):
    """Shadow: the primary answers; requests are mirrored to the shadows, whose answers are dropped."""

    primary: str = Field(description="The arm that answers.")
    shadows: list[str] = Field(min_length=1, description="Arms that get a copy of requests.")
    percent: float = Field(default=100.0, ge=0, le=100, description="Share of requests mirrored.")
    compare_bodies: bool = Field(
        default=False, description="Record whether each shadow's body equals the primary's."
    )
    compare_pointer: str | None = Field(
        default=None,
        description="Compare only the value at this JSON pointer (RFC 6901, e.g. "
        "`/predicted_label`) of the primary's and each shadow's body; implies compare_bodies.",
    )

    @field_validator("compare_pointer")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        if value:
            parse_pointer(value)  # a PointerError (a ValueError) names what is wrong
        return value


class ExperimentSpec(_Strict):
    """An experiment: the arms behind one endpoint and how traffic is split between them."""

    name: Annotated[
        str,
        Field(
            pattern=NAME_PATTERN,
            description="Lower-case letters, digits and dashes; used in URLs and Redis keys.",
        ),
    ]
    mode: Mode = Field(
        default="bandit",
        description="bandit (learn), ab (fixed weights), canary, bluegreen or shadow.",
    )
    arms: list[Arm] = Field(min_length=1, description="The backends, in a fixed order.")
    context: ContextSpec = Field(
        default_factory=ContextSpec, description="What the policy sees of a request."
    )
    policy: PolicySpec = Field(
        default_factory=PolicySpec, description="The learner and how it is updated."
    )
    reward: RewardSpec = Field(
        default_factory=RewardSpec, description="How rewards are joined to decisions."
    )
    ab: AbSpec | None = Field(default=None, description="Sticky keys and rules for ab mode.")
    canary: CanarySpec | None = Field(default=None, description="Required in canary mode.")
    bluegreen: BlueGreenSpec | None = Field(default=None, description="Required in bluegreen mode.")
    shadow: ShadowSpec | None = Field(default=None, description="Required in shadow mode.")
    capture: CaptureSpec | None = Field(
        default=None,
        description="Data capture of requests and responses per arm (off when absent).",
    )
    monitor: MonitorSpec | None = Field(
        default=None,
        description="Drift and data-quality checks of captured traffic (needs capture).",
    )
    quality: QualitySpec | None = Field(
        default=None,
        description="Model quality per arm from ground-truth labels (needs capture of responses).",
    )
    description: str = Field(default="", description="Free text for people.")

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        names = [arm.name for arm in self.arms]
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise _FieldError(("arms", index, "name"), f"duplicate arm name {name!r}")
            seen.add(name)
        known = set(names)

        def check_arm(path: tuple[str | int, ...], name: str) -> None:
            if name not in known:
                raise _FieldError(path, f"unknown arm {name!r}; arms are {sorted(known)}")

        if self.monitor is not None and self.capture is None:
            raise _FieldError(("monitor",), "monitoring reads captured traffic: add capture")
        if self.quality is not None and (self.capture is None or not self.capture.response):
            raise _FieldError(
                ("quality",), "quality reads the arms' captured answers: add capture with response"
            )
        share = self.policy.min_arm_share
        if share * len(self.arms) > 1:
            raise _FieldError(
                ("policy", "min_arm_share"),
                f"{share} x {len(self.arms)} arms exceeds 1",
            )
        if self.policy.weights is not None:
            for name in self.policy.weights:
                check_arm(("policy", "weights", name), name)
            _check_weights(("policy", "weights"), self.policy.weights)
        if (
            self.policy.learner == "static"
            and self.policy.weights is None
            and self.mode == "bandit"
        ) and all(arm.weight is None for arm in self.arms):
            raise _FieldError(("policy", "weights"), "the static learner needs weights")
        if any(arm.weight is not None for arm in self.arms):
            _check_weights(("arms",), {arm.name: arm.weight or 0.0 for arm in self.arms})
        if self.ab is not None:
            for index, rule in enumerate(self.ab.rules):
                check_arm(("ab", "rules", index, "arm"), rule.arm)
        required = {"canary": self.canary, "bluegreen": self.bluegreen, "shadow": self.shadow}
        if self.mode in required and required[self.mode] is None:
            raise _FieldError((self.mode,), f"mode {self.mode!r} needs a {self.mode!r} section")
        if self.canary is not None:
            check_arm(("canary", "baseline"), self.canary.baseline)
            check_arm(("canary", "canary"), self.canary.canary)
            if self.canary.baseline == self.canary.canary:
                raise _FieldError(("canary", "canary"), "canary and baseline must differ")
        if self.bluegreen is not None:
            check_arm(("bluegreen", "active"), self.bluegreen.active)
            check_arm(("bluegreen", "preview"), self.bluegreen.preview)
            if self.bluegreen.active == self.bluegreen.preview:
                raise _FieldError(("bluegreen", "preview"), "preview and active must differ")
        if self.mode == "shadow":
            for index, arm in enumerate(self.arms):
                if arm.url is None:
                    raise _FieldError(("arms", index, "url"), "shadow mode forwards: set a url")
        if self.shadow is not None:
            check_arm(("shadow", "primary"), self.shadow.primary)
            for index, name in enumerate(self.shadow.shadows):
                check_arm(("shadow", "shadows", index), name)
                if name == self.shadow.primary:
                    raise _FieldError(
                        ("shadow", "shadows", index), "a shadow cannot be the primary"
                    )
        return self

    @property
    def rank_only(self) -> bool:
        """Some arm has no backend: the experiment answers rank routes, not forwarded requests."""
        return any(arm.url is None for arm in self.arms)

    @property
    def arm_names(self) -> list[str]:
        return [arm.name for arm in self.arms]

    @property
    def rollout_target(self) -> tuple[str, str] | None:
        """(baseline, candidate) of a canary or blue/green experiment; None in other modes."""
        if self.mode == "canary" and self.canary is not None:
            return self.canary.baseline, self.canary.canary
        if self.mode == "bluegreen" and self.bluegreen is not None:
            return self.bluegreen.active, self.bluegreen.preview
        return None

    def arm(self, name: str) -> Arm | None:
        for arm in self.arms:
            if arm.name == name:
                return arm
        return None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))


def _check_weights(path: tuple[str | int, ...], weights: dict[str, float]) -> None:
    total = 0.0
    for name, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise _FieldError((*path, name), "weights are finite and non-negative")
        total += weight
    if total <= 0:
        raise _FieldError(path, "weights must add up to a positive number")


class _FieldError(ValueError):
    """Raised inside validators to report a precise field path."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def format_path(path: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out or "(root)"


def spec_problems(exc: ValidationError) -> list[dict[str, str]]:
    problems = []
    for error in exc.errors():
        location: list[str | int] = [s for s in error["loc"] if isinstance(s, str | int)]
        reason = error["msg"]
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            location = [*location, *ctx_error.path]
            reason = ctx_error.reason
        elif reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        problems.append({"field": format_path(location), "reason": reason})
    return problems


def parse_spec(data: Any) -> ExperimentSpec:
    if not isinstance(data, dict):
        raise InvalidSpec("an experiment spec is a mapping", field="(root)")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        problems = spec_problems(exc)
        message = "; ".join(f"{p['field']}: {p['reason']}" for p in problems)
        error = InvalidSpec(f"invalid experiment spec: {message}", field=problems[0]["field"])
        error.problems = problems  # type: ignore[attr-defined]
        raise error from None


def load_specs(path: str | Path) -> list[ExperimentSpec]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            documents = [orjson.loads(text)]
        else:
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise InvalidSpec(f"{path}: not valid YAML/JSON: {exc}") from None
    specs: list[ExperimentSpec] = []
    for document in documents:
        items = document if isinstance(document, list) else [document]
        for item in items:
            try:
                specs.append(parse_spec(item))
            except InvalidSpec as exc:
                raise InvalidSpec(f"{path}: {exc.message}", field=exc.field) from None
    if not specs:
        raise InvalidSpec(f"{path}: no experiment spec in file")
    return specs
