#!/usr/bin/env python3
"""Render manifests/pagefault-inspector.yaml from the Helm chart (the chart is the one source).

    .venv/bin/python scripts/render_manifests.py           # write the file
    .venv/bin/python scripts/render_manifests.py --check   # exit 1 if the file is stale

Uses the Helm engine embedded in helm-python-sdk (no helm binary needed). The chart's
defaults, release "pagefault-inspector" in namespace "pagefault-inspector", with one change:
the webhook token Secret is not rendered (`webhookToken.existingSecret`), because a rendered
random token would change on every run and a fixed one would be public. Create it before
applying:

    kubectl create namespace pagefault-inspector
    kubectl -n pagefault-inspector create secret generic pagefault-inspector-webhook \
        --from-literal=token="$(openssl rand -hex 24)"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "pagefault-inspector"
OUTPUT = ROOT / "manifests" / "pagefault-inspector.yaml"
RELEASE = "pagefault-inspector"
NAMESPACE = "pagefault-inspector"
VALUES = {"webhookToken": {"existingSecret": "pagefault-inspector-webhook"}}

# helm's install order for the kinds the chart renders.
KIND_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "ServiceAccount",
    "Secret",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
]

HEADER = f"""\
# pagefault-inspector: plain manifests, rendered from charts/pagefault-inspector with its
# default values by scripts/render_manifests.py. Do not edit: change the chart and re-run
#   .venv/bin/python scripts/render_manifests.py
#
# Before `kubectl apply -f`, create the webhook token Secret (not rendered here, so no token
# is published):
#   kubectl create namespace {NAMESPACE}
#   kubectl -n {NAMESPACE} create secret generic pagefault-inspector-webhook \\
#       --from-literal=token="$(openssl rand -hex 24)"
"""

NAMESPACE_DOC = f"""\
# The namespace runs a privileged, hostPID DaemonSet: Pod Security Admission must allow it.
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    pod-security.kubernetes.io/enforce: privileged
    pod-security.kubernetes.io/warn: privileged
    pod-security.kubernetes.io/audit: privileged
"""


def render() -> str:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(VALUES)
        rendered = chart.render(VALUES, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[tuple[int, str, str, str]] = []
    for source, text in rendered.items():
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in text.split("\n---\n"):
            body = doc.strip("\n")
            obj = yaml.safe_load(body)
            if not obj:
                continue
            kind = obj["kind"]
            rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
            docs.append((rank, obj["metadata"]["name"], source, body.lstrip("\n")))
    docs.sort()
    parts = [HEADER + "---\n" + NAMESPACE_DOC]
    parts += [f"# Source: {source}\n{body}\n" for _, _, source, body in docs]
    return "---\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file differs from the chart")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT.relative_to(ROOT)} is stale: run scripts/render_manifests.py\n")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    sys.stdout.write(f"wrote {OUTPUT.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
