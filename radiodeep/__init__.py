"""radiodeep: handcrafted and deep radiomics features with honest evaluation."""

import logging

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radiodeep")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
