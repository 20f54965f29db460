"""The pinned vLLM's keyword API, read from its wheel without installing it: the snapshot that the
agent's test double (`tests/support/vllm_double.py`) enforces on CPU.

vLLM is CUDA-only and lives in its own venv, so the CPU tests talk to a stand-in module. Without a
contract, a keyword that the pinned vLLM does not have (or one it silently drops) passes every CPU
test and fails, or does nothing, on the GPU. This module parses, with :mod:`ast`, the sources of
the pinned wheel: ``LLM.__init__`` (whose ``**kwargs`` go to ``EngineArgs``), the ``EngineArgs``,
``SamplingParams``, ``StructuredOutputsParams`` and ``StructuredOutputsConfig`` fields, and the
structured-output backends, and writes them to ``hxpe/environment/vllm_api.json``.

Refresh it whenever the vLLM pin of ``constraints-gpu.txt`` changes (a test compares the two)::

    pip download vllm==<pin> --no-deps -d /tmp/vllm-wheel
    python -m hxpe.environment.vllm_api /tmp/vllm-wheel/vllm-<pin>-*.whl
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from hxpe.hashing import file_sha256
from hxpe.paths import repo_root

SNAPSHOT = Path(__file__).resolve().parent / "vllm_api.json"
# (snapshot entry, source file in the wheel, class, method or None for the class's fields)
TARGETS = (
    ("LLM.__init__", "vllm/entrypoints/llm.py", "LLM", "__init__"),
    ("LLM.generate", "vllm/entrypoints/llm.py", "LLM", "generate"),
    ("EngineArgs", "vllm/engine/arg_utils.py", "EngineArgs", None),
    ("SamplingParams", "vllm/sampling_params.py", "SamplingParams", None),
    ("StructuredOutputsParams", "vllm/sampling_params.py", "StructuredOutputsParams", None),
    (
        "StructuredOutputsConfig",
        "vllm/config/structured_outputs.py",
        "StructuredOutputsConfig",
        None,
    ),
)
BACKENDS = ("vllm/config/structured_outputs.py", "StructuredOutputsBackend")


def find_class(tree: ast.Module, name: str, where: str) -> ast.ClassDef:
    """The top-level class ``name`` of a parsed module, or an error naming the file."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"{where}: no class {name} (did the vLLM API move? update TARGETS)")


def _init_false(value: ast.expr | None) -> bool:
    """``field(..., init=False)``: a dataclass field that is not a constructor keyword."""
    return isinstance(value, ast.Call) and any(
        k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
        for k in value.keywords
    )


def class_fields(cls: ast.ClassDef) -> list[str]:
    """Constructor keywords of a dataclass / msgspec Struct / pydantic-style config class: its
    annotated class attributes, less ``ClassVar`` ones and ``field(init=False)`` ones.

    >>> src = "class A:\\n x: int = 1\\n y: ClassVar[int] = 2\\n _z: str = field(init=False)\\n w: str"
    >>> class_fields(ast.parse(src).body[0])
    ['x', 'w']
    """
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(node.annotation) or _init_false(node.value):
            continue
        out.append(node.target.id)
    return out


def method_signature(cls: ast.ClassDef, method: str) -> dict[str, Any]:
    """The keyword parameters of ``cls.method`` (``self`` left out) and its ``**`` parameter.

    >>> src = "class L:\\n def __init__(self, model, *, seed=0, **kwargs): pass"
    >>> method_signature(ast.parse(src).body[0], "__init__")
    {'parameters': ['model', 'seed'], 'var_keyword': 'kwargs'}
    """
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == method:
            a = node.args
            names = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
            return {
                "parameters": [n for n in names if n != "self"],
                "var_keyword": a.kwarg.arg if a.kwarg else None,
            }
    raise LookupError(f"class {cls.name} has no method {method}")


def literal_values(tree: ast.Module, name: str) -> list[str]:
    """The strings of a module-level ``name = Literal["a", "b", ...]``.

    >>> literal_values(ast.parse('B = Literal["auto", "xgrammar"]'), "B")
    ['auto', 'xgrammar']
    """
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Subscript)
        ):
            elts = node.value.slice
            items = elts.elts if isinstance(elts, ast.Tuple) else [elts]
            return [
                e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
    raise LookupError(f"no module-level Literal {name}")


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (``vllm-0.33.0-cp38-abi3-...whl`` -> ``0.33.0``)."""
    match = re.match(r"vllm-([^-]+)-", wheel.name)
    if match is None:
        raise ValueError(f"{wheel.name} is not a vLLM wheel file name (vllm-<version>-...whl)")
    return match.group(1)


def snapshot(wheel: Path) -> dict[str, Any]:
    """The API snapshot of a vLLM wheel (see the module docstring)."""
    wheel = Path(wheel)
    trees: dict[str, ast.Module] = {}
    with zipfile.ZipFile(wheel) as zf:
        for path in {t[1] for t in TARGETS} | {BACKENDS[0]}:
            trees[path] = ast.parse(zf.read(path).decode(), filename=path)
    api: dict[str, Any] = {}
    for entry, path, cls_name, method in TARGETS:
        cls = find_class(trees[path], cls_name, path)
        body = method_signature(cls, method) if method else {"fields": class_fields(cls)}
        api[entry] = {"source": path, **body}
    return {
        "vllm": wheel_version(wheel),
        "wheel": wheel.name,
        "wheel_sha256": file_sha256(wheel),
        "structured_outputs_backends": literal_values(trees[BACKENDS[0]], BACKENDS[1]),
        "api": api,
    }


def load_snapshot(path: Path = SNAPSHOT) -> dict[str, Any]:
    """The committed snapshot (``hxpe/environment/vllm_api.json``)."""
    snapshot: dict[str, Any] = json.loads(Path(path).read_text())
    return snapshot


def llm_keywords(snap: dict[str, Any]) -> set[str]:
    """Every keyword ``vllm.LLM(...)`` takes: its own parameters, and the ``EngineArgs`` fields that
    its ``**kwargs`` are passed to."""
    llm = snap["api"]["LLM.__init__"]
    extra = set(snap["api"]["EngineArgs"]["fields"]) if llm["var_keyword"] else set()
    return set(llm["parameters"]) | extra


def pinned_version(constraints: Path | None = None) -> str:
    """The vLLM version pinned in ``constraints-gpu.txt``."""
    path = constraints or repo_root() / "constraints-gpu.txt"
    for line in Path(path).read_text().splitlines():
        if line.startswith("vllm=="):
            return line.split("==", 1)[1].strip()
    raise LookupError(f"{path} pins no vllm==<version>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.environment.vllm_api",
        description="Write the pinned vLLM's keyword API (read from its wheel, not installed) to "
        "hxpe/environment/vllm_api.json. Get the wheel with: pip download vllm==<pin> --no-deps",
    )
    parser.add_argument("wheel", type=Path, help="The vllm-<pin>-*.whl file.")
    parser.add_argument("--out", type=Path, default=SNAPSHOT, help="Snapshot file to write.")
    args = parser.parse_args(argv)
    snap = snapshot(args.wheel)
    pin = pinned_version()
    if snap["vllm"] != pin:
        print(f"warning: {args.wheel.name} is vLLM {snap['vllm']}; constraints-gpu.txt pins {pin}")
    args.out.write_text(json.dumps(snap, indent=1) + "\n")
    counts = {k: len(v.get("fields", v.get("parameters", []))) for k, v in snap["api"].items()}
    print(f"vLLM {snap['vllm']} API written to {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
