"""A full disk, real (a small tmpfs) and planted: one line naming the file system, the path and
how much more is needed; nothing half-written stays."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

from tasks.core.atomic import staged_dir
from tasks.core.disk import check_free, file_system, mount_point, no_space_message, writing
from tasks.image.shards import write_shards


def test_a_real_full_disk_names_the_file_system_and_the_target_and_leaves_no_staging(small_fs):
    folder = small_fs(2)
    target = folder / "data" / "prepared"
    images = (np.zeros((64, 64, 3), np.uint8) for _ in range(1000))  # 12 MB into 2 MB
    with pytest.raises(OSError) as raised, writing(target), staged_dir(target) as staging:
        write_shards(staging / "unlabeled", images, image_size=64, count=1000)
    err = raised.value
    assert err.errno == errno.ENOSPC and err.filename == str(target)
    assert no_space_message(err) == (
        f"no space left on {folder} (tmpfs) while writing {target}; free some space and run the same command again"
    )
    assert list((folder / "data").iterdir()) == []  # the staging folder went with the failure
    assert shutil.disk_usage(folder).used < 2**20


def test_the_check_before_writing_says_how_much_more_is_needed(small_fs):
    folder = small_fs(10)
    check_free(folder / "data" / "prepared", 1 * 2**20)  # fits, with the margin
    with pytest.raises(OSError) as raised:
        check_free(folder / "data" / "prepared", 30 * 2**20)
    line = no_space_message(raised.value)
    assert line.startswith(f"no space left on {folder} (tmpfs) while writing {folder / 'data' / 'prepared'} (needs about ")
    assert "(needs about 28 MB more)" in line  # 30 MB + the 8 MB margin - 10 MB free


def test_the_file_system_of_a_path_not_made_yet_is_its_nearest_mount(tmp_path):
    assert mount_point(tmp_path / "not" / "yet") == mount_point(tmp_path)
    assert str(mount_point(tmp_path)) in file_system(tmp_path / "not" / "yet")


def test_writing_leaves_other_errors_alone(tmp_path):
    with pytest.raises(PermissionError), writing(tmp_path):
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(OSError) as raised, writing(tmp_path / "x"):
        raise OSError(errno.ENOSPC, "No space left on device", "/already/named")
    assert raised.value.filename == "/already/named"
