{{/*
Chart name, truncated to the 63 characters a label value may hold.
*/}}
{{- define "livestream-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, plus the chart name unless the
release name already contains it. 63 characters at most (DNS label).
*/}}
{{- define "livestream-bridge.fullname" -}}
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

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "livestream-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "livestream-bridge.labels" -}}
helm.sh/chart: {{ include "livestream-bridge.chart" . }}
{{ include "livestream-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: livestream-bridge
{{- end }}

{{/*
Labels that select the release's pods (immutable in a Deployment: never add to them).
*/}}
{{- define "livestream-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livestream-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "livestream-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "livestream-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the pods mount: existingSecret, else the chart's own.
*/}}
{{- define "livestream-bridge.secretName" -}}
{{- default (include "livestream-bridge.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Secret settings the chart stores in its own Secret: file name (= variable name) -> value.
Empty values are left out, so an unset secret stays unset in the bridge.
*/}}
{{- define "livestream-bridge.secretData" -}}
{{- $data := dict }}
{{- with .Values.auth.clientSecret }}{{ $_ := set $data "BRIDGE_AUTH__CLIENT_SECRET" . }}{{ end }}
{{- with .Values.auth.accessToken }}{{ $_ := set $data "BRIDGE_AUTH__ACCESS_TOKEN" . }}{{ end }}
{{- with .Values.kafka.saslPassword }}{{ $_ := set $data "BRIDGE_KAFKA__SASL_PASSWORD" . }}{{ end }}
{{- toYaml $data }}
{{- end }}

{{/*
True (non-empty) when the pods mount a Secret at all.
*/}}
{{- define "livestream-bridge.mountsSecret" -}}
{{- if or .Values.existingSecret (ne (include "livestream-bridge.secretData" .) "{}") }}true{{ end }}
{{- end }}

{{/*
Names of the settings that are secrets: they may only arrive as files.
*/}}
{{- define "livestream-bridge.secretSettingNames" -}}
BRIDGE_AUTH__CLIENT_SECRET BRIDGE_AUTH__ACCESS_TOKEN BRIDGE_KAFKA__SASL_PASSWORD
{{- end }}

{{/*
Election defaults derived from the full name, so that two releases never share a group,
topic, lease or transactional id.
*/}}
{{- define "livestream-bridge.electionGroupId" -}}
{{- default (printf "%s-election" (include "livestream-bridge.fullname" .)) .Values.election.groupId }}
{{- end }}

{{- define "livestream-bridge.electionTopic" -}}
{{- default (printf "%s-election" (include "livestream-bridge.fullname" .)) .Values.election.topic }}
{{- end }}

{{- define "livestream-bridge.leaseName" -}}
{{- default (include "livestream-bridge.fullname" .) .Values.election.leaseName }}
{{- end }}

{{- define "livestream-bridge.transactionalId" -}}
{{- default (include "livestream-bridge.fullname" .) .Values.kafka.transactionalId }}
{{- end }}

{{/*
Image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "livestream-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Checks that rendering cannot express in the schema. Included by the Deployment.
*/}}
{{- define "livestream-bridge.validate" -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 .Values.publish.shutdownTimeoutSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed publish.shutdownTimeoutSeconds (%v), or a stopping leader is killed before it commits" .Values.terminationGracePeriodSeconds .Values.publish.shutdownTimeoutSeconds) }}
{{- end }}
{{- $secretNames := splitList " " (include "livestream-bridge.secretSettingNames" .) }}
{{- range .Values.extraEnv }}
{{- if and (has .name $secretNames) (hasKey . "value") }}
{{- fail (printf "extraEnv: %s is a secret and must not be an env literal; set it through auth.*/kafka.saslPassword or existingSecret (mounted as a file)" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.existingSecret .Values.existingSecretKeys }}
{{- range $file, $key := .Values.existingSecretKeys }}
{{- if not (has $file $secretNames) }}
{{- fail (printf "existingSecretKeys: %s is not a secret setting (one of %s)" $file (join ", " $secretNames)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq .Values.election.backend "none") (gt (int .Values.replicaCount) 1) }}
{{- fail "election.backend=none runs a single instance: set replicaCount to 1 (two replicas would both hold a Live Stream connection)" }}
{{- end }}
{{- end }}

{{/*
metrics.serviceMonitor with the deprecated top-level serviceMonitor's keys laid over it, as
YAML (read it back with fromYaml). The old spelling wins because values.yaml leaves it
empty: whatever it holds was set on purpose.
*/}}
{{- define "livestream-bridge.serviceMonitor" -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.metrics.serviceMonitor) (deepCopy (default dict .Values.serviceMonitor))) }}
{{- end }}

{{/*
PromQL label matchers of this release's bridge series: by default what the ServiceMonitor's
scrape labels them with (job is the Service's name).
*/}}
{{- define "livestream-bridge.ruleSelector" -}}
{{- default (printf "job=%q,namespace=%q" (include "livestream-bridge.fullname" .) .Release.Namespace) .Values.metrics.prometheusRule.selector }}
{{- end }}

{{/*
PromQL label matchers of this release's containers in kube-state-metrics' series: the
Deployment's pods are named <full name>-<ReplicaSet hash>-<5 characters>.
*/}}
{{- define "livestream-bridge.restartSelector" -}}
{{- default (printf "namespace=%q,pod=~%q,container=\"bridge\"" .Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]{5}" (include "livestream-bridge.fullname" .))) .Values.metrics.prometheusRule.restartSelector }}
{{- end }}

{{/*
An alert's labels: its severity and metrics.prometheusRule.alertLabels. Called with
(list $ severity).
*/}}
{{- define "livestream-bridge.alertLabels" -}}
{{- $root := index . 0 -}}
severity: {{ index . 1 | quote }}
{{- with $root.Values.metrics.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
