"""Post each finished report back where the team looks.

Each sink is one small class with `name` and `async deliver(report, fleet) -> detail` that raises
SinkError on failure (`fleet`: "also on 11 other nodes: a, b, c, ..." when the workload the report
blames had reports on other nodes in the last hour, else ''; app.service.fleet.view.FleetView.also_on); `deliver_with_retry` retries it with exponential backoff (bounded attempts)
and returns the SinkResult that goes into `report.sinks`.

- Alertmanager (`PFI_ALERTMANAGER_URL`): `POST /api/v2/alerts` with one `MajorPageFaultsReport`
  alert (severity info; node + the top culprit's namespace/pod/container as labels, so the team's
  routes deliver it; a `report_id` label makes each report its own alert).
- Kubernetes Events (`PFI_KUBERNETES_EVENTS`): a Warning `MajorPageFaults` Event (Normal, on the Node
  only, when the report found the node quiet) on the Node and on
  each culprit Pod, through the API server.
- Slack incoming webhook: verdict, top 3 processes, link.
- Generic JSON webhook: the whole report document.

Secrets: the Slack URL is the credential. No URL appears in a log line, an exception or a
SinkResult; errors name the sink and the HTTP status only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from app.config import UI_PORT, DeliverySettings, WebSettings
from app.investigation.lead_up import culprit_labels, describe_lead_up
from app.investigation.recommend import verdict_text
from app.investigation.who import who_line as _who
from app.models import Cause, ProcessReport, Report, SinkResult, utcnow
from app.parsers.address import ALL_INTERFACES, AddressError, client_host, parse_listen_address
from app.service.cluster.kube import ApiServerError, AsyncApiServer
from app.service.errors import ServiceError

log = logging.getLogger(__name__)

REPORT_ALERTNAME = "MajorPageFaultsReport"
EVENT_REASON = "MajorPageFaults"
COMPONENT = "pagefault-inspector"
EVENT_MESSAGE_MAX = 1024
DESCRIPTION_MAX = 1024
MAX_EVENT_PODS = 5
ALERT_DURATION = timedelta(hours=1)


class SinkError(ServiceError):
    """A sink refused or did not answer the delivery."""


class Sink(Protocol):
    name: str

    async def deliver(self, report: Report, fleet: str = "") -> str: ...


class SinkSettings(Protocol):
    """What the sinks read: their own group, and the web group for links to a report. `app.config.Settings` is one."""

    @property
    def delivery(self) -> DeliverySettings: ...

    @property
    def web(self) -> WebSettings: ...


def report_url(web: WebSettings, report_id: str) -> str:
    """`PFI_PUBLIC_URL` when set, else the UI address (what `kubectl port-forward` reaches)."""
    base = web.public_url
    if not base:
        try:
            host, port = parse_listen_address(web.ui_listen_address, UI_PORT)
        except AddressError:  # serve refuses to start with it; a report made elsewhere names the default
            host, port = "127.0.0.1", UI_PORT
        if host in (ALL_INTERFACES, "0.0.0.0"):
            host = "127.0.0.1"  # kubectl port-forward listens there
        base = f"http://{client_host(host)}:{port}"
    return f"{base.rstrip('/')}/reports/{report_id}"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sources(p: ProcessReport, n: int = 3) -> str:
    parts = []
    for s in p.sources[:n]:
        label = s.kind.value + (f" {s.path}" if s.path else "")
        parts.append(f"{_bounded(label, 80)} {s.share:.0%}")
    return ", ".join(parts) or "no traced sources"


def describe_top(report: Report, n: int = 3, limit: int = DESCRIPTION_MAX) -> str:
    """Top processes and their sources, short: for annotations and chat."""
    lines = [
        f"{i}. {_who(p)}: {p.major_faults_per_second:,.0f} major faults/s; {_sources(p)}"
        for i, p in enumerate(report.processes[:n], 1)
    ]
    if not lines:
        lines = ["no process had major faults in the window"]
    return _bounded("\n".join(lines), limit)


def _with_fleet(summary: str, fleet: str) -> str:
    """The verdict, and where else its workload had reports: `... (also on 11 other nodes: a, b, ...)`."""
    return f"{summary} ({fleet})" if fleet else summary


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def _post(client: httpx.AsyncClient, url: str, body: Any, timeout: float, what: str) -> httpx.Response:
    try:
        resp = await client.post(url, json=body, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The URL may be the credential (Slack): never let it into a message.
        text = str(exc).replace(url, "<url>")[:200]
        raise SinkError(f"{what}: {type(exc).__name__}: {text}") from None
    if resp.status_code >= 300:
        raise SinkError(f"{what}: HTTP {resp.status_code}: {resp.text[:200].replace(url, '<url>')}")
    return resp


class AlertmanagerSink:
    name = "alertmanager"

    def __init__(self, settings: SinkSettings, client: httpx.AsyncClient) -> None:
        assert settings.delivery.alertmanager_url
        self.url = settings.delivery.alertmanager_url.rstrip("/") + "/api/v2/alerts"
        self.settings = settings
        self.client = client

    def alert(self, report: Report, fleet: str = "") -> dict[str, Any]:
        labels = {
            "alertname": REPORT_ALERTNAME,
            "severity": "info",
            "node": report.node,
            "cause": str(report.verdict.cause),
            "report_id": report.id,
        }
        top = report.processes[0] if report.processes else None
        if top is not None and top.pod is not None:
            for key, value in (
                ("namespace", top.pod.namespace),
                ("pod", top.pod.name),
                ("container", top.pod.container),
            ):
                if value:
                    labels[key] = value
        labels.update(culprit_labels(report))  # the recorder's lead-up culprit when the verdict names it
        url = report_url(self.settings.web, report.id)
        starts = report.finished_at or utcnow()
        return {
            "labels": labels,
            "annotations": {
                "summary": _bounded(_with_fleet(verdict_text(report.verdict), fleet), DESCRIPTION_MAX),
                "description": describe_top(report),
                **({"also_on": _bounded(fleet, DESCRIPTION_MAX)} if fleet else {}),
                "report_url": url,
                **({"lead_up": _bounded(lead_up, DESCRIPTION_MAX)} if (lead_up := describe_lead_up(report)) else {}),
            },
            "startsAt": _iso(starts),
            "endsAt": _iso(starts + ALERT_DURATION),
            "generatorURL": url,
        }

    async def deliver(self, report: Report, fleet: str = "") -> str:
        await _post(
            self.client, self.url, [self.alert(report, fleet)], self.settings.delivery.sink_timeout_seconds, "alertmanager"
        )
        return "MajorPageFaultsReport alert posted"


def _quiet(report: Report) -> bool:
    """A report that found the node quiet (under the noise floor, or no major faults at all)."""
    return report.verdict.cause in (Cause.QUIET, Cause.NO_MAJOR_FAULTS)


class KubeEventsSink:
    name = "kubernetes-events"

    def __init__(self, settings: SinkSettings, api: AsyncApiServer) -> None:
        self.settings = settings
        self.api = api
        self._done: dict[str, set[str]] = {}  # report id -> objects already given an event (retries)

    @staticmethod
    def targets(report: Report) -> list[tuple[str, dict[str, Any], str]]:
        """(namespace, involvedObject, message) for the Node and each culprit Pod (a quiet report blames
        no pod: the Node only)."""
        out: list[tuple[str, dict[str, Any], str]] = [
            (
                "default",
                {"apiVersion": "v1", "kind": "Node", "name": report.node, "uid": report.node},
                verdict_text(report.verdict),
            )
        ]
        if _quiet(report):
            return out
        seen: set[tuple[str, str]] = set()
        for p in report.processes:
            pod = p.pod
            if pod is None or not pod.namespace or not pod.name or p.major_faults <= 0:
                continue
            if (pod.namespace, pod.name) in seen:
                continue
            seen.add((pod.namespace, pod.name))
            obj = {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
            }
            if pod.container:
                obj["fieldPath"] = f"spec.containers{{{pod.container}}}"
            message = verdict_text(p.verdict or report.verdict)
            out.append((pod.namespace, obj, message))
            if len(seen) >= MAX_EVENT_PODS:
                break
        return out

    def event(self, report: Report, namespace: str, obj: dict[str, Any], message: str) -> dict[str, Any]:
        """An events.k8s.io/v1 Event about `obj`; `eventTime` is RFC 3339 with microseconds (MicroTime).
        The API server client only posts it (`create_event`)."""
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": f"{COMPONENT}-", "namespace": namespace},
            "eventTime": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": "Investigated",
            "reason": EVENT_REASON,
            "note": _bounded(f"{message} (report {report.id})", EVENT_MESSAGE_MAX),  # the API server takes 1024
            "type": "Normal" if _quiet(report) else "Warning",
            "regarding": obj,
            "reportingController": f"pagefault-inspector.io/{COMPONENT}",
            "reportingInstance": report.node[:128],
        }

    async def deliver(self, report: Report, fleet: str = "") -> str:
        done = self._done.setdefault(report.id, set())
        if len(self._done) > 100:
            self._done.pop(next(iter(self._done)))
        errors = []
        targets = self.targets(report)
        for namespace, obj, message in targets:
            ident = f"{obj['kind']}/{obj.get('namespace', '')}/{obj['name']}"
            if ident in done:
                continue
            try:
                await self.api.create_event(namespace, self.event(report, namespace, obj, message))
                done.add(ident)
            except ApiServerError as exc:
                errors.append(f"{ident}: {str(exc)[:200]}")
        if errors:
            raise SinkError("; ".join(errors))
        self._done.pop(report.id, None)
        return f"{len(targets)} event(s): " + ", ".join(f"{o['kind']} {o['name']}" for _, o, _ in targets)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSink:
    name = "slack"

    def __init__(self, settings: SinkSettings, client: httpx.AsyncClient) -> None:
        assert settings.delivery.slack_webhook_url
        self._url = settings.delivery.slack_webhook_url  # the secret: never logged
        self.settings = settings
        self.client = client

    def message(self, report: Report, fleet: str = "") -> dict[str, Any]:
        url = report_url(self.settings.web, report.id)
        title = f"Major page faults on {report.node}"
        summary = _slack_escape(_bounded(verdict_text(report.verdict), 1500))
        if fleet:
            summary += "\n_" + _slack_escape(_bounded(f"The same workload {fleet}", 500)) + "_"
        top = _slack_escape(describe_top(report, 3, 2500))
        return {
            # The fallback text is mrkdwn too (notifications show it): escaped like the blocks, so a
            # process named `<!channel>` is text, not a mention.
            "text": _slack_escape(f"{title}: {_bounded(report.verdict.summary, 1000)}"),
            "blocks": [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"*{_slack_escape(title)}*\n{summary}"},
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{top}```"}},
                *(
                    [{"type": "section", "text": {"type": "mrkdwn", "text": f"```{_slack_escape(lead_up)}```"}}]
                    if (lead_up := _bounded(describe_lead_up(report), 2500))
                    else []
                ),
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"<{url}|Full report> · tracer {_slack_escape(report.tracer.backend)}"
                            f" · {report.window_seconds:g}s window",
                        }
                    ],
                },
            ],
        }

    async def deliver(self, report: Report, fleet: str = "") -> str:
        await _post(self.client, self._url, self.message(report, fleet), self.settings.delivery.sink_timeout_seconds, "slack")
        return "posted"


class WebhookSink:
    name = "webhook"

    def __init__(self, settings: SinkSettings, client: httpx.AsyncClient) -> None:
        assert settings.delivery.report_webhook_url
        self._url = settings.delivery.report_webhook_url  # may carry a credential: never logged
        self.settings = settings
        self.client = client

    async def deliver(self, report: Report, fleet: str = "") -> str:
        body = report.model_dump(mode="json")
        await _post(self.client, self._url, body, self.settings.delivery.sink_timeout_seconds, "webhook")
        return "report posted"


def make_sinks(settings: SinkSettings, client: httpx.AsyncClient, api: AsyncApiServer | None) -> list[Sink]:
    sinks: list[Sink] = []
    if settings.delivery.alertmanager_url:
        sinks.append(AlertmanagerSink(settings, client))
    if settings.delivery.kubernetes_events:
        if api is None:
            log.warning("PFI_KUBERNETES_EVENTS is on but there is no API server to post Events to")
        else:
            sinks.append(KubeEventsSink(settings, api))
    if settings.delivery.slack_webhook_url:
        sinks.append(SlackSink(settings, client))
    if settings.delivery.report_webhook_url:
        sinks.append(WebhookSink(settings, client))
    return sinks


async def deliver_with_retry(
    sink: Sink,
    report: Report,
    *,
    attempts: int,
    backoff: float,
    fleet: str = "",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> SinkResult:
    """Try up to `attempts` times, waiting backoff, 2*backoff, 4*backoff... between tries."""
    detail = ""
    for attempt in range(1, attempts + 1):
        try:
            detail = await sink.deliver(report, fleet)
        except SinkError as exc:
            detail = str(exc)
            log.warning(
                "report %s: sink %s attempt %d/%d failed: %s", report.id, sink.name, attempt, attempts, detail
            )
            if attempt < attempts:
                await sleep(backoff * 2 ** (attempt - 1))
            continue
        except Exception as exc:  # a bug in a sink must not take the others down
            log.exception("report %s: sink %s crashed", report.id, sink.name)
            return SinkResult(
                sink=sink.name, ok=False, attempts=attempt, detail=type(exc).__name__, at=utcnow()
            )
        log.info("report %s: sink %s ok after %d attempt(s)", report.id, sink.name, attempt)
        return SinkResult(sink=sink.name, ok=True, attempts=attempt, detail=detail[:500], at=utcnow())
    return SinkResult(sink=sink.name, ok=False, attempts=attempts, detail=detail[:500], at=utcnow())
