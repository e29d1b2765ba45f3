"""Serve end to end (a package, so that its modules share one deployment)."""
