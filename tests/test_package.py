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
    """The modules of ``package`` that a source file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
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


#: The layers below the applications, and the packages they must not import when they are
#: imported: models and data are building blocks (and config builds what it is told, by
#: name), so an arrow from them to training, inference, scoring or a command runs backwards.
LOWER = ("segunet.models", "segunet.data", "segunet.config")
UPPER = ("segunet.train", "segunet.infer", "segunet.postprocess", "segunet.eval",
         "segunet.export", "segunet.cli")


def module_level_imports(path: Path) -> set[str]:
    """The modules a source file imports as it is imported: its statements outside functions
    (under ``if``, ``try`` and class bodies too), not the imports that functions make when
    they run."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update({node.module, *(f"{node.module}.{a.name}" for a in node.names)})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_no_arrow_runs_against_the_layers():
    """models, data and config import nothing of train, infer, postprocess, eval, export or
    cli at module level. (``config`` names train's classes only as ``_target_`` strings,
    imported by name when it builds them; no function-level import of theirs crosses upwards
    either, but a lazy import is a way out that this test allows.)"""
    src = ROOT / "src"
    arrows = sorted(
        f"{'.'.join(p.relative_to(src).with_suffix('').parts)} -> {name}"
        for package in LOWER for p in (src / package.replace(".", "/")).rglob("*.py")
        for name in module_level_imports(p)
        if any(name == up or name.startswith(f"{up}.") for up in UPPER)
    )
    assert not arrows, arrows


def test_the_layer_test_sees_a_backward_arrow(tmp_path):
    """The check above is no tautology: a module-level import of train is found, one inside
    a function is not."""
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom segunet.train.trainer import Trainer\n\n"
                      "def f():\n    from segunet.cli import main\n")
    assert "segunet.train.trainer" in module_level_imports(source)
    assert "segunet.cli" not in module_level_imports(source)


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
