"""Building layers, configs, manifests and indexes, a busybox root, and pushing over a fake
registry (httpx.MockTransport): upload flow, skipped blobs, Basic and Bearer challenges."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import zstandard

from tessera.agent.images import build as img
from tessera.agent.images.auth import Challenge, parse_challenges
from tessera.agent.images.push import Pusher, PushError, registry_url


def tar_members(blob: img.Blob) -> list[tarfile.TarInfo]:
    data = blob.read()
    if blob.media_type.endswith("+gzip"):
        data = gzip.decompress(data)
    elif blob.media_type.endswith("+zstd"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def uncompressed(blob: img.Blob) -> bytes:
    data = blob.read()
    if blob.media_type.endswith("+gzip"):
        return gzip.decompress(data)
    if blob.media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layer_has_its_digest_diff_id_and_media_type(compression: img.Compression) -> None:
    blob = img.build_layer([img.file("etc/hello", b"hi")], compression=compression)
    assert blob.digest == "sha256:" + hashlib.sha256(blob.read()).hexdigest()
    assert blob.size == len(blob.read())
    assert blob.diff_id == "sha256:" + hashlib.sha256(uncompressed(blob)).hexdigest()
    suffix = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compression]
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar" + suffix


def test_layers_are_reproducible() -> None:
    entries = [img.directory("etc"), img.file("etc/a", b"a" * 1000)]
    assert img.build_layer(entries).digest == img.build_layer(entries).digest
    assert img.build_layer(entries, compression="zstd").digest == (
        img.build_layer(entries, compression="zstd").digest
    )


def test_entries_keep_their_order_kinds_and_metadata() -> None:
    entries = [
        img.file("a/new", b"x", mode=0o4755, uid=1000, gid=100, mtime=1234),
        img.opaque("a"),
        img.whiteout("etc/secret.txt"),
        img.whiteout("top"),
        img.symlink("bin/sh", "/bin/busybox"),
        img.hardlink("etc/l3b", "etc/l3a"),
        img.directory("tmp", mode=0o1777),
        img.fifo("run/fifo"),
        img.device("dev/null", 1, 3),
        img.file("cap", xattrs={"security.capability": b"\x01\x00\x00\x02\xff\x00"}),
    ]
    members = tar_members(img.build_layer(entries))
    names = [m.name for m in members]
    assert names == [
        "a/new",
        "a/.wh..wh..opq",
        "etc/.wh.secret.txt",
        ".wh.top",
        "bin/sh",
        "etc/l3b",
        "tmp",
        "run/fifo",
        "dev/null",
        "cap",
    ]
    new = members[0]
    assert (new.mode, new.uid, new.gid, new.mtime) == (0o4755, 1000, 100, 1234)
    assert members[4].issym() and members[4].linkname == "/bin/busybox"
    assert members[5].islnk() and members[5].linkname == "etc/l3a"
    assert members[6].isdir() and members[6].mode == 0o1777
    assert members[7].isfifo()
    assert members[8].ischr() and (members[8].devmajor, members[8].devminor) == (1, 3)
    xattr = members[9].pax_headers["SCHILY.xattr.security.capability"]
    assert xattr.encode("utf-8", "surrogateescape") == b"\x01\x00\x00\x02\xff\x00"


def test_a_layer_from_a_tree_keeps_links_and_modes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_bytes(b"tool")
    (tree / "bin" / "tool").chmod(0o755)
    os.link(tree / "bin" / "tool", tree / "bin" / "tool2")
    (tree / "bin" / "sh").symlink_to("tool")
    members = {m.name: m for m in tar_members(img.build_layer(tree=tree, tree_mtime=5))}
    assert set(members) == {"bin", "bin/tool", "bin/tool2", "bin/sh"}
    assert members["bin/tool"].isreg() and members["bin/tool"].mode == 0o755
    assert members["bin/tool2"].islnk() and members["bin/tool2"].linkname == "bin/tool"
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert all(m.mtime == 5 for m in members.values())


def test_a_big_layer_can_be_written_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "layer.tar.zst"
    blob = img.build_layer([img.file("big", os.urandom(100_000))], compression="zstd", out=out)
    assert blob.data is None and blob.path == out
    assert blob.digest == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert b"".join(blob.chunks()) == out.read_bytes()


def test_an_oci_image_config_and_manifest() -> None:
    layers = [
        img.build_layer([img.file("a")]),
        img.build_layer([img.file("b")], compression="zstd"),
    ]
    config = img.ContainerConfig(
        env=("PATH=/bin", "A=1"),
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        user="nobody",
        working_dir="/www",
        exposed_ports=("80/tcp",),
    )
    image = img.build_image(layers, config=config, architecture="arm64", variant="v8")
    body = image.config.json()
    assert body["architecture"] == "arm64" and body["os"] == "linux" and body["variant"] == "v8"
    assert body["config"] == {
        "Env": ["PATH=/bin", "A=1"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "User": "nobody",
        "WorkingDir": "/www",
        "ExposedPorts": {"80/tcp": {}},
    }
    assert body["rootfs"] == {"type": "layers", "diff_ids": [x.diff_id for x in layers]}
    assert len(body["history"]) == 2
    manifest = image.manifest.json()
    assert manifest["mediaType"] == img.OCI_MANIFEST == image.manifest.media_type
    assert manifest["config"] == image.config.descriptor()
    assert manifest["config"]["mediaType"] == img.OCI_CONFIG
    assert [x["digest"] for x in manifest["layers"]] == [x.digest for x in layers]
    assert image.digest == "sha256:" + hashlib.sha256(image.manifest.read()).hexdigest()


def test_a_docker_schema_2_manifest_names_gzip_layers_the_docker_way() -> None:
    layers = [
        img.build_layer([img.file("a")]),
        img.build_layer([img.file("b")], compression="zstd"),
    ]
    manifest = img.build_image(layers, format="docker").manifest.json()
    assert manifest["mediaType"] == img.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == img.DOCKER_CONFIG
    assert [x["mediaType"] for x in manifest["layers"]] == [
        img.DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ]


def test_a_layer_without_diff_id_cannot_make_an_image() -> None:
    with pytest.raises(ValueError, match="diff_id"):
        img.build_image([img.Blob.of(img.OCI_LAYER, b"x")])


@pytest.mark.parametrize(
    ("format", "media_type"), [("oci", img.OCI_INDEX), ("docker", img.DOCKER_LIST)]
)
def test_an_index_of_two_platforms(format: img.ManifestFormat, media_type: str) -> None:
    layer = img.build_layer([img.file("a")])
    arm = img.build_image([layer], architecture="arm64", variant="v8", format=format)
    amd = img.build_image([layer], format=format)
    index = img.build_index([arm, amd], format=format)
    body = index.manifest.json()
    assert body["mediaType"] == media_type == index.manifest.media_type
    assert [(m["digest"], m["platform"]) for m in body["manifests"]] == [
        (arm.digest, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
        (amd.digest, {"architecture": "amd64", "os": "linux"}),
    ]


def test_static_elf_detection() -> None:
    assert not img.is_static_elf(Path(os.path.realpath(sys.executable)))
    assert not img.is_static_elf(Path(__file__))
    busybox = next((p for p in map(Path, img.BUSYBOX_CANDIDATES) if p.exists()), None)
    if busybox is None:
        pytest.skip("busybox not installed (apt-get install busybox-static)")
    assert img.is_static_elf(busybox) == ("statically linked" in _file_output(busybox))


def _file_output(path: Path) -> str:
    import subprocess

    try:
        return subprocess.run(["file", "-L", str(path)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("no `file` command to compare with")


def test_a_missing_or_dynamic_busybox_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(img.BusyboxUnavailable, match="busybox-static"):
        img.find_busybox(tmp_path / "busybox")
    with pytest.raises(img.BusyboxUnavailable, match="dynamically linked"):
        img.find_busybox(Path(os.path.realpath(sys.executable)))


def test_a_busybox_root_filesystem(tmp_path: Path) -> None:
    try:
        img.find_busybox()
    except img.BusyboxUnavailable as error:
        pytest.skip(str(error))
    root = img.busybox_rootfs(tmp_path / "root")
    assert os.access(root / "bin" / "busybox", os.X_OK)
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    assert "nobody:x:65534:65534:" in (root / "etc" / "passwd").read_text()
    assert "nobody:x:65534:" in (root / "etc" / "group").read_text()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    layer = img.build_layer(img.busybox_entries())
    names = {m.name for m in tar_members(layer)}
    assert {"bin/busybox", "bin/sh", "etc/passwd", "tmp"} <= names


# --- pushing -----------------------------------------------------------------------------------


class FakeRegistry:
    """Just enough of the distribution API, with optional Basic or Bearer auth."""

    def __init__(self, auth: str = "none", token_ttl_requests: int = 0) -> None:
        self.auth = auth
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.tokens = 0
        self.token_uses = 0
        self.token_ttl_requests = token_ttl_requests  # a token works for this many requests
        self.token_scopes: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if request.url.path == "/token":
            return self.token(request)
        refusal = self.check_auth(request)
        if refusal is not None:
            return refusal
        path = request.url.path
        if request.method == "HEAD" and "/blobs/" in path:
            return httpx.Response(200 if path.rsplit("/", 1)[1] in self.blobs else 404)
        if request.method == "POST" and path.endswith("/blobs/uploads/"):
            return httpx.Response(202, headers={"Location": f"{path}u1?_state=abc"})
        if request.method == "PUT" and "/blobs/uploads/" in path:
            digest = request.url.params["digest"]
            assert request.url.params["_state"] == "abc"
            body = request.read()
            assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
            self.blobs[digest] = body
            return httpx.Response(201)
        if request.method == "PUT" and "/manifests/" in path:
            body = request.read()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.manifests[path.rsplit("/", 1)[1]] = (request.headers["content-type"], body)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(404)

    def check_auth(self, request: httpx.Request) -> httpx.Response | None:
        given = request.headers.get("authorization", "")
        if self.auth == "basic":
            wanted = "Basic " + base64.b64encode(b"alice:secret").decode()
            if given != wanted:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer":
            valid = given == f"Bearer t{self.tokens}"
            if valid and self.token_ttl_requests:
                self.token_uses += 1
                valid = self.token_uses <= self.token_ttl_requests
            if not valid:
                challenge = (
                    'Bearer realm="http://fake/token",service="fake",scope="repository:x:pull"'
                )
                return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return None

    def token(self, request: httpx.Request) -> httpx.Response:
        if (
            request.headers.get("authorization")
            != "Basic " + base64.b64encode(b"alice:secret").decode()
        ):
            return httpx.Response(401)
        self.tokens += 1
        self.token_uses = 0
        self.token_scopes.append(f"{request.url.params['service']} {request.url.params['scope']}")
        return httpx.Response(200, json={"token": f"t{self.tokens}", "expires_in": 60})


def pusher(fake: FakeRegistry, **credentials: str) -> Pusher:
    client = httpx.Client(transport=httpx.MockTransport(fake.handler))
    return Pusher("fake", "team/app", client=client, **credentials)  # type: ignore[arg-type]


def small_image() -> img.Image:
    return img.build_image(
        [img.build_layer([img.file("a", b"a")]), img.build_layer([img.file("b")])]
    )


def test_an_anonymous_push_uploads_blobs_then_the_manifest() -> None:
    fake = FakeRegistry()
    image = small_image()
    assert pusher(fake).push(image, "v1") == image.digest
    assert set(fake.blobs) == {image.config.digest, *(x.digest for x in image.layers)}
    assert fake.manifests["v1"] == (img.OCI_MANIFEST, image.manifest.read())
    assert fake.requests[:3] == [
        f"HEAD /v2/team/app/blobs/{image.config.digest}",
        "POST /v2/team/app/blobs/uploads/",
        "PUT /v2/team/app/blobs/uploads/u1",
    ]


def test_blobs_the_registry_has_are_skipped() -> None:
    fake = FakeRegistry()
    image = small_image()
    fake.blobs[image.layers[0].digest] = image.layers[0].read()
    with pusher(fake) as sender:
        sender.push(image)
        assert image.layers[0].digest not in sender.uploaded
        assert len(sender.uploaded) == 2


def test_an_index_pushes_its_platform_manifests_by_digest_first() -> None:
    fake = FakeRegistry()
    layer = img.build_layer([img.file("a")])
    arm = img.build_image([layer], architecture="arm64", variant="v8")
    amd = img.build_image([layer])
    index = img.build_index([arm, amd])
    assert pusher(fake).push(index, "multi") == index.digest
    assert list(fake.manifests) == [arm.digest, amd.digest, "multi"]
    assert fake.manifests["multi"][0] == img.OCI_INDEX


def test_basic_auth_answers_the_challenge() -> None:
    fake = FakeRegistry("basic")
    image = small_image()
    pusher(fake, username="alice", password="secret").push(image)
    assert "latest" in fake.manifests
    with pytest.raises(PushError, match="wants credentials"):
        pusher(FakeRegistry("basic")).push(image)


def test_bearer_auth_gets_a_push_token_and_renews_it() -> None:
    fake = FakeRegistry("bearer", token_ttl_requests=3)
    image = small_image()
    pusher(fake, username="alice", password="secret").push(image)
    assert "latest" in fake.manifests
    assert fake.tokens > 1  # the token "expired" after 3 requests and was fetched again
    assert set(fake.token_scopes) == {"fake repository:team/app:pull,push"}


def test_a_refused_token_is_a_push_error() -> None:
    with pytest.raises(PushError, match="refused: 401"):
        pusher(FakeRegistry("bearer"), username="alice", password="wrong").push(small_image())


def test_challenges_and_urls() -> None:
    # The pusher reads challenges with the puller's parser.
    assert parse_challenges(
        ['Bearer realm="https://auth.io/token",service="registry.io",scope="a:b:pull"']
    ) == [
        Challenge(
            "bearer",
            {"realm": "https://auth.io/token", "service": "registry.io", "scope": "a:b:pull"},
        )
    ]
    assert parse_challenges(["Basic realm=fake"]) == [Challenge("basic", {"realm": "fake"})]
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("https://r.example/") == "https://r.example"


def test_manifest_json_is_compact_and_stable() -> None:
    image = small_image()
    assert (
        image.manifest.read() == json.dumps(image.manifest.json(), separators=(",", ":")).encode()
    )
