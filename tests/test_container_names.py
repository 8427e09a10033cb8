"""container_names.ContainerNames on files laid out as the kubelet, docker and
podman lay them out (tests/test_runtimes.py checks the real runtimes')."""

from __future__ import annotations

import json
import os

import pytest

from tcpconnect import container_names
from tcpconnect.container_names import ContainerNames

pytestmark = pytest.mark.host_only
ID = "4f8a" + "0123456789abcdef" * 3 + "cafe0123abcd"
OTHER = "e" * 64


@pytest.fixture
def node(tmp_path):
    for d in ("docker/containers", "storage/overlay-containers", "containers"):
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


def names(node) -> ContainerNames:
    return ContainerNames(str(node / "docker"), str(node / "storage"), str(node / "containers"))


def test_the_kubelets_link_names_the_container_in_its_pod(node):
    (node / "containers" / f"web-5d8c7b9f4-abcde_shop_app-{ID}.log").symlink_to("/nowhere")
    (node / "containers" / f"web_shop_sidecar-{OTHER}.log").symlink_to("/nowhere")
    assert names(node).name(ID) == "app"
    assert names(node).name(OTHER) == "sidecar"
    assert names(node).name("0" * 64) is None


def test_dockers_config_names_the_container(node):
    (node / "docker/containers" / ID).mkdir()
    (node / "docker/containers" / ID / "config.v2.json").write_text(
        json.dumps({"ID": ID, "Name": "/web"}))
    assert names(node).name(ID) == "web"


def test_podmans_list_names_the_container_and_is_read_again_when_it_changes(node):
    listing = node / "storage/overlay-containers/containers.json"
    listing.write_text(json.dumps([{"id": ID, "names": ["web", "alias"]}]))
    looked_up = names(node)
    assert looked_up.name(ID) == "web"
    assert looked_up.name(OTHER) is None
    listing.write_text(json.dumps([{"id": ID, "names": ["web"]}, {"id": OTHER, "names": ["db"]}]))
    os.utime(listing, ns=(1, 1))
    assert looked_up.name(OTHER) == "db"


@pytest.mark.parametrize("content", [
    "not json", json.dumps({"Name": 7}), json.dumps(["Name"]), json.dumps({"Name": "/"}),
])
def test_malformed_docker_configs_give_no_name(node, content):
    (node / "docker/containers" / ID).mkdir()
    (node / "docker/containers" / ID / "config.v2.json").write_text(content)
    assert names(node).name(ID) is None


@pytest.mark.parametrize("content", [
    "{", json.dumps({"id": ID}), json.dumps([7, {"id": ID}, {"id": ID, "names": []}]),
    json.dumps([{"id": 7, "names": ["x"]}, {"id": ID, "names": [7]}]),
])
def test_malformed_podman_lists_give_no_name(node, content):
    (node / "storage/overlay-containers/containers.json").write_text(content)
    assert names(node).name(ID) is None


def test_oversized_files_are_not_read(node, monkeypatch):
    monkeypatch.setattr(container_names, "MAX_FILE_BYTES", 64)
    (node / "docker/containers" / ID).mkdir()
    (node / "docker/containers" / ID / "config.v2.json").write_text(
        json.dumps({"Name": "/web", "padding": "x" * 100}))
    assert names(node).name(ID) is None


def test_kubelet_links_of_another_shape_name_nothing(node):
    (node / "containers" / f"no-underscores-{ID}.log").symlink_to("/nowhere")
    (node / "containers" / f"a_b_c_d-{ID}.log").symlink_to("/nowhere")
    assert names(node).name(ID) is None


def test_a_node_without_any_of_them_names_nothing(tmp_path):
    assert ContainerNames(str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
                          ).name(ID) is None
