"""The web app (issue 13): REST API, pages, metrics and health, on the ledger's read model.

Never imports torch: it runs in ``serve`` or alone as ``cxr-node web``.
"""
