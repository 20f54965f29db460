"""The agent's backend registry and the stage skeleton both stages run on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hxpe.agent import backend_base
from hxpe.agent.backend_base import (
    BACKEND_MODULES,
    Backend,
    Generation,
    engine_settings,
    find_backend,
    make_describer,
    make_extractor,
    register_backend,
)
from hxpe.agent.cache import JsonlCache, read_records
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.parsing import OutputError
from hxpe.agent.runner import StageReport, run_stage


def test_every_backend_module_registers_its_backend():
    for name, module in BACKEND_MODULES.items():
        backend = find_backend(name)
        assert backend is not None and backend.name == name
        assert sys.modules[module].settings_for is backend.settings_for
    roles = {n: (find_backend(n).describer, find_backend(n).extractor) for n in BACKEND_MODULES}
    assert {n for n, (d, _) in roles.items() if d} == {"classical", "transformers", "vllm"}
    assert {n for n, (_, e) in roles.items() if e} == {"rules", "transformers", "vllm"}


def test_engines_stay_unimported_until_used():
    """Importing the agent (and building the demo backends) loads neither vLLM nor transformers."""
    code = (
        "import json, sys\n"
        "from hxpe.agent import run_describe\n"
        "from hxpe.agent.backend_base import engine_settings, make_extractor\n"
        "from hxpe.agent.config import DescribeConfig, ExtractConfig\n"
        "make_extractor(ExtractConfig(backend='rules', model_id='r'))\n"
        "engine_settings(DescribeConfig(backend='vllm', model_id='m'))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('vllm', 'transformers') or m.startswith('hxpe.agent.backend_'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    # engine settings need the vllm backend module (which imports backend_hf), not the vllm package
    assert loaded == [
        "hxpe.agent.backend_base",
        "hxpe.agent.backend_hf",
        "hxpe.agent.backend_rules",
        "hxpe.agent.backend_vllm",
    ]


def test_factories_build_the_named_backend():
    from hxpe.agent.backend_classical import ClassicalDescriber
    from hxpe.agent.backend_rules import RuleExtractor

    describer = make_describer(DescribeConfig(backend="classical", model_id="c"))
    assert isinstance(describer, ClassicalDescriber)
    assert isinstance(make_extractor(ExtractConfig(backend="rules", model_id="r")), RuleExtractor)
    vllm = engine_settings(DescribeConfig(backend="vllm", model_id="m", options={}))
    assert vllm == sys.modules["hxpe.agent.backend_vllm"].settings_for({})


@pytest.mark.parametrize(
    ("make", "cfg", "message"),
    [
        (
            make_describer,
            DescribeConfig(backend="replay", model_id="r"),
            "agent.describe.backend 'replay' has no describer ('replay' reads the cache; use "
            "classical, transformers or vllm)",
        ),
        (
            make_extractor,
            ExtractConfig(backend="replay", model_id="r"),
            "agent.extract.backend 'replay' has no extractor ('replay' reads the cache; use "
            "rules, transformers or vllm)",
        ),
        (engine_settings, ExtractConfig(backend="replay", model_id="r"), "backend 'replay' has "),
    ],
)
def test_backend_errors_name_the_alternatives(make, cfg, message):
    with pytest.raises(ValueError) as err:
        make(cfg)
    assert str(err.value).startswith(message)


def test_register_needs_a_module_entry():
    with pytest.raises(ValueError, match="'nowhere' is not in BACKEND_MODULES"):
        register_backend(Backend("nowhere", settings_for=dict))
    assert "nowhere" not in backend_base._REGISTRY


def _upper(gen: Generation) -> str:
    if gen.text == "bad":
        raise OutputError("garbled", "not a word")
    return gen.text.upper()


def test_run_stage_batches_retries_records_and_resumes(tmp_path):
    cfg = ExtractConfig(backend="rules", model_id="r", batch_size=2, max_retries=1)
    calls: list[list[str]] = []

    def echo(batch: list[str], sampling) -> list[Generation]:
        calls.append(list(batch))
        return [Generation(item) for item in batch]

    def run(items: list[str], report: StageReport) -> None:
        run_stage(
            [(f"k-{it}", it) for it in items],
            cache=JsonlCache(tmp_path / "c.jsonl"),
            report=report,
            cfg=cfg,
            settings={"stage": "test"},
            backend=lambda: echo,
            requests=lambda batch: batch,
            check=_upper,
            fields=lambda it, out: {"item": it, "value": out.value, "error": out.error},
        )

    first = StageReport("test", tmp_path / "c.jsonl", "h1", total=3)
    run(["a", "bad", "c"], first)
    # batches of two; the bad item is retried once, alone
    assert calls == [["a", "bad"], ["bad"], ["c"]]
    assert (first.done, first.cached, first.failed, first.failures) == (2, 0, 1, {"garbled": 1})
    records = read_records(tmp_path / "c.jsonl")
    assert [sorted(r) for r in records] == [
        ["error", "item", "key", "provenance", "settings_hash", "timing", "value"]
    ] * 3
    assert [(r["key"], r["value"], r["error"]) for r in records] == [
        ("k-a", "A", None),
        ("k-bad", None, "garbled: not a word"),
        ("k-c", "C", None),
    ]
    assert {r["settings_hash"] for r in records} == {"h1"}
    assert records[0]["provenance"]["stage"] == "test"

    calls.clear()
    second = StageReport("test", tmp_path / "c.jsonl", "h1", total=4)
    run(["a", "bad", "c", "d"], second)
    assert calls == [["d"]]  # only the new item reaches the backend
    assert (second.done, second.cached, second.failed) == (1, 3, 1)

    calls.clear()
    built = []
    run_stage(
        [("k-a", "a")],
        cache=JsonlCache(tmp_path / "c.jsonl"),
        report=StageReport("test", tmp_path / "c.jsonl", "h1", total=1),
        cfg=cfg,
        settings={},
        backend=lambda: built.append(1) or echo,
        requests=lambda batch: batch,
        check=_upper,
        fields=lambda it, out: {},
    )
    assert built == []  # nothing pending: the backend is never built
