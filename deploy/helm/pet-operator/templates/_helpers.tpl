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

{{/* Where the webhook's serving certificate comes from: cert-manager, secret (webhookTLS.existingSecret)
or operator (self-signed at start). */}}
{{- define "pet-operator.certSource" -}}
{{- if .Values.certManager.enabled -}}cert-manager
{{- else if (.Values.webhookTLS | default dict).existingSecret -}}secret
{{- else -}}operator
{{- end -}}
{{- end -}}

{{/* The Secret mounted at /etc/pet-operator/webhook (cert-manager's, or yours). */}}
{{- define "pet-operator.tlsSecret" -}}
{{- if .Values.certManager.enabled -}}{{ include "pet-operator.fullname" . }}-webhook-tls
{{- else -}}{{ .Values.webhookTLS.existingSecret }}
{{- end -}}
{{- end -}}

{{/* Checks of values that the schema cannot express, each failing with the value and the rule. */}}
{{- define "pet-operator.validate" -}}
{{- $tls := .Values.webhookTLS | default dict -}}
{{- if and .Values.certManager.enabled $tls.existingSecret -}}
{{- fail (printf "webhookTLS.existingSecret is %q but certManager.enabled is true: the certificate comes from one source, so set certManager.enabled=false to use your Secret, or leave webhookTLS.existingSecret empty" $tls.existingSecret) -}}
{{- end -}}
{{- if and $tls.existingSecret (not $tls.caBundle) -}}
{{- fail (printf "webhookTLS.existingSecret is %q but webhookTLS.caBundle is empty: the API server needs the CA that signed the Secret's certificate, so set webhookTLS.caBundle to base64 of its PEM" $tls.existingSecret) -}}
{{- end -}}
{{- if and $tls.caBundle (not $tls.existingSecret) -}}
{{- fail "webhookTLS.caBundle is set but webhookTLS.existingSecret is empty: a caBundle is used only with your own Secret, so name the Secret or leave webhookTLS.caBundle empty" -}}
{{- end -}}
{{- if and (eq (include "pet-operator.certSource" .) "operator") (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount is %v but certManager.enabled is false and webhookTLS.existingSecret is empty: the operator then makes its own self-signed CA in each replica and only the last one published is trusted, so set replicaCount=1, certManager.enabled=true, or webhookTLS.existingSecret and webhookTLS.caBundle" .Values.replicaCount) -}}
{{- end -}}
{{- if and (eq .Values.watch.mode "namespaced") (not .Values.watch.namespaces) -}}
{{- fail "watch.mode is namespaced but watch.namespaces is empty: name at least one namespace, or set watch.mode=all-namespaces" -}}
{{- end -}}
{{- end -}}
