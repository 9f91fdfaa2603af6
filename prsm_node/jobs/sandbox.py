"""The worker's sandbox on Linux: namespaces that hide the node's data dir, /proc and the network.

The worker runs as the node's uid, so file modes alone cannot keep a job away from
``node.key`` or ``node.sock``; a job that exploits a bug in the tensor code would read them.

Rules:
1. ``enter`` runs inside the worker process, first thing (worker.py), while the process is
   still single-threaded (the kernel refuses ``CLONE_NEWUSER`` otherwise) and before any
   job input is read. It either completes or raises ``SandboxError``: it never leaves a
   half-isolated process that claims to be isolated.
2. Namespaces: a new user namespace, always (root included: capabilities are then relative
   to it and grant nothing on the host), a mount namespace and a network namespace. The
   uid and gid map to themselves; setgroups is denied (required when unprivileged).
3. Mounts: all made private first (nothing propagates back to the host). Each hidden dir
   (the node's data dir: key, control socket, block store, ledger) is covered by an empty
   read-only tmpfs; a work dir under it is bind-mounted back at its own path (the daemon's
   work root is ``<data_dir>/jobs``). The process then changes into the work dir again:
   ``..`` from the old cwd would walk into the covered directory.
4. ``/proc`` is covered too, by a read-only tmpfs holding only the worker's own
   ``/proc/<pid>`` (also as ``self``) and ``cpuinfo``, ``meminfo``, ``stat``, ``devices``,
   ``sys`` and ``driver`` (torch's cpuinfo, glibc and the NVIDIA driver read them; CUDA in
   the sandbox is not yet tried on a GPU machine). ``/proc/<pid>/root``
   of a process of the same uid (the node, the shell that started it) would lead back into
   the host's mounts, past the tmpfs; the user namespace already denies that (no
   CAP_SYS_PTRACE in the node's namespace, measured: EACCES), the cover is the second
   wall and also hides the host's process table (command lines name the data dir). Binds
   are detached copies (``open_tree``, Linux 5.2) taken before the cover.
5. Last, the worker gives up every capability (bounding set, effective, permitted,
   inheritable; ``no_new_privs``), so job code cannot unmount the covers; a nested user
   namespace cannot either, because the mounts it inherits are locked by the kernel.
6. The network namespace has only a loopback that is down: no peers, no TCP on 127.0.0.1,
   no abstract Unix sockets of the node. Path-bound Unix sockets cross network namespaces,
   which is why the data dir must be hidden (rule 3), not only the network.

``python -I -m prsm_node.jobs.sandbox`` enters a sandbox and exits 0, or prints why it
cannot and exits 1: the node's one-time probe of what the kernel allows (``probe``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
COVER_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429
"""The same numbers on every architecture (new syscalls are numbered once, since 5.x)."""
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAPABILITY_VERSION_3 = 0x20080522
CAPABILITY_LAST_MAX = 63
PROC_FILES = ("cpuinfo", "meminfo", "stat", "devices")
PROC_DIRS = ("sys", "driver")
PROBE_TIMEOUT_S = 30.0
"""A probe is a bare interpreter start plus a few syscalls (~50 ms); 30 s covers a loaded
machine without stalling the node's start for long when something hangs."""


class SandboxError(Exception):
    """The kernel refused a step of the sandbox; names the step."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"sandbox {step}: {reason}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(step: str, result: int) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise SandboxError(step, os.strerror(error))
    return result


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as stream:
            stream.write(text)
    except OSError as error:
        raise SandboxError(f"write {path}", str(error)) from None


def _encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None,
           flags: int, data: str | None = None) -> None:
    _check(f"mount {target}", libc.mount(_encode(source), _encode(target), _encode(fstype),
                                         ctypes.c_ulong(flags), _encode(data)))


def _clone_tree(libc: ctypes.CDLL, path: str) -> int:
    """A detached bind mount of ``path`` (rule 4), to be attached after the cover."""
    return _check(f"open_tree {path}", libc.syscall(
        SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)))


def _attach(libc: ctypes.CDLL, tree: int, target: str) -> None:
    _check(f"move_mount {target}", libc.syscall(
        SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)))
    os.close(tree)


def _cover(libc: ctypes.CDLL, target: str) -> None:
    """An empty tmpfs over ``target``, writable until ``_seal``."""
    _mount(libc, "prsm-sandbox", target, "tmpfs", COVER_FLAGS, "size=64k,mode=0755")


def _seal(libc: ctypes.CDLL, target: str) -> None:
    _mount(libc, None, target, None, MS_REMOUNT | MS_RDONLY | COVER_FLAGS)


def _enter_namespaces(libc: ctypes.CDLL) -> None:
    """Rule 2."""
    uid, gid = os.getuid(), os.getgid()
    _check("unshare", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET))
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)


def _hide(libc: ctypes.CDLL, hidden: Sequence[str], work: str) -> None:
    """Rule 3: cover each hidden dir; put the work dir back where it was."""
    for folder in hidden:
        if work == folder or folder.startswith(work + "/"):
            raise SandboxError("hide", f"{folder} is inside the work dir {work}")
    for folder in hidden:
        if not os.path.isdir(folder):
            continue
        inside = work.startswith(folder + "/")
        tree = _clone_tree(libc, work) if inside else None
        _cover(libc, folder)
        if tree is not None:
            os.makedirs(work, mode=0o700)
            _attach(libc, tree, work)
        _seal(libc, folder)
    os.chdir(work)


def _replace_proc(libc: ctypes.CDLL) -> None:
    """Rule 4."""
    pid = str(os.getpid())
    entries = [name for name in (*PROC_FILES, *PROC_DIRS) if os.path.exists(f"/proc/{name}")]
    trees = {name: _clone_tree(libc, f"/proc/{name}") for name in entries}
    trees |= {name: _clone_tree(libc, f"/proc/{pid}") for name in (pid, "self")}
    _cover(libc, "/proc")
    for name, tree in trees.items():
        target = f"/proc/{name}"
        if name in PROC_FILES:
            Path(target).touch(mode=0o444)
        else:
            os.mkdir(target, mode=0o555)
        _attach(libc, tree, target)
    _seal(libc, "/proc")


def _capability_last() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAPABILITY_LAST_MAX


def _drop_capabilities(libc: ctypes.CDLL, last: int) -> None:
    """Rule 5."""
    for capability in range(last + 1):
        _check("capbset_drop", libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0))
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check("capset", libc.capset(ctypes.byref(header), data))
    _check("no_new_privs", libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def enter(hidden: Sequence[str | Path], work: str | Path) -> None:
    """Isolate this process (rules 1-6); ``work`` is the work dir (and becomes the cwd)."""
    if sys.platform != "linux":
        raise SandboxError("platform", f"namespaces are Linux-only, not {sys.platform}")
    libc = _libc()
    work_path = os.path.realpath(work)
    hidden_paths = [os.path.realpath(folder) for folder in hidden]
    last = _capability_last()  # read while /proc is still whole
    _enter_namespaces(libc)
    _hide(libc, hidden_paths, work_path)
    _replace_proc(libc)
    _drop_capabilities(libc, last)


def probe(python: str = sys.executable) -> str | None:
    """None when a worker started with ``python`` can enter a sandbox; else why not.
    Runs a throwaway process: the node itself is multi-threaded and must stay as it is."""
    try:
        completed = subprocess.run(
            [python, "-I", "-m", "prsm_node.jobs.sandbox"], stdin=subprocess.DEVNULL,
            capture_output=True, timeout=PROBE_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"},
            cwd="/", check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the probe did not run: {error}"
    if completed.returncode == 0:
        return None
    lines = completed.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:300] if lines else f"the probe exited with {completed.returncode}"


def main() -> int:
    try:
        enter((), os.getcwd())
    except SandboxError as error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
