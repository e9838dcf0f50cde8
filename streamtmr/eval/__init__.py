"""Evaluation: attackers and action recognizer (:mod:`.attackers`, their window features in
:mod:`.features`), metrics (:mod:`.metrics`), the static/adaptive protocol (:mod:`.protocol`),
real data (:mod:`.realdata`), reports, plots and t-SNE layouts (:mod:`.report`, :mod:`.suite`),
the run behind ``streamtmr evaluate`` (:mod:`.runner`) and animations (:mod:`.render`).

Nothing here is imported by the streaming hot path (``stream``, ``engines``, ``sensors``).
"""
