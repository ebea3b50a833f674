"""Third-party passes: a tiny plugin distribution is pip-installed into a temporary directory, discovered
through the entry-point group ``graphc.passes`` and run by the PassManager.

The plugin builds with an in-tree PEP 517 backend written with the standard library only, so the test needs
no network, no ``wheel`` package and no particular setuptools: just pip. (Real plugins use setuptools or
any other backend; see docs/passes.md.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graphc.errors import PassError
from graphc.passes import (PassContext, PassManager, available_passes, default_pipeline, discover_plugins,
                           get_pass, resolve_pipeline)

from .conftest import CHECK_OPS

# the plugin's "dce" tries to shadow the built-in: ignored, with a warning
pytestmark = pytest.mark.filterwarnings("ignore:graphc pass plugin 'dce'")

BACKEND = '''
"""A minimal PEP 517 backend: zips the package and a dist-info into a wheel (stdlib only)."""
import base64, hashlib, pathlib, zipfile

NAME, VERSION = "graphc_demo_plugin", "0.1"
HERE = pathlib.Path(__file__).parent
DIST_INFO = f"{NAME}-{VERSION}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def _files():
    yield f"{DIST_INFO}/METADATA", f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode()
    yield f"{DIST_INFO}/WHEEL", b"Wheel-Version: 1.0\\nGenerator: demo\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    yield f"{DIST_INFO}/entry_points.txt", (HERE / "entry_points.txt").read_bytes()
    for path in sorted((HERE / "demo_plugin").glob("*.py")):
        yield f"demo_plugin/{path.name}", path.read_bytes()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as whl:
        for arcname, data in _files():
            whl.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{DIST_INFO}/RECORD,,")
        whl.writestr(f"{DIST_INFO}/RECORD", "\\n".join(record) + "\\n")
    return name
'''

PYPROJECT = '''
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "graphc_demo_plugin"
version = "0.1"
'''

# The same declaration a setuptools plugin writes as [project.entry-points."graphc.passes"] in pyproject.toml.
ENTRY_POINTS = '''
[graphc.passes]
demo_tag = demo_plugin:TagNodes
demo_factory = demo_plugin:make_counter
demo_broken = demo_plugin.broken:Nothing
dce = demo_plugin:TagNodes
'''

MODULE = '''
"""A demo graphc pass plugin."""
from graphc.passes import Pass


class TagNodes(Pass):
    """Tags every node with node.meta['demo'] = True. Requires no_dead_code; ensures demo_tagged."""

    name = "demo_tag"
    requires = frozenset({"no_dead_code"})
    ensures = frozenset({"demo_tagged"})

    def run(self, graph, ctx):
        changed = False
        for node in graph.walk():
            if not node.meta.get("demo"):
                node.meta["demo"] = changed = True
        self.log(ctx, "tagged nodes", count=len(graph.nodes))
        return changed


class Counter(Pass):
    """Counts nodes into the decision log."""

    def run(self, graph, ctx):
        self.log(ctx, "counted", nodes=len(graph.nodes))
        return False


def make_counter():
    return Counter()
'''

BROKEN = '''
raise RuntimeError("demo plugin is broken on purpose")
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this interpreter")
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "demo_plugin").mkdir(parents=True)
    (src / "backend.py").write_text(textwrap.dedent(BACKEND))
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "entry_points.txt").write_text(ENTRY_POINTS)
    (src / "demo_plugin" / "__init__.py").write_text(MODULE)
    (src / "demo_plugin" / "broken.py").write_text(BROKEN)
    site = root / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the demo plugin failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "graphc_demo_plugin-0.1.dist-info" / "entry_points.txt").exists()
    return site


@pytest.fixture
def installed(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    yield plugin_site
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m == "demo_plugin" or m.startswith("demo_plugin.")]:
        del sys.modules[mod]
    discover_plugins(refresh=True)


def test_not_visible_before_install():
    assert "demo_tag" not in available_passes(refresh=True)


def test_discovery_finds_the_plugin_without_importing_it(installed):
    with pytest.warns(UserWarning, match="plugin 'dce'.*is ignored"):
        found = discover_plugins(refresh=True)
    assert {"demo_tag", "demo_factory", "demo_broken"} <= set(available_passes())
    assert "graphc_demo_plugin" in found["demo_tag"] and "demo_plugin:TagNodes" in found["demo_tag"]
    assert "demo_plugin" not in sys.modules  # listing is lazy: a broken plugin costs nothing until used


def test_manager_runs_plugin_pass(installed, chain):
    ctx = PassContext(verify=True)
    appended = resolve_pipeline("llvm", {"passes": ["+demo_tag", "+demo_factory"]})
    assert appended == default_pipeline("llvm", {})[:-1] + ["demo_tag", "demo_factory", "memory_planning"]
    # run them after DCE alone, so that the counts below do not depend on what fusion makes of the chain
    pipeline = resolve_pipeline("llvm", {"passes": ["dce", "demo_tag", "demo_factory"]})
    result = PassManager(pipeline, check_ops=CHECK_OPS).run(chain, ctx)
    assert [r.name for r in result.records] == ["dce", "demo_tag", "demo_factory"]
    assert [r.changed for r in result.records] == [True, True, False]
    assert all(n.meta.get("demo") for n in chain.nodes)
    assert "demo_tagged" in ctx.properties
    assert ctx.decisions_of("demo_tag")[0].data == {"count": 2}
    assert ctx.decisions_of("demo_factory")[0].data == {"nodes": 2}  # factory's pass got the entry-point name


def test_plugin_requirements_are_checked(installed, chain):
    with pytest.raises(PassError, match="'demo_tag'.*'no_dead_code'"):
        PassManager(["demo_tag"]).run(chain, PassContext())


def test_broken_plugin_is_named(installed):
    with pytest.raises(PassError) as info:
        get_pass("demo_broken")
    msg = str(info.value)
    assert "'demo_broken'" in msg and "demo_plugin.broken:Nothing" in msg and "graphc_demo_plugin" in msg
    assert "broken on purpose" in msg and isinstance(info.value.__cause__, RuntimeError)
    get_pass("demo_tag")  # the other passes of the distribution still load


def test_plugin_cannot_shadow_a_builtin(installed):
    from graphc.passes.dce import DeadCodeElimination

    assert type(get_pass("dce")) is DeadCodeElimination
