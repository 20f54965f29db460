"""Register a Jupyter kernel where papermill, running from ``.venv``, finds it.

papermill (through jupyter_client) looks for kernelspecs in ``$JUPYTER_PATH``, the user's data
directory and ``<sys.prefix>/share/jupyter/kernels`` of the interpreter it runs in. A kernel registered
with ``ipykernel install --sys-prefix`` inside *another* venv lands in that venv's prefix, where
papermill never looks (NoSuchKernel at stage 02). So the agent kernel is written into ``.venv``'s prefix,
with ``argv`` pointing at the other venv's python. ``make venv`` and ``make gpu-env`` both use this.

Example:
    python -m hxpe.environment.kernels --name hxpe-vllm --python .venv-vllm/bin/python --prefix .venv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def kernel_dir(prefix: Path, name: str) -> Path:
    """Where jupyter_client looks for kernel ``name`` of an environment at ``prefix``."""
    return Path(prefix) / "share" / "jupyter" / "kernels" / name


def register_kernel(name: str, python: Path, prefix: Path, display_name: str | None = None) -> Path:
    """Write ``kernel.json`` for an ipykernel run by ``python`` into ``prefix``; return its folder.

    ``python`` is stored as an absolute path *without* resolving symlinks (a venv's ``bin/python`` is a
    link to the base interpreter; resolving it would lose the venv).
    """
    python = Path(python).absolute()
    if not python.exists():
        raise FileNotFoundError(
            f"Kernel {name!r}: interpreter {python} does not exist; build its venv first "
            f"(make venv / make gpu-env)."
        )
    spec = {
        "argv": [
            str(python),
            "-Xfrozen_modules=off",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": display_name or name,
        "language": "python",
        "metadata": {"debugger": True},
    }
    out = kernel_dir(prefix, name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.environment.kernels",
        description="Register an ipykernel of PYTHON as Jupyter kernel NAME inside the environment at "
        "PREFIX (where papermill running from that environment finds it).",
    )
    parser.add_argument("--name", required=True, help="Kernel name (papermill -k NAME).")
    parser.add_argument(
        "--python", required=True, type=Path, help="Interpreter that runs the kernel."
    )
    parser.add_argument("--prefix", required=True, type=Path, help="Environment that looks it up.")
    parser.add_argument("--display-name", help="Name shown in JupyterLab.")
    args = parser.parse_args(argv)
    where = register_kernel(args.name, args.python, args.prefix, args.display_name)
    print(f"kernel {args.name!r} ({args.python}) registered in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
