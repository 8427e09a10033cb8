"""Which service, container or pod a cgroup id belongs to.

The kernel side reports only the numeric cgroup v2 id of the connecting task.
User space turns it into the cgroup's path and reads the names that systemd,
container runtimes and the kubelet give their cgroups. See docs/containers.md
("Attribution") for the rules and the choices made.

Usable on its own (the Prometheus exporter labels by it):

    resolver = CgroupResolver()
    resolver.lookup(cgroup_id).container_id
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
from typing import Callable, NamedTuple

from .cache import BoundedCache
from .container_names import ContainerNames

# Distinct cgroup ids whose attribution is kept. A cgroup id is never reused
# (it is a 64-bit kernfs node id), so an entry never goes stale; the bound is
# only for hosts that create cgroups without end (a CI runner, a job system).
# Full, the cache is emptied rather than kept in LRU order: lookup() on a hit
# then costs 0.08-0.16 us (0.32 us through cachetools' LRUCache; see
# docs/containers.md), a live cgroup costs one more resolution (~10-15 us)
# after a clear, and -j needs no package beyond the standard library.
CACHE_SIZE = 4096
# Where the kubelet keeps container logs, one directory per pod named
# <namespace>_<pod>_<uid>; the only place on a node that maps a pod's uid to
# its name without asking the API server.
POD_LOG_ROOT = "/var/log/pods"

# open_by_handle_at(2) with a kernfs file handle: type FILEID_KERNFS, 8 bytes,
# the cgroup id (what systemd and bpftool do to go from an id to a cgroup).
FILEID_KERNFS = 0xFE
_HANDLE = struct.Struct("=IiQ")  # struct file_handle: handle_bytes, handle_type, f_handle
_libc = ctypes.CDLL(None, use_errno=True)
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int

_HEX64 = r"[0-9a-f]{64}"
# Runtime scopes of the systemd cgroup driver: docker, containerd (CRI),
# CRI-O, podman. crio-conmon-<id>.scope is CRI-O's monitor, not the container.
_RUNTIME_SCOPE = re.compile(rf"(?:docker|cri-containerd|crio|libpod)-({_HEX64})\.scope")
_BARE_ID = re.compile(_HEX64)
# The cgroupfs driver puts containers at /docker/<id> and /kubepods/.../<id>
# (deeper when nested, or seen through a cgroup namespace).
_CGROUPFS_PARENTS = {"docker", "kubepods"}
# podman's cgroupfs manager (any host without systemd): /libpod_parent/libpod-<id>,
# a pod's containers at /libpod_parent/<pod id>/libpod-<id> (the pod id is no
# container's).
_PODMAN_CGROUPFS = re.compile(rf"libpod-({_HEX64})")
_PODMAN_PARENT = "libpod_parent"
# A pod's uid is a UUID, or 32 hex digits for a static pod; the systemd
# driver writes its dashes as underscores (a dash means nesting in a slice
# name).
_UID = r"[0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12}"
# A kubelet with another cgroup root prefixes it: kubelet-kubepods-... (kind).
_POD_SLICE = re.compile(rf"(?:[a-z0-9]+-)*kubepods(?:-[a-z]+)*-pod({_UID})\.slice")
_POD_DIR = re.compile(rf"pod({_UID})")
_UNIT_SUFFIXES = (".service", ".scope")


class PathNames(NamedTuple):
    """What a cgroup path itself says."""

    unit: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None


class Attribution(NamedTuple):
    """Everything known about one cgroup; None where nothing is. Strings are
    as the file system holds them (a name may contain anything but "/"):
    escape them before they reach a terminal."""

    cgroup: str | None = None  # relative to the cgroup2 mount, "/" for the root
    unit: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    pod: str | None = None
    namespace: str | None = None
    container_name: str | None = None  # see container_names.py

    @property
    def short(self) -> str | None:
        """The text column: the container's name, else its short id, else the
        unit."""
        if self.container_id:
            return self.container_name or self.container_id[:12]
        return self.unit


def parse_cgroup_path(path: str) -> PathNames:
    """The unit, container id and pod uid a cgroup v2 path names. The deepest
    match wins, so a container nested in another (kind, a CI job in docker)
    is attributed to the inner one."""
    parts = [part for part in path.split("/") if part]
    unit = container_id = pod_uid = None
    for depth in range(len(parts) - 1, -1, -1):
        part = parts[depth]
        if unit is None and part.endswith(_UNIT_SUFFIXES):
            unit = part
        if container_id is None:
            match = _RUNTIME_SCOPE.fullmatch(part) or (
                _PODMAN_CGROUPFS.fullmatch(part) if _PODMAN_PARENT in parts[:depth] else None)
            if match:
                container_id = match.group(1)
            elif _BARE_ID.fullmatch(part) and not _CGROUPFS_PARENTS.isdisjoint(parts[:depth]):
                container_id = part
        if pod_uid is None:
            match = _POD_SLICE.fullmatch(part) or (
                _POD_DIR.fullmatch(part) if "kubepods" in parts[:depth] else None)
            if match:
                pod_uid = match.group(1).replace("_", "-")
    return PathNames(unit, container_id, pod_uid)


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(mount point, root of the mount within the hierarchy) of the first
    cgroup2 mount: /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified
    in systemd's hybrid mode. The root is not "/" in a container whose cgroup
    namespace or bind mount shows only part of the hierarchy."""
    try:
        with open(mountinfo, "rb") as lines:
            for line in lines:
                fields = line.split()
                sep = fields.index(b"-")
                if fields[sep + 1] == b"cgroup2":
                    return _unescape(fields[4]), _unescape(fields[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _unescape(field: bytes) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


class CgroupResolver:
    """cgroup id -> Attribution, with a bounded cache (see CACHE_SIZE).

    A cgroup that is gone when first looked up gives Attribution() (all
    None): its id is all the tool knows. One that was looked up while it
    existed keeps its last known path until the cache is next emptied."""

    def __init__(self, mount: tuple[str, str] | None = None, pod_log_root: str = POD_LOG_ROOT,
                 cache_size: int = CACHE_SIZE, names: ContainerNames | None = None) -> None:
        found = mount or cgroup2_mount()
        self._mount_point, self._mount_root = found if found else (None, "/")
        self._pod_log_root = pod_log_root
        self._names = names or ContainerNames()
        self._cache = BoundedCache(lambda cgroup_id: self._attribute(self.path(cgroup_id)),
                                   cache_size)
        self._mount_fd: int | None = None
        # Filled by tree walks once open_by_handle_at turned out to be unusable.
        self._walked: dict[int, str] | None = None
        self._find: Callable[[int], str | None] = self._by_handle

    def close(self) -> None:
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None

    def lookup(self, cgroup_id: int) -> Attribution:
        return self._cache[cgroup_id]

    def path(self, cgroup_id: int) -> str | None:
        """The cgroup's path relative to the cgroup2 mount, None if it is gone
        (or no cgroup2 hierarchy is mounted)."""
        if self._mount_point is None or not cgroup_id:
            return None
        absolute = self._find(cgroup_id)
        if absolute is None:
            return None
        relative = absolute[len(self._mount_point):]
        return (self._mount_root.rstrip("/") + relative) or "/"

    def _by_handle(self, cgroup_id: int) -> str | None:
        if self._mount_fd is None:
            try:
                self._mount_fd = os.open(self._mount_point, os.O_RDONLY | os.O_DIRECTORY
                                         | os.O_CLOEXEC)
            except OSError:
                return None
        fd = _libc.open_by_handle_at(self._mount_fd, _HANDLE.pack(8, FILEID_KERNFS, cgroup_id),
                                     os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ESTALE, errno.ENOENT):
                return None
            # No CAP_DAC_READ_SEARCH, or a kernel that cannot decode the
            # handle: fall back to walking the tree from now on.
            self._find = self._by_walk
            return self._by_walk(cgroup_id)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        # Removed between the two calls: the kernel appends this, and the
        # path before it is the cgroup's last.
        if target.endswith(" (deleted)") and not os.path.lexists(target):
            target = target[:-len(" (deleted)")]
        return target if target.startswith(self._mount_point) else None

    def _by_walk(self, cgroup_id: int) -> str | None:
        """A cgroup directory's inode number is its id. Each miss rewalks the
        tree (~30 us per cgroup; new ones must be found), and a cgroup gone
        meanwhile stays a miss, which the cache then remembers."""
        if self._walked is None or cgroup_id not in self._walked:
            assert self._mount_point is not None
            self._walked = walked = {}
            try:
                walked[os.stat(self._mount_point).st_ino] = self._mount_point
            except OSError:
                return None
            stack = [self._mount_point]
            while stack:
                try:
                    with os.scandir(stack.pop()) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                walked[entry.inode()] = entry.path
                                stack.append(entry.path)
                except OSError:
                    continue  # removed while walking
        return self._walked.get(cgroup_id)

    def _attribute(self, path: str | None) -> Attribution:
        if path is None:
            return Attribution()
        names = parse_cgroup_path(path)
        pod = namespace = None
        if names.pod_uid:
            namespace, pod = self._pod_of(names.pod_uid)
        name = self._names.name(names.container_id) if names.container_id else None
        return Attribution(path, names.unit, names.container_id, names.pod_uid, pod, namespace,
                           name)

    def _pod_of(self, uid: str) -> tuple[str | None, str | None]:
        """(namespace, pod name) from the kubelet's log directory of the pod.
        Namespaces and pod names are DNS names, which hold no "_"."""
        suffix = "_" + uid
        try:
            with os.scandir(self._pod_log_root) as entries:
                for entry in entries:
                    if entry.name.endswith(suffix):
                        namespace, sep, pod = entry.name[:-len(suffix)].partition("_")
                        if sep and namespace and pod:
                            return namespace, pod
        except OSError:
            pass
        return None, None
