{{/* The webhooks' namespaceSelector: the served namespaces (namespace mode); every namespace otherwise. */}}
{{- define "pet-operator.webhookNamespaceSelector" -}}
{{- if eq .Values.watch.mode "namespaced" }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ toJson .Values.watch.namespaces }}
{{- end }}
{{- end -}}

{{- define "pet-operator.webhookAnnotations" -}}
{{- if .Values.certManager.enabled }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "pet-operator.fullname" . }}-webhook
{{- end }}
{{- end -}}

