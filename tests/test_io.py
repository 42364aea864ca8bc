"""repsim.core.io: atomic writes leave either the old or the new file, never half of one, and no temp files."""

import pytest

from repsim.core.io import atomic_write, atomic_write_text


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    assert atomic_write_text(path, "a,b\n1,2\n") == path and path.read_text() == "a,b\n1,2\n"

    def half_then_fail(tmp):
        tmp.write_text("a,b\n3")
        raise KeyboardInterrupt  # an interrupted writer (Ctrl-C) as well as an error

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "a,b\n1,2\n"  # the old complete file
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]  # no temporary left behind
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
