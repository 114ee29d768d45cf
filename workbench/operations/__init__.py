"""Operating releases: load tests with SLOs, post-deploy monitoring, rollback, notifications."""
