"""`hxpe prepare` and `make doctor` recognise the usual unpacking mistakes on generated raw trees and
print a command that, when run, fixes them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hxpe.data import prepare_dataset
from hxpe.data.config import DatasetSource, DemoDataConfig
from hxpe.data.demo import generate_demo_dataset
from hxpe.data.diagnose import diagnose_root
from hxpe.data.errors import DatasetError
from hxpe.data.fixtures import write_raw_fixture
from hxpe.data.registry import get_spec

FOLDER = {"mvtec": "mvtec_anomaly_detection", "visa": "VisA_20220922", "ksdd": "KolektorSDD"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo"), "aux", DemoDataConfig(image_size=64)
    )


def _prepare(kind: str, root: Path, out: Path):
    options = {} if kind == "ksdd" else {"classes": list(get_spec(kind).classes[:2])}
    source = DatasetSource(name=kind, kind=kind, root=str(root), options=options)
    return prepare_dataset(source, out, allow_count_mismatch=True)


def _fix_command(message: str) -> str:
    assert "Fix: " in message, message
    return message.split("Fix: ", 1)[1].split("   (", 1)[0]


def _run(command: str) -> None:
    subprocess.run(["bash", "-c", command], check=True)


@pytest.mark.parametrize("kind", ["mvtec", "visa", "ksdd"])
def test_scattered_class_folders_get_a_mkdir_mv_command_that_works(kind, demo_root, tmp_path):
    data = tmp_path / "data"
    write_raw_fixture(kind, data, demo_root)  # unpacked straight into the data root
    root = data / FOLDER[kind]
    with pytest.raises(DatasetError, match="no top-level folder") as err:
        _prepare(kind, root, tmp_path / "index")
    command = _fix_command(str(err.value))
    assert command.startswith(f"mkdir -p {root} && mv ")
    if kind == "visa":
        assert f"{data}/split_csv" in command  # the split file moves with the classes
    _run(command)
    assert diagnose_root(get_spec(kind), root) is None
    assert len(_prepare(kind, root, tmp_path / "index").frame) > 0


def test_root_at_the_parent_folder_names_the_right_root(demo_root, tmp_path):
    data = tmp_path / "data"
    write_raw_fixture("mvtec", data / "mvtec_anomaly_detection", demo_root)
    (data / "VisA_20220922").mkdir()
    message = diagnose_root(get_spec("mvtec"), data)
    assert _fix_command(message) == f"hxpe prepare mvtec --root {data / 'mvtec_anomaly_detection'}"
    with pytest.raises(DatasetError, match="is the parent folder"):
        _prepare("mvtec", data, tmp_path / "index")


def test_archive_with_top_folder_unpacked_into_its_namesake_is_moved_up(demo_root, tmp_path):
    root = tmp_path / "data" / "MPDD"
    write_raw_fixture("mpdd", root / "MPDD", demo_root)
    message = diagnose_root(get_spec("mpdd"), root)
    assert "unpacked into a folder of the same name" in message
    _run(_fix_command(message))
    assert len(_prepare("mpdd", root, tmp_path / "index").frame) > 0


@pytest.mark.parametrize(
    ("kind", "cls"), [("mvtec", "bottle"), ("visa", "candle"), ("dagm", "Class1")]
)
def test_root_at_one_class_folder_points_at_its_parent(kind, cls, demo_root, tmp_path):
    root = tmp_path / "data" / "ds"
    write_raw_fixture(kind, root, demo_root)
    message = diagnose_root(get_spec(kind), root / cls)
    assert "is one class folder" in message
    assert _fix_command(message) == f"hxpe prepare {kind} --root {root}"
    renamed = tmp_path / "data" / "renamed"  # recognised by its sub-folders, not only its name
    shutil.move(root / cls, renamed)
    assert "is one class folder" in diagnose_root(get_spec(kind), renamed)


def test_a_correct_root_and_an_unknown_mess_are_left_to_the_builders(demo_root, tmp_path):
    root = tmp_path / "mvtec"
    write_raw_fixture("mvtec", root, demo_root)
    assert diagnose_root(get_spec("mvtec"), root) is None
    assert diagnose_root(get_spec("mvtec"), tmp_path / "nothing-here") is None
    assert diagnose_root(get_spec("folder"), tmp_path / "nothing-here") is None


def test_a_missing_dataset_says_how_to_unpack_it(tmp_path):
    with pytest.raises(
        DatasetError, match="Unpack: mkdir -p .*tar -xJf mvtec_anomaly_detection.tar.xz"
    ):
        _prepare("mvtec", tmp_path / "absent", tmp_path / "index")


def test_doctor_prints_the_fixing_command(demo_root, tmp_path, monkeypatch):
    from hxpe.config import load_config
    from hxpe.doctor import check_datasets
    from hxpe.paths import repo_root

    write_raw_fixture("mvtec", tmp_path, demo_root)  # MVTec's classes scattered in the data root
    monkeypatch.setenv("HXPE_DATA_ROOT", str(tmp_path))
    checks = {
        c.item: c for c in check_datasets(load_config(repo_root() / "notebooks/params/paper.yaml"))
    }
    mvtec, visa = checks["dataset mvtec"], checks["dataset visa"]
    assert not mvtec.ok and "(wrong layout)" in mvtec.detail
    assert (
        f"mkdir -p {tmp_path / 'mvtec_anomaly_detection'} && mv {tmp_path / 'bottle'}" in mvtec.fix
    )
    assert not visa.ok and "(missing)" in visa.detail
    assert 'tar -xf VisA_20220922.tar -C "$HXPE_DATA_ROOT/VisA_20220922"' in visa.fix


def test_readme_gives_the_unpack_command_of_each_of_the_seven_datasets():
    from hxpe.data.fixtures import RAW_KINDS
    from hxpe.paths import repo_root

    readme = (repo_root() / "README.md").read_text()
    for kind in RAW_KINDS:
        assert get_spec(kind).unpack and get_spec(kind).unpack in readme, kind
