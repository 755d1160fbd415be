{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "pagefault-inspector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, with the chart name appended unless the release name holds it.
*/}}
{{- define "pagefault-inspector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pagefault-inspector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a DaemonSet's selector is immutable). The app finds
its peers with the same labels (PFI_PEER_LABEL_SELECTOR).
*/}}
{{- define "pagefault-inspector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagefault-inspector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The selector labels as a label selector string: "k=v,k2=v2".
*/}}
{{- define "pagefault-inspector.selectorString" -}}
{{- $parts := list }}
{{- range $k, $v := include "pagefault-inspector.selectorLabels" . | fromYaml }}
{{- $parts = append $parts (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $parts }}
{{- end }}

{{- define "pagefault-inspector.labels" -}}
helm.sh/chart: {{ include "pagefault-inspector.chart" . }}
{{ include "pagefault-inspector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pagefault-inspector
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pagefault-inspector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagefault-inspector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagefault-inspector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the webhook token, in the release namespace.
*/}}
{{- define "pagefault-inspector.tokenSecretName" -}}
{{- default (printf "%s-webhook" (include "pagefault-inspector.fullname" .)) .Values.webhookToken.existingSecret }}
{{- end }}

{{/*
The Secret the AlertmanagerConfig reads the token from, in its own namespace: the release's
Secret when both are in the same namespace, else a copy (or a user-made one with existingSecret).
*/}}
{{- define "pagefault-inspector.alertmanagerSecretName" -}}
{{- if eq .Values.alertmanagerConfig.namespace .Release.Namespace }}
{{- include "pagefault-inspector.tokenSecretName" . }}
{{- else if .Values.webhookToken.existingSecret }}
{{- default .Values.webhookToken.existingSecret .Values.alertmanagerConfig.existingSecret }}
{{- else }}
{{- printf "%s-alertmanager" (include "pagefault-inspector.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The in-cluster URL of the webhook.
*/}}
{{- define "pagefault-inspector.webhookUrl" -}}
{{- printf "http://%s.%s.svc.%s:%v/api/v1/alerts" (include "pagefault-inspector.fullname" .) .Release.Namespace .Values.clusterDomain .Values.service.port }}
{{- end }}

{{/*
The webhook token the chart's Secret holds, base64-encoded; empty with webhookToken.existingSecret
(the chart is not given the token then). Decided once per render and remembered, so the Secret,
its copy for the AlertmanagerConfig and the pods' checksum/token annotation agree: a fixed
webhookToken.value; else the token stored in the release's Secret (`lookup`, so upgrades keep
it); else 40 new random characters. (`helm template` and --dry-run cannot look up.)
*/}}
{{- define "pagefault-inspector.tokenB64" -}}
{{- if not .Values.webhookToken.existingSecret }}
{{- $memo := .Release }}
{{- if not (hasKey $memo "pfiTokenB64") }}
{{- $token := "" }}
{{- if .Values.webhookToken.value }}
{{- $token = .Values.webhookToken.value | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "pagefault-inspector.tokenSecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data .Values.webhookToken.key) }}
{{- $token = index $existing.data .Values.webhookToken.key }}
{{- else }}
{{- $token = randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}
{{- $_ := set $memo "pfiTokenB64" $token }}
{{- end }}
{{- index $memo "pfiTokenB64" }}
{{- end }}
{{- end }}
