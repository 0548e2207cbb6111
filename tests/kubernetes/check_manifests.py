#!/usr/bin/env python3
"""Security and consistency checks over Tessera's rendered Kubernetes manifests.

    check_manifests.py [--base] RENDERED.yaml...
        Checks each file: one rendered kustomization (`kubectl kustomize DIR`) per file.
        --base: the namespace-agnostic base, whose image has no tag yet, whose Job is not
        yet named for a release and whose egress destinations are placeholders; those checks
        are skipped, and so are production's. Any other rendering is held to production's
        rules (verified TLS to Postgres, trusted proxies, no egress to 0.0.0.0/0) unless its
        Namespace is labelled tessera/development: "true".
    check_manifests.py --self-test RENDERED.yaml...
        Proves the checks can fail: each file must pass as it is, then every broken copy
        (a container without runAsNonRoot, an init container allowed to escalate, a literal
        secret in env, ...) must be refused with the expected message.
    check_manifests.py --compare A.yaml B.yaml
        The same objects in two renderings of one kustomization (by two kustomize versions),
        ignoring the generated ConfigMap's hash suffix and the order of named list entries.

What Tessera itself would do with the configuration is read from the repository: the
defaults (config/default.toml, config/<environment>.toml) and the image's ENV (deploy/Dockerfile)
under the containers' environment, as Tessera layers them. Standard library and PyYAML only.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
import sys
import tomllib
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

UID = 10001
# A worker waits up to this long for its running job to be handed back after SIGTERM
# (src/cli.rs); its grace period must cover it plus a margin.
WORKER_HANDBACK_SECONDS = 60
WORKER_MARGIN_SECONDS = 10
# After preStop, server.drain_seconds and server.shutdown_grace_seconds, the API waits for its
# background tasks (src/startup.rs: the final usage flush, the audit checkpointer), then exits.
API_MARGIN_SECONDS = 10
# Resident memory of a serving process, measured (BENCHMARKS.md, "Several processes"): about
# 130 MiB under load before any sizeable model, and a loaded ONNX model takes about 1.2 times
# its artifact bytes (what inference.memory_budget_bytes counts) once ONNX Runtime holds it
# (BENCHMARKS.md, "Memory per loaded model"); 2.5 leaves room for the requests in flight.
BASELINE_RSS_BYTES = 256 * 1024 * 1024
RSS_PER_BUDGET_BYTE = 2.5
JOBS_BACKLOG_METRIC = "tessera_jobs_backlog"
MIGRATION_PASSWORD_KEY = "db-migration-password"
# The Secret with the master, signing and database keys. Operators (Prometheus, KEDA) read
# Secrets of their own, so that none needs read access to this one.
APP_SECRET = "tessera-secrets"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}
BUILTIN_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "Job",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
# No schema for these in kubernetes-validate: their structure is checked here instead.
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
}

# Tessera's secret settings (src/config.rs SECRET_KEYS) as environment variables, and other
# well-known credentials: only valueFrom or a *_FILE path may provide them.
# Sysctls Kubernetes namespaces per pod ("safe"; Pod Security's baseline allows only these as
# of 1.29). Tessera sets none; any other would reach the node's kernel.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}

# Link-local IPv4, where clouds serve instance metadata and the node's credentials
# (169.254.169.254), and AWS's IPv6 address of the same service.
METADATA_NETWORKS = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00:ec2::254/128")]
# libpq's modes that check the server's certificate (verify-ca: the chain only, not the name).
VERIFYING_SSLMODES = {"verify-full", "verify-ca"}
# The destination base/app/networkpolicy.yaml gives every egress rule until an overlay sets it.
BASE_PLACEHOLDER = ipaddress.ip_network("203.0.113.0/24")
# The label by which a development overlay's Namespace opts out of the production-only checks.
DEVELOPMENT_LABEL = "tessera/development"

SECRET_ENV = {
    "TESSERA__DATABASE__PASSWORD",
    "TESSERA__DATABASE__MIGRATION_PASSWORD",
    "TESSERA__AUTH__API_KEY_SECRET",
    "TESSERA__AUTH__JWT_SIGNING_KEYS",
    "TESSERA__AUDIT__SIGNING_KEYS",
    "TESSERA__REGISTRY__MASTER_KEYS",
    "TESSERA__TELEMETRY__METRICS_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIALS?|_KEYS?)$")
# URL query parameters that carry a credential (postgres://...?password=, redis://...?password=).
SECRET_QUERY = re.compile(r"pass(word|wd)?$|^pwd$|secret|token|api_?key", re.IGNORECASE)
# Production refuses to start without these (src/config.rs), whatever the command.
PRODUCTION_SECRET_FILES = [
    ("auth", "api_key_secret_file"),
    ("auth", "jwt_signing_keys_file"),
    ("audit", "signing_keys_file"),
    ("registry", "master_keys_file"),
]

SERVICE_MONITOR_SPEC = {
    "selector",
    "endpoints",
    "namespaceSelector",
    "jobLabel",
    "targetLabels",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "attachMetadata",
    "scrapeProtocols",
    "scrapeClass",
    "bodySizeLimit",
    "keepDroppedTargets",
}
SERVICE_MONITOR_ENDPOINT = {
    "port",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "tlsConfig",
    "bearerTokenFile",
    "bearerTokenSecret",
    "authorization",
    "honorLabels",
    "honorTimestamps",
    "trackTimestampsStaleness",
    "basicAuth",
    "oauth2",
    "metricRelabelings",
    "relabelings",
    "proxyUrl",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
}
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
REDIS_STREAMS_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}
TRIGGER_AUTH_SPEC = {
    "secretTargetRef",
    "env",
    "hashiCorpVault",
    "azureKeyVault",
    "podIdentity",
    "configMapTargetRef",
    "awsSecretManager",
    "gcpSecretManager",
}


# ---------------------------------------------------------------------------------------------
# Helpers


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def labels_of(obj: dict) -> dict:
    return obj.get("metadata", {}).get("labels") or {}


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_template(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    if kind in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template")
    return None


def all_containers(pod: dict) -> list[tuple[str, dict]]:
    out = []
    for field, what in (
        ("initContainers", "init container"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeral container"),
    ):
        for c in pod.get(field) or []:
            out.append((f"{what} {c.get('name')}", c))
    return out


def file_mounted(container: dict, volumes: dict, path: str) -> bool:
    """Whether `path` is a file of a ConfigMap or Secret volume mounted in the container."""
    for mount in container.get("volumeMounts") or []:
        prefix = mount.get("mountPath", "").rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = volumes.get(mount.get("name")) or {}
        sources = [volume[k] for k in ("configMap", "secret") if volume.get(k) is not None]
        for source in (volume.get("projected") or {}).get("sources") or []:
            sources += [source[k] for k in ("configMap", "secret") if source.get(k) is not None]
        relative = path[len(prefix) :]
        for source in sources:
            items = source.get("items")
            if items is None or relative in [i.get("path") for i in items]:
                return True
    return False


def secret_key_refs(value) -> list[dict]:
    """Every {name, key} reference to a Secret key inside a custom resource's spec."""
    if isinstance(value, list):
        return [ref for item in value for ref in secret_key_refs(item)]
    if not isinstance(value, dict):
        return []
    refs = [value] if "name" in value and "key" in value else []
    return refs + [ref for item in value.values() for ref in secret_key_refs(item)]


def is_kube_dns(peer: dict) -> bool:
    namespaces = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
    pods = (peer.get("podSelector") or {}).get("matchLabels") or {}
    return (
        "ipBlock" not in peer
        and namespaces.get("kubernetes.io/metadata.name") == "kube-system"
        and pods.get("k8s-app") == "kube-dns"
    )


def open_peers(rule: dict) -> str | None:
    """Whom an ingress rule admits when that is more than some selected peers: every peer (no
    `from`), every namespace or every pod of the namespace (empty selectors alone), every
    address (an ipBlock of /0). None when each peer is narrowed."""
    if not rule.get("from"):
        return "every peer"
    for peer in rule["from"]:
        block = peer.get("ipBlock")
        if block is not None:
            if str(block.get("cidr", "")).endswith("/0"):
                return f"every address (ipBlock {block.get('cidr')})"
            continue
        namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
        if namespaces is not None and not selector_narrows(namespaces) and not selector_narrows(pods):
            return "every namespace (namespaceSelector: {})"
        if namespaces is None and not selector_narrows(pods):
            return "every pod of the namespace (podSelector: {})"
    return None


def selector_narrows(selector: dict | None) -> bool:
    return bool(selector and (selector.get("matchLabels") or selector.get("matchExpressions")))


def secret_sources(volume: dict) -> list[dict]:
    """The Secrets a volume mounts: a secret volume, or a projected volume's secret sources
    (each {secretName or name, items})."""
    sources = []
    if volume.get("secret") is not None:
        sources.append(volume["secret"])
    for source in (volume.get("projected") or {}).get("sources") or []:
        if source.get("secret") is not None:
            sources.append(source["secret"])
    return sources


_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_FACTOR = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(value) -> float:
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _FACTOR[m.group(2)]


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def release_suffix(image: str) -> str | None:
    _, tag, digest = image_parts(image)
    if tag:
        return re.sub(r"[^a-z0-9-]", "-", tag.lower())
    if digest:
        return digest.split(":", 1)[-1][:12]
    return None


def image_env() -> dict[str, str]:
    """The ENV of Tessera's image, from deploy/Dockerfile."""
    env: dict[str, str] = {}
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                if "=" in pair:
                    key, value = pair.split("=", 1)
                    env[key] = value
    return env


IMAGE_ENV = image_env()
DEFAULTS = tomllib.loads((CONFIG_DIR / "default.toml").read_text())


def deep_merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def effective_settings(env: dict[str, str]) -> dict:
    """Tessera's configuration for this environment: defaults, then config/<environment>.toml,
    then TESSERA__SECTION__KEY variables (empty ones ignored, as Tessera does)."""
    merged = {**IMAGE_ENV, **env}
    environment = merged.get("TESSERA_ENV", "development")
    settings = copy.deepcopy(DEFAULTS)
    env_file = CONFIG_DIR / f"{environment}.toml"
    if env_file.is_file():
        deep_merge(settings, tomllib.loads(env_file.read_text()))
    for key, value in merged.items():
        if not key.startswith("TESSERA__") or value == "":
            continue
        path = key[len("TESSERA__") :].lower().split("__")
        node = settings
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    settings["_environment"] = environment
    return settings


def setting(settings: dict, *path, default=None):
    node = settings
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def truthy(value) -> bool:
    return str(value).lower() == "true"


def url_port(url: str, default_by_scheme: dict[str, int]) -> int | None:
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    try:
        return parts.port or default_by_scheme.get(parts.scheme)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The checks


class Checker:
    def __init__(self, docs: list[dict], base: bool):
        self.docs = docs
        self.base = base
        self.errors: list[str] = []
        self.by_kind: dict[str, list[dict]] = {}
        for d in docs:
            self.by_kind.setdefault(d.get("kind"), []).append(d)
        self.containers_checked = 0
        # Every rendering but the base is held to production's rules unless its Namespace says
        # it is a development cluster.
        self.production = not base and not any(
            labels_of(ns).get(DEVELOPMENT_LABEL) == "true" for ns in self.by_kind.get("Namespace", [])
        )

    def fail(self, obj: dict | None, message: str) -> None:
        self.errors.append(f"{ident(obj) if obj else '(render)'}: {message}")

    def find(self, kind: str, name: str) -> dict | None:
        for d in self.by_kind.get(kind, []):
            if d.get("metadata", {}).get("name") == name:
                return d
        return None

    # -- environment and settings of a container

    def container_env(self, container: dict) -> tuple[dict[str, str], dict[str, str]]:
        """(values, literal values): configMapRef envFrom, then env. Values from a Secret are
        known only as present ('<secret>')."""
        values: dict[str, str] = {}
        literal: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef")
            if ref:
                cm = self.find("ConfigMap", ref.get("name"))
                for key, value in ((cm or {}).get("data") or {}).items():
                    values[prefix + key] = str(value)
        for entry in container.get("env") or []:
            name = entry.get("name")
            if "value" in entry:
                values[name] = str(entry["value"])
                literal[name] = str(entry["value"])
            elif (entry.get("valueFrom") or {}).get("secretKeyRef"):
                values[name] = "<secret>"
            elif (entry.get("valueFrom") or {}).get("configMapKeyRef"):
                ref = entry["valueFrom"]["configMapKeyRef"]
                cm = self.find("ConfigMap", ref.get("name"))
                value = ((cm or {}).get("data") or {}).get(ref.get("key"))
                if value is not None:
                    values[name] = str(value)
            else:
                values[name] = "<runtime>"
        return values, literal

    @staticmethod
    def role(container: dict) -> str:
        # By args alone, whatever `command` says: a command in front of Tessera's arguments must
        # not exempt the container from the checks of its role.
        args = [str(a) for a in container.get("args") or ["serve"]]
        if args[:2] == ["migrate", "--check"]:
            return "migrate-check"
        return {"serve": "serve", "worker": "worker", "migrate": "migrate"}.get(args[0], "other")

    # -- entry point

    def run(self) -> list[str]:
        self.check_kinds()
        self.check_config_maps()
        self.check_namespaces()
        for obj in self.docs:
            template = pod_template(obj)
            if template is not None:
                self.check_workload(obj, template)
        self.check_services()
        self.check_network_policies()
        self.check_disruption_budgets()
        self.check_autoscalers()
        self.check_service_monitors()
        self.check_trigger_authentications()
        return self.errors

    def check_kinds(self) -> None:
        for obj in self.docs:
            kind = obj.get("kind")
            if kind == "Secret":
                self.fail(
                    obj,
                    "a Secret in the manifests: secrets are created by the operator and "
                    "referenced by name, never rendered from the repository",
                )
            elif kind in CRD_KINDS:
                if obj.get("apiVersion") != CRD_KINDS[kind]:
                    self.fail(obj, f"apiVersion {obj.get('apiVersion')}, expected {CRD_KINDS[kind]}")
            elif kind not in BUILTIN_KINDS:
                self.fail(obj, f"kind {kind} has no checks here: add them before shipping it")

    def check_config_maps(self) -> None:
        for cm in self.by_kind.get("ConfigMap", []):
            for key, value in (cm.get("data") or {}).items():
                self.check_literal(cm, f"data {key}", key, str(value))

    def check_literal(self, obj: dict, where: str, name: str, value: str) -> None:
        if name.endswith("_FILE"):
            return
        if name in SECRET_ENV or SECRET_NAME.search(name):
            self.fail(
                obj,
                f"{where}: literal secret value for {name}: use a *_FILE path into the "
                "mounted Secret, or valueFrom.secretKeyRef",
            )
            return
        if "://" in value:
            self.check_url(obj, where, name, value)

    def check_url(self, obj: dict, where: str, name: str, value: str) -> None:
        try:
            parts = urllib.parse.urlsplit(value)
            password = parts.password
        except ValueError:
            return
        if password:
            self.fail(obj, f"{where}: credentials in URL {name}: take the password from the Secret")
        # sqlx takes `password` from the query string, redis-rs `pass` (unix-socket URLs).
        for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if SECRET_QUERY.search(key):
                self.fail(
                    obj,
                    f"{where}: credentials in the query of URL {name} ({key}=): take the password "
                    "from the Secret",
                )

    def check_args(self, obj: dict, where: str, container: dict) -> None:
        """Secrets written into command or args: they show in `kubectl get pod -o yaml`, in
        `ps` and in every copy of the manifests, like a literal in env."""
        words = []
        for arg in [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]:
            try:
                words += shlex.split(arg)
            except ValueError:
                words += arg.split()
        for i, word in enumerate(words):
            if word.startswith("-"):
                option, has_value, value = word.lstrip("-").partition("=")
                if not has_value:
                    following = words[i + 1] if i + 1 < len(words) else ""
                    value = "" if following.startswith("-") else following
                env_name = option.upper().replace("-", "_").replace(".", "__")
                if value and not env_name.endswith("_FILE") and (
                    env_name in SECRET_ENV or SECRET_NAME.search(env_name)
                ):
                    self.fail(
                        obj,
                        f"{where}: literal secret in args ({word.split('=', 1)[0]}): use a *_FILE path "
                        "into the mounted Secret",
                    )
            elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
                name, value = word.split("=", 1)
                self.check_literal(obj, f"{where}: args", name, value)
            elif "://" in word:
                self.check_url(obj, f"{where}: args", word.split("://", 1)[0], word)

    def check_namespaces(self) -> None:
        namespaces = self.by_kind.get("Namespace", [])
        for ns in namespaces:
            labels = labels_of(ns)
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                self.fail(ns, "pod-security.kubernetes.io/enforce must be restricted")
        if len(namespaces) == 1:
            name = namespaces[0]["metadata"]["name"]
            for obj in self.docs:
                if obj.get("kind") != "Namespace" and obj.get("metadata", {}).get("namespace") != name:
                    self.fail(obj, f"not in the namespace {name} that this overlay creates")

    # -- workloads

    def check_workload(self, obj: dict, template: dict) -> None:
        pod = template.get("spec") or {}
        sc = pod.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(field):
                self.fail(obj, f"{field} is set")
        if pod.get("shareProcessNamespace"):
            self.fail(
                obj,
                "shareProcessNamespace is set: each container would see the others' processes, "
                "their environment and their files through /proc",
            )
        for sysctl in sc.get("sysctls") or []:
            if sysctl.get("name") not in SAFE_SYSCTLS:
                self.fail(obj, f"pod securityContext.sysctls {sysctl.get('name')} is not a safe sysctl")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            self.fail(obj, "pod securityContext.appArmorProfile is Unconfined")
        for key, value in (template.get("metadata", {}).get("annotations") or {}).items():
            if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
                self.fail(obj, f"annotation {key}: unconfined")
        if pod.get("automountServiceAccountToken") is not False:
            self.fail(obj, "automountServiceAccountToken must be false on the pod")
        if pod.get("enableServiceLinks") is not False:
            self.fail(obj, "enableServiceLinks must be false (Service variables would reach the environment)")
        account = pod.get("serviceAccountName")
        sa = self.find("ServiceAccount", account) if account else None
        if sa is None:
            self.fail(obj, f"serviceAccountName {account!r} names no ServiceAccount in the manifests")
        elif sa.get("automountServiceAccountToken") is not False:
            self.fail(sa, "automountServiceAccountToken must be false")
        if sc.get("runAsNonRoot") is not True:
            self.fail(obj, "pod securityContext.runAsNonRoot must be true")
        for field in ("runAsUser", "runAsGroup"):
            if sc.get(field) != UID:
                self.fail(obj, f"pod securityContext.{field} must be {UID}")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.fail(obj, "pod securityContext.seccompProfile must be RuntimeDefault")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for volume in volumes.values():
            if "hostPath" in volume:
                self.fail(obj, f"volume {volume.get('name')}: hostPath")
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "serviceAccountToken" in source:
                    self.fail(
                        obj,
                        f"volume {volume.get('name')}: projected serviceAccountToken: Tessera calls no "
                        "Kubernetes API, and a token would let a compromised pod do so",
                    )
            if "emptyDir" in volume and not (volume.get("emptyDir") or {}).get("sizeLimit"):
                self.fail(obj, f"volume {volume.get('name')}: emptyDir without sizeLimit")

        roles = {}
        for what, container in all_containers(pod):
            self.containers_checked += 1
            self.check_container(obj, what, container, volumes)
            roles.setdefault(self.role(container), []).append(container)

        for role, containers in roles.items():
            for container in containers:
                if role == "migrate-check":
                    self.check_production_secrets(
                        obj, f"init container {container.get('name')}", self.settings_of(container)
                    )
                elif role == "serve":
                    self.check_api(obj, pod, container, roles)
                elif role == "worker":
                    self.check_worker(obj, pod, container, roles)
                elif role == "migrate":
                    self.check_migration(obj, container)
        if "migrate" not in roles:
            for volume in volumes.values():
                for source in secret_sources(volume):
                    keys = [i.get("key") for i in source.get("items") or []]
                    if MIGRATION_PASSWORD_KEY in keys or not keys:
                        self.fail(
                            obj,
                            f"volume {volume.get('name')} mounts {MIGRATION_PASSWORD_KEY} (or the "
                            "whole Secret): the schema owner's password belongs to the migration Job only",
                        )
            for what, container in all_containers(pod):
                for entry in container.get("env") or []:
                    ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
                    if ref.get("key") == MIGRATION_PASSWORD_KEY:
                        self.fail(
                            obj,
                            f"{what}: env {entry.get('name')} takes {MIGRATION_PASSWORD_KEY} from "
                            f"Secret {ref.get('name')}: the schema owner's password belongs to the "
                            "migration Job only",
                        )

    def check_container(self, obj: dict, what: str, c: dict, volumes: dict) -> None:
        where = what
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            self.fail(obj, f"{where}: securityContext.runAsNonRoot must be true")
        for field in ("runAsUser", "runAsGroup"):
            if sc.get(field) != UID:
                self.fail(obj, f"{where}: securityContext.{field} must be {UID}")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.fail(obj, f"{where}: securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.fail(obj, f"{where}: securityContext.allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            self.fail(obj, f"{where}: securityContext.privileged is set")
        if sc.get("procMount", "Default") != "Default":
            self.fail(obj, f"{where}: securityContext.procMount {sc['procMount']}: only Default masks /proc")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            self.fail(obj, f"{where}: securityContext.appArmorProfile is Unconfined")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            self.fail(obj, f"{where}: securityContext.capabilities must drop ALL")
        if caps.get("add"):
            self.fail(obj, f"{where}: securityContext.capabilities.add {caps['add']}")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.fail(obj, f"{where}: securityContext.seccompProfile must be RuntimeDefault")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                self.fail(obj, f"{where}: hostPort {port['hostPort']}")

        resources = c.get("resources") or {}
        for field in ("cpu", "memory"):
            if not (resources.get("requests") or {}).get(field):
                self.fail(obj, f"{where}: resources.requests.{field} is not set")
        if not (resources.get("limits") or {}).get("memory"):
            self.fail(obj, f"{where}: resources.limits.memory is not set")

        image = str(c.get("image", ""))
        _, tag, digest = image_parts(image)
        if tag == "latest":
            self.fail(obj, f"{where}: image {image} is :latest")
        elif not tag and not digest and not self.base:
            self.fail(obj, f"{where}: image {image} has neither tag nor digest (that is :latest)")

        mounts = [m for m in c.get("volumeMounts") or []]
        if not any(m.get("mountPath") == "/tmp" for m in mounts):
            self.fail(obj, f"{where}: no writable /tmp under a read-only root filesystem")

        for source in c.get("envFrom") or []:
            if source.get("secretRef"):
                self.fail(
                    obj,
                    f"{where}: envFrom.secretRef {source['secretRef'].get('name')} puts every key of "
                    "the Secret into the environment (the schema owner's password and the master keys "
                    "with them): take keys one by one through valueFrom.secretKeyRef or a mounted file",
                )

        values, literal = self.container_env(c)
        for name, value in literal.items():
            self.check_literal(obj, f"{where}: env", name, value)
        self.check_args(obj, where, c)
        self.check_database_tls(obj, where, c, volumes)
        for name, value in values.items():
            if name.startswith("TESSERA__") and name.endswith("_FILE"):
                self.check_secret_file(obj, where, name, value, mounts, volumes)

    def check_database_tls(self, obj, what, container, volumes) -> None:
        """Production verifies Postgres's certificate: with sslmode=require a machine in the path
        could present any certificate and read the passwords and every tenant's data."""
        if not self.production or self.role(container) == "other":
            return
        settings = self.settings_of(container)
        for key in ("url", "migration_url"):
            url = str(setting(settings, "database", key, default="") or "")
            if not url:
                continue
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
            mode = query.get("sslmode", query.get("ssl-mode"))
            if mode not in VERIFYING_SSLMODES:
                self.fail(
                    obj,
                    f"{what}: database.{key} sslmode={mode or 'absent (prefer)'}: production must "
                    "verify the server's certificate (sslmode=verify-full)",
                )
            root = query.get("sslrootcert", query.get("ssl-root-cert", query.get("ssl-ca")))
            if root and not file_mounted(container, volumes, root):
                self.fail(
                    obj,
                    f"{what}: database.{key} sslrootcert {root} is not mounted in this container "
                    "from a ConfigMap or Secret",
                )

    def check_secret_file(self, obj, where, name, path, mounts, volumes) -> None:
        for mount in mounts:
            prefix = mount.get("mountPath", "").rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            secret = (volumes.get(mount.get("name")) or {}).get("secret")
            if secret is None:
                continue
            items = secret.get("items")
            relative = path[len(prefix) :]
            if items is None or relative in [i.get("path") for i in items]:
                return
        self.fail(obj, f"{where}: {name}={path} is not mounted from a Secret in this pod")

    def settings_of(self, container: dict) -> dict:
        values, _ = self.container_env(container)
        return effective_settings(values)

    def check_production_secrets(self, obj, what, settings) -> None:
        if settings["_environment"] != "production":
            return
        for section, key in PRODUCTION_SECRET_FILES:
            if not setting(settings, section, key) and not setting(settings, section, key[:-5]):
                self.fail(obj, f"{what}: {section}.{key[:-5]} is not provided (production refuses to start)")
        address = str(setting(settings, "telemetry", "metrics_address", default=""))
        if address and not address.startswith(("127.", "[::1]")):
            if not setting(settings, "telemetry", "metrics_token_file") and not setting(
                settings, "telemetry", "metrics_token"
            ):
                self.fail(
                    obj,
                    f"{what}: telemetry.metrics_token is required off loopback (Tessera refuses otherwise)",
                )

    def check_waits_for_migrations(self, obj, pod, container) -> None:
        checks = [c for c in pod.get("initContainers") or [] if self.role(c) == "migrate-check"]
        if not checks:
            self.fail(
                obj, "no init container running `migrate --check`: pods would start before the migration Job"
            )
        for c in checks:
            if c.get("image") != container.get("image"):
                self.fail(obj, f"init container {c.get('name')}: image differs from the main container's")

    def check_memory_budget(self, obj, what, container, settings) -> None:
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if not limit:
            return
        budget = int(setting(settings, "inference", "memory_budget_bytes"))
        if BASELINE_RSS_BYTES + budget * RSS_PER_BUDGET_BYTE > quantity(limit):
            self.fail(
                obj,
                f"{what}: inference.memory_budget_bytes {budget} does not fit the memory limit {limit}: "
                f"{BASELINE_RSS_BYTES // 2**20} MiB + {RSS_PER_BUDGET_BYTE} x the budget resident",
            )

    def container_port(self, container: dict, port) -> int | None:
        if isinstance(port, int):
            return port
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return p.get("containerPort")
        return None

    def check_probe(self, obj, what, container, probe_name, path, port) -> None:
        probe = container.get(probe_name) or {}
        get = probe.get("httpGet") or {}
        if get.get("path") != path or self.container_port(container, get.get("port")) != port:
            self.fail(obj, f"{what}: {probe_name} must GET {path} on port {port}")

    def check_api(self, obj, pod, container, roles) -> None:
        what = f"container {container.get('name')}"
        settings = self.settings_of(container)
        self.check_production_secrets(obj, what, settings)
        port = int(setting(settings, "server", "port"))
        if setting(settings, "server", "host") != "0.0.0.0":
            self.fail(obj, f"{what}: server.host must be 0.0.0.0 in a pod")
        if self.container_port(container, "http") != port:
            self.fail(obj, f"{what}: containerPort http is not server.port {port}")
        self.check_metrics_port(obj, what, container, settings)
        self.check_probe(obj, what, container, "readinessProbe", "/readyz", port)
        self.check_probe(obj, what, container, "livenessProbe", "/healthz", port)
        if truthy(setting(settings, "database", "migrate_on_start")):
            self.fail(obj, f"{what}: database.migrate_on_start must be false (the migration Job migrates)")
        if int(setting(settings, "jobs", "workers")) != 0:
            self.fail(
                obj, f"{what}: jobs.workers must be 0: jobs run in tessera-worker, not beside inference"
            )
        if ((container.get("resources") or {}).get("limits") or {}).get("cpu"):
            self.fail(obj, f"{what}: CPU limit on the API: throttling hurts tail latency, keep requests only")
        self.check_storage(obj, what, settings)
        self.check_memory_budget(obj, what, container, settings)
        self.check_waits_for_migrations(obj, pod, container)
        self.check_trusted_proxies(obj, what, settings)

        pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
        seconds = 0
        if "sleep" in pre_stop or not pre_stop:
            seconds = int((pre_stop.get("sleep") or {}).get("seconds", 0))
            if not seconds:
                self.fail(
                    obj, f"{what}: no preStop sleep: the listener would close before endpoints are withdrawn"
                )
        else:
            # An exec hook needs a sleep binary in the image; if it fails (a slimmer image, a
            # PATH change) the kubelet records an event and sends SIGTERM at once, without the
            # wait. The native action (Kubernetes 1.30+, the manifests' minimum) cannot fail so.
            self.fail(
                obj,
                f"{what}: preStop must be the native sleep action, not {'/'.join(pre_stop)}: "
                "a failing hook skips the wait for endpoints to be withdrawn",
            )
        grace = int(setting(settings, "server", "shutdown_grace_seconds"))
        drain = int(setting(settings, "server", "drain_seconds"))
        needed = seconds + drain + grace + API_MARGIN_SECONDS
        period = pod.get("terminationGracePeriodSeconds", 30)
        if period < needed:
            self.fail(
                obj,
                f"{what}: terminationGracePeriodSeconds {period} < preStop {seconds} + "
                f"server.drain_seconds {drain} + server.shutdown_grace_seconds {grace} + {API_MARGIN_SECONDS}",
            )

    def check_trusted_proxies(self, obj, what, settings) -> None:
        proxies = setting(settings, "server", "trusted_proxies", default=[])
        if isinstance(proxies, str):
            proxies = [p.strip() for p in proxies.split(",") if p.strip()]
        for entry in proxies:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                self.fail(obj, f"{what}: server.trusted_proxies {entry!r} is not an address or network")
                continue
            if network.prefixlen == 0:
                self.fail(
                    obj,
                    f"{what}: server.trusted_proxies {entry} trusts every address: any client could "
                    "choose its own address with X-Forwarded-For",
                )
        if self.production and not proxies:
            self.fail(
                obj,
                f"{what}: server.trusted_proxies is not set: behind the ingress controller every client "
                "would appear with its address, and login throttling by client address would let one "
                "client lock out everyone",
            )

    def check_metrics_port(self, obj, what, container, settings) -> int | None:
        address = str(setting(settings, "telemetry", "metrics_address", default=""))
        if not address or address.startswith(("127.", "[::1]", "localhost")):
            self.fail(
                obj, f"{what}: telemetry.metrics_address {address!r} is not reachable from outside the pod"
            )
            return None
        port = int(address.rsplit(":", 1)[-1])
        if self.container_port(container, "metrics") != port:
            self.fail(
                obj, f"{what}: containerPort metrics is not the port of telemetry.metrics_address {address}"
            )
        return port

    def check_storage(self, obj, what, settings) -> None:
        storage = setting(settings, "registry", "storage", default={})
        if storage.get("backend") != "s3":
            self.fail(
                obj, f"{what}: registry.storage.backend must be s3: pods on several nodes share no volume"
            )
        elif not storage.get("s3_bucket"):
            self.fail(obj, f"{what}: registry.storage.s3_bucket is not set")

    def check_worker(self, obj, pod, container, roles) -> None:
        what = f"container {container.get('name')}"
        settings = self.settings_of(container)
        self.check_production_secrets(obj, what, settings)
        port = self.check_metrics_port(obj, what, container, settings)
        if port:
            self.check_probe(obj, what, container, "livenessProbe", "/healthz", port)
        if truthy(setting(settings, "database", "migrate_on_start")):
            self.fail(obj, f"{what}: database.migrate_on_start must be false (the migration Job migrates)")
        self.check_storage(obj, what, settings)
        self.check_memory_budget(obj, what, container, settings)
        self.check_waits_for_migrations(obj, pod, container)
        needed = WORKER_HANDBACK_SECONDS + WORKER_MARGIN_SECONDS
        period = pod.get("terminationGracePeriodSeconds", 30)
        if period < needed:
            self.fail(
                obj,
                f"{what}: terminationGracePeriodSeconds {period} < {needed} "
                f"(a worker takes up to {WORKER_HANDBACK_SECONDS} s to hand its job back)",
            )

    def worker_concurrency(self, container: dict) -> int:
        args = [str(a) for a in container.get("args") or []]
        if "--concurrency" in args:
            return int(args[args.index("--concurrency") + 1])
        return max(1, int(setting(self.settings_of(container), "jobs", "workers")))

    def check_migration(self, obj, container) -> None:
        what = f"container {container.get('name')}"
        settings = self.settings_of(container)
        self.check_production_secrets(obj, what, settings)
        if obj.get("kind") != "Job":
            self.fail(obj, f"{what}: `migrate` belongs in a Job")
            return
        if not setting(settings, "database", "migration_password_file"):
            self.fail(obj, f"{what}: database.migration_password_file is not set")
        annotations = obj.get("metadata", {}).get("annotations") or {}
        if "argocd.argoproj.io/hook" not in annotations:
            self.fail(
                obj, "no argocd.argoproj.io/hook annotation: Argo CD would not run it before the workloads"
            )
        if self.base:
            return
        suffix = release_suffix(str(container.get("image", "")))
        name = obj["metadata"]["name"]
        if not suffix or not name.endswith("-" + suffix):
            self.fail(
                obj,
                f"the Job's name does not carry its image's release ({suffix}): Jobs are "
                "immutable, rename it with each release",
            )

    # -- Services, network policies, disruption budgets, autoscalers

    def pods(self) -> list[tuple[dict, dict]]:
        """(workload, pod template) pairs."""
        return [(o, t) for o in self.docs if (t := pod_template(o)) is not None]

    def check_services(self) -> None:
        for obj, template in self.pods():
            selector = (obj.get("spec") or {}).get("selector")
            if obj.get("kind") != "Job" and not selector_matches(selector, labels_of(template)):
                self.fail(obj, "spec.selector does not match the pod template's labels")
        for svc in self.by_kind.get("Service", []):
            selector = (svc.get("spec") or {}).get("selector") or {}
            matched = [
                t
                for _, t in self.pods()
                if selector and selector_matches({"matchLabels": selector}, labels_of(t))
            ]
            if not matched:
                self.fail(svc, "its selector matches no pod")
                continue
            for port in (svc.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for t in matched:
                    containers = (t.get("spec") or {}).get("containers") or []
                    if not any(self.container_port(c, target) for c in containers):
                        self.fail(svc, f"targetPort {target} is no container port of the pods it selects")

    def check_network_policies(self) -> None:
        policies = self.by_kind.get("NetworkPolicy", [])
        for policy in policies:
            spec = policy.get("spec") or {}
            for i, rule in enumerate(spec.get("egress") or []):
                if not rule.get("ports"):
                    self.fail(policy, f"egress rule {i} without ports: egress must stay port-restricted")
                self.check_egress_destinations(policy, i, rule)
                for port in rule.get("ports") or []:
                    if port.get("endPort", port.get("port")) != port.get("port"):
                        self.fail(
                            policy,
                            f"egress rule {i}: port range {port.get('port')}-{port['endPort']}: "
                            "name each dependency's port",
                        )
            for i, rule in enumerate(spec.get("ingress") or []):
                if not rule.get("ports"):
                    self.fail(policy, f"ingress rule {i} without ports")

        for obj, template in self.pods():
            labels = labels_of(template)
            pod = template.get("spec") or {}
            selecting = [
                p
                for p in policies
                if selector_matches((p.get("spec") or {}).get("podSelector") or {}, labels)
            ]
            for direction in ("Ingress", "Egress"):
                if not any(direction in ((p.get("spec") or {}).get("policyTypes") or []) for p in selecting):
                    self.fail(
                        obj,
                        f"no NetworkPolicy with policyType {direction} selects its pods (deny by default)",
                    )
            containers = pod.get("containers") or []
            metrics_ports = set()
            api_ports = set()
            for c in containers:
                if self.role(c) in ("serve", "worker"):
                    address = str(setting(self.settings_of(c), "telemetry", "metrics_address", default=""))
                    if ":" in address:
                        metrics_ports.add(int(address.rsplit(":", 1)[-1]))
                if self.role(c) == "serve":
                    api_ports.add(int(setting(self.settings_of(c), "server", "port")))
            for p in selecting:
                for rule in (p.get("spec") or {}).get("ingress") or []:
                    ranges = []
                    for port in rule.get("ports") or []:
                        number = port.get("port")
                        if number is None or port.get("endPort"):
                            # Every port, or a range: open whatever the pods listen on inside it.
                            ranges.append((number or 1, port.get("endPort") or 65535))
                            continue
                        resolved = [n for c in containers if (n := self.container_port(c, number))]
                        if not resolved:
                            self.fail(
                                p, f"allows ingress to port {number}, which {ident(obj)}'s pods do not expose"
                            )
                            continue
                        ranges.append((resolved[0], resolved[0]))
                    # No ports: every port (refused above, but judged as what it opens).
                    if not rule.get("ports"):
                        ranges.append((1, 65535))
                    who = open_peers(rule)
                    for number in sorted(metrics_ports):
                        if who and any(lo <= number <= hi for lo, hi in ranges):
                            self.fail(
                                p,
                                f"metrics port {number} open to {who}: allow only the monitoring namespace",
                            )
                    for number in sorted(api_ports):
                        if who and any(lo <= number <= hi for lo, hi in ranges):
                            self.fail(
                                p,
                                f"API port {number} open to {who}: allow only the ingress controller, "
                                "which cleans the headers Tessera believes from its peers",
                            )
            egress = []
            for p in selecting:
                for rule in (p.get("spec") or {}).get("egress") or []:
                    for port in rule.get("ports") or []:
                        if isinstance(port.get("port"), int):
                            egress.append((port["port"], port.get("endPort") or port["port"]))
            for c in containers:
                for port, why in self.needed_egress(c):
                    if not any(lo <= port <= hi for lo, hi in egress):
                        self.fail(obj, f"container {c.get('name')}: no egress to port {port} ({why})")

    def check_egress_destinations(self, policy: dict, i: int, rule: dict) -> None:
        numbers = {port.get("port") for port in rule.get("ports") or []}
        if 53 in numbers:
            if not rule.get("to") or not all(is_kube_dns(peer) for peer in rule["to"]):
                self.fail(
                    policy,
                    f"egress rule {i}: DNS only to kube-dns (namespace kube-system, pods k8s-app: "
                    "kube-dns): any other resolver can carry data out in its queries",
                )
        elif not rule.get("to"):
            self.fail(
                policy,
                f"egress rule {i} (ports {', '.join(str(n) for n in sorted(numbers, key=str))}) has "
                "no `to:`: it reaches every address, the Kubernetes API and other namespaces included",
            )
        for peer in rule.get("to") or []:
            block = peer.get("ipBlock")
            if block is None:
                if "namespaceSelector" in peer and not selector_narrows(peer["namespaceSelector"]) and (
                    not selector_narrows(peer.get("podSelector"))
                ):
                    self.fail(
                        policy,
                        f"egress rule {i}: to every pod of every namespace (an empty namespaceSelector "
                        "alone): name the dependency's namespace and pods",
                    )
                continue
            cidr = str(block.get("cidr", ""))
            try:
                network = ipaddress.ip_network(cidr, strict=False)
                excepted = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
            except ValueError:
                self.fail(policy, f"egress rule {i}: ipBlock {cidr!r} is not a network")
                continue
            for metadata in METADATA_NETWORKS:
                if network.version != metadata.version or not network.overlaps(metadata):
                    continue
                reached = network if network.subnet_of(metadata) else metadata
                if not any(e.version == reached.version and reached.subnet_of(e) for e in excepted):
                    self.fail(
                        policy,
                        f"egress rule {i}: ipBlock {cidr} reaches {metadata} (the cloud metadata "
                        "service, and the node's credentials) without excepting it",
                    )
            if network.prefixlen == 0 and self.production:
                self.fail(
                    policy,
                    f"egress rule {i}: ipBlock {cidr} in production: name the dependency's subnets",
                )
            if not self.base and network.overlaps(BASE_PLACEHOLDER):
                self.fail(
                    policy,
                    f"egress rule {i}: ipBlock {cidr} is the base's placeholder: the overlay must set "
                    "this dependency's addresses",
                )

    def needed_egress(self, container: dict) -> list[tuple[int, str]]:
        role = self.role(container)
        if role == "other":
            return []
        settings = self.settings_of(container)
        needed = [(53, "DNS")]
        if role == "migrate":
            url = str(setting(settings, "database", "migration_url", default="") or "")
        else:
            url = str(setting(settings, "database", "url", default=""))
        needed.append((url_port(url, {"postgres": 5432, "postgresql": 5432}) or 5432, "Postgres"))
        if role in ("serve", "worker"):
            storage = setting(settings, "registry", "storage", default={})
            if storage.get("backend") == "s3":
                endpoint = storage.get("s3_endpoint") or ""
                port = url_port(endpoint, {"https": 443, "http": 80}) if endpoint else 443
                needed.append((port, f"object store {endpoint or 'AWS S3'}"))
            otlp = str(setting(settings, "telemetry", "otlp", "endpoint", default="") or "")
            if otlp:
                needed.append((url_port(otlp, {"https": 443, "http": 80}), f"OTLP {otlp}"))
        return needed

    def check_disruption_budgets(self) -> None:
        budgets = self.by_kind.get("PodDisruptionBudget", [])
        for obj in self.by_kind.get("Deployment", []):
            labels = labels_of(obj["spec"]["template"])
            if not any(selector_matches((b.get("spec") or {}).get("selector"), labels) for b in budgets):
                self.fail(obj, "no PodDisruptionBudget selects its pods")
        for b in budgets:
            spec = b.get("spec") or {}
            if spec.get("minAvailable") in ("100%",) or spec.get("maxUnavailable") in (0, "0%"):
                self.fail(b, "allows no disruption: node drains would block")

    def check_autoscalers(self) -> None:
        hpas = self.by_kind.get("HorizontalPodAutoscaler", [])
        scaled = self.by_kind.get("ScaledObject", [])
        for hpa in hpas:
            spec = hpa.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            if not self.find(ref.get("kind"), ref.get("name")):
                self.fail(hpa, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not in the manifests")
            if not 1 <= spec.get("minReplicas", 1) <= spec.get("maxReplicas", 0):
                self.fail(hpa, "needs 1 <= minReplicas <= maxReplicas")
        for so in scaled:
            self.check_scaled_object(so)
        for obj in self.by_kind.get("Deployment", []):
            name = obj["metadata"]["name"]
            mine = [
                h
                for h in hpas
                if (h["spec"].get("scaleTargetRef") or {}).get("name") == name
                and (h["spec"].get("scaleTargetRef") or {}).get("kind") == "Deployment"
            ]
            mine_so = [
                s for s in scaled if ((s.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == name
            ]
            if len(mine) + len(mine_so) != 1:
                self.fail(
                    obj,
                    f"needs exactly one autoscaler (HPA or KEDA ScaledObject), has {len(mine) + len(mine_so)}",
                )
                continue
            roles = {self.role(c): c for c in obj["spec"]["template"]["spec"].get("containers") or []}
            if "serve" in roles and mine:
                metrics = mine[0]["spec"].get("metrics") or []
                if not any(
                    m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu"
                    for m in metrics
                ):
                    self.fail(mine[0], "the API's HPA must scale on CPU")
            if "worker" in roles and mine:
                concurrency = self.worker_concurrency(roles["worker"])
                external = [
                    m
                    for m in mine[0]["spec"].get("metrics") or []
                    if m.get("type") == "External"
                    and ((m.get("external") or {}).get("metric") or {}).get("name") == JOBS_BACKLOG_METRIC
                ]
                if not external:
                    self.fail(
                        mine[0], f"the workers' HPA must scale on the External metric {JOBS_BACKLOG_METRIC}"
                    )
                else:
                    target = external[0]["external"].get("target") or {}
                    if (
                        target.get("type") != "AverageValue"
                        or quantity(target.get("averageValue", 0)) != concurrency
                    ):
                        self.fail(
                            mine[0],
                            f"target must be AverageValue {concurrency}: the jobs one worker runs at once",
                        )

    def check_scaled_object(self, so: dict) -> None:
        spec = so.get("spec") or {}
        for key in set(spec) - SCALED_OBJECT_SPEC:
            self.fail(so, f"unknown field spec.{key}")
        ref = spec.get("scaleTargetRef") or {}
        target = self.find(ref.get("kind", "Deployment"), ref.get("name"))
        if target is None:
            self.fail(so, f"scaleTargetRef {ref.get('name')} is not in the manifests")
            return
        if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
            self.fail(so, "needs 1 <= minReplicaCount <= maxReplicaCount (a worker also serves its metrics)")
        triggers = spec.get("triggers") or []
        if not triggers:
            self.fail(so, "no triggers")
        workers = [
            c for c in target["spec"]["template"]["spec"].get("containers") or [] if self.role(c) == "worker"
        ]
        for i, trigger in enumerate(triggers):
            if trigger.get("type") != "redis-streams":
                self.fail(so, f"trigger {i}: type {trigger.get('type')}, expected redis-streams")
                continue
            meta = trigger.get("metadata") or {}
            for key in set(meta) - REDIS_STREAMS_METADATA:
                self.fail(so, f"trigger {i}: unknown metadata {key}")
            for key, value in meta.items():
                if not isinstance(value, str):
                    self.fail(so, f"trigger {i}: metadata {key} must be a string")
            if not (meta.get("address") or meta.get("addressFromEnv") or meta.get("host")):
                self.fail(so, f"trigger {i}: no Redis address")
            if workers:
                prefix = setting(self.settings_of(workers[0]), "redis", "key_prefix")
                if meta.get("stream") != f"{prefix}:jobs:stream":
                    self.fail(
                        so,
                        f"trigger {i}: stream {meta.get('stream')!r} is not Tessera's job stream {prefix}:jobs:stream",
                    )
                concurrency = self.worker_concurrency(workers[0])
                if meta.get("consumerGroup"):
                    if meta.get("consumerGroup") != "workers":
                        self.fail(so, f"trigger {i}: consumerGroup must be Tessera's, workers")
                    if "lagCount" not in meta:
                        self.fail(
                            so,
                            f"trigger {i}: with a consumerGroup and no lagCount KEDA counts pending entries, "
                            "not the backlog: drop consumerGroup to scale on streamLength",
                        )
                elif str(meta.get("streamLength")) != str(concurrency):
                    self.fail(
                        so,
                        f"trigger {i}: streamLength must be {concurrency}: the jobs one worker runs at once",
                    )
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth and not self.find("TriggerAuthentication", auth):
                self.fail(so, f"trigger {i}: authenticationRef {auth} is not in the manifests")

    def check_trigger_authentications(self) -> None:
        for ta in self.by_kind.get("TriggerAuthentication", []):
            spec = ta.get("spec") or {}
            for key in set(spec) - TRIGGER_AUTH_SPEC:
                self.fail(ta, f"unknown field spec.{key}")
            for ref in spec.get("secretTargetRef") or []:
                if set(ref) != {"parameter", "name", "key"}:
                    self.fail(ta, f"secretTargetRef entries need exactly parameter, name and key: {ref}")
                if ref.get("name") == APP_SECRET:
                    self.fail(
                        ta,
                        f"secretTargetRef {ref.get('parameter')} reads {APP_SECRET}: KEDA would need read "
                        "access to the master and signing keys; use a Secret of its own (tessera-keda-redis)",
                    )

    def check_service_monitors(self) -> None:
        for sm in self.by_kind.get("ServiceMonitor", []):
            spec = sm.get("spec") or {}
            for key in set(spec) - SERVICE_MONITOR_SPEC:
                self.fail(sm, f"unknown field spec.{key}")
            services = [
                s
                for s in self.by_kind.get("Service", [])
                if selector_matches(spec.get("selector"), labels_of(s))
            ]
            if not services:
                self.fail(sm, "its selector matches no Service")
            for ref in secret_key_refs(spec):
                if ref.get("name") == APP_SECRET:
                    self.fail(
                        sm,
                        f"reads {APP_SECRET}/{ref.get('key')}: Prometheus would need read access to the "
                        "master and signing keys; use a Secret of its own (tessera-metrics-token)",
                    )
            endpoints = spec.get("endpoints") or []
            if not endpoints:
                self.fail(sm, "no endpoints")
            for i, endpoint in enumerate(endpoints):
                for key in set(endpoint) - SERVICE_MONITOR_ENDPOINT:
                    self.fail(sm, f"endpoint {i}: unknown field {key}")
                port = endpoint.get("port")
                for svc in services:
                    if port not in [p.get("name") for p in (svc.get("spec") or {}).get("ports") or []]:
                        self.fail(
                            sm, f"endpoint {i}: Service {svc['metadata']['name']} has no port named {port!r}"
                        )
                if endpoint.get("path", "/metrics") != "/metrics":
                    self.fail(sm, f"endpoint {i}: path must be /metrics")
                credentials = (endpoint.get("authorization") or {}).get("credentials") or endpoint.get(
                    "bearerTokenSecret"
                )
                if not credentials or not credentials.get("name") or not credentials.get("key"):
                    self.fail(sm, f"endpoint {i}: no bearer token: /metrics requires telemetry.metrics_token")
                elif not self.metrics_token_mounted(credentials["name"], credentials["key"]):
                    self.fail(
                        sm,
                        f"endpoint {i}: token {credentials['name']}/{credentials['key']} is not the "
                        "metrics token the pods mount",
                    )

    def metrics_token_mounted(self, secret: str, key: str) -> bool:
        for _, template in self.pods():
            pod = template.get("spec") or {}
            for c in pod.get("containers") or []:
                if self.role(c) not in ("serve", "worker"):
                    continue
                path = setting(self.settings_of(c), "telemetry", "metrics_token_file")
                volumes = {v.get("name"): v for v in pod.get("volumes") or []}
                for mount in c.get("volumeMounts") or []:
                    source = (volumes.get(mount.get("name")) or {}).get("secret") or {}
                    if source.get("secretName") != secret or not path:
                        continue
                    for item in source.get("items") or [{"key": key, "path": key}]:
                        if (
                            item.get("key") == key
                            and path == f"{mount['mountPath'].rstrip('/')}/{item.get('path')}"
                        ):
                            return True
        return False

    def connections_at_max(self) -> int:
        """Postgres connections the Deployments' pools may hold at their autoscalers' maxima."""
        total = 0
        for obj in self.by_kind.get("Deployment", []):
            name = obj["metadata"]["name"]
            replicas = obj["spec"].get("replicas", 1)
            for hpa in self.by_kind.get("HorizontalPodAutoscaler", []):
                if (hpa["spec"].get("scaleTargetRef") or {}).get("name") == name:
                    replicas = hpa["spec"].get("maxReplicas", replicas)
            for so in self.by_kind.get("ScaledObject", []):
                if ((so.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == name:
                    replicas = so["spec"].get("maxReplicaCount", replicas)
            for c in obj["spec"]["template"]["spec"].get("containers") or []:
                if self.role(c) in ("serve", "worker"):
                    total += replicas * int(setting(self.settings_of(c), "database", "max_connections"))
        return total


def check(docs: list[dict], base: bool = False) -> tuple[list[str], Checker]:
    checker = Checker(docs, base)
    return checker.run(), checker


# ---------------------------------------------------------------------------------------------
# Self-test: broken copies that must be refused


def by(docs, kind, name=None, component=None):
    for d in docs:
        if d.get("kind") != kind:
            continue
        if name and d["metadata"]["name"] != name and not d["metadata"]["name"].startswith(name + "-"):
            continue
        if component and labels_of(d).get("app.kubernetes.io/component") != component:
            continue
        return d
    raise LookupError(f"{kind} {name or component}")


def pod_of(docs, component):
    kind = "Job" if component == "migration" else "Deployment"
    return by(docs, kind, component=component)["spec"]["template"]["spec"]


def main_container(docs, component):
    return pod_of(docs, component)["containers"][0]


def init_container(docs, component):
    return pod_of(docs, component)["initContainers"][0]


def config_map(docs):
    return by(docs, "ConfigMap", "tessera-config")["data"]


def set_env(container, name, value):
    env = container.setdefault("env", [])
    env[:] = [e for e in env if e.get("name") != name]
    env.append({"name": name, "value": value})


def remove(docs, kind, name):
    docs.remove(by(docs, kind, name))


def _drop_item(volume_owner, key):
    for v in volume_owner["volumes"]:
        if v["name"] == "secrets":
            v["secret"]["items"] = [i for i in v["secret"]["items"] if i["key"] != key]


def _add_item(volume_owner, key):
    for v in volume_owner["volumes"]:
        if v["name"] == "secrets":
            v["secret"]["items"].append({"key": key, "path": key})


def _retag(docs, tag):
    for d in docs:
        template = pod_template(d)
        if template:
            for _, c in all_containers(template["spec"]):
                name, _, _ = image_parts(c["image"])
                c["image"] = f"{name}:{tag}"


def _open_egress(docs):
    by(docs, "NetworkPolicy", "tessera-egress")["spec"]["egress"].append(
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
    )


def _egress_rule(docs, index):
    return by(docs, "NetworkPolicy", "tessera-egress")["spec"]["egress"][index]


def _production(docs):
    """True, or LookupError for a development overlay's rendering."""
    for ns in docs:
        if ns.get("kind") == "Namespace" and labels_of(ns).get(DEVELOPMENT_LABEL) == "true":
            raise LookupError("a development overlay")
    return True


def _open_ingress(docs, port):
    """A policy of its own that admits every peer to `port` on the workers."""
    policy = copy.deepcopy(by(docs, "NetworkPolicy", "tessera-metrics-ingress"))
    policy["metadata"]["name"] = "extra"
    policy["spec"]["ingress"] = [{"ports": [port]}]
    docs.append(policy)


def _second_worker_autoscaler(docs):
    docs.append(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": "extra",
                "namespace": by(docs, "Deployment", "tessera-worker")["metadata"].get("namespace"),
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tessera-worker"},
                "minReplicas": 1,
                "maxReplicas": 2,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 50},
                        },
                    }
                ],
            },
        }
    )


# (name, mutation, expected substring of one error). A mutation raising LookupError does not
# apply to that rendering (e.g. no ScaledObject in production); each must apply to at least one.
MUTATIONS = [
    (
        "API container without runAsNonRoot",
        lambda d: main_container(d, "api")["securityContext"].pop("runAsNonRoot"),
        "runAsNonRoot must be true",
    ),
    (
        "init container allowed to escalate privileges",
        lambda d: init_container(d, "api")["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation must be false",
    ),
    (
        "literal secret in env",
        lambda d: set_env(
            main_container(d, "api"), "TESSERA__AUTH__API_KEY_SECRET", "0123456789abcdef0123456789abcdef"
        ),
        "literal secret value for TESSERA__AUTH__API_KEY_SECRET",
    ),
    (
        "literal AWS secret key in the worker's env",
        lambda d: set_env(main_container(d, "worker"), "AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        "literal secret value for AWS_SECRET_ACCESS_KEY",
    ),
    (
        "password in the ConfigMap's Redis URL",
        lambda d: config_map(d).update(TESSERA__REDIS__URL="redis://:hunter2@redis:6379"),
        "credentials in URL",
    ),
    (
        "password in the ConfigMap's database URL",
        lambda d: config_map(d).update(
            TESSERA__DATABASE__URL="postgres://tessera_app:hunter2@db:5432/tessera"
        ),
        "credentials in URL",
    ),
    (
        "password in the query of the database URL",
        lambda d: config_map(d).update(
            TESSERA__DATABASE__URL=config_map(d)["TESSERA__DATABASE__URL"]
            + ("&" if "?" in config_map(d)["TESSERA__DATABASE__URL"] else "?")
            + "password=hunter2"
        ),
        "credentials in the query of URL TESSERA__DATABASE__URL (password=)",
    ),
    (
        "secret option in the API's args",
        lambda d: main_container(d, "api").update(
            args=["serve", "--api-key-secret=0123456789abcdef0123456789abcdef"]
        ),
        "literal secret in args (--api-key-secret)",
    ),
    (
        "password in a URL in the worker's args",
        lambda d: main_container(d, "worker")["args"].extend(
            ["--database-url", "postgres://tessera_app:hunter2@db:5432/tessera"]
        ),
        "args: credentials in URL postgres",
    ),
    (
        "secret variable in an init container's shell command",
        lambda d: init_container(d, "api").update(
            command=["sh", "-c"],
            args=["TESSERA__REGISTRY__MASTER_KEYS=master-1:c2VlZA exec tessera migrate --check"],
        ),
        "args: literal secret value for TESSERA__REGISTRY__MASTER_KEYS",
    ),
    (
        "worker keeps its capabilities",
        lambda d: main_container(d, "worker")["securityContext"].pop("capabilities"),
        "must drop ALL",
    ),
    (
        "worker adds a capability",
        lambda d: main_container(d, "worker")["securityContext"]["capabilities"].update(add=["NET_RAW"]),
        "capabilities.add",
    ),
    (
        "Job writes its root filesystem",
        lambda d: main_container(d, "migration")["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem must be true",
    ),
    (
        "privileged init container",
        lambda d: init_container(d, "worker")["securityContext"].update(privileged=True),
        "privileged is set",
    ),
    (
        "init container without seccomp profile",
        lambda d: init_container(d, "worker")["securityContext"].pop("seccompProfile"),
        "seccompProfile must be RuntimeDefault",
    ),
    (
        "worker runs as root",
        lambda d: main_container(d, "worker")["securityContext"].update(runAsUser=0),
        "runAsUser must be 10001",
    ),
    ("pod on the host network", lambda d: pod_of(d, "api").update(hostNetwork=True), "hostNetwork is set"),
    (
        "unmasked /proc",
        lambda d: main_container(d, "worker")["securityContext"].update(procMount="Unmasked"),
        "procMount Unmasked",
    ),
    (
        "unsafe sysctl",
        lambda d: pod_of(d, "api")["securityContext"].update(
            sysctls=[{"name": "kernel.core_pattern", "value": "|/tmp/x"}]
        ),
        "sysctls kernel.core_pattern is not a safe sysctl",
    ),
    (
        "shared process namespace",
        lambda d: pod_of(d, "api").update(shareProcessNamespace=True),
        "shareProcessNamespace is set",
    ),
    (
        "AppArmor unconfined",
        lambda d: init_container(d, "worker")["securityContext"].update(
            appArmorProfile={"type": "Unconfined"}
        ),
        "appArmorProfile is Unconfined",
    ),
    (
        "AppArmor unconfined by the older annotation",
        lambda d: by(d, "Deployment", component="api")["spec"]["template"]["metadata"]
        .setdefault("annotations", {})
        .update({"container.apparmor.security.beta.kubernetes.io/tessera": "unconfined"}),
        "container.apparmor.security.beta.kubernetes.io/tessera: unconfined",
    ),
    (
        "pod-level AppArmor unconfined",
        lambda d: pod_of(d, "migration")["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
        "pod securityContext.appArmorProfile is Unconfined",
    ),
    (
        "pod without a pod-level runAsNonRoot",
        lambda d: pod_of(d, "migration")["securityContext"].pop("runAsNonRoot"),
        "pod securityContext.runAsNonRoot",
    ),
    (
        "service account token mounted",
        lambda d: pod_of(d, "worker").update(automountServiceAccountToken=True),
        "automountServiceAccountToken must be false",
    ),
    (
        "Service links in the environment",
        lambda d: pod_of(d, "api").pop("enableServiceLinks"),
        "enableServiceLinks must be false",
    ),
    (
        "hostPath volume",
        lambda d: pod_of(d, "api")["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "hostPath",
    ),
    (
        "emptyDir without a size limit",
        lambda d: next(v for v in pod_of(d, "worker")["volumes"] if v["name"] == "tmp")["emptyDir"].pop(
            "sizeLimit"
        ),
        "emptyDir without sizeLimit",
    ),
    (
        "image :latest",
        lambda d: main_container(d, "api").update(image="registry.example.com/tessera:latest"),
        "is :latest",
    ),
    (
        "API without a memory limit",
        lambda d: main_container(d, "api")["resources"]["limits"].pop("memory"),
        "resources.limits.memory is not set",
    ),
    (
        "init container without a CPU request",
        lambda d: init_container(d, "api")["resources"]["requests"].pop("cpu"),
        "resources.requests.cpu is not set",
    ),
    (
        "CPU limit on the API",
        lambda d: main_container(d, "api")["resources"]["limits"].update(cpu="1"),
        "CPU limit on the API",
    ),
    (
        "API grace period shorter than preStop + shutdown grace",
        lambda d: pod_of(d, "api").update(terminationGracePeriodSeconds=30),
        "terminationGracePeriodSeconds 30 <",
    ),
    (
        "API grace period without the margin for the final usage flush",
        lambda d: pod_of(d, "api").update(terminationGracePeriodSeconds=43),
        "terminationGracePeriodSeconds 43 <",
    ),
    (
        "shutdown grace raised without the grace period",
        lambda d: config_map(d).update(TESSERA__SERVER__SHUTDOWN_GRACE_SECONDS="60"),
        "server.shutdown_grace_seconds 60",
    ),
    (
        "drain raised without the grace period",
        lambda d: config_map(d).update(TESSERA__SERVER__DRAIN_SECONDS="20"),
        "server.drain_seconds 20",
    ),
    (
        "API checks hidden behind command:",
        lambda d: (
            main_container(d, "api").update(command=["/usr/local/bin/tessera"]),
            main_container(d, "api")["resources"]["limits"].update(cpu="1"),
        ),
        "CPU limit on the API",
    ),
    (
        "worker checks hidden behind command:",
        lambda d: (
            main_container(d, "worker").update(command=["/usr/local/bin/tessera"]),
            pod_of(d, "worker").update(terminationGracePeriodSeconds=30),
        ),
        "a worker takes up to 60 s",
    ),
    ("API without preStop", lambda d: main_container(d, "api").pop("lifecycle"), "no preStop sleep"),
    (
        "API preStop sleeping through exec",
        lambda d: main_container(d, "api")["lifecycle"].update(
            preStop={"exec": {"command": ["sleep", "10"]}}
        ),
        "preStop must be the native sleep action, not exec",
    ),
    (
        "worker grace period shorter than the hand-back",
        lambda d: pod_of(d, "worker").update(terminationGracePeriodSeconds=30),
        "a worker takes up to 60 s",
    ),
    (
        "memory budget above the memory limit",
        lambda d: set_env(main_container(d, "api"), "TESSERA__INFERENCE__MEMORY_BUDGET_BYTES", "4294967296"),
        "inference.memory_budget_bytes 4294967296",
    ),
    (
        "API without readiness probe",
        lambda d: main_container(d, "api").pop("readinessProbe"),
        "readinessProbe must GET /readyz",
    ),
    (
        "worker without liveness probe",
        lambda d: main_container(d, "worker").pop("livenessProbe"),
        "livenessProbe must GET /healthz",
    ),
    (
        "API migrating on start",
        lambda d: config_map(d).update(TESSERA__DATABASE__MIGRATE_ON_START="true"),
        "migrate_on_start must be false",
    ),
    (
        "API running job workers",
        lambda d: set_env(main_container(d, "api"), "TESSERA__JOBS__WORKERS", "1"),
        "jobs.workers must be 0",
    ),
    ("API not waiting for migrations", lambda d: pod_of(d, "api").pop("initContainers"), "migrate --check"),
    (
        "secret file that is not mounted",
        lambda d: _drop_item(pod_of(d, "api"), "master-keys"),
        "TESSERA__REGISTRY__MASTER_KEYS_FILE=/var/run/secrets/tessera/master-keys is not mounted",
    ),
    (
        "schema owner's password in the API pod",
        lambda d: _add_item(pod_of(d, "api"), MIGRATION_PASSWORD_KEY),
        "belongs to the migration Job only",
    ),
    (
        "schema owner's password in the worker's env",
        lambda d: main_container(d, "worker")
        .setdefault("env", [])
        .append(
            {
                "name": "TESSERA__DATABASE__MIGRATION_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "tessera-secrets", "key": MIGRATION_PASSWORD_KEY}},
            }
        ),
        f"takes {MIGRATION_PASSWORD_KEY} from Secret tessera-secrets",
    ),
    (
        "schema owner's password through a projected volume",
        lambda d: pod_of(d, "api")["volumes"].append(
            {
                "name": "owner",
                "projected": {
                    "sources": [
                        {
                            "secret": {
                                "name": "tessera-secrets",
                                "items": [{"key": MIGRATION_PASSWORD_KEY, "path": MIGRATION_PASSWORD_KEY}],
                            }
                        }
                    ]
                },
            }
        ),
        "volume owner mounts db-migration-password",
    ),
    (
        "the whole Secret as environment variables",
        lambda d: main_container(d, "api")
        .setdefault("envFrom", [])
        .append({"secretRef": {"name": "tessera-secrets"}}),
        "envFrom.secretRef tessera-secrets puts every key",
    ),
    (
        "ServiceAccount token through a projected volume",
        lambda d: pod_of(d, "worker")["volumes"].append(
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
        ),
        "projected serviceAccountToken",
    ),
    (
        "metrics listener without a token",
        lambda d: config_map(d).pop("TESSERA__TELEMETRY__METRICS_TOKEN_FILE"),
        "metrics_token is required off loopback",
    ),
    (
        "local artifact storage",
        lambda d: config_map(d).update(TESSERA__REGISTRY__STORAGE__BACKEND="local"),
        "registry.storage.backend must be s3",
    ),
    (
        "no default-deny NetworkPolicy",
        lambda d: remove(d, "NetworkPolicy", "tessera-default-deny"),
        "no NetworkPolicy with policyType Ingress",
    ),
    ("open egress", _open_egress, "without ports: egress must stay port-restricted"),
    (
        "object store moved to a port egress does not allow",
        lambda d: config_map(d).update(TESSERA__REGISTRY__STORAGE__S3_ENDPOINT="https://s3.example.com:9443"),
        "no egress to port 9443",
    ),
    (
        "metrics port open to everyone",
        lambda d: by(d, "NetworkPolicy", "tessera-metrics-ingress")["spec"]["ingress"][0].pop("from"),
        "metrics port 9464 open to every peer",
    ),
    (
        "metrics port open to every namespace",
        lambda d: by(d, "NetworkPolicy", "tessera-metrics-ingress")["spec"]["ingress"][0].update(
            {"from": [{"namespaceSelector": {}}]}
        ),
        "metrics port 9464 open to every namespace",
    ),
    (
        "metrics port open to every address",
        lambda d: by(d, "NetworkPolicy", "tessera-metrics-ingress")["spec"]["ingress"][0].update(
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
        ),
        "metrics port 9464 open to every address",
    ),
    (
        "metrics port opened by name, to everyone",
        lambda d: _open_ingress(d, {"port": "metrics", "protocol": "TCP"}),
        "metrics port 9464 open to every peer",
    ),
    (
        "metrics port inside an open port range",
        lambda d: _open_ingress(d, {"port": 8080, "endPort": 9999, "protocol": "TCP"}),
        "metrics port 9464 open to every peer",
    ),
    (
        "unverified TLS to Postgres in production",
        lambda d: _production(d)
        and config_map(d).update(
            TESSERA__DATABASE__URL=config_map(d)["TESSERA__DATABASE__URL"].replace(
                "sslmode=verify-full", "sslmode=require"
            )
        ),
        "database.url sslmode=require: production must verify",
    ),
    (
        "no sslmode for the migrations in production",
        lambda d: _production(d)
        and config_map(d).update(
            TESSERA__DATABASE__MIGRATION_URL=config_map(d)["TESSERA__DATABASE__MIGRATION_URL"].split("?")[0]
        ),
        "database.migration_url sslmode=absent (prefer)",
    ),
    (
        "Postgres CA not mounted in the workers' init container",
        lambda d: _production(d)
        and init_container(d, "worker").update(
            volumeMounts=[
                m
                for m in init_container(d, "worker")["volumeMounts"]
                if m["mountPath"] != "/var/run/secrets/tessera-ca"
            ]
        ),
        "sslrootcert /var/run/secrets/tessera-ca/ca.crt is not mounted",
    ),
    (
        "API port open to every peer",
        lambda d: by(d, "NetworkPolicy", "tessera-api-ingress")["spec"]["ingress"][0].pop("from"),
        "API port 8080 open to every peer",
    ),
    (
        "API port open to every namespace",
        lambda d: by(d, "NetworkPolicy", "tessera-api-ingress")["spec"]["ingress"][0].update(
            {"from": [{"namespaceSelector": {}}]}
        ),
        "API port 8080 open to every namespace",
    ),
    (
        "API port open to every pod of the namespace",
        lambda d: by(d, "NetworkPolicy", "tessera-api-ingress")["spec"]["ingress"][0].update(
            {"from": [{"podSelector": {}}]}
        ),
        "API port 8080 open to every pod of the namespace",
    ),
    (
        "API port open to every address",
        lambda d: by(d, "NetworkPolicy", "tessera-api-ingress")["spec"]["ingress"][0].update(
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
        ),
        "API port 8080 open to every address",
    ),
    (
        "API port opened by name in a policy of its own",
        lambda d: _open_ingress(d, {"port": "http", "protocol": "TCP"}),
        "API port 8080 open to every peer",
    ),
    (
        "no trusted proxies in production",
        lambda d: _production(d) and config_map(d).pop("TESSERA__SERVER__TRUSTED_PROXIES"),
        "server.trusted_proxies is not set",
    ),
    (
        "every address trusted as a proxy",
        lambda d: config_map(d).update(TESSERA__SERVER__TRUSTED_PROXIES="10.0.0.0/8, 0.0.0.0/0"),
        "server.trusted_proxies 0.0.0.0/0 trusts every address",
    ),
    (
        "Postgres egress to every address",
        lambda d: _egress_rule(d, 1).pop("to"),
        "egress rule 1 (ports 5432) has no `to:`",
    ),
    (
        "DNS to any resolver",
        lambda d: _egress_rule(d, 0).pop("to"),
        "egress rule 0: DNS only to kube-dns",
    ),
    (
        "DNS to a public resolver",
        lambda d: _egress_rule(d, 0).update(to=[{"ipBlock": {"cidr": "8.8.8.8/32"}}]),
        "egress rule 0: DNS only to kube-dns",
    ),
    (
        "DNS to pods labelled kube-dns in any namespace",
        lambda d: _egress_rule(d, 0).update(
            to=[{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
        ),
        "egress rule 0: DNS only to kube-dns",
    ),
    (
        "Redis egress to every pod of every namespace",
        lambda d: _egress_rule(d, 2).update(to=[{"namespaceSelector": {}}]),
        "egress rule 2: to every pod of every namespace",
    ),
    (
        "object store egress reaching the metadata service",
        lambda d: _egress_rule(d, 3).update(
            to=[{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]
        ),
        "egress rule 3: ipBlock 0.0.0.0/0 reaches 169.254.0.0/16",
    ),
    (
        "object store egress to a range around the metadata service",
        lambda d: _egress_rule(d, 3).update(to=[{"ipBlock": {"cidr": "169.254.0.0/15"}}]),
        "egress rule 3: ipBlock 169.254.0.0/15 reaches 169.254.0.0/16",
    ),
    (
        "egress to 0.0.0.0/0 in production",
        lambda d: _production(d)
        and _egress_rule(d, 3).update(
            to=[{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}]
        ),
        "egress rule 3: ipBlock 0.0.0.0/0 in production",
    ),
    (
        "a dependency left at the base's placeholder",
        lambda d: _egress_rule(d, 2).update(to=[{"ipBlock": {"cidr": "203.0.113.0/24"}}]),
        "egress rule 2: ipBlock 203.0.113.0/24 is the base's placeholder",
    ),
    (
        "egress to every port",
        lambda d: by(d, "NetworkPolicy", "tessera-egress")["spec"]["egress"][1]["ports"].append(
            {"protocol": "TCP", "port": 1, "endPort": 65535}
        ),
        "port range 1-65535",
    ),
    (
        "no PodDisruptionBudget for the workers",
        lambda d: remove(d, "PodDisruptionBudget", "tessera-worker"),
        "no PodDisruptionBudget selects its pods",
    ),
    (
        "no HPA for the API",
        lambda d: remove(d, "HorizontalPodAutoscaler", "tessera-api"),
        "needs exactly one autoscaler",
    ),
    ("two autoscalers for the workers", _second_worker_autoscaler, "needs exactly one autoscaler"),
    (
        "workers' HPA on another metric",
        lambda d: by(d, "HorizontalPodAutoscaler", "tessera-worker")["spec"]["metrics"][0]["external"][
            "metric"
        ].update(name="queue"),
        "External metric tessera_jobs_backlog",
    ),
    (
        "new release, same Job name",
        lambda d: _retag(d, "0.2.0"),
        "does not carry its image's release (0-2-0)",
    ),
    (
        "Job without its Argo CD hook",
        lambda d: by(d, "Job", component="migration")["metadata"]["annotations"].pop(
            "argocd.argoproj.io/hook"
        ),
        "argocd.argoproj.io/hook",
    ),
    (
        "Service targeting a port no pod has",
        lambda d: by(d, "Service", "tessera-api")["spec"]["ports"][0].update(targetPort="web"),
        "targetPort web",
    ),
    (
        "Namespace without Pod Security Admission",
        lambda d: labels_of(by(d, "Namespace")).pop("pod-security.kubernetes.io/enforce"),
        "enforce must be restricted",
    ),
    (
        "a Secret rendered from the repository",
        lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tessera-secrets"}}),
        "a Secret in the manifests",
    ),
    (
        "a kind nothing checks",
        lambda d: d.append({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"}}),
        "has no checks here",
    ),
    (
        "ServiceMonitor on a port the Services lack",
        lambda d: by(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="prometheus"),
        "no port named 'prometheus'",
    ),
    (
        "ServiceMonitor without the metrics token",
        lambda d: by(d, "ServiceMonitor")["spec"]["endpoints"][0].pop("authorization"),
        "no bearer token",
    ),
    (
        "ServiceMonitor with a misspelt field",
        lambda d: by(d, "ServiceMonitor")["spec"]["endpoints"][0].update(intervall="30s"),
        "unknown field intervall",
    ),
    (
        "ServiceMonitor token from the Secret with the master keys",
        lambda d: by(d, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"].update(
            credentials={"name": APP_SECRET, "key": "metrics-token"}
        ),
        f"reads {APP_SECRET}/metrics-token",
    ),
    (
        "ServiceMonitor basic auth from the Secret with the master keys",
        lambda d: by(d, "ServiceMonitor")["spec"]["endpoints"][0].update(
            basicAuth={
                "username": {"name": APP_SECRET, "key": "user"},
                "password": {"name": APP_SECRET, "key": "pw"},
            }
        ),
        f"reads {APP_SECRET}/pw",
    ),
    (
        "KEDA reading the Secret with the master keys",
        lambda d: by(d, "TriggerAuthentication")["spec"]["secretTargetRef"][0].update(
            name=APP_SECRET, key="redis-password"
        ),
        f"secretTargetRef password reads {APP_SECRET}",
    ),
    (
        "ScaledObject on another stream",
        lambda d: by(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(stream="jobs"),
        "is not Tessera's job stream",
    ),
    (
        "ScaledObject counting pending entries",
        lambda d: by(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(consumerGroup="workers"),
        "KEDA counts pending entries",
    ),
    (
        "ScaledObject metadata that is not a string",
        lambda d: by(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(streamLength=1),
        "must be a string",
    ),
    (
        "ScaledObject without its TriggerAuthentication",
        lambda d: remove(d, "TriggerAuthentication", "tessera-redis"),
        "authenticationRef tessera-redis is not in the manifests",
    ),
]


def self_test(paths: list[Path]) -> int:
    failures = []
    applied = {name: 0 for name, _, _ in MUTATIONS}
    for path in paths:
        original = load_docs(path)
        errors, _ = check(copy.deepcopy(original))
        if errors:
            failures.append(f"{path.name}: the unbroken rendering fails: {errors[:3]}")
            continue
        for name, mutate, expected in MUTATIONS:
            docs = copy.deepcopy(original)
            try:
                mutate(docs)
            except (LookupError, StopIteration):
                continue
            applied[name] += 1
            errors, _ = check(docs)
            if not any(expected in e for e in errors):
                failures.append(f"{path.name}: {name}: not caught (expected {expected!r}; got {errors[:3]})")
    for name, count in applied.items():
        if count == 0 and not failures:
            failures.append(f"{name}: applies to none of {', '.join(p.name for p in paths)}")
    for failure in failures:
        print(f"SELF-TEST FAIL {failure}")
    caught = sum(applied.values())
    print(
        f"check_manifests self-test: {len(MUTATIONS)} kinds of breakage, {caught} broken copies, "
        f"{'all caught' if not failures else f'{len(failures)} problems'}"
    )
    return 1 if failures else 0


def normalized(value):
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if v != {} or k != "annotations"}
    if isinstance(value, list):
        items = [normalized(v) for v in value]
        if items and all(isinstance(v, dict) and "name" in v for v in items):
            items.sort(key=lambda v: str(v["name"]))
        return items
    if isinstance(value, str):
        return re.sub(r"^(tessera-config)-[a-z0-9]{10}$", r"\1-<hash>", value)
    return value


def compare(a: Path, b: Path) -> int:
    def objects(path):
        return {(d.get("kind"), normalized(d["metadata"]["name"])): normalized(d) for d in load_docs(path)}

    left, right = objects(a), objects(b)
    differences = [f"only in {a.name}: {k}" for k in left.keys() - right.keys()]
    differences += [f"only in {b.name}: {k}" for k in right.keys() - left.keys()]
    differences += [f"{k[0]}/{k[1]} differs" for k in left.keys() & right.keys() if left[k] != right[k]]
    for d in sorted(differences):
        print(f"FAIL compare: {d}")
    print(
        f"check_manifests compare {a.name} {b.name}: {len(left)} objects, "
        f"{'the same' if not differences else f'{len(differences)} differences'}"
    )
    return 1 if differences else 0


def main(argv: list[str]) -> int:
    base = False
    if argv and argv[0] == "--compare" and len(argv) == 3:
        return compare(Path(argv[1]), Path(argv[2]))
    if argv and argv[0] == "--self-test":
        return self_test([Path(p) for p in argv[1:]])
    if argv and argv[0] == "--base":
        base, argv = True, argv[1:]
    if not argv:
        print(__doc__)
        return 2
    status = 0
    for p in argv:
        errors, checker = check(load_docs(Path(p)), base)
        for e in errors:
            print(f"FAIL {Path(p).name}: {e}")
        workloads = len(checker.pods())
        verdict = "OK" if not errors else f"{len(errors)} problems"
        print(
            f"check_manifests {Path(p).name}: {len(checker.docs)} objects, {workloads} workloads, "
            f"{checker.containers_checked} containers: {verdict} (Postgres connections at the "
            f"autoscalers' maxima: up to {checker.connections_at_max()})"
        )
        status |= 1 if errors else 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
