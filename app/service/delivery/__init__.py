"""Reports out: the sinks (Slack, webhook, Alertmanager, Kubernetes Events) and their retries."""
