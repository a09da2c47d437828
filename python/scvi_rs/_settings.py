"""``scvi_rs.settings``: the seed and the thread count, set as in scvi-tools (``scvi.settings``)."""


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
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"settings.seed must be a non-negative integer, got {value!r}")
        self._seed = value

    @property
    def num_threads(self):
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"settings.num_threads must be a positive integer or None, got {value!r}")
        self._num_threads = value

    def threads(self):
        """The thread count for the engine (0: all cores)."""
        return self._num_threads or 0

    def __repr__(self):
        return f"scvi_rs.settings(seed={self._seed}, num_threads={self._num_threads})"


settings = _Settings()
