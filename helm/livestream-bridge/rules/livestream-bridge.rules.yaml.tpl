{{- /*
The alert rules, in Prometheus' rule-file format (the PrometheusRule's spec is exactly
this). A Helm template fragment, not plain YAML: templates/prometheusrule.yaml renders it
with tpl, and tests/test_alerts.py renders the chart and hands the result to
`promtool check rules` and `promtool test rules`, so there is one source for both.
Thresholds come from metrics.prometheusRule.alerts; docs/runbook.md has a section per
alert, named like it. Prometheus' own {{ $labels }} templating is escaped as {{`...`}}.
*/ -}}
{{- $s := include "livestream-bridge.ruleSelector" . -}}
{{- $r := include "livestream-bridge.restartSelector" . -}}
{{- $book := .Values.metrics.prometheusRule.runbookBaseUrl -}}
{{- $a := .Values.metrics.prometheusRule.alerts -}}
{{- $slots := include "livestream-bridge.maxConnections" . -}}
groups:
  - name: livestream-bridge
    rules:
      {{- with $a.noLeader }}{{ if .enabled }}
      # sum(...) is the number of replicas leading, one per slot held; below the slots
      # (livestream.maxConnections), Adobe sends some hits to a connection nobody holds.
      # absent() covers "no replica exports anything" (all pods gone), which a sum over
      # nothing would never report.
      - alert: LivestreamBridgeNoLeader
        expr: |
          (
            sum by (namespace, job) (livestream_bridge_leader{ {{- $s -}} })
            or
            0 * absent(livestream_bridge_leader{ {{- $s -}} })
          ) < {{ $slots }}
        for: {{ .for }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          {{- if eq $slots "1" }}
          summary: >-
            {{`No Live Stream bridge replica of {{ $labels.namespace }}/{{ $labels.job }} leads`}}
          description: >-
            {{`No replica has held the leadership for {{ $labels.namespace }}/{{ $labels.job }} for ` }}{{ .for }}{{`: nothing reads Live Stream, and hits wait at Adobe, which keeps them for a limited time only.`}}
          {{- else }}
          summary: >-
            {{`Only {{ $value }} of ` }}{{ $slots }}{{` Live Stream slots of {{ $labels.namespace }}/{{ $labels.job }} have a holder`}}
          description: >-
            {{`Fewer replicas than slots (` }}{{ $slots }}{{`) have held a slot for {{ $labels.namespace }}/{{ $labels.job }} for ` }}{{ .for }}{{`: nobody reads the hits Adobe sends to the unheld slots' connections, and they wait at Adobe, which keeps them for a limited time only.`}}
          {{- end }}
          runbook_url: {{ printf "%s#livestreambridgenoleader" $book }}
      {{- end }}{{ end }}
      {{- with $a.multipleLeaders }}{{ if .enabled }}
      # More replicas leading than there are slots: some slot has two holders. Summed
      # over everything but the replica's own labels.
      - alert: LivestreamBridgeMultipleLeaders
        expr: |
          sum without (instance, pod) (livestream_bridge_leader{ {{- $s -}} }) > {{ $slots }}
        for: {{ .for }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`{{ $value }} Live Stream bridge replicas lead at once in {{ $labels.namespace }}/{{ $labels.job }}`}}
          description: >-
            {{`More than ` }}{{ if eq $slots "1" }}{{`one replica reports`}}{{ else }}{{ $slots }}{{` replicas (one per slot) report`}}{{ end }}{{` livestream_bridge_leader=1 for ` }}{{ .for }}{{`. Both try to hold the Live Stream connection (expect 409s); Kafka's transactional fencing keeps the older one from committing, but the election is not doing its job.`}}
          runbook_url: {{ printf "%s#livestreambridgemultipleleaders" $book }}
      {{- end }}{{ end }}
      {{- with $a.notCommitting }}{{ if .enabled }}
      # Streaming throughout the window and nothing committed in it; the offset term waits
      # until the replica's series are older than the window, which a new one's are not.
      - alert: LivestreamBridgeNotCommitting
        expr: |
          increase(livestream_bridge_records_published_total{ {{- $s -}} }[{{ .window }}]) == 0
          and ignoring (state)
          min_over_time(livestream_bridge_upstream_state{ {{- $s -}} ,state="streaming"}[{{ .window }}]) == 1
          and ignoring (state)
          livestream_bridge_upstream_state{ {{- $s -}} ,state="streaming"} offset {{ .window }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Live Stream bridge {{ $labels.instance }} streams but commits nothing`}}
          description: >-
            {{`{{ $labels.instance }} has held an open Live Stream connection for ` }}{{ .window }}{{` and committed no record to Kafka in that time: either the stream is silent or records are stuck between the reader and Kafka.`}}
          runbook_url: {{ printf "%s#livestreambridgenotcommitting" $book }}
      {{- end }}{{ end }}
      {{- with $a.upstreamRefusals }}{{ if .enabled }}
      - alert: LivestreamBridgeUpstreamRefusals
        expr: |
          sum by (namespace, job) (
            increase(livestream_bridge_upstream_refusals_total{ {{- $s -}} ,status=~"409|5.."}[{{ .window }}])
          ) > {{ .count }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Live Stream refused {{ $value | printf "%.0f" }} connection attempts of {{ $labels.namespace }}/{{ $labels.job }}`}}
          description: >-
            {{`More than ` }}{{ .count }}{{` attempts were refused with 409 (connection slot taken) or 503/5xx (Adobe unavailable or migrating the stream) within ` }}{{ .window }}{{`. The bridge backs off by itself.`}}
          runbook_url: {{ printf "%s#livestreambridgeupstreamrefusals" $book }}
      {{- end }}{{ end }}
      {{- with $a.upstreamFatalStatus }}{{ if .enabled }}
      - alert: LivestreamBridgeUpstreamFatalStatus
        expr: |
          livestream_bridge_upstream_fatal_status{ {{- $s -}} } == 1
        for: {{ .for }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Live Stream answered {{ $labels.status }} to {{ $labels.instance }}: an operator must act`}}
          description: >-
            {{`The last answer to {{ $labels.instance }} was HTTP {{ $labels.status }}, which retrying does not fix (a setting, a permission, or the stream not enabled for the API version). The bridge's log names the cause.`}}
          runbook_url: {{ printf "%s#livestreambridgeupstreamfatalstatus" $book }}
      {{- end }}{{ end }}
      {{- with $a.freshness }}{{ if .enabled }}
      - alert: LivestreamBridgeFreshnessHigh
        expr: |
          histogram_quantile(0.95,
            sum by (namespace, job, le) (
              rate(livestream_bridge_hit_freshness_seconds_bucket{ {{- $s -}} }[{{ .window }}])
            )
          ) > {{ .seconds }}
        for: {{ .for }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Hits of {{ $labels.namespace }}/{{ $labels.job }} reach Kafka {{ $value | humanizeDuration }} after Adobe received them (p95)`}}
          description: >-
            {{`The 95th percentile of receivedTimeGMT-to-commit over ` }}{{ .window }}{{` has been above ` }}{{ .seconds }}{{` s for ` }}{{ .for }}{{`. Adobe itself documents 20 s to 5 min (about 10 min more with A4T).`}}
          runbook_url: {{ printf "%s#livestreambridgefreshnesshigh" $book }}
      {{- end }}{{ end }}
      {{- with $a.deadLetters }}{{ if .enabled }}
      - alert: LivestreamBridgeDeadLetters
        expr: |
          sum by (namespace, job) (
            rate(livestream_bridge_records_dead_lettered_total{ {{- $s -}} }[{{ .window }}])
          ) > {{ .perSecond }}
        for: {{ .for }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`{{ $labels.namespace }}/{{ $labels.job }} dead-letters {{ $value | printf "%.2f" }} records/s`}}
          description: >-
            {{`More than ` }}{{ .perSecond }}{{` records a second (averaged over ` }}{{ .window }}{{`) were malformed and went to the dead-letter topic instead of the hits topic.`}}
          runbook_url: {{ printf "%s#livestreambridgedeadletters" $book }}
      {{- end }}{{ end }}
      {{- with $a.kafkaUnreachable }}{{ if .enabled }}
      - alert: LivestreamBridgeKafkaUnreachable
        expr: |
          livestream_bridge_kafka_unreachable_seconds{ {{- $s -}} } > {{ .seconds }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Kafka has taken no data from {{ $labels.instance }} for {{ $value | humanizeDuration }}`}}
          description: >-
            {{`{{ $labels.instance }} has not been able to hand data to Kafka for more than ` }}{{ .seconds }}{{` s. Hits wait at Adobe meanwhile; past Adobe's retention they are lost.`}}
          runbook_url: {{ printf "%s#livestreambridgekafkaunreachable" $book }}
      {{- end }}{{ end }}
      {{- with $a.podRestarts }}{{ if .enabled }}
      # kube_pod_container_status_restarts_total comes from kube-state-metrics, not from the
      # bridge: without kube-state-metrics this alert never fires.
      - alert: LivestreamBridgePodRestarts
        expr: |
          increase(kube_pod_container_status_restarts_total{ {{- $r -}} }[{{ .window }}]) >= {{ .count }}
        labels:
          {{- include "livestream-bridge.alertLabels" (list $ .severity) | nindent 10 }}
        annotations:
          summary: >-
            {{`Live Stream bridge pod {{ $labels.pod }} restarted {{ $value | printf "%.0f" }} times`}}
          description: >-
            {{`Container {{ $labels.container }} of {{ $labels.namespace }}/{{ $labels.pod }} restarted at least ` }}{{ .count }}{{` times within ` }}{{ .window }}{{`. Each restart of the leader costs a reconnect and may leave a ghost connection at Adobe (409s).`}}
          runbook_url: {{ printf "%s#livestreambridgepodrestarts" $book }}
      {{- end }}{{ end }}
