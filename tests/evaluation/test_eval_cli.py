"""The ``evaluate`` sub-command's parser and its dispatch."""

import argparse

import pytest

from hxpe.evaluation import cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse(["evaluate", "--params", "notebooks/params/demo.yaml"])
    assert args.func is cli.run_evaluate
    assert (args.variants, args.directions, args.datasets) == (None, None, None)
    assert not args.merge and not args.recompute_maps


def test_selections_accumulate() -> None:
    args = parse(
        ["evaluate", "--params", "p.yaml", "--dataset", "visa", "mpdd", "--dataset", "btad",
         "--variant", "hxpe", "--direction", "mvtec_to_others", "--merge", "--recompute-maps"]
    )  # fmt: skip
    assert args.datasets == ["visa", "mpdd", "btad"]
    assert args.variants == ["hxpe"] and args.directions == ["mvtec_to_others"]
    assert args.merge and args.recompute_maps


def test_params_is_required() -> None:
    with pytest.raises(SystemExit):
        parse(["evaluate"])


@pytest.mark.parametrize(
    ("argv", "runs", "merges"),
    [
        ([], True, True),
        (["--dataset", "demo_target"], True, False),
        (["--merge"], False, True),
        (["--dataset", "demo_target", "--merge"], True, True),
    ],
)
def test_dispatch(monkeypatch, tmp_path, argv, runs, merges) -> None:
    calls: list[str] = []
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(tmp_path))
    monkeypatch.setattr(
        "hxpe.evaluation.protocol.run_protocol", lambda cfg, **kw: calls.append("run")
    )
    monkeypatch.setattr("hxpe.evaluation.results.merge_metrics", lambda rd: calls.append("merge"))
    monkeypatch.setattr("hxpe.evaluation.tables.write_tables", lambda rd, **kw: [])
    args = parse(["evaluate", "--params", "notebooks/params/demo.yaml", *argv])
    assert cli.run_evaluate(args) == 0
    assert ("run" in calls) == runs and ("merge" in calls) == merges
