"""A clean root file system holding only a .deb's dependency closure, without containers.

`make_root(deb, root)` resolves the package's Depends (and Pre-Depends) recursively against the
packages installed on this Debian host, copies exactly their files (from `dpkg-query -L`, as
hard links where possible) into `root`, then unpacks the .deb there (like `dpkg -x`). A missing
dependency in the .deb's metadata therefore shows up as a missing module in the chroot.
`Chroot` mounts /proc (the agent reads /proc/net and netlink) and runs commands inside.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

_ALTERNATIVE = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9]+)?\s*(?:\(([<>=]+)\s*([^)]+)\))?\s*$")


def _query(package: str, fmt: str) -> Optional[str]:
    proc = subprocess.run(["dpkg-query", "-W", "-f", fmt, package], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def installed_version(package: str) -> Optional[str]:
    """The installed version of `package`, or None (also None for 'config-files' leftovers)."""
    out = _query(package, "${db:Status-Status} ${Version}")
    if not out or not out.startswith("installed "):
        return None
    return out.split(" ", 1)[1]


def _provider(name: str) -> Optional[str]:
    """An installed package that Provides `name` (virtual packages)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Provides}\n"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        package, _, provides = line.partition(" ")
        if any(p.split("(")[0].strip() == name for p in provides.split(",")) and installed_version(package):
            return package
    return None


def _satisfied(version: str, op: Optional[str], wanted: Optional[str]) -> bool:
    if not op:
        return True
    op = {"<": "<=", ">": ">="}.get(op, op)  # the historical forms
    return subprocess.run(["dpkg", "--compare-versions", version, {"<<": "lt", "<=": "le", "=": "eq",
                                                                    ">=": "ge", ">>": "gt"}[op], wanted]
                          ).returncode == 0


def resolve(depends: str) -> List[str]:
    """Installed packages satisfying a Depends field: the first satisfied alternative of each."""
    chosen = []
    for clause in filter(None, (c.strip() for c in depends.split(","))):
        for alternative in clause.split("|"):
            match = _ALTERNATIVE.match(alternative)
            if not match:
                raise ValueError(f"cannot parse dependency {alternative!r}")
            name, op, wanted = match.groups()
            version = installed_version(name)
            if version is not None and _satisfied(version, op, wanted):
                chosen.append(name)
                break
            provider = None if op else _provider(name)
            if provider:
                chosen.append(provider)
                break
        else:
            raise LookupError(f"dependency {clause!r} is not installed on this host "
                              f"(apt-get install the packages named in it)")
    return chosen


def closure(depends: str) -> Set[str]:
    """Every installed package needed, recursively, to satisfy `depends`."""
    seen: Set[str] = set()
    todo = resolve(depends)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        fields = _query(package, "${Pre-Depends}, ${Depends}") or ""
        todo.extend(resolve(fields))
    return seen


def _files(package: str) -> Iterable[str]:
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("/")]


def _copy(src: str, root: Path) -> None:
    dest = root / src.lstrip("/")
    if os.path.islink(src):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(dest):
            os.symlink(os.readlink(src), dest)
    elif os.path.isdir(src):
        dest.mkdir(parents=True, exist_ok=True)
    elif os.path.isfile(src):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)


def _merged_usr(root: Path) -> None:
    """Debian 12 is merged-/usr: /bin, /lib... are symlinks into /usr. Mirror the host's links."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            target = os.readlink(host)
            (root / name).parent.joinpath(target).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def make_root(deb: Path, root: Path, extra: Iterable[str] = ()) -> Set[str]:
    """Build the clean root for `deb` (plus `extra` packages); returns the packages copied."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # pytest makes 0700 dirs; the unprivileged user must traverse / too
    _merged_usr(root)
    depends = ", ".join(filter(None, [deb_field(deb, "Pre-Depends"), deb_field(deb, "Depends"), *extra]))
    packages = closure(depends)
    for package in sorted(packages):
        for path in _files(package):
            _copy(path, root)
    for name in ("proc", "tmp", "dev", "etc", "run"):
        (root / name).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    unpack(deb, root)
    return packages


def unpack(deb: Path, root: Path) -> None:
    """`dpkg -x`, but keeping directory symlinks (/lib -> usr/lib) as `dpkg -i` does."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], input=data, check=True)


class Chroot:
    """Run commands in `root` with /proc mounted; unmounts on close."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = root / "proc"
        subprocess.run(["mount", "-t", "proc", "proc", str(self.proc)], check=True)

    def run(self, *argv: str, env: Optional[Dict[str, str]] = None, user: Optional[str] = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside; `user` ("uid:gid") drops root (and with it every capability)."""
        env = env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        userspec = [f"--userspec={user}"] if user else []
        return subprocess.run(["chroot", *userspec, str(self.root), *argv], env=env, capture_output=True, **kwargs)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.proc)], check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
