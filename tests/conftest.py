"""Shared test fixtures. Importing tfbnas first selects Keras 2 for TensorFlow."""

import tfbnas  # noqa: F401  (must precede any tensorflow import)
