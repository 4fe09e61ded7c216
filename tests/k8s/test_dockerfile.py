"""The Dockerfile follows the image rules (no container engine here, so it is read, not built)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass

import pytest

from tests.k8s.render import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PINNED_BASE = re.compile(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}")
SERVICE_MODULES = ("registry_service", "bridge_service", "execution_service", "gateway")
NEVER_IN_CONTEXT = (".git", ".venv", ".runwire", "node_modules", "tests", ".ci", "k8s")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage; each stage starts with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    args = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def base_image(stage: list[Instruction], args: dict[str, str]) -> str:
    image = stage[0].arguments.split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)


def commands(run: str) -> list[list[str]]:
    """The words of each ``&&``-chained command of a shell-form RUN."""
    result: list[list[str]] = [[]]
    for word in shlex.split(run):
        if word == "&&":
            result.append([])
        else:
            result[-1].append(word)
    return result


def of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def project_packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").exists() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    )


def test_the_image_is_built_in_stages_from_a_digest_pinned_slim_python(
    instructions: list[Instruction],
) -> None:
    all_stages = stages(instructions)
    assert len(all_stages) >= 2
    args = build_args(instructions)
    for stage in all_stages:
        assert PINNED_BASE.fullmatch(base_image(stage, args)), stage[0]


def test_dependencies_come_only_from_the_hash_locked_runtime_requirements(
    instructions: list[Instruction],
) -> None:
    runs = [i.arguments for i in instructions if i.keyword == "RUN"]
    assert any(
        "--require-hashes" in run and "--no-deps" in run and "-r requirements/runtime.lock" in run
        for run in runs
    )
    for run in runs:
        for words in commands(run):
            if not words or not words[0].endswith("pip") or "install" not in words:
                continue
            # Every install is either hash-checked from a lock, or the project's own wheel.
            assert "--no-deps" in words, words
            locked = "--require-hashes" in words and "-r" in words
            own_wheel = any(re.fullmatch(r"/tmp/wheels/runwire-\*\.whl", w) for w in words)
            assert locked or own_wheel, words


def test_the_project_itself_is_installed_without_dependencies(instructions: list[Instruction]) -> None:
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "wheel --no-deps --no-build-isolation" in runs
    assert "install --no-deps /tmp/wheels/runwire-*.whl" in runs


def test_the_final_stage_copies_only_the_virtual_environment(final: list[Instruction]) -> None:
    assert of(final, "COPY") == ["--from=build /opt/venv /opt/venv"]
    assert of(final, "ADD") == []


def test_the_final_stage_runs_as_the_unprivileged_user_of_the_manifests(final: list[Instruction]) -> None:
    users = of(final, "USER")
    assert users, "no USER in the final stage"
    assert users[-1] == "10001:10001"
    last_user = max(i for i, instruction in enumerate(final) if instruction.keyword == "USER")
    assert all(instruction.keyword != "RUN" for instruction in final[last_user:])


def test_the_entrypoint_is_python_m_in_exec_form_and_the_default_command_a_service(
    final: list[Instruction],
) -> None:
    assert json.loads(of(final, "ENTRYPOINT")[-1]) == ["python", "-m"]
    command = json.loads(of(final, "CMD")[-1])
    assert command[0] in SERVICE_MODULES


def test_python_neither_buffers_output_nor_writes_bytecode_at_run_time(final: list[Instruction]) -> None:
    env = " ".join(of(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_the_image_exposes_the_grpc_and_websocket_ports(final: list[Instruction]) -> None:
    exposed = {port for line in of(final, "EXPOSE") for port in line.split()}
    assert {"50051", "8080"} <= exposed


def test_every_package_of_the_project_is_copied_into_the_build(instructions: list[Instruction]) -> None:
    copied = {i.arguments.split()[0] for i in stages(instructions)[0] if i.keyword == "COPY"}
    missing = [package for package in project_packages() if package not in copied]
    assert not missing, f"not copied into the image: {missing}"


def test_the_build_context_is_an_allow_list_of_what_the_build_copies(instructions: list[Instruction]) -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copy_sources = {
        source
        for i in stages(instructions)[0]
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    }
    assert {source.rstrip("/") for source in copy_sources} <= allowed
    assert set(project_packages()) <= allowed
    for path in NEVER_IN_CONTEXT:
        assert not any(entry == path or entry.startswith(f"{path}/") for entry in allowed), path
