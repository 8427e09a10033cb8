"""Container names where the node keeps them, without calling a runtime's API
(no socket, no credentials, nothing that blocks on a busy daemon):

- the kubelet's links /var/log/containers/<pod>_<namespace>_<container>-<id>.log
  (any CRI runtime on a Kubernetes node): the container's name in its pod;
- docker's <data root>/containers/<id>/config.v2.json, its "Name";
- podman's (containers-storage) overlay-containers/containers.json, the first
  of an entry's "names".

Looked up once per new cgroup (the resolver caches attributions), each
bounded: a directory listing, or one file read of at most MAX_FILE_BYTES.
Anything unreadable, malformed or absent gives None, never an error: a
name is a convenience beside the id. Names are chosen by whoever starts a
container; they are escaped where they are printed, like every other string.
"""

from __future__ import annotations

import json
import os

DOCKER_ROOT = "/var/lib/docker"
PODMAN_STORAGE = "/var/lib/containers/storage"
KUBELET_CONTAINER_LOGS = "/var/log/containers"
MAX_FILE_BYTES = 16 << 20


def _read_json(path: str) -> object:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return json.loads(data)


class ContainerNames:
    def __init__(self, docker_root: str = DOCKER_ROOT, podman_storage: str = PODMAN_STORAGE,
                 kubelet_logs: str = KUBELET_CONTAINER_LOGS) -> None:
        self._docker_root = docker_root
        self._podman_list = os.path.join(podman_storage, "overlay-containers",
                                         "containers.json")
        self._kubelet_logs = kubelet_logs
        # podman's list, by id, as of the file's (mtime, size) in _podman_stamp.
        self._podman: dict[str, str] = {}
        self._podman_stamp: tuple[int, int] | None = None

    def name(self, container_id: str) -> str | None:
        return (self._from_kubelet(container_id) or self._from_docker(container_id)
                or self._from_podman(container_id))

    def _from_kubelet(self, container_id: str) -> str | None:
        suffix = f"-{container_id}.log"
        try:
            with os.scandir(self._kubelet_logs) as entries:
                for entry in entries:
                    if entry.name.endswith(suffix):
                        # Pod and namespace names hold no "_"; the container's may not either.
                        parts = entry.name[:-len(suffix)].split("_")
                        if len(parts) == 3 and all(parts):
                            return parts[2]
        except OSError:
            pass
        return None

    def _from_docker(self, container_id: str) -> str | None:
        try:
            config = _read_json(os.path.join(self._docker_root, "containers", container_id,
                                             "config.v2.json"))
        except (OSError, ValueError):
            return None
        name = config.get("Name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            return None
        return name.lstrip("/") or None

    def _from_podman(self, container_id: str) -> str | None:
        try:
            stat = os.stat(self._podman_list)
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._podman_stamp:
            self._podman_stamp, self._podman = stamp, {}
            try:
                entries = _read_json(self._podman_list)
            except (OSError, ValueError):
                return None
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                names = entry.get("names")
                if isinstance(entry.get("id"), str) and isinstance(names, list) and names \
                        and isinstance(names[0], str):
                    self._podman[entry["id"]] = names[0]
        return self._podman.get(container_id)
