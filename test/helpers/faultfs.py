#!/usr/bin/python3
# A pass-through FUSE file system for fault tests: MNT shows ROOT, and every
# operation goes to ROOT, unless the control file names it for a path. The
# control file (read again at every operation) has a line per fault:
#   OP REGEX        e.g.  fsync /tmp/    read \.desc$    open /cas/
# OP is one of fsync (fsync and fdatasync of a file), fdatasync (that one
# only), read, write, open,
# getattr, readdir, rename, unlink, create, fsyncdir (fsync of a directory),
# truncate, mkdir, statfs; the operation on a path (as seen
# from MNT's root, starting with /) that REGEX matches (re.search) fails with
# EIO. The faults are the kernel's real errors to the process: a failed
# fdatasync is an EIO from fdatasync(2), as a failing disk gives. OP
# prefixed with "slow" (slowread, slowopen, ...) does not fail: the operation
# waits 10 ms first, as on a slow disk.
#
# Usage: faultfs.py ROOT MNT CONTROL (runs in the foreground until unmounted;
# prints "ready" once mounted). Debian: python3-fusepy (module fusepy).
import errno
import os
import re
import sys
import threading
import time

try:
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:  # fusepy from PyPI names its module fuse
    from fuse import FUSE, FuseOSError, Operations


class Faults:
    """The control file, read again at every operation (a test changes it between two calls)."""

    def __init__(self, control):
        self.control = control

    def check(self, op, path):
        try:
            with open(self.control) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and parts[0] == op and re.search(parts[1], path):
                raise FuseOSError(errno.EIO)
            if len(parts) == 2 and parts[0] == 'slow' + op and re.search(parts[1], path):
                time.sleep(0.01)


class FaultFS(Operations):
    def __init__(self, root, faults):
        self.root = os.path.realpath(root)
        self.faults = faults

    def _p(self, path):
        return os.path.join(self.root, path.lstrip('/'))

    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._p(path), uid, gid)

    def create(self, path, mode, fi=None):
        self.faults.check('create', path)
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self.faults.check('fsync', path)
        if datasync:
            self.faults.check('fdatasync', path)
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        self.faults.check('fsyncdir', path)
        return 0

    def getattr(self, path, fh=None):
        self.faults.check('getattr', path)
        st = os.lstat(self._p(path))
        return {k: getattr(st, k) for k in ('st_atime', 'st_ctime', 'st_gid', 'st_mode', 'st_mtime', 'st_nlink', 'st_size', 'st_uid', 'st_ino')}

    def link(self, target, source):
        return os.link(self._p(source), self._p(target))

    def mkdir(self, path, mode):
        self.faults.check('mkdir', path)
        return os.mkdir(self._p(path), mode)

    def mknod(self, path, mode, dev):
        return os.mknod(self._p(path), mode, dev)

    def open(self, path, flags):
        self.faults.check('open', path)
        return os.open(self._p(path), flags)

    def read(self, path, size, offset, fh):
        self.faults.check('read', path)
        return os.pread(fh, size, offset)

    def readdir(self, path, fh):
        self.faults.check('readdir', path)
        return ['.', '..'] + os.listdir(self._p(path))

    def readlink(self, path):
        return os.readlink(self._p(path))

    def release(self, path, fh):
        return os.close(fh)

    def rename(self, old, new):
        self.faults.check('rename', old)
        return os.rename(self._p(old), self._p(new))

    def rmdir(self, path):
        return os.rmdir(self._p(path))

    def statfs(self, path):
        self.faults.check('statfs', path)
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ('f_bavail', 'f_bfree', 'f_blocks', 'f_bsize', 'f_favail', 'f_ffree', 'f_files', 'f_flag', 'f_frsize', 'f_namemax')}

    def symlink(self, target, source):
        return os.symlink(source, self._p(target))

    def truncate(self, path, length, fh=None):
        self.faults.check('truncate', path)
        if fh is not None:
            return os.ftruncate(fh, length)
        with open(self._p(path), 'r+') as f:
            f.truncate(length)

    def unlink(self, path):
        self.faults.check('unlink', path)
        return os.unlink(self._p(path))

    def utimens(self, path, times=None):
        return os.utime(self._p(path), times)

    def write(self, path, data, offset, fh):
        self.faults.check('write', path)
        return os.pwrite(fh, data, offset)


def main():
    root, mnt, control = sys.argv[1:4]

    def ready():
        # Mounted once MNT's device differs from its parent's.
        for _ in range(500):
            try:
                if os.stat(mnt).st_dev != os.stat(os.path.dirname(os.path.abspath(mnt))).st_dev:
                    print('ready', flush=True)
                    return
            except OSError:
                pass
            time.sleep(0.01)

    threading.Thread(target=ready, daemon=True).start()
    # No attribute or name caching in the kernel: every lookup and stat reaches the checks.
    FUSE(FaultFS(root, Faults(control)), mnt, foreground=True, nothreads=False, allow_other=False, use_ino=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == '__main__':
    main()
