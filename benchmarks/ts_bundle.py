"""Pack TorchServe (+ archiver, orjson) and a trimmed Java runtime for a GPU host without internet, and unpack them.

Small enough to copy along with the repository: the torchserve wheel (42 MB) holds a 46 MB jar whose classes
compress poorly as a zip (per-entry deflate) but well as one xz stream, and a jlink runtime without its own
compression xz-compresses to a few MB: together ~25 MB. ``unpack`` (on the GPU host) rebuilds the jar with zipfile;
the classpath does not care about entry order or compression.

  python -m benchmarks.ts_bundle pack --wheels .whl --out .tsbundle        # with internet: needs jlink and pip
  python -m benchmarks.ts_bundle unpack --bundle .tsbundle --home ~        # on the GPU host: ~/tssite, ~/jre
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

JAR = Path("ts") / "frontend" / "model-server.jar"
JAVA_MODULES = ("java.base,java.logging,java.management,java.naming,java.sql,java.xml,java.desktop,jdk.unsupported,"
                "java.scripting,java.net.http,jdk.crypto.ec,java.security.jgss,java.instrument,jdk.management")


def pack(wheels: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "site"
        # The GPU hosts measured run CPython 3.12 on x86_64 manylinux: install for that, whatever runs this.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                        str(site), "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        *map(str, sorted(wheels.glob("*.whl")))], check=True)
        jar_dir = root / "jar"
        with zipfile.ZipFile(site / JAR) as jar:
            jar.extractall(jar_dir)
        (site / JAR).unlink()
        with tarfile.open(out / "ts.tar.xz", "w:xz", preset=6) as tar:
            tar.add(site, "site")
            tar.add(jar_dir, "jar")
        jre = root / "jre"
        subprocess.run(["jlink", "--strip-debug", "--no-header-files", "--no-man-pages", "--compress=0",
                        "--add-modules", JAVA_MODULES, "--output", str(jre)], check=True)
        with tarfile.open(out / "jre.tar.xz", "w:xz", preset=6) as tar:
            tar.add(jre, "jre")
    for name in ("ts.tar.xz", "jre.tar.xz"):
        print(f"{out / name}: {(out / name).stat().st_size / 1e6:.1f} MB")


def unpack(bundle: Path, home: Path) -> None:
    site, jre = home / "tssite", home / "jre"
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(bundle / "ts.tar.xz") as tar:
            tar.extractall(tmp, filter="tar")
        shutil.rmtree(site, ignore_errors=True)
        shutil.move(os.path.join(tmp, "site"), site)
        jar_dir = Path(tmp) / "jar"
        with zipfile.ZipFile(site / JAR, "w", zipfile.ZIP_STORED) as jar:
            manifest = jar_dir / "META-INF" / "MANIFEST.MF"
            if manifest.exists():  # conventionally first; Java's jar tools look for it there
                jar.write(manifest, "META-INF/MANIFEST.MF")
            for path in sorted(jar_dir.rglob("*")):
                name = path.relative_to(jar_dir).as_posix()
                if path == manifest:
                    continue
                jar.write(path, name + "/" if path.is_dir() else name)
    shutil.rmtree(jre, ignore_errors=True)
    with tarfile.open(bundle / "jre.tar.xz") as tar:
        tar.extractall(home, filter="tar")
    print(f"TorchServe in {site}, Java runtime in {jre}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build ts.tar.xz and jre.tar.xz")
    p.add_argument("--wheels", type=Path, default=Path(".whl"))
    p.add_argument("--out", type=Path, default=Path(".tsbundle"))
    u = sub.add_parser("unpack", help="install them under HOME/tssite and HOME/jre")
    u.add_argument("--bundle", type=Path, default=Path(".tsbundle"))
    u.add_argument("--home", type=Path, default=Path.home())
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.wheels, args.out)
    else:
        unpack(args.bundle, args.home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
