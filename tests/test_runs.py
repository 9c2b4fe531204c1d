"""``tfbnas.runs``: run folders and their atomic JSON records."""

import json
import os

import numpy as np
import pytest

from tfbnas.runs import RunDirError, append_rows, make_run_dir, read_rows, write_json, write_rows


def test_write_json_turns_numpy_into_numbers_and_other_objects_into_text(tmp_path):
    path = str(tmp_path / "summary.json")
    write_json(path, {"top1": np.float32(0.5), "steps": np.int64(3), "probs": np.array([0.25, 0.75]),
                      "where": tmp_path, "b": True, "none": None}, sort_keys=True)
    got = json.loads(open(path).read())
    assert got == {"top1": 0.5, "steps": 3, "probs": [0.25, 0.75], "where": str(tmp_path), "b": True,
                   "none": None}
    assert list(got) == sorted(got)


def test_a_failed_write_keeps_the_old_record_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "summary.json")
    write_json(path, {"stage": "search"})
    circular = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(path, circular)
    assert json.loads(open(path).read()) == {"stage": "search"}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_make_run_dir_refuses_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="pass a writable --output_dir"):
        make_run_dir(str(blocker / "run"), "search")
    assert os.path.isdir(make_run_dir(str(tmp_path / "ok"), "search"))


def test_csv_records_grow_columns_and_keep_the_given_fields(tmp_path):
    path = str(tmp_path / "history.csv")
    assert read_rows(path) == []
    append_rows(path, [{"epoch": 1, "loss": 1.0}])
    append_rows(path, [{"epoch": 2, "loss": 0.5, "arch_ce": 0.7}])
    assert open(path).readline().strip() == "epoch,loss,arch_ce"
    assert read_rows(path) == [{"epoch": "1", "loss": "1.0", "arch_ce": ""},
                               {"epoch": "2", "loss": "0.5", "arch_ce": "0.7"}]
    write_rows(path, [{"phase": "child", "epoch": 1, "extra": "dropped"}], fields=["phase", "epoch", "lr"])
    assert read_rows(path) == [{"phase": "child", "epoch": "1", "lr": ""}]
    assert os.listdir(tmp_path) == ["history.csv"]
