"""Kernel discovery: a kernel of another venv, registered the way `make gpu-env` does it, is found and
run by papermill from this venv; AGENT_KERNEL switches only on gpu-env's success stamp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from hxpe.environment.kernels import kernel_dir, register_kernel
from hxpe.paths import repo_root


def _throwaway_venv_with_ipykernel(where: Path) -> Path:
    """A venv holding only ipykernel (and its dependencies), installed by uv from its cache/PyPI."""
    uv = [sys.executable, "-m", "uv"]
    if subprocess.run([*uv, "--version"], capture_output=True).returncode != 0:
        pytest.skip("uv is not installed in this venv (it comes with the `test` extra)")
    env = {**os.environ, "UV_SYSTEM_CERTS": "1", "UV_NO_CONFIG": "1"}
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(where)], check=True, env=env)
    python = where / "bin" / "python"
    done = subprocess.run(
        [
            *uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            "-c",
            str(repo_root() / "constraints.txt"),
            "ipykernel",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        pytest.skip(
            f"could not install ipykernel into a throwaway venv (no registry?): {done.stderr[-300:]}"
        )
    return python


def test_papermill_from_this_venv_runs_a_kernel_of_another_venv(tmp_path):
    import papermill

    other = _throwaway_venv_with_ipykernel(tmp_path / "venv-other")
    name = f"hxpe-test-{uuid.uuid4().hex[:8]}"
    spec_dir = register_kernel(name, other, Path(sys.prefix), "throwaway")
    try:
        assert spec_dir == Path(sys.prefix) / "share" / "jupyter" / "kernels" / name
        nb = nbformat.v4.new_notebook()
        nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
        src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
        nbformat.write(nb, src)
        papermill.execute_notebook(str(src), str(out), kernel_name=name, progress_bar=False)
        printed = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].strip()
        assert printed == str(other.absolute())
        assert printed != sys.executable
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def test_register_kernel_writes_the_interpreter_unresolved(tmp_path):
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.symlink_to(sys.executable)
    where = register_kernel("k", py, tmp_path / "prefix", "K")
    spec = json.loads((where / "kernel.json").read_text())
    assert where == kernel_dir(tmp_path / "prefix", "k")
    assert spec["argv"][0] == str(py) and spec["argv"][-2:] == ["-f", "{connection_file}"]
    assert spec["display_name"] == "K"


def test_register_kernel_refuses_a_missing_interpreter(tmp_path):
    with pytest.raises(FileNotFoundError, match="make gpu-env"):
        register_kernel("k", tmp_path / "nope" / "python", tmp_path)


def _agent_kernel(repo: Path) -> str:
    done = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(repo),
            "--no-print-directory",
            "--eval",
            "print-agent-kernel: ; @echo $(AGENT_KERNEL)",
            "print-agent-kernel",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_agent_kernel_switches_only_on_the_gpu_env_stamp(tmp_path):
    shutil.copy(repo_root() / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv-vllm" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-vllm" / "bin" / "python").write_text("")  # a failed gpu-env leaves this
    assert _agent_kernel(tmp_path) == "hxpe"
    (tmp_path / ".venv-vllm" / ".installed").write_text("")
    assert _agent_kernel(tmp_path) == "hxpe-vllm"
