"""The two version locks: consistent with each other offline, resolvable and compatible with vLLM's
published requirements, by uv against the registry (``network``: CI reaches PyPI; skipped offline
with the reason)."""

from __future__ import annotations

import importlib.util
import time
import urllib.request

import pytest

from hxpe.environment.lock import (
    TORCH_FAMILY,
    LockFiles,
    check_locks,
    cpu_inputs,
    cpu_lock,
    divergence_problems,
    divergences,
    gpu_inputs,
    published_requirement_problems,
    read_pins,
    shared_versions,
    unneeded_divergences,
)
from hxpe.paths import repo_root

FILES = LockFiles(repo_root())


def _registry_or_skip() -> None:
    if importlib.util.find_spec("uv") is None:
        pytest.skip("uv is not installed in this venv (it comes with the `test` extra)")
    try:
        urllib.request.urlopen("https://pypi.org/simple/uv/", timeout=10).close()
    except OSError as err:
        pytest.skip(f"PyPI is unreachable from here ({err}); the lock checks need its metadata")


def test_read_pins_normalises_names_and_skips_comments():
    text = "# c\nJinja2==3.1.6\ntyping_extensions==4.16.0 ; python_version < '4'\nfoo>=1\n"
    assert read_pins(text) == {"jinja2": "3.1.6", "typing-extensions": "4.16.0"}


def test_header_holds_the_inputs_and_the_resolved_part_no_input_twice():
    inputs = FILES.input_pins()
    assert inputs["vllm"] == "0.33.0" and inputs["torch"] == "2.14.1"
    resolved = read_pins(FILES.cpu.read_text()[len(FILES.header()) :])
    assert not set(inputs) & set(resolved)
    assert "uv" in resolved  # the lock tool itself is pinned


def test_cpu_resolution_takes_the_gpu_versions_but_its_own_torch_and_the_declared_divergences():
    gpu = {"numpy": "2.3.5", "pillow": "13.0.0", "torch": "2.14.0", "nvidia-nccl-cu13": "1"}
    lines = cpu_inputs(FILES, gpu)
    assert lines == ["numpy==2.3.5", "torch==2.14.1", "torchvision==0.29.1"]
    assert cpu_inputs(FILES, gpu, set())[:2] == ["numpy==2.3.5", "pillow==13.0.0"]
    assert gpu_inputs(FILES) == ["vllm==0.33.0", "qwen-vl-utils==0.0.14"]


def _copy_of_the_checkout(tmp_path, pyproject_edit=lambda t: t, gpu_edit=lambda t: t) -> LockFiles:
    """The three lock inputs/outputs of this checkout under ``tmp_path``, optionally edited."""
    for name, edit in (
        ("pyproject.toml", pyproject_edit),
        ("constraints.txt", lambda t: t),
        ("constraints-gpu.txt", gpu_edit),
    ):
        (tmp_path / name).write_text(edit((repo_root() / name).read_text()))
    return LockFiles(tmp_path)


def test_the_app_extra_is_cpu_only_and_a_new_extra_is_resolved_jointly_by_default(tmp_path):
    assert FILES.cpu_only_extras() == ["app"]
    assert "app" not in FILES.gpu_extras() and "app" in FILES.cpu_extras()
    assert {"gpu", "notebooks", "test"} <= set(FILES.gpu_extras())
    assert "book" in FILES.gpu_extras() and "book" in FILES.cpu_extras()  # declared nowhere
    extra = _copy_of_the_checkout(
        tmp_path,
        lambda t: t.replace("[project.scripts]", 'newextra = ["sphinx>=7"]\n\n[project.scripts]'),
    )
    assert "newextra" in extra.gpu_extras() and "newextra" in extra.cpu_extras()


def test_a_cpu_only_extra_must_exist_and_not_be_gpu(tmp_path):
    files = _copy_of_the_checkout(
        tmp_path,
        lambda t: t.replace('cpu-only-extras = ["app"]', 'cpu-only-extras = ["ap", "gpu"]'),
    )
    with pytest.raises(ValueError, match=r"cpu-only-extras names \['ap', 'gpu'\]"):
        files.gpu_extras()


def test_every_declared_divergence_has_a_reason_naming_both_sides():
    declared = FILES.may_diverge()
    assert set(declared) == {"pillow"}
    assert "gradio" in declared["pillow"] and "vllm" in declared["pillow"]


def test_divergences_must_be_exactly_the_declared_ones(tmp_path):
    assert divergence_problems(FILES) == []
    # numpy moved on one side only: undeclared; pillow aligned: declared but no longer diverging
    gpu_pillow = read_pins(FILES.gpu.read_text())["pillow"]
    cpu = cpu_lock(FILES)
    files = _copy_of_the_checkout(
        tmp_path,
        gpu_edit=lambda t: t.replace(f"numpy=={cpu['numpy']}", "numpy==1.0").replace(
            f"pillow=={gpu_pillow}", f"pillow=={cpu['pillow']}"
        ),
    )
    assert divergence_problems(files) == [
        f"numpy: constraints.txt {cpu['numpy']} vs constraints-gpu.txt 1.0, not declared under "
        "[tool.hxpe.lock.may-diverge]",
        "pillow: declared under [tool.hxpe.lock.may-diverge] but has one version in both locks (or "
        "is not in both); remove it and rerun `make lock`",
    ]


def test_header_ranges_are_inputs_too(tmp_path):
    text = FILES.cpu.read_text().replace("# CPU-only inputs", "gradio>=5  # app\n# CPU-only inputs")
    (tmp_path / "constraints.txt").write_text(text)
    files = LockFiles(tmp_path)
    assert "gradio>=5" in gpu_inputs(files)
    assert "gradio" not in files.input_pins()


def test_every_shared_package_has_one_version_in_both_locks():
    cpu, gpu = cpu_lock(FILES), read_pins(FILES.gpu.read_text())
    shared = shared_versions(cpu, gpu)
    assert len(shared) > 100  # jupyter, transformers, numpy, ...
    # the one declared divergence: the app's gradio needs pillow<13, vLLM 0.33 pillow>=13
    assert divergences(cpu, gpu) == {"pillow": (cpu["pillow"], gpu["pillow"])}
    assert cpu["pillow"].startswith("12.") and gpu["pillow"].startswith("13.")
    # the app and its browser test are pinned in .venv; only playwright is in the vLLM lock too
    assert {"gradio", "playwright", "fastapi", "starlette"} <= set(cpu)
    assert "gradio" not in gpu and cpu["playwright"] == gpu["playwright"]
    assert cpu["fastapi"] == gpu["fastapi"] and cpu["starlette"] == gpu["starlette"]
    # the two conflicts that broke make gpu-env: vLLM pins lark 1.2.2; mistral_common needs numpy<2.4
    assert cpu["lark"] == gpu["lark"] == "1.2.2"
    assert cpu["numpy"] == gpu["numpy"] and cpu["numpy"].startswith("2.3.")
    assert gpu["vllm"] == "0.33.0" and gpu["torch"] == "2.14.0" and cpu["torch"] == "2.14.1"
    assert TORCH_FAMILY.match("nvidia-cublas") and not TORCH_FAMILY.match("torchmetrics")


@pytest.mark.network
def test_both_locks_resolve_exactly_without_backtracking():
    """uv resolves each environment with every package pinned to its lock (one candidate each, so no
    backtracking is possible), for Linux x86_64 and Python 3.11, from metadata only (--no-build).
    Measured: 7 s with an empty uv cache, 3 s warm."""
    _registry_or_skip()
    start = time.perf_counter()
    assert check_locks(FILES) == []
    assert time.perf_counter() - start < 600


@pytest.mark.network
def test_shared_versions_satisfy_vllms_published_requirements_but_the_declared_divergences():
    """uv resolves vllm==0.33.0 (and the other GPU-only inputs) from its published metadata with
    constraints.txt's shared versions pinned: they fit, and without the declared pillow divergence uv
    names vLLM's own requirement that constraints.txt's pillow violates."""
    _registry_or_skip()
    assert published_requirement_problems(FILES) == []
    pillow = cpu_lock(FILES)["pillow"]
    [problem] = published_requirement_problems(FILES, may_diverge=set())
    assert problem.startswith(
        "uv could not resolve vllm==0.33.0, qwen-vl-utils==0.0.14 with constraints.txt's shared "
        "versions for x86_64-manylinux_2_31, Python 3.11:\n"
    )
    assert f"vllm==0.33.0 depends on pillow>=13.0.0 and pillow=={pillow}" in problem
    assert problem.endswith("Rerun `make lock`, or declare the package.")


@pytest.mark.network
def test_every_declared_divergence_is_still_needed():
    """Each declared package, pinned to the GPU lock's version in the CPU resolution, makes it fail."""
    _registry_or_skip()
    assert unneeded_divergences(FILES) == []


@pytest.mark.network
def test_a_declared_divergence_that_is_not_needed_is_reported(tmp_path):
    _registry_or_skip()
    files = _copy_of_the_checkout(
        tmp_path,
        lambda t: t.replace(
            "[tool.hxpe.lock.may-diverge]\n", '[tool.hxpe.lock.may-diverge]\nnumpy = "no"\n'
        ),
    )
    numpy = read_pins(files.gpu.read_text())["numpy"]
    assert set(files.may_diverge()) == {"numpy", "pillow"}
    assert unneeded_divergences(files) == [
        f"numpy: constraints.txt resolves with numpy=={numpy} (constraints-gpu.txt's version); "
        "remove it from [tool.hxpe.lock.may-diverge] and rerun `make lock`"
    ]
