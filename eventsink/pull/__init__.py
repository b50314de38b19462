"""Pull-style sources: the :class:`DataSource` contract, the puller that drives one, and
the checkpoints that make a pull resumable (``oauth2`` refreshes tokens for API sources).
"""

from .source import DataSource

__all__ = ["DataSource"]
