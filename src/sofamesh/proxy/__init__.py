"""The sidecar process: command line (cli), worker processes (workers), Server (server)."""
