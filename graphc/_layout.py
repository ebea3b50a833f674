"""Let a source checkout import ``graphc.passes`` and ``graphc.backends``.

In the repository, ``passes/`` and ``backends/`` are top-level folders beside ``graphc/``; installed, setup.py
puts them inside the package. Running from a checkout (``python -m pytest`` puts the checkout first on
``sys.path``) would then import ``graphc`` from the folder, where those subpackages are not. This finder maps
them to their folders, only when the package folder itself lacks them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PACKAGE_DIR)
_SUBPACKAGES = ("passes", "backends")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, folders: dict[str, str]):
        self.folders = folders

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


def install() -> None:
    folders = {}
    for name in _SUBPACKAGES:
        inside = os.path.join(_PACKAGE_DIR, name)
        beside = os.path.join(_CHECKOUT, name)
        if not os.path.isdir(inside) and os.path.isfile(os.path.join(beside, "__init__.py")):
            folders[f"graphc.{name}"] = beside
    if folders and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder(folders))
