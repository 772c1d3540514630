{{/*
Names, labels and the pieces every Kiln pod shares. Every template here is
named `kiln.*` so that it cannot collide with a parent chart's helpers.
*/}}

{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-wide prefix of every object name (at most 63 characters). */}}
{{- define "kiln.fullname" -}}
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

{{/* The name of one component's objects: `kiln.componentName (list $ "builder")`. */}}
{{- define "kiln.componentName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $room := int (sub 62 (len $suffix)) }}
{{- printf "%s-%s" (include "kiln.fullname" $root | trunc $room | trimSuffix "-") $suffix }}
{{- end }}

{{- define "kiln.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ include "kiln.chart" . }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kiln.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kiln
{{- end }}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: `kiln.componentLabels (list $ "builder")`. */}}
{{- define "kiln.componentLabels" -}}
{{ include "kiln.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "kiln.componentSelectorLabels" -}}
{{ include "kiln.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kiln.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "kiln.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "kiln.imageTag" .) }}
{{- end }}

{{/* Secret names: the existing Secret when one is named, else the default name the operator creates. */}}
{{- define "kiln.rabbitmqSecret" -}}
{{- default (printf "%s-rabbitmq" (include "kiln.fullname" .)) .Values.rabbitmq.auth.existingSecret }}
{{- end }}

{{- define "kiln.s3Secret" -}}
{{- default (printf "%s-s3" (include "kiln.fullname" .)) .Values.s3.credentials.existingSecret }}
{{- end }}

{{- define "kiln.signingKeySecret" -}}
{{- default (printf "%s-signing-key" (include "kiln.fullname" .)) .Values.signingKey.existingSecret }}
{{- end }}

{{- define "kiln.uploadTokenSecret" -}}
{{- default (printf "%s-upload-token" (include "kiln.fullname" .)) .Values.storeGateway.uploads.existingSecret }}
{{- end }}

{{/* The store URL (no credentials: those come from AWS_* variables). */}}
{{- define "kiln.storeUrl" -}}
{{- $s3 := .Values.s3 }}
{{- $q := list }}
{{- with $s3.endpoint }}{{ $q = append $q (printf "endpoint=%s" (urlquery .)) }}{{ end }}
{{- with $s3.region }}{{ $q = append $q (printf "region=%s" (urlquery .)) }}{{ end }}
{{- with $s3.prefix }}{{ $q = append $q (printf "prefix=%s" (urlquery .)) }}{{ end }}
{{- if $s3.pathStyle }}{{ $q = append $q "path-style=true" }}{{ end }}
{{- printf "s3://%s" $s3.bucket }}{{ if $q }}?{{ join "&" $q }}{{ end }}
{{- end }}

{{/* The store gateway's in-cluster URL. */}}
{{- define "kiln.gatewayUrl" -}}
{{- printf "http://%s:%d" (include "kiln.componentName" (list . "store-gateway")) (int .Values.storeGateway.service.port) }}
{{- end }}

{{/* Whether a role runs with S3 credentials: `kiln.hasS3Credentials (list $ "builder")`. */}}
{{- define "kiln.hasS3Credentials" -}}
{{- $root := index . 0 }}
{{- if and $root.Values.s3.credentials.fromSecret (or (ne (index . 1) "builder") (eq $root.Values.builder.upload "direct")) }}true{{ end }}
{{- end }}

{{/*
The environment of a Kiln role: `kiln.env (list $ "builder")`. The AMQP URL
is assembled by the kubelet from the credentials Secret ($(VAR) expansion),
so it never appears in the pod spec, a ConfigMap or the values.
*/}}
{{- define "kiln.env" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $mq := $root.Values.rabbitmq }}
{{- if ne $role "store-gateway" }}
- name: KILN_AMQP_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "kiln.rabbitmqSecret" $root }}
      key: {{ $mq.auth.usernameKey }}
- name: KILN_AMQP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kiln.rabbitmqSecret" $root }}
      key: {{ $mq.auth.passwordKey }}
- name: KILN_AMQP_URL
  value: {{ printf "%s://$(KILN_AMQP_USERNAME):$(KILN_AMQP_PASSWORD)@%s:%d/%s" (ternary "amqps" "amqp" $mq.tls) $mq.host (int $mq.port) (urlquery $mq.vhost) | quote }}
{{- end }}
{{- if and (eq $role "builder") (eq $root.Values.builder.upload "via-coordinator") }}
- name: KILN_STORE_URL
  value: {{ include "kiln.gatewayUrl" $root | quote }}
{{- else }}
- name: KILN_STORE_URL
  valueFrom:
    configMapKeyRef:
      name: {{ include "kiln.fullname" $root }}
      key: store-url
{{- end }}
{{- if include "kiln.hasS3Credentials" (list $root $role) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "kiln.s3Secret" $root }}
      key: {{ $root.Values.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kiln.s3Secret" $root }}
      key: {{ $root.Values.s3.credentials.secretAccessKeyKey }}
{{- end }}
- name: KILN_LOG
  value: {{ $root.Values.logging.filter | quote }}
{{- end }}

{{/* Pod annotations: Prometheus scraping and a checksum that rolls pods when the ConfigMap changes. */}}
{{- define "kiln.podAnnotations" -}}
{{- $root := index . 0 }}
{{- $port := index . 1 }}
{{- $extra := index . 2 -}}
checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probes on /healthz: `kiln.probes (dict "port" "metrics")`. */}}
{{- define "kiln.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* The security context of the unprivileged roles (coordinator, evaluator, store gateway). */}}
{{- define "kiln.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling fields shared by every role: `kiln.scheduling .Values.builder`. */}}
{{- define "kiln.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* `--config` and its volume when a role has a config file: `kiln.configArgs (list $ "builder")`. */}}
{{- define "kiln.configArgs" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- if (index $root.Values $role).config -}}
- --config
- /etc/kiln/{{ $role }}.toml
{{- end }}
{{- end }}

{{- define "kiln.commonArgs" -}}
- --metrics-addr
- {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- --log-format
- {{ .Values.logging.format }}
{{- end }}
