"""Regenerate the Python code for Runwire's protobuf contracts.

Idempotent: running it twice produces byte-identical files. The generated
tree lives in the ``runwire`` package (``runwire/<domain>/v1/``), mirroring the
proto packages, so generated imports resolve without rewriting.

Usage: ``python scripts/gen_protos.py [OUTPUT_ROOT]`` (default: the repository
root). The staleness test generates into a temporary folder and compares.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("runwire/**/*.proto"))


def generate(output_root: Path) -> list[Path]:
    """Generate code for every contract under ``output_root``; return the files."""
    output_root.mkdir(parents=True, exist_ok=True)
    files = proto_files()
    well_known = resources.files("grpc_tools") / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--mypy_out={output_root}",
        f"--mypy_grpc_out={output_root}",
        *(str(path.relative_to(PROTO_ROOT)) for path in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dirs = {output_root / "runwire"}
    for path in files:
        rel = path.relative_to(PROTO_ROOT).parent
        for depth in range(1, len(rel.parts) + 1):
            package_dirs.add(output_root.joinpath(*rel.parts[:depth]))
    for directory in sorted(package_dirs):
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/; do not edit."""\n')
    (output_root / "runwire" / "py.typed").write_text("")
    return sorted(p for p in (output_root / "runwire").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(target):
        print(path.relative_to(target))


if __name__ == "__main__":
    main()
