"""The worklist rules, with no file or network code.

What a worklist key is (:mod:`~wlmserver.matching.keys`, PS3.4 Table K.6-1), the records and
entries a query runs over (:mod:`~wlmserver.matching.record`, :mod:`~wlmserver.matching.entry`),
the C.2.2.2 matching primitives (:mod:`~wlmserver.matching.primitives`), identifiers compiled
once into queries (:mod:`~wlmserver.matching.query`), and answers holding exactly the requested
keys (:mod:`~wlmserver.matching.answers`), encoded to bytes
(:mod:`~wlmserver.matching.encoding`); and the Modality Performed Procedure Step rules with the
link from scheduled steps to their performed status (:mod:`~wlmserver.matching.mpps`, PS3.4
Annex F). The lowest layer: it imports nothing else of wlmserver.
"""
