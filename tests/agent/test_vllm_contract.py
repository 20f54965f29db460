"""The contract with the pinned vLLM: the committed API snapshot (read from the pinned wheel by
hxpe/environment/vllm_api.py) matches the pin, the stand-in enforces it, and every keyword the
backend sends is in it (issue 23, item 8)."""

from __future__ import annotations

import json
import zipfile

import pytest

from hxpe.agent.backend_vllm import KNOWN_OPTIONS, STRUCTURED_BACKENDS, engine_kwargs
from hxpe.config import load_config
from hxpe.environment import vllm_api
from hxpe.paths import repo_root

from support.vllm_double import stand_in_vllm


@pytest.fixture(scope="module")
def snap() -> dict:
    return vllm_api.load_snapshot()


def test_the_snapshot_is_of_the_pinned_version(snap):
    assert snap["vllm"] == vllm_api.pinned_version() == "0.33.0"
    assert snap["wheel"].startswith(f"vllm-{snap['vllm']}-") and len(snap["wheel_sha256"]) == 64
    assert set(snap["api"]) == {t[0] for t in vllm_api.TARGETS}


def test_the_snapshot_holds_what_the_backend_relies_on(snap):
    keywords = vllm_api.llm_keywords(snap)
    assert set(KNOWN_OPTIONS) <= keywords  # every option is passed to vllm.LLM as it is
    assert {"model", "revision", "seed", "limit_mm_per_prompt"} <= keywords
    assert {"temperature", "top_p", "max_tokens", "seed", "structured_outputs"} <= set(
        snap["api"]["SamplingParams"]["fields"]
    )
    assert "json" in snap["api"]["StructuredOutputsParams"]["fields"]
    config = snap["api"]["StructuredOutputsConfig"]["fields"]
    assert {"backend", "disable_any_whitespace"} <= set(config)
    assert set(STRUCTURED_BACKENDS) <= set(snap["structured_outputs_backends"])
    assert {"prompts", "sampling_params", "use_tqdm"} <= set(
        snap["api"]["LLM.generate"]["parameters"]
    )


@pytest.mark.parametrize("stage", ["describe", "extract"])
def test_the_paper_profiles_engine_keywords_are_accepted(stage):
    agent = load_config(repo_root() / "notebooks" / "params" / "paper.yaml").agent
    cfg = getattr(agent, stage)
    vllm = stand_in_vllm()
    llm = vllm.LLM(**engine_kwargs(cfg, multimodal=stage == "describe"))
    assert llm.kwargs["model"] == cfg.model_id


def test_the_stand_in_refuses_what_the_pinned_vllm_lacks():
    vllm = stand_in_vllm()
    with pytest.raises(TypeError, match=r"LLM.__init__\(\) got unexpected keyword argument\(s\) "):
        vllm.LLM(model="m", max_num_seq=32)  # a typo of max_num_seqs
    with pytest.raises(TypeError, match=r"SamplingParams\(\) .*\['guided_decoding'\]: vLLM 0.33.0"):
        vllm.SamplingParams(temperature=0.0, guided_decoding=None)  # the pre-0.11 name
    with pytest.raises(TypeError, match=r"StructuredOutputsParams\(\) .*\['schema'\]"):
        vllm.sampling_params.StructuredOutputsParams(schema={})
    with pytest.raises(TypeError, match=r"StructuredOutputsConfig\(\) .*\['any_whitespace'\]"):
        vllm.LLM(model="m", structured_outputs_config={"any_whitespace": False})
    with pytest.raises(ValueError, match="disable_any_whitespace is only supported for xgrammar"):
        vllm.LLM(model="m", structured_outputs_config={"disable_any_whitespace": True})
    with pytest.raises(TypeError, match=r"LLM.generate\(\) .*\['progress'\]"):
        vllm.LLM(model="m").generate(["p"], None, progress=False)
    assert vllm.LLM(model="m", max_num_seqs=32, download_dir="/x").kwargs["max_num_seqs"] == 32


WHEEL_SOURCES = {
    "vllm/entrypoints/llm.py": (
        "class LLM:\n"
        "    def __init__(self, model: str, *, seed: int = 0, **kwargs) -> None: ...\n"
        "    def generate(self, prompts, sampling_params=None, use_tqdm=True): ...\n"
    ),
    "vllm/engine/arg_utils.py": (
        "@dataclass\nclass EngineArgs:\n    model: str = 'm'\n    max_model_len: int | None = None\n"
        "    _hidden: ClassVar[int] = 0\n"
    ),
    "vllm/sampling_params.py": (
        "class StructuredOutputsParams:\n    json: str | None = None\n"
        "    _backend: str | None = field(default=None, init=False)\n"
        "class SamplingParams(msgspec.Struct):\n    temperature: float = 1.0\n    seed: int | None = None\n"
    ),
    "vllm/config/structured_outputs.py": (
        'StructuredOutputsBackend = Literal["auto", "guidance"]\n'
        "class StructuredOutputsConfig:\n    backend: StructuredOutputsBackend = 'auto'\n"
        "    disable_any_whitespace: bool = False\n"
        "    def compute_hash(self) -> str: ...\n"
    ),
}


def test_the_snapshot_script_reads_a_wheel(tmp_path, capsys):
    wheel = tmp_path / "vllm-9.9.9-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in WHEEL_SOURCES.items():
            zf.writestr(path, text)
    out = tmp_path / "api.json"
    assert vllm_api.main([str(wheel), "--out", str(out)]) == 0
    snap = json.loads(out.read_text())
    assert snap["vllm"] == "9.9.9" and snap["wheel"] == wheel.name
    assert snap["structured_outputs_backends"] == ["auto", "guidance"]
    api = snap["api"]
    assert api["LLM.__init__"] == {
        "source": "vllm/entrypoints/llm.py",
        "parameters": ["model", "seed"],
        "var_keyword": "kwargs",
    }
    assert api["LLM.generate"]["parameters"] == ["prompts", "sampling_params", "use_tqdm"]
    assert api["EngineArgs"]["fields"] == ["model", "max_model_len"]
    assert api["StructuredOutputsParams"]["fields"] == ["json"]
    assert api["SamplingParams"]["fields"] == ["temperature", "seed"]
    assert api["StructuredOutputsConfig"]["fields"] == ["backend", "disable_any_whitespace"]
    assert vllm_api.llm_keywords(snap) == {"model", "seed", "max_model_len"}
    printed = capsys.readouterr().out
    assert "warning: vllm-9.9.9-" in printed and "constraints-gpu.txt pins 0.33.0" in printed
    # the stand-in follows whichever snapshot it is given
    vllm = stand_in_vllm(snapshot=snap)
    with pytest.raises(TypeError, match="max_num_seqs"):
        vllm.LLM(model="m", max_num_seqs=4)


def test_a_moved_class_is_named(tmp_path):
    wheel = tmp_path / "vllm-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in WHEEL_SOURCES.items():
            zf.writestr(path, text.replace("class LLM:", "class Engine:"))
    with pytest.raises(LookupError, match="vllm/entrypoints/llm.py: no class LLM"):
        vllm_api.snapshot(wheel)
