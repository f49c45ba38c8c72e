"""The sidecar's xDS client: ADS subscriptions (state of the world and Delta) that feed the
Server's dynamic clusters, endpoints, listeners and routes (docs/ARCHITECTURE.md, "xDS")."""
