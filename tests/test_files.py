"""core/files.py: file modes without touching the umask; several outputs all or none."""
import os

import pytest

from soilssl.core import files
from soilssl.core.errors import InputError
from soilssl.core.files import atomic_write_text


@pytest.fixture
def umask_027(monkeypatch):
    """The process umask is 027 and nobody may change it (another thread could be
    creating files at that moment)."""
    old = os.umask(0o027)

    def forbidden(*a):
        raise AssertionError("os.umask called: it changes the umask of every thread")

    monkeypatch.setattr(os, "umask", forbidden)
    yield
    monkeypatch.undo()
    os.umask(old)


def test_published_files_get_the_umask_mode_and_the_umask_is_never_changed(tmp_path, umask_027):
    path = atomic_write_text("hello", str(tmp_path / "a.txt"))
    assert open(path).read() == "hello"
    assert os.stat(path).st_mode & 0o777 == 0o640
    with files.Outputs() as out:
        tmp = out.stage(str(tmp_path / "b.txt"))
        assert os.stat(tmp).st_mode & 0o777 == 0o600  # private while being written
        with open(tmp, "w") as f:
            f.write("b")
        out.commit()
    assert os.stat(tmp_path / "b.txt").st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_outputs_publish_all_together_or_none(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with files.Outputs() as out:
            _write(out.stage(str(tmp_path / "old.txt")), "new")
            shp = out.stage(str(tmp_path / "layer.shp"), folder=True)
            assert os.path.basename(shp) == "layer.shp"  # the writer sees the final name
            for ext in (".shp", ".dbf", ".shx"):
                _write(shp[:-4] + ext, ext)
            raise RuntimeError("the third output failed")
    assert sorted(os.listdir(tmp_path)) == ["old.txt"]  # nothing published, nothing left
    assert (tmp_path / "old.txt").read_text() == "old"

    with files.Outputs() as out:
        _write(out.stage(str(tmp_path / "old.txt")), "new")
        shp = out.stage(str(tmp_path / "layer.shp"), folder=True)
        for ext in (".shp", ".dbf", ".shx"):
            _write(shp[:-4] + ext, ext)
        assert sorted(os.listdir(tmp_path)) != ["layer.dbf", "layer.shp", "layer.shx", "old.txt"]
        assert out.commit() == [str(tmp_path / "old.txt"), str(tmp_path / "layer.shp")]
    assert sorted(os.listdir(tmp_path)) == ["layer.dbf", "layer.shp", "layer.shx", "old.txt"]
    assert (tmp_path / "old.txt").read_text() == "new"
    assert (tmp_path / "layer.dbf").read_text() == ".dbf"


def test_outputs_a_staged_output_never_written_publishes_nothing(tmp_path):
    with pytest.raises(InputError, match="was not written"):
        with files.Outputs() as out:
            _write(out.stage(str(tmp_path / "a.txt")), "a")
            out.stage(str(tmp_path / "b.gpkg"), folder=True)  # its writer wrote nothing
            out.commit()
    assert os.listdir(tmp_path) == []


def test_outputs_into_an_unwritable_folder_say_so(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(InputError, match="Cannot write into folder"):
            with files.Outputs() as out:
                out.stage(str(ro / "x.gpkg"), folder=True)
    finally:
        ro.chmod(0o700)


def test_is_local_file():
    assert files.is_local_file("/data/out.gpkg") and files.is_local_file("out.gpkg")
    assert not files.is_local_file("memory:points")
    assert not files.is_local_file("ogr:dbname='/a.gpkg' table=t")
    assert not files.is_local_file("postgres://user@host/db")
    assert not files.is_local_file("") and not files.is_local_file(None)
