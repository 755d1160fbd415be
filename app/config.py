"""Settings, read from `PFI_` environment variables (the Helm chart sets the same names).

One object for the engine and the service so that a name means the same thing everywhere.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TracerName = Literal["auto", "perf-major", "perf-tracepoint", "bpftrace-major", "bpftrace-kprobe", "procfs"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PFI_", extra="ignore")

    # --- the node and where its kernel files are -------------------------------------------
    node_name: str = Field(default_factory=socket.gethostname, description="This node's name")
    node_ip: str | None = Field(default=None, description="This node's InternalIP (downward API)")
    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    tracefs_root: Path = Path("/sys/kernel/tracing")

    # --- the investigation --------------------------------------------------------------------
    tracer: TracerName = "auto"
    investigation_seconds: float = Field(default=30.0, gt=0, le=600)
    top: int = Field(default=10, ge=1, le=200)
    # Bounds on what a tracer may produce and use.
    tracer_max_output_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    tracer_max_pages: int = Field(default=262_144, ge=4096, description="distinct (pid, page) keys kept")
    perf_path: str = "perf"
    bpftrace_path: str = "bpftrace"

    # --- the kubelet and the API server ------------------------------------------------------
    kubelet_url: str | None = Field(default=None, description="e.g. https://10.0.3.7:10250")
    kubelet_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    kubelet_ca_file: Path | None = None
    kubelet_insecure_skip_tls_verify: bool = False
    kubelet_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    kubelet_cache_seconds: float = Field(default=30.0, ge=0)
    apiserver_fallback: bool = True

    # --- the service ---------------------------------------------------------------------------
    listen_address: str = "0.0.0.0:8080"
    ui_listen_address: str = "127.0.0.1:8081"
    webhook_token_file: Path | None = None
    data_dir: Path = Path("./.pfi-data")
    cooldown_seconds: float = Field(default=600.0, ge=0)
    alertnames: str = "NodeMemoryMajorPagesFaults"
    alertmanager_url: str | None = None
    slack_webhook_url: str | None = None
    report_webhook_url: str | None = None
    kubernetes_events: bool = False
    namespace: str | None = None
    peer_label_selector: str | None = Field(
        default=None, description="label selector of this DaemonSet's pods, to find the peer on a node"
    )
    peer_port: int = 8080
    public_url: str | None = Field(default=None, description="base URL put into report_url links")
    report_retention_count: int = Field(default=500, ge=1)
    report_retention_days: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_alerts_per_request: int = Field(default=1000, ge=1)
    max_queue: int = Field(default=16, ge=1)
    # Added for the service (issue 3): the API server, peers, forwarding and sinks.
    apiserver_url: str | None = Field(
        default=None, description="API server base URL; None: in-cluster (KUBERNETES_SERVICE_HOST/PORT)"
    )
    apiserver_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    apiserver_ca_file: Path | None = Field(
        default=None, description="None: the service account's ca.crt when it exists"
    )
    apiserver_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    peer_cache_seconds: float = Field(default=30.0, ge=0, description="how long the peer pod list is cached")
    static_peers: str | None = Field(
        default=None,
        description="peers without an API server: 'node-b@10.0.3.8=http://10.0.3.8:8080,node-c=http://...'",
    )
    forward_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    sink_attempts: int = Field(default=4, ge=1, le=20)
    sink_backoff_seconds: float = Field(default=1.0, ge=0, le=300, description="first retry delay, doubled each time")
    sink_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    peer_fetch_timeout_seconds: float = Field(default=3.0, gt=0, le=60, description="UI: asking peers for reports")

    def alertname_set(self) -> set[str]:
        return {a.strip() for a in self.alertnames.split(",") if a.strip()}

    # --- issue 10: deadlines, the shutdown budget, the log format ----------------------------------
    stage_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Deadline of each investigation stage after the window (resolving, diagnosing), in"
        " seconds; the window itself may run this much past its length. Past it the investigation is"
        " cancelled, and left behind with a failed report if it does not stop within 5 s.",
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
