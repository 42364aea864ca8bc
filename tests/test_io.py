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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    """Defect 4 of issue 32: every output was 0600 (mkstemp's mode) whatever the umask."""
    import os
    import stat

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repsim.core.io import atomic_save_figure

    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "table.csv", "a\n1\n")
        fig = plt.figure()
        figure = atomic_save_figure(fig, tmp_path / "heatmap.png")
        plt.close(fig)
        atomic_write_text(text, "a\n2\n")  # a rewrite gets the same mode
        reference = tmp_path / "plain.txt"
        reference.write_text("x")  # what any other tool gives a new file
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(reference.stat().st_mode) == expected
    assert stat.S_IMODE(text.stat().st_mode) == expected
    assert stat.S_IMODE(figure.stat().st_mode) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.png", "plain.txt", "table.csv"]
