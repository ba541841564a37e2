"""The DICOM service: pynetdicom glue around the store and the matching rules.

Which associations are accepted and how C-ECHO, C-FIND and C-CANCEL are answered
(:mod:`~wlmserver.service.handlers`), answers handed to the socket without re-encoding
(:mod:`~wlmserver.service.fastpath`), pynetdicom's threads waiting instead of polling
(:mod:`~wlmserver.service.reactor`), request capture (:mod:`~wlmserver.service.capture`), and
the server object that owns the index and the watcher (:mod:`~wlmserver.service.server`).
"""
