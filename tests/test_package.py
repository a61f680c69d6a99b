"""The package as installed: a wheel holds the code and the configs and trains anywhere; its
modules import one another without a cycle."""

from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT


def run(*args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A command as a user outside the checkout runs it: no PYTHONPATH into the sources."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=clean | env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout, built offline from a copy (the build writes into it)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
        "--no-build-isolation", "-w", dist, source, cwd=source)
    return next(dist.glob("segunet-*.whl"))


def test_the_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src").rglob("*.py")}
    configs = {f"segunet/conf/{p.relative_to(ROOT / 'configs')}"
               for p in (ROOT / "configs").rglob("*") if p.suffix in (".py", ".yaml")}
    assert "segunet/conf/trainer/default.yaml" in configs
    assert modules | configs <= names, sorted(modules | configs - names)
    assert "segunet/pretrained/nuclei.pt" in names  # model=nuclei without a download
    assert "segunet/napari_plugin/napari.yaml" in names  # the napari manifest
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[napari.manifest]\nsegunet = segunet.napari_plugin:napari.yaml" in text


def test_the_wheel_trains_outside_the_checkout(wheel, tmp_path):
    """Installed into a fresh venv (which reuses this environment's torch and other
    dependencies), ``segunet train`` finds its configs in the package, from any folder."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                  cwd=tmp_path).stdout.strip()
    # Only this environment's site folders: its own segunet (editable) is not activated.
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
        wheel, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = run(venv / "bin" / "segunet", "train", "experiment=quickstart", "trainer.max_steps=2",
               cwd=work)
    assert "done at step 2" in done.stderr
    assert len(list(work.glob("outputs/train/*/checkpoints/last.pt"))) == 1


def imports(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that a source file imports, anywhere in it. ``from segunet
    import interrupts`` imports the module ``segunet.interrupts``: the top package itself
    only re-exports the Python API, lazily (``segunet.load``), so it is no edge of its own."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" for a in node.names}
            found |= {node.module} if node.module != package else set()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.split(".")[0] == package}


def test_no_module_imports_one_that_imports_it_back():
    """Library modules never import the command line (it imports them): the import graph of
    the package, lazy imports included, has no cycle."""
    src = ROOT / "src"
    files = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in src.rglob("*.py")}
    graph = {m: imports(p, "segunet") & files.keys() - {m} for m, p in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in graph[start])

    cycles = sorted(f"{m} -> {n}" for m in graph for n in graph[m] if reaches(n, m, set()))
    assert not cycles, cycles


#: What each package must not import, lazily inside a function or not: models, data and
#: config are building blocks (config builds what it is told, by name), inference, its
#: decoding and scoring run without training, and only the command line imports cli. Each
#: package's ``__init__`` docstring says the same.
APPS = ("plan", "train", "infer", "postprocess", "eval", "export", "cli")
FORBIDDEN = {
    "models": ("data", *APPS),
    "data": APPS,
    "config": APPS,
    "eval": ("models", "plan", "train", "infer", "export", "cli"),
    "infer": ("plan", "train", "eval", "export", "cli"),
    "postprocess": ("plan", "train", "export", "cli"),
    "train": ("plan", "export", "cli"),
    "export": ("cli",),
    "plan": ("train", "infer", "postprocess", "eval", "export", "cli"),
}


def backward_arrows(path: Path, package: str) -> list[str]:
    """The imports of ``path`` (a module of ``segunet.<package>``) that ``FORBIDDEN`` rules out."""
    return sorted(
        name for name in imports(path, "segunet")
        if any(name == f"segunet.{up}" or name.startswith(f"segunet.{up}.")
               for up in FORBIDDEN[package])
    )


def test_no_arrow_runs_against_the_layers():
    src = ROOT / "src" / "segunet"
    arrows = [
        f"{p.relative_to(src)} -> {name}"
        for package in FORBIDDEN for p in sorted((src / package).rglob("*.py"))
        for name in backward_arrows(p, package)
    ]
    assert not arrows, arrows


def test_the_layer_test_sees_a_backward_arrow(tmp_path):
    """The check above is no tautology: an import of train is found, at module level or
    inside a function."""
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom segunet.data.io import read_array\n\n"
                      "def f():\n    from segunet.train.trainer import Trainer\n")
    assert backward_arrows(source, "infer") == ["segunet.train.trainer",
                                                "segunet.train.trainer.Trainer"]
    assert backward_arrows(source, "export") == []


def test_the_command_line_has_one_main():
    """One entry point (pyproject's ``segunet = segunet.cli:main``): each command is a
    ``run(argv)`` of its module in ``segunet.cli``, and no library module is a script but
    the torchrun launcher that ``segunet train trainer.devices=N`` starts."""
    src = ROOT / "src"
    mains = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py")
        for node in ast.parse(p.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "main"
        or isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
    )
    assert mains == ["segunet/cli/dispatch.py", "segunet/train/distributed.py"], mains
