"""CI integration: JUnit XML, Markdown summaries, log groups and pipeline templates."""
