"""Test-only fault injection, imported at start-up by a server process that has this folder on its PYTHONPATH
(tests/serving/test_serving_faults.py): a full disk under one folder.

While the file named by ``$KFOPS_TEST_ENOSPC_SWITCH`` exists, a file opened for writing under
``$KFOPS_TEST_ENOSPC_DIR`` is created (a full disk usually still has inodes) but its descriptor is pointed at
``/dev/full``, so its writes fail in the kernel with ENOSPC, as they do on a disk with no free blocks. Without the
two variables nothing is changed.
"""

import builtins
import io
import os

_folder = os.environ.get("KFOPS_TEST_ENOSPC_DIR")
_switch = os.environ.get("KFOPS_TEST_ENOSPC_SWITCH")

if _folder and _switch:
    _root = os.path.realpath(_folder) + os.sep
    _real_open = io.open

    def _open(file, mode="r", *args, **kwargs):
        handle = _real_open(file, mode, *args, **kwargs)
        if (
            isinstance(file, str | bytes | os.PathLike)
            and any(flag in mode for flag in "wax+")
            and os.path.realpath(os.fsdecode(file)).startswith(_root)
            and os.path.exists(_switch)
        ):
            full = os.open("/dev/full", os.O_WRONLY)
            try:
                os.dup2(full, handle.fileno())
            finally:
                os.close(full)
        return handle

    io.open = _open
    builtins.open = _open
