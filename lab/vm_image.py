"""What the director VM boots: Debian's kernel (unpacked by scripts/setup.sh) and an initramfs.

The kernel lives unpacked under `.cache/kernel/root` (boot/vmlinuz-*, lib/modules/*). qemu
boots the uncompressed vmlinux through its PVH entry point, which skips the xz decompression
that costs seconds under software emulation; it is cut out of the bzImage once and cached.

The initramfs is built here, not by a tool: a static busybox, the few modules needed to mount
the machine's root over 9p (virtio-pci and the 9p stack, in dependency order) and the init
script `vm-initramfs.sh`. It is cached under a name that hashes everything that goes into it.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_CACHE = Path(os.environ.get("SHOAL_VM_KERNEL_CACHE", REPO_ROOT / ".cache" / "kernel"))
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# What the initramfs needs to reach the 9p root; everything else is loaded from the root later.
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
_XZ_MAGIC = b"\xfd7zXZ\x00"


class VmImageError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class BootImage:
    """The files qemu is given: kernel, initramfs, and where the guest finds its modules."""

    release: str  # e.g. 6.1.0-50-amd64
    kernel: Path
    initramfs: Path
    modules_dir: Path  # .../lib/modules (holds <release>/), bind-mounted at /lib/modules


def kernel_root() -> Path:
    return KERNEL_CACHE / "root"


def kernel_release() -> str:
    """The release of the unpacked kernel; raises when setup.sh has not unpacked one."""
    modules = kernel_root() / "lib" / "modules"
    releases = sorted(p.name for p in modules.glob("*") if (p / "modules.dep").is_file())
    if not releases or not (kernel_root() / "boot" / f"vmlinuz-{releases[-1]}").is_file():
        raise VmImageError(
            f"no unpacked kernel with modules.dep under {kernel_root()} (run scripts/setup.sh)"
        )
    return releases[-1]


def find_busybox() -> Path:
    """A statically linked busybox (the initramfs has no libc); busybox-static provides it."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _is_static_elf(path):
            return path
    raise VmImageError("no statically linked busybox found (install busybox-static)")


def _is_static_elf(path: Path) -> bool:
    """An x86-64 ELF without a PT_INTERP program header (no dynamic loader needed)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":  # 64-bit ELF
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") != pt_interp
        for i in range(phnum)
    )


def vmlinux(release: str) -> Path:
    """The uncompressed kernel (cut out of the xz-compressed bzImage once, then cached)."""
    target = KERNEL_CACHE / f"vmlinux-{release}"
    if target.is_file():
        return target
    data = (kernel_root() / "boot" / f"vmlinuz-{release}").read_bytes()
    start = data.find(_XZ_MAGIC)
    if start < 0:
        raise VmImageError(f"vmlinuz-{release} holds no xz-compressed kernel")
    # The xz stream is followed by other bytes of the bzImage: the decompressor stops at its end.
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    if elf[:4] != b"\x7fELF":
        raise VmImageError(f"vmlinuz-{release} did not decompress to an ELF kernel")
    _write_atomically(target, elf)
    return target


def module_closure(modules_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Relative .ko paths of `names` and their dependencies, each after what it depends on."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (modules_dir / "modules.builtin").read_text().split()
    }
    ordered: list[str] = []

    def visit(path: str) -> None:
        if path in ordered:
            return
        for dep in deps[path]:
            visit(dep)
        ordered.append(path)

    for name in names:
        if name in builtin:
            continue
        if name not in by_name:
            raise VmImageError(f"module {name} is neither built in nor in {modules_dir}")
        visit(by_name[name])
    return ordered


def initramfs_init_script() -> Path:
    return Path(str(resources.files("lab").joinpath("vm-initramfs.sh")))


def boot_image() -> BootImage:
    """Everything qemu needs, building what is not cached yet."""
    release = kernel_release()
    modules_dir = kernel_root() / "lib" / "modules"
    kos = module_closure(modules_dir / release, ROOT_MODULES)
    busybox = find_busybox()
    init = initramfs_init_script().read_bytes()
    digest = hashlib.sha256(init)
    digest.update(busybox.read_bytes())
    digest.update("\n".join(kos).encode())
    target = KERNEL_CACHE / f"initramfs-{release}-{digest.hexdigest()[:12]}.cpio"
    if not target.is_file():
        _write_atomically(target, _initramfs(init, busybox, modules_dir / release, kos))
    return BootImage(release, vmlinux(release), target, modules_dir)


def _initramfs(init: bytes, busybox: Path, release_dir: Path, kos: list[str]) -> bytes:
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules"):
        archive.add(d, stat.S_IFDIR | 0o755)
    # The kernel opens /dev/console for init before any devtmpfs exists.
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, init)
    for i, ko in enumerate(kos):
        # Numbered so the init can load them in dependency order with a plain glob.
        name = f"modules/{i:02d}-{Path(ko).name}"
        archive.add(name, stat.S_IFREG | 0o644, (release_dir / ko).read_bytes())
    return archive.finish()


class _Cpio:
    """An uncompressed newc cpio archive (the kernel's initramfs format), written in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._parts.append(_pad(header + name.encode() + b"\0"))
        self._parts.append(_pad(data))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self._parts)


def _pad(chunk: bytes) -> bytes:
    return chunk + b"\0" * (-len(chunk) % 4)


def _write_atomically(target: Path, data: bytes) -> None:
    # Two test sessions, or two VMs of one lab booting concurrently (threads of one process),
    # may build the same file at once: each writes its own temp file, one rename wins.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def qemu_binary() -> Path:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise VmImageError("qemu-system-x86_64 not found (install qemu-system-x86)")
    return Path(found)
