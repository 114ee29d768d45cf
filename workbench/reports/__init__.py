"""The report site: offline HTML rendering of archived notebooks, the static site, the server."""
