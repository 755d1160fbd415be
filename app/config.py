"""Settings, read from `PFI_` environment variables (the Helm chart sets the same names).

Grouped by the part of the code that reads them: `settings.tracing` for the tracer backends,
`settings.kubelet` for the kubelet client, `settings.delivery` for the sinks, and so on; each part is
handed its group only. A field keeps its flat name inside its group, so `foo_bar` is still `PFI_FOO_BAR`
(each group is a BaseSettings with the prefix PFI_ that reads its own names; unknown PFI_ names are
ignored). Every field says what it holds, its unit, and why the default is what it is
(tests/test_settings.py checks that none is left undescribed).

Construction shorthand: `Settings(tracer="procfs", node_name="node-a")` takes the fields by their flat
names and hands each to its group (the environment fills the rest, as before); `settings.updated(...)`
is the same for a copy. Reads always go through the group: `settings.tracing.tracer`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# node-exporter's node-mixin: NodeMemoryMajorPagesFaults fires on
# rate(node_vmstat_pgmajfault{job="node-exporter"}[5m]) > 500 for 15m (memoryMajorPagesFaultsThreshold: 500).
ALERT_MAJOR_FAULTS_PER_SECOND = 500.0

API_PORT = 8080  # the webhook and JSON API's port when PFI_LISTEN_ADDRESS names none
UI_PORT = 8081  # the report pages' port when PFI_UI_LISTEN_ADDRESS names none

# The tracer backends' names, in the order "auto" tries them (exact major faults first, estimates
# last). Written out here so that the settings need not import the backends (which import the
# settings); app.tracers.registry refuses to load when its backends' names differ from these.
TRACER_NAMES: tuple[str, ...] = ("perf-major", "bpftrace-major", "bpftrace-kprobe", "perf-tracepoint", "procfs")
TRACER_AUTO = "auto"  # the first backend of TRACER_NAMES that works here
TRACER_CHOICES: tuple[str, ...] = (TRACER_AUTO, *TRACER_NAMES)  # what PFI_TRACER and --tracer accept


class _Group(BaseSettings):
    """One part's settings, each field read from PFI_<FIELD> (the names the chart and README use)."""

    model_config = SettingsConfigDict(env_prefix="PFI_", extra="ignore")


class NodeSettings(_Group):
    """This node: its name and addresses, and where its kernel files are mounted (procfs, cgroup, sysfs)."""

    node_name: str = Field(
        default_factory=socket.gethostname,
        description="This node's name, as Kubernetes knows it: reports carry it, and alerts naming it are"
        " investigated here. Default: the hostname (the chart sets spec.nodeName).",
    )
    node_ip: str | None = Field(
        default=None,
        description="This node's addresses, comma-separated (the chart sets status.hostIP): alerts whose"
        " `instance` label is one of them are for this node. None: the addresses the hostname resolves to.",
    )
    proc_root: Path = Field(
        default=Path("/proc"),
        description="Where procfs is mounted. /proc: with hostPID the pod's own /proc lists the node's"
        " processes; tests point it at captured trees.",
    )
    cgroup_root: Path = Field(
        default=Path("/sys/fs/cgroup"),
        description="Where the node's cgroup filesystem is mounted. /sys/fs/cgroup on the host; a"
        " container sees only its own cgroup there, so the chart mounts the host's at /host/sys/fs/cgroup.",
    )
    sysfs_root: Path = Field(
        default=Path("/sys"),
        description="Where sysfs is mounted: CPUs online (to size bpftrace's per-CPU maps), BTF and the"
        " kernel lockdown mode. /sys on the host and in the pod (the chart mounts what it needs).",
    )


class TracingSettings(_Group):
    """The tracer backends: which one, their binaries, tracefs, their bounds and deadlines."""

    tracer: str = Field(
        default="auto",
        description="Tracer backend: 'auto' (the first of TRACER_NAMES that works here,"
        " exact major faults first) or one backend's name, tried first with the others as fallback.",
    )
    tracefs_root: Path = Field(
        default=Path("/sys/kernel/tracing"),
        description="Where tracefs is mounted (tracepoint formats for perf-tracepoint and bpftrace-kprobe)."
        " /sys/kernel/tracing is the kernel's own mount point since 4.1.",
    )
    perf_path: str = Field(
        default="perf",
        description="The perf binary: a path, or a name looked up on PATH (the image installs Debian's"
        " linux-perf).",
    )
    bpftrace_path: str = Field(
        default="bpftrace",
        description="The bpftrace binary: a path, or a name looked up on PATH (the image installs"
        " Debian's bpftrace).",
    )
    tracer_max_output_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes a tracer may write (perf.data, perf script or bpftrace output); past it"
        " the window is cut short and the report says so. 256 MiB: perf-major writes about 54 MiB per"
        " million faults, so this holds a 30 s window at over 150,000 faults/s.",
    )
    tracer_max_pages: int = Field(
        default=262_144,
        ge=4096,
        description="Most distinct (pid, page) keys a tracer keeps (also bpftrace's map size); faults on"
        " further pages are counted as dropped. 262,144 pages of 4 KiB is 1 GiB of distinct faulting"
        " memory, at a few tens of MiB of memory for the counts.",
    )
    tracer_exit_grace_seconds: float = Field(
        default=60.0, ge=5, le=3600,
        description="bpftrace programs exit by themselves this many seconds after their window, even if"
        " nobody stops them (the inspector was SIGKILLed). 60: far past any normal hand-over, short"
        " enough that a forgotten probe costs little.",
    )
    exact_max_rate: int = Field(
        default=4000,
        ge=0,
        description="Major faults a second on the whole node above which the automatic choice (tracer"
        " 'auto') records one fault in N with perf-major (`perf record -c N`, N so that it records about"
        " this many a second) instead of every one; 0: always every fault. A recorded fault costs the"
        " faulting task and the inspector a microsecond or more of CPU: at 70,000 faults/s (swap-ins from"
        " zram) recording each one added 2.3-2.7 s of CPU to a 10 s investigation, one in 12-20 added"
        " 0.9-1.2 s (docs/bench.md, section 10). A sampled report says so: the processes' counts are still every fault (majflt), the"
        " sources' counts are estimates (N x samples), and limits are sized on the procfs basis. A tracer"
        " named in 'tracer' always records every fault.",
    )
    perf_start_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="How long perf record has to start and acknowledge 'enable' on its control pipe, in"
        " seconds; past it the backend fails and the next one is tried. 15: perf reads /proc for every"
        " task of a big node before it counts, which takes a few seconds on a busy one.",
    )
    bpftrace_start_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long bpftrace has to compile, load and attach its probes (and the probe's test"
        " load to finish), in seconds; past it the backend fails and the next one is tried. 30: about 0.3 s on an idle node, seconds on a"
        " busy one, and a slow emulated CPU (a TCG guest) takes far longer.",
    )

    @field_validator("tracer")
    @classmethod
    def _known_tracer(cls, name: str) -> str:
        if name not in TRACER_CHOICES:
            raise ValueError(f"unknown tracer {name!r}; one of {', '.join(TRACER_CHOICES)}")
        return name


class InvestigationSettings(_Group):
    """One investigation window: its length, the sampling, what is listed and what counts as noise."""

    investigation_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Length of one investigation window, in seconds. 30: long enough for a per-second"
        " series and steady rates, short enough to report while the alert is still firing.",
    )
    top: int = Field(
        default=10,
        ge=1,
        le=200,
        description="How many processes a report lists, by major faults/s. 10 fits one screen; the"
        " culprit is almost always in the first three.",
    )
    scan_full_every_seconds: int = Field(
        default=5,
        ge=1,
        le=60,
        description="During a window, every how many seconds the per-second sample reads every process's"
        " /proc/PID/stat (a full scan). In between it reads only the processes whose major faults rose in"
        " the last 3 s, and all of them at once when the node's major faults rise by more than those"
        " explain (a process woke up, started or exited). 5: about 2% of a core at 5,000 processes instead"
        " of 13-25% for a full scan every second, with the same ranks and rates; 1: a full scan every second.",
    )
    noise_floor: float = Field(
        default=ALERT_MAJOR_FAULTS_PER_SECOND / 10,
        ge=0,
        description="Major faults/s under which a window is noise, not a finding: a node under it is"
        " reported as quiet (cause 'quiet': its rate and top processes, no advice), and a process under"
        " it never gets a cause (program loads, a handful of cold reads). 50: a tenth of the 500/s at"
        " which node-mixin's NodeMemoryMajorPagesFaults fires (rate(node_vmstat_pgmajfault[5m]) > 500);"
        " set it to a tenth of your alert rule's threshold. 0: every fault counts (docs/diagnosis.md).",
    )


class KubeletSettings(_Group):
    """Pod names from this node's kubelet, and whether the API server is asked when it cannot be read."""

    kubelet_url: str | None = Field(
        default=None,
        description="This node's kubelet, e.g. https://10.0.3.7:10250; its GET /pods names the pods of"
        " processes. None: built from node_ip and kubelet_port (IPv6 bracketed), or no kubelet is asked"
        " when node_ip is unset too. The chart leaves it unset unless kubelet.url is given.",
    )
    kubelet_port: int = Field(
        default=10250,
        ge=1,
        le=65535,
        description="The kubelet's HTTPS port, used with node_ip when kubelet_url is unset: the URL is"
        " then https://[ip]:port. 10250: the kubelet's default secure port, EKS and BottleRocket included.",
    )
    kubelet_token_file: Path = Field(
        default=SERVICE_ACCOUNT_DIR / "token",
        description="File holding the bearer token sent to the kubelet. Default: the pod's projected"
        " service account token.",
    )
    kubelet_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the kubelet's serving certificate. None: the system trust"
        " store (the chart sets the cluster CA, which signs kubelet certificates on EKS).",
    )
    kubelet_insecure_skip_tls_verify: bool = Field(
        default=False,
        description="Do not verify the kubelet's certificate. Off: the token would go to whatever"
        " answers on the node IP; only for kubelets with self-signed certificates (kind, kubeadm).",
    )
    kubelet_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Overall deadline of one kubelet request (connect, TLS, headers and body), in seconds."
        " 5: the kubelet is on this node and answers in milliseconds; a hung or trickling one must not"
        " hold the report back for long.",
    )
    kubelet_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long the node's pod list (or the failure to get it) is reused, in seconds."
        " 30: about one investigation, so the kubelet is asked once per report; 0: every lookup asks.",
    )
    apiserver_fallback: bool = Field(
        default=True,
        description="Ask the API server for the node's pods (fieldSelector spec.nodeName) when the"
        " kubelet cannot be read. On: only static pods' kubelet-side UIDs are missing that way.",
    )


class ApiServerSettings(_Group):
    """How the Kubernetes API server is reached (pods, peers, owners, Events)."""

    apiserver_url: str | None = Field(
        default=None,
        description="API server base URL. None: in-cluster (KUBERNETES_SERVICE_HOST/PORT), or no API"
        " server outside a cluster.",
    )
    apiserver_token_file: Path = Field(
        default=SERVICE_ACCOUNT_DIR / "token",
        description="File holding the bearer token sent to the API server; not sent when the file is"
        " missing. Default: the pod's projected service account token.",
    )
    apiserver_ca_file: Path | None = Field(
        default=None,
        description="CA bundle of the API server. None: the service account's ca.crt when it exists,"
        " else the system trust store.",
    )
    apiserver_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Overall deadline of one API server request (connect, TLS, headers and body), in"
        " seconds. 3: a healthy API server answers these small reads in milliseconds; alerts and reports"
        " must not wait on a sick one.",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="A kubeconfig file to reach the API server from outside a cluster (its current"
        " context). None: PFI_APISERVER_URL if set, else the in-cluster service account.",
    )


class WebSettings(_Group):
    """The service's listeners (webhook/API and report pages), what the webhook accepts, links, logs and shutdown."""

    listen_address: str = Field(
        default="[::]:8080",
        description="host:port of the webhook and JSON API (POST /api/v1/alerts, /healthz, /metrics)."
        " [::]:PORT is dual stack (IPv4 too); also 0.0.0.0:PORT, :PORT, HOST:PORT, [IPv6]:PORT. All"
        " addresses: Alertmanager reaches it through the Service, on IPv4 or IPv6 pod IPs.",
    )
    ui_listen_address: str = Field(
        default="127.0.0.1:8081",
        description="host:port of the report pages. Loopback: the pages have no login, so they are"
        " reached with kubectl port-forward, never through the Service.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL put into report links (report_url, Slack). None: the UI address, i.e."
        " what kubectl port-forward reaches.",
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Open connections each listener (API, UI) holds at most; one more is answered 503"
        " and closed at once. 256: Alertmanager, the kubelet's probes, Prometheus and the peers keep a"
        " few each; 1,000 idle sockets then cost 256 descriptors, not 1,000.",
    )
    request_head_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Time a connection has to send a complete request (head and body), in seconds, from"
        " its opening or its request's first byte; then it is closed. 10: a webhook body of 1 MiB"
        " arrives in well under a second; a socket that sends nothing or half a header is not held.",
    )
    webhook_token_file: Path | None = Field(
        default=None,
        description="File holding the bearer token Alertmanager must send. None: a token is generated"
        " once into data_dir and logged where it is (the chart mounts one from a Secret).",
    )
    alertnames: str = Field(
        default="NodeMemoryMajorPagesFaults",
        description="Comma-separated alert names that start an investigation; others are ignored with"
        " the reason. Default: node-exporter's mixin alert this tool answers.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest webhook request body, in bytes; larger ones get 413. 1 MiB: hundreds of"
        " alerts at 1-2 KiB each, while bounding what one request may make the service hold.",
    )
    max_alerts_per_request: int = Field(
        default=1000,
        ge=1,
        description="Most alerts in one webhook request; more get 413. 1000: far above a real"
        " Alertmanager group, low enough to bound the work one request causes.",
    )
    shutdown_seconds: float = Field(
        default=50.0,
        gt=0,
        le=3600,
        description="SIGTERM to exit at most, in seconds, whatever still runs. 50: inside the chart's"
        " terminationGracePeriodSeconds (60), so the kubelet never needs SIGKILL.",
    )
    log_format: str = Field(
        default="text",
        pattern="^(text|json)$",
        description="`serve`'s log lines: text (control characters escaped) or json (one object a line).",
    )

    def alertname_set(self) -> set[str]:
        return {a.strip() for a in self.alertnames.split(",") if a.strip()}


class SchedulerSettings(_Group):
    """One investigation at a time per node: the queue, the stage deadline and the cooldown."""

    max_queue: int = Field(
        default=16,
        ge=1,
        description="Most alerts waiting on this node's running and queued investigations; past it an"
        " alert is ignored with 'queue full'. 16: new alerts join the open window, so a longer queue"
        " only means stale work.",
    )
    stage_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Deadline of each investigation stage after the window (resolving, diagnosing), in"
        " seconds; the window itself may run this much past its length. Past it the investigation is"
        " cancelled, and left behind with a failed report if it does not stop within 5 s.",
    )
    cooldown_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long after a report the same alert (fingerprint + startsAt) gets that report"
        " instead of a new investigation, in seconds. 600: longer than Alertmanager's default"
        " group_interval (5 min), so its re-sends and an HA pair's duplicates are not investigated again.",
    )


class StoreSettings(_Group):
    """The report store: where it is and how much it keeps."""

    data_dir: Path = Field(
        default=Path("./.pfi-data"),
        description="Directory of the report store (SQLite) and a generated webhook token. Default:"
        " under the working directory, for a first run by hand (the chart sets a hostPath so reports"
        " survive restarts).",
    )
    report_retention_count: int = Field(
        default=500,
        ge=1,
        description="Most reports kept; the oldest go first. 500: months of alerts on a noisy node at a"
        " few hundred KiB each.",
    )
    report_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Reports older than this are deleted, in days. 30: a month to look back at an"
        " incident.",
    )


class DeliverySettings(_Group):
    """The sinks a finished report is posted to, and their retries."""

    alertmanager_url: str | None = Field(
        default=None,
        description="Alertmanager to post each report to as the alert MajorPageFaultsReport"
        " (POST /api/v2/alerts). None: not posted.",
    )
    slack_webhook_url: str | None = Field(
        default=None,
        description="Slack incoming-webhook URL for the verdict and top processes. A credential: never"
        " logged. None: no Slack.",
    )
    report_webhook_url: str | None = Field(
        default=None,
        description="Any webhook receiving each whole report as JSON. None: none.",
    )
    kubernetes_events: bool = Field(
        default=False,
        description="Write a Warning Event (reason MajorPageFaults) on the Node and each culprit Pod."
        " Off: it needs RBAC to create events, which the chart grants when it turns this on.",
    )
    sink_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Tries per sink and report before giving up (the outcome goes into the report). 4:"
        " with the backoff below, a sink may be away for about 7 s.",
    )
    sink_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        le=300,
        description="Wait before the first retry of a sink, in seconds, doubled each time (1, 2, 4 s).",
    )
    sink_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Timeout of one post to a sink, in seconds. 10: Slack and Alertmanager answer in"
        " well under a second; reports are posted in the background, so a slow sink delays nothing else.",
    )


class RecorderSettings(_Group):
    """The flight recorder (the lead-up ring) and watch mode."""

    recorder_interval_seconds: float = Field(
        default=10.0, ge=0, le=300,
        description="How often, in seconds, the service reads every memory cgroup's and the node's"
        " major-fault counters into its in-memory ring; 0 turns the recorder off. 10: fine enough to see"
        " a burst start and stop, at well under 0.1% of a core on 300 containers.",
    )
    recorder_retention_seconds: float = Field(
        default=3600.0, ge=60, le=86400,
        description="How many seconds of recorded counters are kept (a fixed-size ring, at most 8,640"
        " intervals). 3600: the alert fires after 15 minutes over a 5-minute rate, so an hour covers"
        " its whole lead-up with room to spare.",
    )
    watch_threshold: float = Field(
        default=0.0, ge=0,
        description="Watch mode: node major faults per second above which the service investigates by"
        " itself, without an alert; 0: off (the default: Alertmanager's alert is the usual trigger).",
    )
    watch_for_seconds: float = Field(
        default=900.0, ge=0, le=86400,
        description="How many seconds the recorded node rate must stay above watch_threshold before"
        " watch mode investigates. 900: the node-mixin alert's own 'for: 15m'.",
    )

    @field_validator("recorder_interval_seconds")
    @classmethod
    def _recorder_interval(cls, v: float) -> float:
        if 0 < v < 0.5:
            raise ValueError("must be 0 (off) or at least 0.5 seconds")
        return v


class PeerSettings(_Group):
    """Peers: this DaemonSet's pods on the other nodes, found and asked."""

    namespace: str | None = Field(
        default=None,
        description="Namespace of this DaemonSet's pods (to find peers). None: the service account's"
        " namespace file, when there is one.",
    )
    peer_label_selector: str | None = Field(
        default=None,
        description="Label selector of this DaemonSet's pods, to find the peer on a node. None: alerts"
        " for other nodes cannot be forwarded unless static_peers lists them.",
    )
    peer_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Port of the peers' webhook receiver. 8080: the same DaemonSet listens on the same"
        " port (listen_address).",
    )
    peer_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long the peer pod list is reused, in seconds. 30: pods move rarely; one API"
        " server list per half minute at most, however many alerts arrive.",
    )
    static_peers: str | None = Field(
        default=None,
        description="Peers without an API server: 'node-b@10.0.3.8=http://10.0.3.8:8080,node-c=http://...'"
        " (node name, optional @addresses, = base URL). None: peers come from the API server.",
    )
    forward_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Timeout of forwarding an alert to the peer on its node, in seconds. 5: the peer"
        " only queues and answers 202; Alertmanager's webhook waits for this answer.",
    )
    peer_fetch_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Timeout of asking one peer for its reports for the UI, in seconds. 3: a dead peer"
        " delays the index page by at most this and is listed as unreachable.",
    )


class FleetSettings(_Group):
    """The fleet view: findings exported on /metrics, and Prometheus or a sample of peers to read them back."""

    findings_max_age_seconds: float = Field(
        default=3600.0,
        ge=60,
        le=7 * 86400,
        description="A workload's finding gauges on /metrics (pfi_finding_*) are shown while its last"
        " report is younger than this, in seconds, then go away, so a fixed node stops being counted."
        " 3600: the 'also on N other nodes' window; a storm re-alerts well inside it (cooldown 10 min).",
    )
    findings_max_workloads: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Workloads a node exports findings for, at most (its most recently reported). 20:"
        " a node rarely has more than a few culprits an hour; 20 x 5 series = 100 series a node bounds"
        " what 1,000 nodes add to Prometheus (docs/fleet.md).",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus that scrapes every inspector's /metrics (kube-prometheus-stack's,"
        " http://kube-prometheus-stack-prometheus.monitoring:9090). Set: the fleet page,"
        " /api/v1/workloads and the 'also on N other nodes' line come from one PromQL query each,"
        " not from asking every peer. None: peers are asked (a sample, fleet_peer_sample).",
    )
    prometheus_token_file: Path | None = Field(
        default=None,
        description="File holding a bearer token for Prometheus (re-read at each query; a projected"
        " service-account token rotates). None: no Authorization header (kube-prometheus-stack's"
        " Prometheus has no auth inside the cluster).",
    )
    prometheus_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed Prometheus's serving certificate, for an https:// URL."
        " None: the system's CAs.",
    )
    prometheus_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Deadline of one PromQL query, in seconds (sent as its timeout too). 5: an instant"
        " query over a few thousand series answers in milliseconds; past it the fleet says Prometheus"
        " did not answer.",
    )
    prometheus_cache_seconds: float = Field(
        default=15.0,
        ge=0,
        le=600,
        description="How long one PromQL answer is reused, in seconds. 15: about one scrape interval"
        " of kube-prometheus-stack (30 s), so a storm's reports on one node share one query.",
    )
    fleet_peer_sample: int = Field(
        default=16,
        ge=0,
        le=1000,
        description="Without prometheus_url: peers asked for the fleet view and the 'also on' line, at"
        " most (a random sample when there are more; the page says so). 16: a storm over N nodes then"
        " makes at most 16 N requests, not N^2; a small cluster is asked whole.",
    )


class Settings(BaseModel):
    """Every group; the top-level wiring (cli, demo, the service's construction, the engine's entry)
    takes this and hands each part its group."""

    model_config = ConfigDict(extra="ignore")

    node: NodeSettings = Field(default_factory=NodeSettings, description=NodeSettings.__doc__)
    tracing: TracingSettings = Field(default_factory=TracingSettings, description=TracingSettings.__doc__)
    investigation: InvestigationSettings = Field(default_factory=InvestigationSettings, description=InvestigationSettings.__doc__)
    kubelet: KubeletSettings = Field(default_factory=KubeletSettings, description=KubeletSettings.__doc__)
    apiserver: ApiServerSettings = Field(default_factory=ApiServerSettings, description=ApiServerSettings.__doc__)
    web: WebSettings = Field(default_factory=WebSettings, description=WebSettings.__doc__)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description=SchedulerSettings.__doc__)
    store: StoreSettings = Field(default_factory=StoreSettings, description=StoreSettings.__doc__)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings, description=DeliverySettings.__doc__)
    recorder: RecorderSettings = Field(default_factory=RecorderSettings, description=RecorderSettings.__doc__)
    peers: PeerSettings = Field(default_factory=PeerSettings, description=PeerSettings.__doc__)
    fleet: FleetSettings = Field(default_factory=FleetSettings, description=FleetSettings.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """The construction shorthand: flat field names go to their groups, and a group given as a
        dict is read like the environment-backed group it is (the environment fills what it lacks)."""
        if not isinstance(data, dict):
            return data
        routed: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in GROUPS:
                routed[key] = value
            elif key in FIELD_GROUP:
                flat.setdefault(FIELD_GROUP[key], {})[key] = value
            # anything else is ignored, as unknown PFI_ variables are
        for attr, values in flat.items():
            given = routed.get(attr)
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            routed[attr] = {**(given or {}), **values}
        for attr, given in routed.items():
            if isinstance(given, dict):
                routed[attr] = GROUPS[attr](**given)
        return routed

    def updated(self, **flat: Any) -> Settings:
        """A copy with some fields changed, by their flat names (as `model_copy(update=...)`, unvalidated)."""
        unknown = set(flat) - set(FIELD_GROUP)
        if unknown:
            raise KeyError(f"no such setting: {', '.join(sorted(unknown))}")
        update: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            update.setdefault(FIELD_GROUP[key], {})[key] = value
        return self.model_copy(
            update={attr: getattr(self, attr).model_copy(update=values) for attr, values in update.items()}
        )


# The groups by their attribute on Settings, and each field's group (field names are unique across groups).
GROUPS: dict[str, type[BaseSettings]] = {
    "node": NodeSettings,
    "tracing": TracingSettings,
    "investigation": InvestigationSettings,
    "kubelet": KubeletSettings,
    "apiserver": ApiServerSettings,
    "web": WebSettings,
    "scheduler": SchedulerSettings,
    "store": StoreSettings,
    "delivery": DeliverySettings,
    "recorder": RecorderSettings,
    "peers": PeerSettings,
    "fleet": FleetSettings,
}
FIELD_GROUP: dict[str, str] = {name: attr for attr, group in GROUPS.items() for name in group.model_fields}
if len(FIELD_GROUP) != sum(len(g.model_fields) for g in GROUPS.values()):
    raise RuntimeError("a setting's name is in two groups: PFI_<NAME> would be read twice")
