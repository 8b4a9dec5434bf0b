{{/* Pieces of the NetworkPolicies (networkpolicies.yaml). */}}
{{- define "slm.np.pods" -}}
podSelector:
  matchLabels:
    app.kubernetes.io/name: slm-stack
    app.kubernetes.io/instance: {{ .root.Release.Name }}
    {{- if .role }}
    app.kubernetes.io/role: {{ .role }}
    {{- else }}
    app.kubernetes.io/component: {{ .component }}
    {{- end }}
{{- end -}}
{{- define "slm.np.dns" -}}
- to:
    - namespaceSelector:
        {{- toYaml .dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .dns.podSelector | nindent 8 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}
{{- define "slm.np.cidrs" -}}
{{- range . }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
  ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end -}}
{{- define "slm.np.databases" -}}
{{- /* Postgres (and with redis, Redis): in the chart, or the external addresses. */ -}}
{{- if .external }}
{{- include "slm.np.cidrs" .np.externalDatabases }}
{{- else }}
- to:
    - {{ include "slm.np.pods" (dict "root" .root "component" "postgres") | indent 6 | trim }}
  ports:
    - {port: 5432, protocol: TCP}
{{- if .redis }}
- to:
    - {{ include "slm.np.pods" (dict "root" .root "component" "redis") | indent 6 | trim }}
  ports:
    - {port: 6379, protocol: TCP}
{{- end }}
{{- end }}
{{- end -}}
