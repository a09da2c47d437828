"""``scvi_rs.settings``: the seed and the thread count, set as in scvi-tools (``scvi.settings``)."""


def _checked(name, value, least, what):
    """``value`` if it is an integer (not a bool) of at least ``least``, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"settings.{name} must be {what}, got {value!r}")
    return value


class _Settings:
    """``seed`` seeds the weights' initialisation, the train / validation split, the minibatch
    order and the noise of training (as ``scvi.settings.seed`` does; the command line's
    ``--seed``). ``num_threads`` is the number of CPU threads (None: all cores; the command
    line's ``--threads``). The same data, options, seed and threads give the same model, bit for
    bit, as ``scvi-rs train``."""

    def __init__(self):
        self._seed = 0
        self._num_threads = None

    @property
    def seed(self):
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = _checked("seed", 0 if value is None else value, 0, "a non-negative integer")

    @property
    def num_threads(self):
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value):
        ok = None if value is None else _checked("num_threads", value, 1, "a positive integer or None")
        self._num_threads = ok

    def threads(self):
        """The thread count for the engine (0: all cores)."""
        return self._num_threads or 0

    def __repr__(self):
        return f"scvi_rs.settings(seed={self._seed}, num_threads={self._num_threads})"


settings = _Settings()
