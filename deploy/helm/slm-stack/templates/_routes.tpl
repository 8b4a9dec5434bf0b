{{/*
The paths the edge routes to the gateway: the API, token exchange, admin, the schema and docs (as the
gateway's GATEWAY_API_DOCS allows) and the probes, as nginx/ routes them. /metrics is not among them:
Prometheus scrapes each replica inside the cluster. Each item: path and match (Prefix or Exact).
*/}}
{{- define "slm.edgePaths" -}}
- {path: /v1, match: Prefix}
- {path: /auth, match: Prefix}
- {path: /admin, match: Prefix}
- {path: /docs, match: Prefix}
- {path: /openapi.json, match: Exact}
- {path: /healthz, match: Exact}
- {path: /readyz, match: Exact}
{{- end -}}
