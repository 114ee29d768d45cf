"""CI integration: JUnit XML, Markdown summaries, and pipeline definitions generated from the
project (GitHub Actions, GitLab CI, Jenkins)."""
