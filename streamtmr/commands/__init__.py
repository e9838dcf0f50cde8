"""Sub-commands of the ``streamtmr`` CLI, one module each (see :mod:`streamtmr.cli`).

Each module defines ``register(subparsers)``, which adds its sub-command and sets ``func`` on the
parser. Errors meant for the user are raised as :class:`UserError` (defined here, below the CLI,
so that the commands never import :mod:`streamtmr.cli`, which imports them).
"""


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback, exit status 2."""
