"""Running emoray on Ray clusters: job submission, KubeRay manifests."""
