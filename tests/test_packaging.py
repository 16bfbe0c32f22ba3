"""setup.py as Dataflow's `--setup_file`: the sdist Beam stages holds every module the workers
import, declares bounded runtime dependencies, and installs into a bare folder from which
every module imports.

The sdist is built the way Beam's stager builds it on the launcher (`python -m build
--no-isolation --sdist`, or `python setup.py sdist` where `build` is missing), from a copy
of exactly what dataflow/Dockerfile puts in the Flex Template image, so the image and the
command-line `--setup_file ./setup.py` are both covered.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from apache_beam.runners.portability.stager import Stager

from tests.helpers import ROOT, setup_packages

DOCKERFILE = os.path.join(ROOT, "dataflow", "Dockerfile")
WORKER_PACKAGES = setup_packages()
BUILD_TIMEOUT_S = 120


def worker_modules():
    """Every .py file under the packages workers import, relative to the repository."""
    found = set()
    for package in WORKER_PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found.update(os.path.relpath(os.path.join(folder, f), ROOT)
                         for f in files if f.endswith(".py"))
    return found


def module_name(path: str) -> str:
    name = path[:-len(".py")].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def dockerfile_sources():
    """The repository paths dataflow/Dockerfile copies into the template image."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        return [line.split()[1] for line in f if line.startswith("COPY ")]


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """The files of the Flex Template image's /template, copied from the repository."""
    tree = tmp_path_factory.mktemp("template")
    for source in dockerfile_sources():
        src, dest = os.path.join(ROOT, source), os.path.join(tree, source)
        if os.path.isdir(src):
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy(src, dest)
    return tree


@pytest.fixture(scope="module")
def staged_sdist(image_tree, tmp_path_factory):
    """The sdist Beam's stager makes of --setup_file (what Dataflow uploads for workers)."""
    out = tmp_path_factory.mktemp("staged")
    return Stager._build_setup_package(  # pylint: disable=protected-access
        str(image_tree / "setup.py"), str(out))


def sdist_members(path):
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    return {n[len(top) + 1:] for n in names if n.startswith(top + "/")}, top


def sdist_text(path, suffix):
    with tarfile.open(path) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(suffix)]
        return tar.extractfile(member).read().decode("utf-8")


def test_the_image_copies_setup_py_and_the_worker_packages():
    sources = dockerfile_sources()
    assert "setup.py" in sources
    assert set(WORKER_PACKAGES) <= set(sources)


def test_staged_sdist_contains_every_worker_module(staged_sdist):
    expected = worker_modules()
    assert len(expected) >= 10 and "transforms/predict.py" in expected
    members, _ = sdist_members(staged_sdist)
    assert expected <= members, sorted(expected - members)


def test_workers_do_not_install_the_local_server(tmp_path):
    """`--setup_file ./setup.py` from the repository root, where localserver/ sits too."""
    tree = tmp_path / "repo"
    for name in ("setup.py", *WORKER_PACKAGES, "localserver"):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.makedirs(tree, exist_ok=True)
            shutil.copy(src, tree / name)
    sdist = Stager._build_setup_package(  # pylint: disable=protected-access
        str(tree / "setup.py"), str(tmp_path / "staged"))
    members, _ = sdist_members(sdist)
    top = {m.split("/")[0] for m in members if m.endswith(".py")}
    assert top == {"setup.py", *WORKER_PACKAGES}, sorted(members)


def test_legacy_setup_py_sdist_contains_every_worker_module(image_tree, tmp_path):
    """Beam's fallback where `build` is not installed (e.g. on a plain launcher)."""
    done = subprocess.run([sys.executable, "setup.py", "sdist", "--dist-dir", str(tmp_path)],
                          cwd=image_tree, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    members, _ = sdist_members(sdist)
    assert worker_modules() <= members, sorted(worker_modules() - members)


def test_sdist_declares_bounded_runtime_dependencies_and_the_console_script(staged_sdist):
    requires = sdist_text(staged_sdist, ".egg-info/requires.txt")
    runtime = [line for line in requires.split("\n[")[0].splitlines() if line.strip()]
    names = {re.split(r"[\[<>=!~ ]", r, 1)[0].lower() for r in runtime}
    assert {"apache-beam", "pillow", "pyarrow", "aiohttp", "pyyaml"} <= names, names
    for requirement in runtime:
        assert ">=" in requirement and "<" in requirement.replace("<=", ""), requirement
    entry_points = sdist_text(staged_sdist, ".egg-info/entry_points.txt")
    assert re.search(r"batch-predict\s*=\s*pipeline\.run:main", entry_points)


_IMPORT_ALL = """
import importlib, json, sys
sys.meta_path[:] = [f for f in sys.meta_path  # not the editable install of the work tree
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path.insert(0, sys.argv[1])
files = {}
for name in sys.argv[2:]:
    files[name] = importlib.import_module(name).__file__
print(json.dumps(files))
"""


def test_sdist_installs_and_every_worker_module_imports_from_it(staged_sdist, tmp_path):
    """What a worker does with the staged sdist: pip-install it, then import the modules."""
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
         staged_sdist], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(module_name(p) for p in worker_modules())
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL, str(target), *names],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(files) == names
    outside = {n: f for n, f in files.items() if not f.startswith(str(target))}
    assert not outside, outside
