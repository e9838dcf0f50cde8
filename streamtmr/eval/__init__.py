"""Evaluation: attackers and action recognizer (:mod:`.attackers`), metrics (:mod:`.metrics`),
the static/adaptive protocol (:mod:`.protocol`), real data (:mod:`.realdata`), reports and
plots (:mod:`.report`, :mod:`.suite`), t-SNE (:mod:`.tsne`) and animations (:mod:`.render`).

Nothing here is imported by the streaming hot path (``stream``, ``engines``, ``sensors``).
"""
