"""The observability stack's configuration files parse and hang together.

Docker, the Collector, Jaeger and Grafana cannot run here, so these tests read the files the
compose stack and the Kubernetes manifests use: the Collector configuration names only
components of the contrib distribution and every pipeline references defined components; the
Grafana provisioning and dashboards reference provisioned data sources; the compose file and the
manifests mount and reference files and services that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = ROOT / "collector-config" / "config.yaml"
GRAFANA = ROOT / "grafana"
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

# Components of otel/opentelemetry-collector-contrib this configuration uses (by type; a name
# like ``otlp/jaeger`` is the type ``otlp``), plus the usual alternatives the README mentions.
CONTRIB_COMPONENTS: dict[str, set[str]] = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch"},
    "connectors": {"spanmetrics", "servicegraph"},
    "exporters": {"otlp", "otlphttp", "prometheus", "prometheusremotewrite", "file", "debug"},
    "extensions": {"health_check"},
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kubernetes_collector_config() -> dict[str, Any]:
    config_map = next(
        doc
        for doc in _yaml_all(KUBERNETES / "collector.yaml")
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "otel-collector-config"
    )
    return yaml.safe_load(config_map["data"]["config.yaml"])  # type: ignore[no-any-return]


COLLECTOR_CONFIGS = {
    "collector-config/config.yaml": lambda: _yaml(COLLECTOR),
    "deploy/kubernetes/collector.yaml": _kubernetes_collector_config,
}


# ---- the Collector ---------------------------------------------------------------------------


def _type(name: str) -> str:
    return name.split("/", 1)[0]


@pytest.mark.parametrize("source", sorted(COLLECTOR_CONFIGS))
def test_collector_config_uses_contrib_components_only(source: str) -> None:
    config = COLLECTOR_CONFIGS[source]()
    for section, allowed in CONTRIB_COMPONENTS.items():
        for name in config.get(section) or {}:
            assert _type(name) in allowed, f"{source}: {section}.{name} is not on the allow-list"
    unknown = set(config) - set(CONTRIB_COMPONENTS) - {"service"}
    assert not unknown, f"{source}: unknown top-level sections {unknown}"


@pytest.mark.parametrize("source", sorted(COLLECTOR_CONFIGS))
def test_collector_pipelines_reference_defined_components(source: str) -> None:
    config = COLLECTOR_CONFIGS[source]()
    service = config["service"]
    connectors = set(config.get("connectors") or {})
    for extension in service.get("extensions", []):
        assert extension in config["extensions"], f"{source}: extension {extension} undefined"
    used_as_exporter: set[str] = set()
    used_as_receiver: set[str] = set()
    for pipeline_name, pipeline in service["pipelines"].items():
        signal = _type(pipeline_name)
        assert signal in {"traces", "metrics", "logs"}, pipeline_name
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_name
        for receiver in pipeline["receivers"]:
            assert receiver in (config["receivers"] | (config.get("connectors") or {})), receiver
            if receiver in connectors:
                used_as_receiver.add(receiver)
        for exporter in pipeline["exporters"]:
            assert exporter in (config["exporters"] | (config.get("connectors") or {})), exporter
            if exporter in connectors:
                used_as_exporter.add(exporter)
        processors = pipeline.get("processors", [])
        for processor in processors:
            assert processor in config["processors"], f"{pipeline_name}: {processor}"
        assert processors[:1] == ["memory_limiter"], f"{pipeline_name}: memory_limiter first"
        assert "batch" in processors, f"{pipeline_name}: batch"
    assert connectors == used_as_exporter == used_as_receiver, "connectors join two pipelines"
    defined_unused = {
        section: set(config.get(section) or {})
        - {n for p in service["pipelines"].values() for n in p.get(section, [])}
        for section in ("receivers", "processors", "exporters")
    }
    assert not any(defined_unused.values()), f"{source}: defined but unused {defined_unused}"


def test_collector_config_has_the_pipelines_the_stack_needs() -> None:
    config = _yaml(COLLECTOR)
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    traces = pipelines["traces"]["exporters"]
    assert "spanmetrics" in traces
    jaeger = [e for e in traces if _type(e) == "otlp" and "jaeger" in e]
    assert jaeger and "jaeger:4317" in config["exporters"][jaeger[0]]["endpoint"]
    files = [e for e in traces if _type(e) == "file"]
    assert files, "a file exporter writes traces for `otel-dist explain --trace`"
    file_exporter = config["exporters"][files[0]]
    assert file_exporter["path"] == "/data/traces.jsonl"
    assert file_exporter.get("format", "json") == "json"
    metrics_exporters = {
        e for p, v in pipelines.items() if p.startswith("metrics") for e in v["exporters"]
    }
    assert "prometheus" in metrics_exporters
    assert config["exporters"]["prometheus"]["enable_open_metrics"] is True  # exemplars
    assert any("spanmetrics" in p["receivers"] for p in pipelines.values())


@pytest.mark.parametrize("source", sorted(COLLECTOR_CONFIGS))
def test_servicegraph_draws_edges_from_every_trace_into_prometheus(source: str) -> None:
    """The servicegraph connector takes every span (it pairs CLIENT and SERVER spans across
    processes, so it must see the whole trace) and its metrics reach Prometheus."""
    config = COLLECTOR_CONFIGS[source]()
    servicegraph = config["connectors"]["servicegraph"]
    assert servicegraph["store"]["ttl"] and servicegraph["store"]["max_items"] > 0
    assert "rpc.method" in servicegraph["dimensions"]
    pipelines = config["service"]["pipelines"]
    assert "servicegraph" in pipelines["traces"]["exporters"]
    assert "otlp" in pipelines["traces"]["receivers"]
    assert not {"tail_sampling", "probabilistic_sampler"} & set(pipelines["traces"]["processors"])
    into = [p for n, p in pipelines.items() if "servicegraph" in p["receivers"]]
    assert [_type(n) for n, p in pipelines.items() if p in into] == ["metrics"]
    assert "prometheus" in into[0]["exporters"]


def test_kubernetes_collector_has_the_same_pipelines() -> None:
    assert (
        _kubernetes_collector_config()["service"]["pipelines"]
        == _yaml(COLLECTOR)["service"]["pipelines"]
    )
    assert (ROOT / "collector-config" / "README.md").read_text().count("pipeline") >= 3


# ---- Grafana ---------------------------------------------------------------------------------


DATASOURCE_FILES = {
    "jaeger": GRAFANA / "provisioning" / "datasources" / "datasources.yaml",
    "tempo": GRAFANA / "variants" / "tempo" / "datasources.yaml",
}


@pytest.mark.parametrize("variant", sorted(DATASOURCE_FILES))
def test_grafana_datasources(variant: str) -> None:
    provisioning = _yaml(DATASOURCE_FILES[variant])
    assert provisioning["apiVersion"] == 1
    sources = {source["uid"]: source for source in provisioning["datasources"]}
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources[variant]["type"] == variant
    destinations = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["name"] for d in destinations] == ["trace_id"]
    assert {d["datasourceUid"] for d in destinations} == {variant}
    assert sum(1 for s in sources.values() if s.get("isDefault")) == 1


def test_grafana_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    provider = _yaml(GRAFANA / "provisioning" / "dashboards" / "otel_dist.yaml")
    paths = {p["options"]["path"] for p in provider["providers"]}
    compose = _yaml(DEPLOY / "docker-compose.yaml")
    mounts = _mounts(compose["services"]["grafana"])
    assert paths <= set(mounts.values())
    assert any(target == "/etc/grafana/provisioning" for target in mounts.values())


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text()) for path in (GRAFANA / "dashboards").glob("*.json")
    }


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    stack, found = list(dashboard["panels"]), []
    while stack:
        panel = stack.pop()
        found.append(panel)
        stack.extend(panel.get("panels", []))
    return found


def test_dashboards_are_well_formed() -> None:
    dashboards = _dashboards()
    titles = {d["title"] for d in dashboards.values()}
    assert {t.split(" / ", 1)[1] for t in titles} == {
        "Query overview",
        "Stages and tasks",
        "Workers",
        "Telemetry pipeline",
    }
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    provisioned = {s["uid"] for s in _yaml(DATASOURCE_FILES["jaeger"])["datasources"]}
    for name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in _panels(dashboard)]
        assert len(set(ids)) == len(ids), name
        for panel in _panels(dashboard):
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), (name, panel.get("title"))
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel["datasource"]
                assert source["uid"] in provisioned, (name, panel["title"])
                assert target["expr"].strip()
                assert not re.search(r"query_id|otel_dist_query_id", target["expr"])
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] in provisioned


def test_query_latency_panel_shows_exemplars() -> None:
    overview = _dashboards()["query-overview.json"]
    targets = [t for p in _panels(overview) for t in p.get("targets", [])]
    with_exemplars = [t for t in targets if t.get("exemplar")]
    assert with_exemplars
    assert all("otel_dist_query_duration_seconds_bucket" in t["expr"] for t in with_exemplars)


# ---- compose ---------------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Volume source -> target of a compose service (short syntax)."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[source] = target
    return mounts


def test_compose_stack() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yaml")
    services = compose["services"]
    workers = [f"worker-{n}" for n in (1, 2, 3)]
    expected = {
        "tpchgen",
        "coordinator",
        *workers,
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    }
    assert expected <= set(services)
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert services["jaeger"]["image"].startswith("jaegertracing/")
    assert services["tpchgen"]["command"][0] == "tpchgen"
    for name in ("coordinator", *workers):
        depends = services[name]["depends_on"]
        assert depends["tpchgen"]["condition"] == "service_completed_successfully", name
        assert "tpch:/data" in services[name]["volumes"]
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith(
            "http://otel-collector:"
        )
        assert "--metrics-port" in services[name]["command"]
    # Workers announce themselves to the coordinator: any start order, nothing to restart.
    assert "--workers" not in services["coordinator"]["command"]
    for name in workers:
        command = services[name]["command"]
        assert command[command.index("--coordinator") + 1] == "coordinator:50050"
        assert "restart" not in services[name]
    assert "50050:50050" in services["coordinator"]["ports"]
    # Every bind mount exists in the repository.
    for service in services.values():
        for source in _mounts(service):
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                assert path.exists() or source == "./traces", f"missing mount {source}"
    assert _mounts(services["otel-collector"])["../collector-config/config.yaml"] == (
        "/etc/otelcol-contrib/config.yaml"
    )
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    assert (DEPLOY / "Dockerfile").read_text().count('ENTRYPOINT ["otel-dist"]') == 1


def test_compose_prometheus_scrapes_the_stack() -> None:
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    compose_services = set(_yaml(DEPLOY / "docker-compose.yaml")["services"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"otel-dist-coordinator", "otel-dist-worker", "otel-collector"} <= set(jobs)
    for job in jobs.values():
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target.split(":")[0] in compose_services, target
    workers = jobs["otel-dist-worker"]["static_configs"][0]["targets"]
    assert workers == [f"worker-{n}:9464" for n in (1, 2, 3)]


# ---- Kubernetes ------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        documents.extend(_yaml_all(KUBERNETES / resource))
    return documents


def _find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kubernetes_manifests() -> None:
    documents = _manifests()
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in documents)
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(set(names)) == len(names)
    headless = _find(documents, "Service", "otel-dist-workers")
    assert headless["spec"]["clusterIP"] == "None"
    workers = _find(documents, "StatefulSet", "otel-dist-worker")
    assert workers["spec"]["serviceName"] == "otel-dist-workers"
    labels = workers["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    # Under a memory limit the workers hand freed memory back (README, "Workers").
    worker = workers["spec"]["template"]["spec"]["containers"][0]
    assert "limits" in worker["resources"]
    env = {variable["name"]: variable.get("value") for variable in worker["env"]}
    assert int(env["MIMALLOC_PURGE_DELAY"]) >= 0
    coordinator = _find(documents, "Deployment", "otel-dist-coordinator")
    args = coordinator["spec"]["template"]["spec"]["containers"][0]["args"]
    # The workers' headless Service name, resolved to every worker (scaling needs no edit).
    port = headless["spec"]["ports"][0]["port"]
    assert args[args.index("--workers") + 1] == f"dns:///otel-dist-workers:{port}"
    collector = _find(documents, "Deployment", "otel-collector")
    container = collector["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("otel/opentelemetry-collector-contrib:")
    config_maps = {d["metadata"]["name"] for d in documents if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    for document in documents:
        spec = document.get("spec", {})
        pod = spec.get("template", {}).get("spec")
        if pod is None:
            continue
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    telemetry = _find(documents, "ConfigMap", "otel-dist-telemetry")["data"]
    assert telemetry["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert _find(documents, "Job", "otel-dist-tpchgen")


def test_deploy_guide_covers_the_walkthrough() -> None:
    guide = (DEPLOY / "README.md").read_text()
    for step in (
        "docker compose up",
        "http://localhost:3000",
        "otel-dist query --coordinator grpc://localhost:50050 -e",
        "Jaeger",
        "explain --trace",
    ):
        assert step in guide, step
