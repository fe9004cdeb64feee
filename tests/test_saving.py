"""atomic_write: the one way files and folders are written all at once (saved configs, cards, checkpoints, tables)."""

import pytest

from modeling_vqshape.saving_vqshape import atomic_write, write_json


def test_a_file_is_replaced_only_when_the_write_succeeds(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"b": 1, "a": [2]})
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_write(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text().startswith('{\n  "a"')  # the old content, and no temporary left behind
    assert [item.name for item in tmp_path.iterdir()] == ["config.json"]


def test_a_folder_replaces_the_old_one_and_other_ranks_do_not_commit(tmp_path):
    final = tmp_path / "checkpoint-4"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_write(final, commit=False) as temporary:  # another rank writes into the same temporary folder
        temporary.mkdir()
        (temporary / "rank1").write_text("1")
    assert (final / "old").exists() and temporary.is_dir()
    with atomic_write(final) as same:
        assert same == temporary
        (same / "rank0").write_text("0")
    assert sorted(item.name for item in final.iterdir()) == ["rank0", "rank1"]
    assert [item.name for item in tmp_path.iterdir()] == ["checkpoint-4"]
