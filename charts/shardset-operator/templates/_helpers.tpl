{{/* Names and labels shared by every template. */}}

{{- define "shardset-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; the release name alone when it already holds the chart name. */}}
{{- define "shardset-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "shardset-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "shardset-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardset-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The recommended app.kubernetes.io/* labels, on every object the chart makes. */}}
{{- define "shardset-operator.labels" -}}
helm.sh/chart: {{ include "shardset-operator.chart" . }}
{{ include "shardset-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: shardset
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shardset-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shardset-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shardset-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
