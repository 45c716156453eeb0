"""The package photo corpus: manifest, split, the Qt resource reader and the stored photos."""

import json
import struct
import zlib

import pytest
from PIL import Image

from darl_core.data import photos


def _rcc(files: dict[str, bytes], compress: set[str]) -> bytes:
    """A Qt resource bundle (format version 1) holding ``files`` (flat paths 'dir/name')."""
    names, name_off = b"", {}

    def name(n: str) -> int:
        nonlocal names
        if n not in name_off:
            name_off[n] = len(names)
            enc = n.encode("utf-16-be")
            names += struct.pack(">HI", len(n), zlib.crc32(enc)) + enc
        return name_off[n]

    tree_dirs: dict[str, list[str]] = {}
    for p in files:
        d, f = p.split("/")
        tree_dirs.setdefault(d, []).append(f)
    data, nodes = b"", []
    # node 0: root dir with the folders; then the folders; then their files
    dirs = sorted(tree_dirs)
    nodes.append(struct.pack(">IHII", 0, 2, len(dirs), 1))
    first = 1 + len(dirs)
    file_nodes = []
    for d in dirs:
        nodes.append(struct.pack(">IHII", name(d), 2, len(tree_dirs[d]), first))
        for f in sorted(tree_dirs[d]):
            blob = files[f"{d}/{f}"]
            flags = 0
            if f"{d}/{f}" in compress:
                blob, flags = struct.pack(">I", len(blob)) + zlib.compress(blob), 1
            file_nodes.append(struct.pack(">IHHHI", name(f), flags, 0, 0, len(data)))
            data += struct.pack(">I", len(blob)) + blob
        first += len(tree_dirs[d])
    tree = b"".join(nodes + file_nodes)
    head = 20
    return b"qres" + struct.pack(">IIII", 1, head, head + len(tree), head + len(tree) + len(data)) + tree + data + names


def test_rcc_reader_finds_plain_and_compressed_members() -> None:
    blob = _rcc({"img/a.webp": b"AAAA", "img/b.jpg": b"B" * 500, "doc/readme": b"hi"}, {"img/b.jpg"})
    assert photos.rcc_member(blob, "/img/a.webp") == b"AAAA"
    assert photos.rcc_member(blob, "/img/b.jpg") == b"B" * 500
    assert photos.rcc_member(blob, "doc/readme") == b"hi"
    with pytest.raises(KeyError):
        photos.rcc_member(blob, "/img/missing.jpg")
    with pytest.raises(ValueError):
        photos.rcc_member(b"nope" + blob[4:], "/img/a.webp")


def test_manifest_records_licence_and_enough_photos() -> None:
    m = photos.manifest()
    files = [(p, f) for p in m["packages"] for f in p["files"]]
    assert len(files) >= 200
    assert all(p["licence"] and p["version"] and p["manager"] in ("apt", "pip") for p, _ in files)
    assert all(min(f["width"], f["height"]) >= 384 and len(f["sha256"]) == 64 for _, f in files)
    assert "scikit-video" not in {p["name"] for p, _ in files} and "python3-skvideo" not in {p["name"] for p, _ in files}
    splits = [photos.split_of(p["name"], f["path"]) for p, f in files]
    assert splits.count("eval") >= 10 and splits.count("train") >= 200


def test_scene_variants_share_a_split() -> None:
    assert photos.scene_key("usr/share/x/Lake-day.jpg") == photos.scene_key("usr/share/x/lake-night.png") == "lake"
    assert photos.split_of("p", "a/Lake-day.jpg") == photos.split_of("p", "b/lake_night.jpg")


def test_stored_photos_are_read_by_split(tmp_path) -> None:
    Image.new("RGB", (900, 600), (10, 20, 30)).save(tmp_path / "big.png")
    photos._store(Image.open(tmp_path / "big.png"), tmp_path / "pkg" / "a.jpg")
    photos._store(Image.new("RGBA", (500, 500), (0, 0, 0, 0)), tmp_path / "pkg" / "b.jpg", rotation=90)
    assert Image.open(tmp_path / "pkg" / "a.jpg").size == (768, photos.MAX_SIDE)  # short side capped
    assert Image.open(tmp_path / "pkg" / "b.jpg").getpixel((5, 5)) == (255, 255, 255)  # alpha on white
    (tmp_path / "index.json").write_text(json.dumps([
        {"file": "pkg/a.jpg", "split": "train"}, {"file": "pkg/b.jpg", "split": "eval"}]))
    assert [n for n, _ in photos.train_images(tmp_path)] == ["pkg_a"]
    assert [n for n, _ in photos.eval_images(tmp_path)] == ["pkg_b"]
    assert photos.train_images(tmp_path / "nothing") == []
