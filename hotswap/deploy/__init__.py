"""Running hotswap beyond one process: Ray Serve (`hotswap.deploy.ray`). The Kubernetes / KServe
manifests and the Grafana dashboard live in the repository's deploy/ folder."""
