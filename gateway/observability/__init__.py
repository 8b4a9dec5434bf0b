"""What the gateway tells its operators: Prometheus series, OpenTelemetry traces, JSON logs (one access-log
line per request), and the failures it caught."""
