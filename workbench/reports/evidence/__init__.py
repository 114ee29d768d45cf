"""The evidence pack of a release: one zip a reviewer or an auditor can take away.

``workbench evidence RUN [--env ENV]`` assembles (:mod:`.pack`) a model card (:mod:`.card`), the
executed notebooks as offline HTML (and as notebooks), the approval, promotion, rollback and
drift records, the attestations, and the ledger entries with the chain from the first of them
up to an anchor; an index (:mod:`.annex`) maps the contents to EU AI Act Annex IV sections and
SR 11-7 elements. ``workbench evidence verify FILE.zip`` checks it offline (:mod:`.check`); its
pages open in a browser without the tool.
"""
