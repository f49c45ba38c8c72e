"""`sofamesh mixer`: the report and global-quota half of issue 10, one process serving Envoy and
sofamesh sidecars alike over Envoy's own gRPC services.

- `quota`: the Rate Limit Quota Service (RLQS): fair shares of a global limit per bucket.
- `ratelimit`: the rate-limit service (descriptor-based fixed-window limits).
- `metrics` / `accesslog`: the access log service, aggregated into Istio-style Prometheus series.
- `policy`: the operator's limits (`--config FILE`).
- `server`: the gRPC and HTTP (/metrics, /healthz) listeners; `cli`: the command line.
"""
