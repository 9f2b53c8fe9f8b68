"""ARCHITECTURE.md's import direction, enforced module by module with ``ast``.

Every ``.py`` file of the product packages is parsed (never imported); every import is
collected, wherever it sits (module level, inside functions, under ``TYPE_CHECKING``),
relative imports are resolved, ``from pkg import name`` counts as an import of
``pkg.name`` when that is a module of ours, and ``importlib.import_module("...")`` /
``__import__("...")`` with a literal name count too. Layers:

  contracts       protocols/* except protocols/families/* and protocols/registry.py
  families        protocols/families/*, protocols/registry.py
  mpc, he         the engines
  approximations, models, client, server, benchmarks

Rules (see ``ALLOWED`` and ``_allowed``):
  1. contracts import only contracts;
  2. mpc imports contracts and mpc; he imports contracts, mpc and he;
  3. approximations imports only protocols.ops, protocols.config and approximations;
     models imports contracts, approximations and models (never mpc or he);
  4. families import contracts, families and the engines; approximations and models are
     below them in the direction too, so they are allowed, but never client/server/benchmarks;
  5. nothing imports client, server or benchmarks except those three: benchmarks may
     import both, client and server may not import each other.

A second check bans pickle-based loading: importing ``pickle`` (or its relatives), and
``torch.load`` without ``weights_only=True`` (``np.load(allow_pickle=True)`` too).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "mpc", "he", "approximations", "models", "client", "server",
            "benchmarks")

ALLOWED: dict[str, set[str]] = {
    "contracts": {"contracts"},
    "mpc": {"contracts", "mpc"},
    "he": {"contracts", "mpc", "he"},
    "approximations": {"approximations"},  # plus APPROX_CONTRACTS, module by module
    "models": {"contracts", "approximations", "models"},
    "families": {"contracts", "families", "mpc", "he", "approximations", "models"},
    "client": {"contracts", "families", "mpc", "he", "approximations", "models", "client"},
    "server": {"contracts", "families", "mpc", "he", "approximations", "models", "server"},
    "benchmarks": {"contracts", "families", "mpc", "he", "approximations", "models",
                   "client", "server", "benchmarks"},
}
APPROX_CONTRACTS = ("protocols.ops", "protocols.config")
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve",
                  "marshal", "joblib"}


@dataclass(frozen=True)
class Import:
    path: Path          # file, relative to the tree root
    line: int
    source: str         # importing module, dotted
    target: str         # imported module, dotted (resolved)


# -- the walker ---------------------------------------------------------------------------

def product_files(root: Path) -> list[Path]:
    out = []
    for pkg in PACKAGES:
        base = root / pkg
        if base.is_dir():
            out += sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    return out


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """(dotted name, is_package) of a file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def is_module(root: Path, dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _resolve_from(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    up = node.level - 1
    if up > len(package) - 1:
        raise ValueError(f"relative import beyond the top-level package in {module}")
    base = package[:len(package) - up]
    return ".".join(base + ([node.module] if node.module else []))


def collect_imports(root: Path, path: Path) -> list[Import]:
    module, is_pkg = module_name(root, path)
    rel = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(rel, node.lineno, module, alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_pkg)
            if base == "__future__":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                target = sub if alias.name != "*" and is_module(root, sub) else base
                found.append(Import(rel, node.lineno, module, target))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.append(Import(rel, node.lineno, module, node.args[0].value))
    return found


def layer_of(dotted: str) -> str | None:
    """Our layer of a dotted module name; None for the standard library and third parties."""
    top = dotted.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "protocols":
        if dotted.split(".")[:2] in (["protocols", "families"], ["protocols", "registry"]):
            return "families"
        return "contracts"
    return top


def _within(dotted: str, prefix: str) -> bool:
    return dotted == prefix or dotted.startswith(prefix + ".")


def _allowed(src_layer: str, target: str) -> bool:
    tgt_layer = layer_of(target)
    if tgt_layer is None:
        return True
    if src_layer == "approximations" and any(_within(target, c) for c in APPROX_CONTRACTS):
        return True
    return tgt_layer in ALLOWED[src_layer]


def layering_violations(root: Path) -> list[str]:
    out = []
    for path in product_files(root):
        for imp in collect_imports(root, path):
            src_layer = layer_of(imp.source)
            if src_layer is None or _allowed(src_layer, imp.target):
                continue
            out.append(f"{imp.path}:{imp.line}: {imp.source} ({src_layer}) imports "
                       f"{imp.target} ({layer_of(imp.target)}), which ARCHITECTURE.md's "
                       f"import direction forbids for {src_layer}")
    return out


def unsafe_loading(root: Path) -> list[str]:
    """pickle-family imports; torch.load without weights_only=True; np.load(allow_pickle=True)."""
    out = []
    for path in product_files(root):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        torch_names, numpy_names, torch_load_names = {"torch"}, {"numpy", "np"}, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in BANNED_MODULES:
                        out.append(f"{rel}:{node.lineno}: imports {a.name} (pickle-based loading)")
                    if a.name == "torch":
                        torch_names.add(a.asname or "torch")
                    if a.name == "numpy":
                        numpy_names.add(a.asname or "numpy")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in BANNED_MODULES:
                    out.append(f"{rel}:{node.lineno}: imports from {node.module} "
                               "(pickle-based loading)")
                if node.module in ("torch", "torch.serialization"):
                    torch_load_names |= {a.asname or a.name for a in node.names
                                         if a.name == "load"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            is_torch_load = (isinstance(f, ast.Attribute) and f.attr == "load" and (
                (isinstance(f.value, ast.Name) and f.value.id in torch_names) or
                (isinstance(f.value, ast.Attribute) and f.value.attr == "serialization"))) or \
                (isinstance(f, ast.Name) and f.id in torch_load_names)
            if is_torch_load:
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    out.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            is_np_load = isinstance(f, ast.Attribute) and f.attr == "load" and \
                isinstance(f.value, ast.Name) and f.value.id in numpy_names
            if is_np_load and "allow_pickle" in kw:
                a = kw["allow_pickle"]
                if not (isinstance(a, ast.Constant) and a.value is False):
                    out.append(f"{rel}:{node.lineno}: np.load with allow_pickle not False")
    return out


# -- the real tree ------------------------------------------------------------------------

FILES = product_files(REPO)


def test_walker_sees_the_product():
    names = {module_name(REPO, p)[0] for p in FILES}
    for expected in ("protocols.channel", "protocols.wire.codec", "protocols.registry",
                     "mpc.ops", "models.spec", "client.api", "server.service"):
        assert expected in names, f"walker missed {expected}"
    targets = {i.target for i in collect_imports(REPO, REPO / "protocols" / "channel.py")}
    assert {"protocols.metering", "protocols.wire.codec", "protocols.wire.pinfer_pb2",
            "torch"} <= targets, targets
    assert layer_of("protocols.families.base") == "families"
    assert layer_of("protocols.registry") == "families"
    assert layer_of("protocols.wire.codec") == "contracts"
    assert layer_of("torch") is None


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_imports_follow_the_layering(path):
    module, _ = module_name(REPO, path)
    src_layer = layer_of(module)
    bad = [f"{i.path}:{i.line}: {module} ({src_layer}) imports {i.target} "
           f"({layer_of(i.target)})"
           for i in collect_imports(REPO, path) if not _allowed(src_layer, i.target)]
    assert not bad, "import direction violated (ARCHITECTURE.md, Layout):\n" + "\n".join(bad)


def test_no_pickle_based_loading():
    bad = unsafe_loading(REPO)
    assert not bad, "pickle-based loading in product code:\n" + "\n".join(bad)


# -- the checker itself -------------------------------------------------------------------

def _write(root: Path, rel: str, text: str = "") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_checker_catches_a_synthetic_bad_tree(tmp_path):
    files = {
        "protocols/__init__.py": "",
        "protocols/ops.py": "",
        "protocols/config.py": "",
        "protocols/metering.py": "",
        "protocols/channel.py": "from __future__ import annotations\nimport json\n"
                                "from protocols.metering import Meter\nfrom mpc import fixed\n",
        "protocols/wire/__init__.py": "",
        "protocols/wire/codec.py": "from .. import metering\nfrom ..ops import Ops\n"
                                   "from ..families import base\n",
        "protocols/families/__init__.py": "",
        "protocols/families/base.py": "from mpc.fixed import encode\nimport client.api\n",
        "protocols/registry.py": "from .families import base\nfrom he import ckks\n",
        "mpc/__init__.py": "",
        "mpc/fixed.py": "from . import prg\nfrom protocols import registry\n",
        "mpc/prg.py": "import importlib\nm = importlib.import_module('models.spec')\n",
        "he/__init__.py": "",
        "he/ckks.py": "from mpc import fixed\nfrom protocols.channel import Channel\n",
        "approximations/__init__.py": "",
        "approximations/gelu.py": "from protocols.ops import Ops\nfrom protocols import config\n"
                                  "from protocols.channel import Channel\n",
        "models/__init__.py": "",
        "models/spec.py": "from approximations import gelu\n"
                          "def f():\n    import he.ckks\n    return he\n",
        "client/__init__.py": "",
        "client/api.py": "from server import service\nfrom protocols.registry import get\n",
        "server/__init__.py": "",
        "server/service.py": "import pickle\nimport torch\nimport numpy as np\n"
                             "from torch import load as tl\n"
                             "a = torch.load('x')\nb = torch.load('x', weights_only=True)\n"
                             "c = tl('x', weights_only=False)\n"
                             "d = np.load('x', allow_pickle=True)\ne = np.load('x')\n",
        "benchmarks/__init__.py": "",
        "benchmarks/run.py": "from client import api\nfrom server import service\n",
    }
    for rel, text in files.items():
        _write(tmp_path, rel, text)

    found = {(v.split(":")[0], v.split(" imports ")[1].split(" ")[0])
             for v in layering_violations(tmp_path)}
    assert found == {
        ("protocols/channel.py", "mpc.fixed"),                  # contract -> engine
        ("protocols/wire/codec.py", "protocols.families.base"),  # contract -> family (relative)
        ("protocols/families/base.py", "client.api"),           # family -> client
        ("mpc/fixed.py", "protocols.registry"),                 # engine -> family
        ("mpc/prg.py", "models.spec"),                          # importlib, engine -> models
        ("approximations/gelu.py", "protocols.channel"),        # approximations: ops/config only
        ("models/spec.py", "he.ckks"),                          # models -> engine, in a function
        ("client/api.py", "server.service"),                    # client -> server
    }, found

    unsafe = unsafe_loading(tmp_path)
    assert len(unsafe) == 4, unsafe
    assert any("imports pickle" in u for u in unsafe)
    assert any(u.startswith("server/service.py:5:") for u in unsafe)   # torch.load('x')
    assert any(u.startswith("server/service.py:7:") for u in unsafe)   # aliased, weights_only=False
    assert any(u.startswith("server/service.py:8:") for u in unsafe)   # allow_pickle=True
