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

{{/*
livestream.maxConnections as an integer: the number of slots, each held by one replica.
*/}}
{{- define "livestream-bridge.maxConnections" -}}
{{- int .Values.livestream.maxConnections }}
{{- end }}

{{/*
Replicas: replicaCount, or by default one per slot plus one standby for the set (2 for
maxConnections 1, as before slots existed).
*/}}
{{- define "livestream-bridge.replicaCount" -}}
{{- if kindIs "invalid" .Values.replicaCount }}
{{- add1 (include "livestream-bridge.maxConnections" . | int) }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Lease of slot i (kubernetes backend): slot 0 keeps the plain name, slot i >= 1 appends
"-<i>", as the bridge names them. Called with (list $ i).
*/}}
{{- define "livestream-bridge.slotLeaseName" -}}
{{- $root := index . 0 }}
{{- $slot := index . 1 | int }}
{{- $base := include "livestream-bridge.leaseName" $root }}
{{- if eq $slot 0 }}{{ $base }}{{ else }}{{ printf "%s-%d" $base $slot }}{{ end }}
{{- end }}

{{/*
Lease names of the slots this release may hold (maxConnections of them), as a JSON list.
*/}}
{{- define "livestream-bridge.heldLeaseNames" -}}
{{- $names := list }}
{{- range $i := until (include "livestream-bridge.maxConnections" . | int) }}
{{- $names = append $names (include "livestream-bridge.slotLeaseName" (list $ $i)) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
Lease names of the slots above maxConnections, up to Live Stream's limit of 8, as a JSON
list: the bridge only reads them, to see that nobody holds a slot with another
maxConnections before it connects.
*/}}
{{- define "livestream-bridge.otherLeaseNames" -}}
{{- $names := list }}
{{- range $i := untilStep (include "livestream-bridge.maxConnections" . | int) 8 1 }}
{{- $names = append $names (include "livestream-bridge.slotLeaseName" (list $ $i)) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
The PodDisruptionBudget's one limit, as a YAML line. An explicit minAvailable or
maxUnavailable wins. Otherwise, with several slots and at least one standby, every slot
keeps a holder (minAvailable: maxConnections); with one slot, or no standby to hand a slot
to, one pod at a time (minAvailable would then equal the replicas and block every drain).
*/}}
{{- define "livestream-bridge.pdbLimit" -}}
{{- $pdb := .Values.podDisruptionBudget }}
{{- $n := include "livestream-bridge.maxConnections" . | int }}
{{- $replicas := include "livestream-bridge.replicaCount" . | int }}
{{- if not (kindIs "invalid" $pdb.minAvailable) }}
{{- printf "minAvailable: %s" (toJson $pdb.minAvailable) }}
{{- else if not (kindIs "invalid" $pdb.maxUnavailable) }}
{{- printf "maxUnavailable: %s" (toJson $pdb.maxUnavailable) }}
{{- else if and (gt $n 1) (gt $replicas $n) }}
{{- printf "minAvailable: %d" $n }}
{{- else }}
{{- print "maxUnavailable: 1" }}
{{- end }}
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
{{- if and (eq .Values.election.backend "none") (gt (include "livestream-bridge.replicaCount" . | int) 1) }}
{{- fail "election.backend=none runs a single instance: set replicaCount to 1 (two replicas would both hold a Live Stream connection)" }}
{{- end }}
{{- if and (eq .Values.election.backend "none") (gt (include "livestream-bridge.maxConnections" . | int) 1) }}
{{- fail "election.backend=none runs a single instance, which holds one slot: set livestream.maxConnections to 1 (Adobe would send the other connections' share of the hits to nobody), or use the kafka or kubernetes election" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
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
