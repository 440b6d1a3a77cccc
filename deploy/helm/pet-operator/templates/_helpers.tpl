{{/* The chart's name, for the app.kubernetes.io/name label (the ServiceMonitor's jobLabel: the
alerts select job="pet-operator", so keep it unless you change the rules too). */}}
{{- define "pet-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The stem of every resource name. */}}
{{- define "pet-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pet-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pet-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pet-operator.labels" -}}
{{ include "pet-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "pet-operator.subject" -}}
- {kind: ServiceAccount, name: {{ include "pet-operator.fullname" . }}, namespace: {{ .Release.Namespace }}}
{{- end -}}

{{/* Checks of values that the schema cannot express, each failing with the value and the rule. */}}
{{- define "pet-operator.validate" -}}
{{- if and (not .Values.certManager.enabled) (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount is %v but certManager.enabled is false: without cert-manager each replica makes its own self-signed CA and only the last one published is trusted, so set replicaCount=1 or certManager.enabled=true" .Values.replicaCount) -}}
{{- end -}}
{{- if and (eq .Values.watch.mode "namespaced") (not .Values.watch.namespaces) -}}
{{- fail "watch.mode is namespaced but watch.namespaces is empty: name at least one namespace, or set watch.mode=all-namespaces" -}}
{{- end -}}
{{- end -}}
