"""Maps the top-level folders passes/ and backends/ to the packages graphc.passes and graphc.backends.

Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"graphc": "graphc", "graphc.passes": "passes", "graphc.backends": "backends"}

packages, package_dir = [], {}
for package, folder in ROOTS.items():
    package_dir[package] = folder
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir, include_package_data=True)
