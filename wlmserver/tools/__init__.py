"""The user commands beside the server: ``wlmserver create``, ``check``, ``query``
(:mod:`~wlmserver.tools.client`) and ``explain``. They use the store and the matching rules
exactly as the server does, and never the service layer.
"""
