"""The Kubernetes manifests: they render offline, validate against the Kubernetes schemas,
and every command, port, probe, ConfigMap, Secret and metric they name exists.

No cluster runs here: `kubectl kustomize` renders the overlays (Debian's kubernetes-client
or a current kubectl), `kubernetes-validate` checks each object against the schemas it
ships, and the rest is checked against the CLI, the health-check paths and the metrics
the processes serve.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from banditgate.metrics import ProcessMetrics
from banditgate.spec import load_specs
from banditgate_app.cli import app
from router.metrics import RouterMetrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/demo", "overlays/production")
# The oldest Kubernetes whose schemas we check against, and the newest the package ships.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor"}  # no schema ships for the Prometheus Operator's objects
runner = CliRunner()


def kubectl() -> str:
    path = os.environ.get("BANDITGATE_KUBECTL") or shutil.which("kubectl")
    if path is None:
        reason = "no kubectl: apt-get install kubernetes-client (or set BANDITGATE_KUBECTL)"
        if os.environ.get("BANDITGATE_REQUIRE_KUBECTL", "") not in ("", "0"):
            pytest.fail(f"BANDITGATE_REQUIRE_KUBECTL is set and there is {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, deployment in of_kind(objects, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield name, container


def accepts(argv: list[str]) -> None:
    """The CLI parses these arguments (checked with --help appended: nothing is started)."""
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, (argv, result.output)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    objects = rendered[overlay]
    assert objects
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            if obj["kind"] in CRD_KINDS:
                continue
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_overlays_hold_what_they_say(rendered):
    base, demo, production = (rendered[o] for o in OVERLAYS)
    components = {"router", "ingest", "control", "workers"}
    assert set(of_kind(base, "Deployment")) == components
    assert set(of_kind(demo, "Deployment")) == components | {"redis", "backends"}
    # Production uses an external Redis: no Redis pod, service or volume.
    assert set(of_kind(production, "Deployment")) == components
    assert "redis" not in of_kind(production, "Service")
    assert "redis-data" not in of_kind(production, "PersistentVolumeClaim")
    env = next(o for o in production if o["metadata"]["name"].startswith("banditgate-env"))
    assert env["data"]["BANDITGATE_REDIS_URL"].startswith("rediss://")
    assert set(of_kind(production, "ServiceMonitor")) == {"banditgate-pods", "banditgate-control"}
    for objects, namespace in ((demo, "banditgate-demo"), (production, "banditgate")):
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
            namespace
        }
    # The demo's Secret is generated; production's is created by the operator (README there).
    assert [n for n in of_kind(demo, "Secret") if n.startswith("banditgate-keys")]
    assert not of_kind(production, "Secret")
    for objects in (base, demo, production):
        for name, deployment in of_kind(objects, "Deployment").items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "banditgate", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_ports_and_probes_exist(rendered, overlay):
    objects = rendered[overlay]
    for name, container in containers(objects):
        if container["image"].startswith("redis:"):
            continue
        args = container["args"]
        accepts(args)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        command = args[0]
        if command in ("router", "ingest", "control"):
            assert args[args.index("--host") + 1] == "0.0.0.0", name
            assert ports == {"http": int(args[args.index("--port") + 1])}, name
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        elif command == "workers":
            probe = container["livenessProbe"]["exec"]["command"]
            assert probe[0] == "banditgate"
            accepts(probe[1:])
            assert "readinessProbe" not in container  # no traffic is sent to workers
        elif command == "backends":
            listed = {int(p) for p in args[args.index("--ports") + 1].split(",")}
            assert set(ports.values()) == listed
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            port = container.get(kind, {}).get("httpGet", {}).get("port")
            if port is not None:
                assert port in ports, (name, kind, port)
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"], name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered, overlay):
    """Selectors, target ports, ConfigMaps, Secrets, claims and scale targets all exist."""
    objects = rendered[overlay]
    deployments = of_kind(objects, "Deployment")
    config_maps = of_kind(objects, "ConfigMap")
    claims = of_kind(objects, "PersistentVolumeClaim")
    pods = {name: d["spec"]["template"] for name, d in deployments.items()}

    def selected(selector: dict[str, str]) -> list[str]:
        return [
            name
            for name, pod in pods.items()
            if selector.items() <= pod["metadata"]["labels"].items()
        ]

    for name, deployment in deployments.items():
        assert selected(deployment["spec"]["selector"]["matchLabels"]) == [name]
    for name, service in of_kind(objects, "Service").items():
        (target,) = selected(service["spec"]["selector"])
        port_names = {
            p["name"] for c in pods[target]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)
    for name, budget in of_kind(objects, "PodDisruptionBudget").items():
        assert selected(budget["spec"]["selector"]["matchLabels"]) == [name]
    for hpa in of_kind(objects, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for name, pod in pods.items():
        volumes = pod["spec"].get("volumes", [])
        for volume in volumes:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in pod["spec"]["containers"]:
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in volumes}, name
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, name
            for variable in container.get("env", []):
                ref = variable["valueFrom"]["secretKeyRef"]
                secrets = of_kind(objects, "Secret")
                if overlay == "overlays/demo":
                    assert ref["name"] in secrets, name
                    assert ref["key"] in secrets[ref["name"]]["data"], name
                else:
                    assert ref["name"] == "banditgate-keys", name


def test_the_control_plane_applies_the_spec_in_its_config_map(rendered):
    """The spec the control plane reads is the one in deploy/specs, arms at the backends."""
    demo = rendered["overlays/demo"]
    (control,) = (c for name, c in containers(demo) if name == "control")
    path = Path(control["args"][control["args"].index("-f") + 1])
    mount = next(m for m in control["volumeMounts"] if m["mountPath"] == str(path.parent))
    pod = of_kind(demo, "Deployment")["control"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config = of_kind(demo, "ConfigMap")[volume["configMap"]["name"]]
    assert config["data"][path.name] == (ROOT / "deploy" / "specs" / path.name).read_text()
    backends = of_kind(demo, "Service")["backends"]
    ports = {p["port"] for p in backends["spec"]["ports"]}
    for spec in load_specs(ROOT / "deploy" / "specs" / path.name):
        for arm in spec.arms:
            assert arm.url.startswith("http://backends:"), arm.url
            assert int(arm.url.rsplit(":", 1)[1]) in ports


def test_the_autoscaler_reads_a_metric_the_router_serves(rendered):
    hpa = of_kind(rendered["base"], "HorizontalPodAutoscaler")["router"]
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    metrics = ProcessMetrics()
    RouterMetrics(metrics)
    served = metrics.render().decode()
    for name in names:
        assert f"\n{name} " in served or served.startswith(f"{name} "), name


def test_service_monitors_scrape_named_ports(rendered):
    production = rendered["overlays/production"]
    services = of_kind(production, "Service")
    for monitor in of_kind(production, "ServiceMonitor").values():
        selector = monitor["spec"]["selector"]
        matched = [
            s
            for s in services.values()
            if selector.get("matchLabels", {}).items() <= s["metadata"]["labels"].items()
            and all(
                s["metadata"]["labels"].get(e["key"]) in e["values"]
                for e in selector.get("matchExpressions", [])
            )
        ]
        assert matched, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            for service in matched:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_kustomizations_render_with_the_older_kustomize_syntax():
    """`bases`/`commonLabels`/`patchesStrategicMerge`: Debian's kubectl 1.20 renders them too."""
    for overlay in OVERLAYS:
        data = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        assert not {"labels", "patches", "replacements", "components"} & set(data), overlay
        for entry in data.get("resources", []):
            assert (K8S / overlay / entry).is_file(), (overlay, entry)
