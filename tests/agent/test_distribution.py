"""The agent as its own distribution (agent/pyproject.toml): it installs into a fresh virtualenv that
holds nothing but its declared dependencies, and runs there without Django.

Offline: the wheel is built locally, and the dependencies come from this environment's site-packages
(the declared ones and what they require, found through their metadata), linked into the new venv.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
AGENT_PYPROJECT = ROOT / "agent" / "pyproject.toml"


def _declared() -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(AGENT_PYPROJECT.read_text())["project"]["dependencies"]]


def _closure(requirements: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions these requirements pull in, transitively (extras not requested)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in found:
            continue
        dist = importlib.metadata.distribution(requirement.name)
        assert dist.version in requirement.specifier or not requirement.specifier, (requirement, dist.version)
        found[name] = dist
        todo.extend(Requirement(r) for r in dist.requires or [])
    return found


def _link_site_packages(dists: dict[str, importlib.metadata.Distribution], target: Path) -> None:
    """Every top-level file or folder of these distributions, linked into `target`."""
    target.mkdir()
    for dist in dists.values():
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or (target / top).exists():
                continue
            source = Path(str(dist.locate_file(top)))
            if source.exists():
                (target / top).symlink_to(source)


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("agent-dist")
    # build from a copy, so that setuptools' build/ never lands in the source tree
    src = work / "src"
    shutil.copytree(ROOT / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__", "build"))
    shutil.copytree(ROOT / "protocol", src / "protocol", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels), str(src / "agent")],
        check=True, timeout=300,
    )  # fmt: skip
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("fogdeck_agent-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--no-deps", "-q", str(wheel)], check=True, timeout=300
    )
    deps = work / "deps"
    _link_site_packages(_closure(_declared()), deps)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "agent-deps.pth").write_text(f"{deps}\n")
    return venv


def test_the_agent_declares_only_what_a_device_needs() -> None:
    names = {r.name for r in _declared()}
    assert names == {"paho-mqtt", "onnxruntime", "numpy", "cryptography", "pydantic"}
    assert not {"django", "celery", "boto3", "plotly", "daphne"} & set(_closure(_declared()))


def test_fogdeck_agent_help_runs_in_a_venv_without_django(agent_venv: Path) -> None:
    result = subprocess.run(
        [str(agent_venv / "bin" / "fogdeck-agent"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--device-id" in result.stdout

    no_django = subprocess.run(
        [str(agent_venv / "bin" / "python"), "-c", "import django"], capture_output=True, text=True, timeout=60
    )
    assert no_django.returncode != 0 and "No module named 'django'" in no_django.stderr


def test_every_agent_module_imports_there(agent_venv: Path) -> None:
    # the modules `--help` does not reach too (the simulator, the gateway, the downloads)
    code = (
        "import importlib, pkgutil, sys, agent, protocol\n"
        "for package in (agent, protocol):\n"
        "    for module in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('django', 'celery')]\n"
        "print(agent.__file__)\n"
    )
    result = subprocess.run(
        [str(agent_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert str(agent_venv) in result.stdout  # the installed copy, not this checkout


def test_the_systemd_unit_runs_the_installed_agent_with_flags_it_knows() -> None:
    import shlex

    from agent.cli import build_parser

    unit = (ROOT / "deploy" / "systemd" / "fogdeck-agent.service").read_text()
    (exec_start,) = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(exec_start)
    assert words[0] == "/opt/fogdeck-agent/bin/fogdeck-agent"  # the venv docs/agent.md creates
    known = {option for action in build_parser()._actions for option in action.option_strings}
    flags = [word for word in words[1:] if word.startswith("--")]
    assert flags and set(flags) <= known
    required = {"--api", "--mqtt", "--device-id", "--state-dir"}
    assert required <= set(flags)
    assert "--secret" not in flags  # from FOGDECK_DEVICE_SECRET in the EnvironmentFile, out of `ps`
