"""Sub-commands of the ``streamtmr`` CLI, one module each (see :mod:`streamtmr.cli`)."""
