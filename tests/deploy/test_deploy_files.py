"""The deployment files under examples/deploy agree with the bot's configuration and metrics.

Docker has no daemon here, so nothing is built or run: the files are parsed and checked
against ``BotConfig`` (env names, defaults), the exported metric names and the nginx config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
import sys
from pathlib import Path

import pytest
import yaml

from pipecat_rxdrain.metrics import RxdrainMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "examples" / "deploy"
BOT_PATH = REPO / "examples" / "twilio_bot" / "bot.py"

# --- what the files must agree on, in one place --------------------------------------------
PROBE_PATHS = {"liveness": "/healthz", "readiness": "/readyz"}
# Probe paths the bot does not serve yet (the lead adds /readyz while wiring): empty this then.
PENDING_ROUTES: set[str] = set()
# Env names the deploy files may set beyond BotConfig's: read by the metrics wiring, not BotConfig (today).
EXTRA_ENV = {"PROMETHEUS_MULTIPROC_DIR"}
# After SHUTDOWN_GRACE_S the bot cancels what is still running and waits up to this long more
# (``end_all_calls`` in bot.py); the platform must not kill it before.
CANCEL_WINDOW_S = 5.0
BOT_SERVICES = ("bot-1", "bot-2")
HPA_METRIC = "rxdrain_active_calls"
# ------------------------------------------------------------------------------------------


def bot_config_class():
    """``BotConfig`` as the example bot defines (or re-exports) it."""
    name = "rxdrain_example_bot"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, BOT_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    cls = getattr(module, "BotConfig", None)
    assert cls is not None, f"{BOT_PATH} no longer exposes BotConfig: point bot_config_class() at it"
    return cls


def env_names(cls) -> dict[str, str]:
    """{field name: env var name}."""
    env = getattr(cls, "ENV", None)
    if isinstance(env, dict):
        return dict(env)
    found = {f.name: f.metadata["env"] for f in dataclasses.fields(cls) if "env" in f.metadata}
    assert found, "BotConfig names its env vars neither in ENV nor in field metadata"
    return found


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> dict[str, dict]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in load_yaml_docs(DEPLOY / "k8s" / name):
            out[doc["kind"]] = doc
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, against ``env``."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


SECRETS = {"MEDIA_TOKEN_SECRET": "s" * 32, "METRICS_TOKEN": "m" * 32}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v), SECRETS) for k, v in env.items()}


def container_env(container: dict) -> dict[str, str]:
    out = {}
    for item in container.get("env", []):
        out[item["name"]] = str(item["value"]) if "value" in item else SECRETS.get(item["name"], "x" * 32)
    return out


def config_from(env: dict[str, str]):
    """The BotConfig the bot would build from this environment (so values parse and validate)."""
    cls = bot_config_class()
    known = set(env_names(cls).values())
    return cls.from_env({k: v for k, v in env.items() if k in known})


def seconds(value) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    if m and any(m.groups()):
        return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)
    return float(value)


def nginx_upstreams() -> list[tuple[str, int]]:
    text = (DEPLOY / "nginx.conf").read_text()
    block = re.search(r"upstream\s+rxdrain_bots\s*\{(.*?)\}", text, re.S).group(1)
    return [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block, re.M)]


# ------------------------------------------------------------------------------------------ tests


def test_env_names_are_the_bots():
    known = set(env_names(bot_config_class()).values()) | EXTRA_ENV
    c = compose()
    for name in BOT_SERVICES:
        unknown = set(compose_env(c["services"][name])) - known
        assert unknown == set(), f"docker-compose {name} sets env the bot does not read: {unknown}"
    deployment = k8s_objects()["Deployment"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        unknown = set(container_env(container)) - known
        assert unknown == set(), f"k8s container {container['name']} sets env the bot does not read: {unknown}"


def test_compose_bots_ports_probes_and_grace():
    c = compose()
    bots = {name: c["services"][name] for name in BOT_SERVICES}
    for name, service in bots.items():
        config = config_from(compose_env(service))
        assert config.host == "0.0.0.0"  # reachable from nginx's container
        assert [int(p) for p in service["expose"]] == [config.port]
        assert f"127.0.0.1:{config.port}{PROBE_PATHS['readiness']}" in " ".join(service["healthcheck"]["test"])
        assert seconds(service["stop_grace_period"]) > config.shutdown_grace_s + CANCEL_WINDOW_S
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
        dockerfile = REPO / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name} builds from {dockerfile}, which does not exist"
        exposed = re.findall(r"^EXPOSE\s+(\d+)", dockerfile.read_text(), re.M)
        assert exposed == [] or int(exposed[0]) == config.port
    # nginx proxies to exactly these services on the bot's port
    assert sorted(nginx_upstreams()) == sorted((name, config_from(compose_env(s)).port) for name, s in bots.items())
    assert set(c["services"]["nginx"]["depends_on"]) == set(BOT_SERVICES)
    mounts = " ".join(c["services"]["nginx"]["volumes"])
    assert "./nginx.conf:/etc/nginx/nginx.conf" in mounts


def test_compose_prometheus_scrapes_the_bots_with_their_token_and_grafana_shows_the_dashboard():
    c = compose()
    services = c["services"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = sorted(t for group in job["static_configs"] for t in group["targets"])
    assert targets == sorted(f"{name}:{config_from(compose_env(services[name])).port}" for name in BOT_SERVICES)
    # the bearer token Prometheus sends is the METRICS_TOKEN the bots check
    assert job["authorization"]["type"] == "Bearer"
    (secret,) = services["prometheus"]["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert c["secrets"][secret]["environment"] == "METRICS_TOKEN"
    for name in BOT_SERVICES:
        assert services[name]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN")
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["prometheus"]["volumes"])
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"

    grafana_mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana-provisioning" / "dashboards" / "rxdrain.yml").read_text())["providers"][0]
    assert Path(grafana_mounts["./grafana-dashboard.json"]).parent == Path(provider["options"]["path"])
    assert grafana_mounts["./grafana-provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((DEPLOY / "grafana-provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in " ".join(services["prometheus"]["ports"])


def test_compose_emulators_sit_beside_their_bots():
    c = compose()
    sidecars = {s["network_mode"].removeprefix("service:"): s for s in c["services"].values() if "network_mode" in s}
    assert set(sidecars) == set(BOT_SERVICES)
    for bot, sidecar in sidecars.items():
        config = config_from(compose_env(c["services"][bot]))
        host, _, port = config.speech_emulator_host.rpartition(":")
        assert ipaddress.ip_address(host).is_loopback  # the bot refuses a non-loopback emulator
        command = sidecar["command"]
        assert command[:2] == ["rxdrain", "emulator"]
        assert command[command.index("--port") + 1] == port and command[command.index("--host") + 1] == host


def test_k8s_deployment_ports_probes_env_and_grace():
    objects = k8s_objects()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = config_from(container_env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.port}
    for kind, path in PROBE_PATHS.items():
        probe = container[f"{kind}Probe"]["httpGet"]
        assert probe["path"] == path
        assert ports.get(probe["port"], probe["port"]) == config.port
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_s + CANCEL_WINDOW_S + pre_stop_s
    assert config.host == "0.0.0.0"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] in (["http"], [config.port])
    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    monitor = objects["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["authorization"]["type"] == "Bearer"
    assert "METRICS_TOKEN" in container_env(container)  # else /metrics is off


def test_k8s_hpa_scales_on_an_exported_gauge():
    objects = k8s_objects()
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == HPA_METRIC
    families = {f.name: f.type for f in RxdrainMetrics().registry.collect()}
    assert families.get(HPA_METRIC) == "gauge"
    config = config_from(container_env(deployment["spec"]["template"]["spec"]["containers"][0]))
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < config.max_calls
    assert hpa["spec"]["minReplicas"] > objects["PodDisruptionBudget"]["spec"]["minAvailable"]
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["seriesQuery"].startswith(HPA_METRIC + "{") and rule["name"]["as"] == HPA_METRIC


def test_nginx_body_cap_and_websocket_timeouts():
    text = (DEPLOY / "nginx.conf").read_text()
    cap = re.search(r"client_max_body_size\s+(\d+)k;", text)
    assert cap and int(cap.group(1)) * 1024 <= 64 * 1024  # the bot refuses /twiml bodies over 64 KiB
    ws = re.search(r"location = /ws \{(.*?)\n        \}", text, re.S).group(1)
    read = re.search(r"proxy_read_timeout\s+(\d+)m;", ws)
    assert read and int(read.group(1)) > 4 * 60  # longer than Twilio's 4 h call limit


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY) for p in DEPLOY.rglob("*.y*ml")))
def test_every_yaml_file_parses(path):
    assert load_yaml_docs(DEPLOY / path)


def test_probe_paths_are_served_by_the_bot():
    module = sys.modules.get("rxdrain_example_bot") or (bot_config_class() and sys.modules["rxdrain_example_bot"])
    app = module.create_app(bot_config_class()())
    served = {getattr(route, "path", None) for route in app.routes}
    missing = set(PROBE_PATHS.values()) - PENDING_ROUTES - served
    assert missing == set(), f"the deploy files probe {missing}, which the bot does not serve"


def test_checks_can_fail():
    # the helpers really read values: a compose secret left unset is an error, a wrong env name is caught
    with pytest.raises(KeyError, match="MEDIA_TOKEN_SECRET"):
        interpolate("${MEDIA_TOKEN_SECRET:?set it}", {})
    assert seconds("1m30s") == 90 and seconds("20s") == 20
    known = set(env_names(bot_config_class()).values())
    assert "BOT_PORT" in known and "SHUTDOWN_GRACE_S" in known and "MAX_CALLS" in known


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` of the bot's Dockerfile (``KEY=VALUE`` pairs, continuation lines joined)."""
    text = (REPO / "examples" / "twilio_bot" / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, re.M):
        out.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return out


def test_containers_run_one_bot_process_each_while_the_bots_default_is_one_per_core():
    # The bot's default (WORKERS=0: one per core) would count the host's cores inside a container;
    # every container file pins one process and scales with replicas instead.
    cls = bot_config_class()
    assert cls.from_env({}).workers == 0
    assert config_from(dockerfile_env()).workers == 1
    c = compose()
    for name in BOT_SERVICES:
        assert config_from(compose_env(c["services"][name])).workers == 1, name
    (container,) = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert config_from(container_env(container)).workers == 1
    # .env.example must not override the image's WORKERS=1 under `docker run --env-file`
    example = (REPO / "examples" / "twilio_bot" / ".env.example").read_text()
    assert not re.search(r"^WORKERS=", example, re.M) and re.search(r"^# WORKERS=0$", example, re.M)
