#!/usr/bin/env python3
"""Throw-away, single-node Ceph RADOS Gateway (a real S3 implementation) for tests.

Stdlib only.  Subcommands:

  install                      fetch the Debian ceph packages with `apt-get download`
                               and unpack them with `dpkg -x` into a cache directory
                               (no system install of ceph); install the ordinary shared
                               libraries they link against with apt-get.
  start --dir RUNDIR [--port N]
                               one ceph-mon + one ceph-osd (memstore) + radosgw (beast),
                               all on 127.0.0.1; creates an S3 user; prints ONE JSON line.
  stop --dir RUNDIR            stop the daemons by their recorded PIDs, delete RUNDIR.

Cache directory: --cache DIR, else $STEPMAP_CEPH_CACHE, else <repo>/.cache/ceph.
Progress and diagnostics go to stderr; only `start` prints (JSON) on stdout.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CACHE = os.path.join(REPO, ".cache", "ceph")

# Ceph packages unpacked (dpkg -x) into the cache.  What each one is for:
#   ceph-mon   ceph-mon
#   ceph-osd   ceph-osd
#   radosgw    radosgw, libradosgw.so.2
#   ceph-common  ceph-authtool, radosgw-admin, compressor/crypto plugins
#   ceph-base  monmaptool, the OSD object classes (cls_rgw, cls_lock, ...),
#              erasure-code plugins (preloaded by mon and osd)
#   librados2  librados.so.2, libceph-common.so.2
CEPH_PACKAGES = ["ceph-mon", "ceph-osd", "radosgw", "ceph-common", "ceph-base", "librados2"]

# Library packages that are built from the ceph source package: they are never
# installed on the system (the ones we need are unpacked above; the others are
# only needed by ceph tools we do not use: rbd, cephfs-*, ...).
CEPH_BUILT_LIBS = {
    "librados2", "librgw2", "libradosstriper1", "librbd1", "libcephfs2",
    "libsqlite3-mod-ceph", "librados-dev", "python3-rados", "python3-rbd",
    "python3-cephfs", "python3-rgw",
}

# Binaries that must load (all their shared libraries resolved) for a usable install.
REQUIRED_BINARIES = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph-authtool", "monmaptool"]

# Everything else in usr/bin is deleted after unpacking.
KEEP_BINARIES = set(REQUIRED_BINARIES) | {"ceph-conf", "rados", "osdmaptool", "crushtool"}

MARKER = ".installed.json"
MARKER_FORMAT = 1

DEFAULT_ACCESS_KEY = "STEPMAPTESTACCESSKEY"
DEFAULT_SECRET_KEY = "stepmapTestSecretKey0123456789abcdefABCD"
REGION = "us-east-1"

# Pools radosgw's default zone uses.  Created up front by `start` (one mon
# connection, fast) instead of lazily by radosgw, which costs ~2 s per pool and
# makes the first CreateBucket / PutObject / CreateMultipartUpload slow.
RGW_POOLS = [
    ".rgw.root",
    "default.rgw.control",
    "default.rgw.meta",
    "default.rgw.log",
    "default.rgw.buckets.index",
    "default.rgw.buckets.data",
    "default.rgw.buckets.non-ec",
]

PIDS_FILE = "pids"
RUN_MARKER = ".s3server"


def log(msg: str) -> None:
    print(f"[s3server] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


# ----------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------

def cache_dir(args) -> str:
    d = getattr(args, "cache", None) or os.environ.get("STEPMAP_CEPH_CACHE") or DEFAULT_CACHE
    return os.path.abspath(d)


def root_dir(cache: str) -> str:
    return os.path.join(cache, "root")


def lib_dirs(cache: str) -> list[str]:
    root = root_dir(cache)
    hits = glob.glob(os.path.join(root, "usr", "lib", "*", "librados.so.2"))
    if not hits:
        raise Fail(f"librados.so.2 not found under {root}: run `install` first")
    libdir = os.path.dirname(hits[0])
    return [libdir, os.path.join(libdir, "ceph")]


def ceph_env(cache: str) -> dict:
    env = dict(os.environ)
    libs = lib_dirs(cache)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = ":".join(libs + ([old] if old else []))
    env["PATH"] = os.path.join(root_dir(cache), "usr", "bin") + ":" + env.get("PATH", "/usr/bin:/bin")
    # ceph tools print nothing useful in other locales; keep messages parseable.
    env["LC_ALL"] = "C"
    return env


def binpath(cache: str, name: str) -> str:
    return os.path.join(root_dir(cache), "usr", "bin", name)


def run(cmd: list[str], *, env=None, timeout=None, check=True, capture=True, cwd=None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, timeout=timeout, cwd=cwd, text=True,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None)
    if check and p.returncode != 0:
        out = ((p.stdout or "") + (p.stderr or "")).strip()
        raise Fail(f"command failed ({p.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return p


def binaries_load(cache: str) -> tuple[bool, str]:
    """True if every required binary runs (`--version`), i.e. all its libraries resolve."""
    try:
        env = ceph_env(cache)
    except Fail as e:
        return False, str(e)
    for b in REQUIRED_BINARIES:
        path = binpath(cache, b)
        if not os.path.exists(path):
            return False, f"{path} missing"
        try:
            p = subprocess.run([path, "--version"], env=env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"{b}: {e}"
        if p.returncode != 0:
            return False, f"{b} --version failed: {(p.stdout + p.stderr).strip()[-2000:]}"
    return True, ""


def missing_libraries(cache: str) -> list[str]:
    """Sonames the required binaries cannot resolve (ldd), for diagnostics."""
    env = ceph_env(cache)
    missing = set()
    for b in REQUIRED_BINARIES:
        p = subprocess.run(["ldd", binpath(cache, b)], env=env, capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if "not found" in line:
                missing.add(line.split()[0])
    return sorted(missing)


_apt_updated = False


def apt_update() -> None:
    global _apt_updated
    if _apt_updated:
        return
    log("apt-get update")
    run(["apt-get", "update"], env=apt_env(), timeout=600)
    _apt_updated = True


def apt_env() -> dict:
    env = dict(os.environ)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env["LC_ALL"] = "C"
    return env


def apt_download(pkgs: list[str], dest: str) -> None:
    # _apt cannot write into arbitrary directories; download as the current user.
    cmd = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *pkgs]
    p = run(cmd, env=apt_env(), cwd=dest, timeout=900, check=False)
    if p.returncode != 0:
        log("apt-get download failed; refreshing package lists and retrying")
        apt_update()
        run(cmd, env=apt_env(), cwd=dest, timeout=900)


def deb_field(deb: str, field: str) -> str:
    return run(["dpkg-deb", "-f", deb, field]).stdout.strip()


def library_dependencies(debs: list[str]) -> list[str]:
    """Ordinary Debian library packages the unpacked ceph packages depend on."""
    libs = set()
    for deb in debs:
        for field in ("Depends", "Pre-Depends"):
            for alt in deb_field(deb, field).split(","):
                name = alt.split("|")[0].split("(")[0].strip().split(":")[0]
                if not name or name in CEPH_BUILT_LIBS:
                    continue
                if name.startswith("lib") or name == "zlib1g":
                    libs.add(name)
    return sorted(libs)


def installed(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip().endswith(" installed")


def apt_install(pkgs: list[str]) -> None:
    if not pkgs:
        return
    if os.geteuid() != 0:
        raise Fail("these Debian packages are missing and installing them needs root: "
                   + " ".join(pkgs))
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *pkgs]
    log("apt-get install " + " ".join(pkgs))
    p = run(cmd, env=apt_env(), timeout=1800, check=False)
    if p.returncode != 0:
        log("apt-get install failed; refreshing package lists and retrying")
        apt_update()
        run(cmd, env=apt_env(), timeout=1800)


def cmd_install(args) -> int:
    cache = cache_dir(args)
    os.makedirs(cache, exist_ok=True)
    t0 = time.monotonic()
    with open(os.path.join(cache, ".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)   # concurrent installers (xdist workers) wait here
        marker = os.path.join(cache, MARKER)
        if os.path.exists(marker) and not args.force:
            try:
                with open(marker) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                info = {}
            if info.get("format") == MARKER_FORMAT and info.get("packages") == CEPH_PACKAGES:
                ok, why = binaries_load(cache)
                if ok:
                    log(f"ceph {info.get('version', '?')} already installed in {cache}")
                    return 0
                log(f"installed tree is not usable ({why}); repairing")
                # missing system libraries: reinstall them below
                apt_install([p for p in info.get("libraries", []) if not installed(p)])
                ok, why = binaries_load(cache)
                if ok:
                    return 0
        # fresh install
        if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
            raise Fail("apt-get/dpkg not found: this installer needs a Debian/Ubuntu machine")
        debdir = os.path.join(cache, "debs")
        root = root_dir(cache)
        shutil.rmtree(debdir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(marker):
            os.unlink(marker)
        os.makedirs(debdir)
        log("apt-get download " + " ".join(CEPH_PACKAGES))
        apt_download(CEPH_PACKAGES, debdir)
        debs = sorted(glob.glob(os.path.join(debdir, "*.deb")))
        versions = {deb_field(d, "Package"): deb_field(d, "Version") for d in debs}
        missing = [p for p in CEPH_PACKAGES if p not in versions]
        if missing:
            raise Fail(f"apt-get download did not fetch: {missing}")
        if len(set(versions.values())) != 1:
            raise Fail(f"inconsistent ceph package versions: {versions}")
        version = next(iter(versions.values()))
        os.makedirs(root)
        for deb in debs:
            log(f"dpkg -x {os.path.basename(deb)}")
            run(["dpkg", "-x", deb, root])
        libs = library_dependencies(debs)
        todo = [p for p in libs if not installed(p)]
        apt_install(todo)
        ok, why = binaries_load(cache)
        if not ok:
            raise Fail(f"ceph binaries do not run: {why}\nunresolved libraries: {missing_libraries(cache)}")
        # the .debs are not needed any more (the unpacked tree is what we use)
        shutil.rmtree(debdir, ignore_errors=True)
        # trim what we never use (~100 MB): docs, ceph-volume, systemd units and
        # the tools other than the ones start needs (plus a few for debugging)
        for sub in ("usr/share/doc", "usr/share/man", "lib/systemd", "usr/lib/python3"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        bindir = os.path.join(root, "usr", "bin")
        for name in os.listdir(bindir):
            if name not in KEEP_BINARIES:
                os.unlink(os.path.join(bindir, name))
        info = {"format": MARKER_FORMAT, "version": version, "packages": CEPH_PACKAGES,
                "libraries": libs}
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, marker)
        log(f"ceph {version} installed in {cache} ({time.monotonic() - t0:.1f} s)")
    return 0


# ----------------------------------------------------------------------------
# monitor commands through librados (ctypes, run in a child process)
# ----------------------------------------------------------------------------

def _mon_child(args) -> int:
    """Hidden subcommand: run mon commands with librados' C API via ctypes.

    Runs in its own process (LD_LIBRARY_PATH set by the parent) so a librados
    abort cannot take `start` down without cleanup.
    """
    libdir = args.libdir
    ctypes.CDLL(os.path.join(libdir, "ceph", "libceph-common.so.2"), mode=ctypes.RTLD_GLOBAL)
    r = ctypes.CDLL(os.path.join(libdir, "librados.so.2"))
    cl = ctypes.c_void_p()

    def ck(rc, what):
        if rc < 0:
            raise SystemExit(f"librados {what} failed: {os.strerror(-rc)} ({rc})")

    ck(r.rados_create2(ctypes.byref(cl), b"ceph", b"client.admin", ctypes.c_uint64(0)), "create")
    ck(r.rados_conf_read_file(cl, args.conf.encode()), "conf_read_file")
    ck(r.rados_conf_set(cl, b"client_mount_timeout", str(args.timeout).encode()), "conf_set")
    ck(r.rados_conf_set(cl, b"rados_mon_op_timeout", str(args.timeout).encode()), "conf_set")
    ck(r.rados_connect(cl), "connect")

    def mon_command(cmd: dict) -> tuple[int, str, str]:
        cmds = (ctypes.c_char_p * 1)(json.dumps(cmd).encode())
        outbuf, outs = ctypes.c_char_p(), ctypes.c_char_p()
        outlen, outslen = ctypes.c_size_t(), ctypes.c_size_t()
        rc = r.rados_mon_command(cl, cmds, ctypes.c_size_t(1), None, ctypes.c_size_t(0),
                                 ctypes.byref(outbuf), ctypes.byref(outlen),
                                 ctypes.byref(outs), ctypes.byref(outslen))
        out = ctypes.string_at(outbuf, outlen.value).decode(errors="replace") if outlen.value else ""
        err = ctypes.string_at(outs, outslen.value).decode(errors="replace") if outslen.value else ""
        if outlen.value:
            r.rados_buffer_free(outbuf)
        if outslen.value:
            r.rados_buffer_free(outs)
        return rc, out, err

    results = []
    for c in args.commands:
        cmd = json.loads(c)
        rc, out, err = mon_command(cmd)
        if rc < 0:
            print(json.dumps({"command": cmd, "rc": rc, "error": err}), flush=True)
            return 1
        results.append({"command": cmd["prefix"], "out": out})
    if args.wait_osd_up:
        deadline = time.monotonic() + args.wait_osd_up
        while True:
            rc, out, err = mon_command({"prefix": "osd stat", "format": "json"})
            if rc == 0:
                stat = json.loads(out)
                if stat.get("num_up_osds", 0) >= 1 and stat.get("num_in_osds", 0) >= 1:
                    break
            if time.monotonic() > deadline:
                print(json.dumps({"error": "timed out waiting for the OSD to come up", "last": out}))
                return 1
            time.sleep(0.2)
    print(json.dumps({"results": results}), flush=True)
    r.rados_shutdown(cl)
    return 0


def mon_commands(cache: str, rundir: str, commands: list[dict], *, wait_osd_up: float = 0,
                 timeout: float = 60) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "_mon", "--conf", os.path.join(rundir, "ceph.conf"),
           "--libdir", lib_dirs(cache)[0], "--timeout", str(int(timeout))]
    if wait_osd_up:
        cmd += ["--wait-osd-up", str(wait_osd_up)]
    cmd += [json.dumps(c) for c in commands]
    p = subprocess.run(cmd, env=ceph_env(cache), capture_output=True, text=True,
                       timeout=timeout + wait_osd_up + 30)
    if p.returncode != 0:
        raise Fail(f"mon command failed: {(p.stdout + p.stderr).strip()[-3000:]}")


# ----------------------------------------------------------------------------
# start / stop
# ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def write_conf(rundir: str, cache: str, fsid: str, mon_port: int, rgw_port: int, memstore_mb: int) -> None:
    libdir = lib_dirs(cache)[0]
    d = rundir
    run_d = os.path.join(d, "run")
    # unix socket paths are limited to 107 bytes; drop admin sockets if too deep
    asok = os.path.join(run_d, "$name.asok")
    asok = asok if len(asok.replace("$name", "client.rgw")) < 100 else ""
    mime = "/etc/mime.types" if os.path.exists("/etc/mime.types") else os.path.join(d, "mime.types")
    conf = f"""# generated by tools/s3server/s3server.py
[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{mon_port}]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = {d}/keyring.$name
run_dir = {run_d}
crash_dir = {d}/crash
log_file = {d}/log/$name.log
log_to_file = true
log_to_stderr = false
err_to_stderr = true
mon_cluster_log_file = {d}/log/cluster.log
admin_socket = {asok}
pid_file =
plugin_dir = {libdir}/ceph
erasure_code_dir = {libdir}/ceph/erasure-code
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_osd_full_ratio = 0.99
mon_osd_backfillfull_ratio = 0.98
mon_osd_nearfull_ratio = 0.97

[client]
admin_socket =
log_file = {d}/log/$name.$pid.log

[mon]
mon_data = {d}/mon.$id
keyring = {d}/mon.$id/keyring
mon_allow_pool_delete = true
paxos_propose_interval = 0.1
mon_osd_auto_mark_new_in = true

[osd]
osd_data = {d}/osd.$id
keyring = {d}/keyring.$name
osd_objectstore = memstore
memstore_device_bytes = {memstore_mb * 1024 * 1024}
osd_class_dir = {libdir}/rados-classes
osd_class_load_list = *
osd_class_default_list = *
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_max_object_name_len = 460
osd_max_object_namespace_len = 64
osd_scrub_begin_hour = 0
osd_scrub_end_hour = 0

[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw_data = {d}/rgw
rgw_thread_pool_size = 16
rgw_mime_types_file = {mime}
rgw_dynamic_resharding = false
rgw_enable_usage_log = false
rgw_log_nonexistent_bucket = true
# memstore keeps objects in RAM: let garbage collection free deleted data soon
rgw_gc_obj_min_wait = 60
rgw_gc_processor_period = 60
rgw_keystone_url =
"""
    with open(os.path.join(d, "ceph.conf"), "w") as f:
        f.write(conf)


def keyring_entry(name: str, key: str, caps: dict[str, str]) -> str:
    lines = [f"[{name}]", f"\tkey = {key}"]
    lines += [f'\tcaps {k} = "{v}"' for k, v in caps.items()]
    return "\n".join(lines) + "\n"


def tail(path: str, n: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return ""
    return "".join(lines[-n:])


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # field 3 (after the parenthesised comm) is the state
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def pid_cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pids(rundir: str) -> list[tuple[int, str]]:
    out = []
    try:
        with open(os.path.join(rundir, PIDS_FILE)) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0].isdigit():
                    out.append((int(parts[0]), parts[1] if len(parts) > 1 else "?"))
    except OSError:
        pass
    return out


def append_pid(rundir: str, pid: int, name: str) -> None:
    with open(os.path.join(rundir, PIDS_FILE), "a") as f:
        f.write(f"{pid} {name}\n")
        f.flush()
        os.fsync(f.fileno())


def is_ours(pid: int, name: str) -> bool:
    """The PID still runs the program we recorded (guards against PID reuse)."""
    cmd = pid_cmd(pid)
    if not cmd:
        return False
    if name == "watchdog":
        return "s3server.py" in cmd and "_watchdog" in cmd
    return os.path.basename(cmd.split(" ", 1)[0]) == name


def terminate(procs: list[tuple[int, str]], timeout: float) -> None:
    """SIGTERM the given (pid, name)s together, wait, SIGKILL leftovers."""
    live = [(p, n) for p, n in procs if pid_alive(p) and is_ours(p, n)]
    for p, n in live:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p, _ in live):
        time.sleep(0.05)
    for p, n in live:
        if pid_alive(p):
            log(f"{n} (pid {p}) ignored SIGTERM for {timeout:.0f} s: SIGKILL")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p, _ in live):
        time.sleep(0.05)


def stop_rundir(rundir: str, *, timeout: float = 15.0, remove: bool = True, keep_logs: bool = False) -> None:
    procs = read_pids(rundir)
    by_name = {}
    for p, n in procs:
        by_name.setdefault(n, []).append((p, n))
    # Strictly one after the other: watchdog (so it does not race us), radosgw
    # (its shutdown does RADOS I/O and hangs if the osd is already gone), the osd
    # (it tells the mon it is going down), and the mon last.
    terminate(by_name.pop("watchdog", []), 5)
    terminate(by_name.pop("radosgw", []), timeout)
    terminate(by_name.pop("ceph-osd", []), timeout)
    terminate(by_name.pop("ceph-mon", []), timeout)
    rest = [x for v in by_name.values() for x in v]
    if rest:
        terminate(rest, timeout)
    # The daemons were re-parented to init when `start` exited: wait for init to
    # reap the zombies, so /proc/PID really disappears (some container inits reap
    # only every ~2 s).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and is_ours_or_zombie(p, n)
                                              for p, n in procs):
        time.sleep(0.05)
    if remove and os.path.isdir(rundir):
        if keep_logs:
            for e in os.listdir(rundir):
                if e != "log":
                    path = os.path.join(rundir, e)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        try:
                            os.unlink(path)
                        except OSError:
                            pass
        elif os.path.exists(os.path.join(rundir, RUN_MARKER)) or not os.listdir(rundir):
            shutil.rmtree(rundir, ignore_errors=True)
        else:
            for e in ("mon.a", "osd.0", "rgw", "run", "log", "crash", "ceph.conf", "monmap", PIDS_FILE):
                path = os.path.join(rundir, e)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.unlink(path)


def is_ours_or_zombie(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat.rsplit(")", 1)[1].split()[0]
    if state == "Z":
        return True
    return is_ours(pid, name) or comm.startswith(name[:15])


def spawn(rundir: str, cache: str, name: str, argv: list[str]) -> subprocess.Popen:
    out = open(os.path.join(rundir, "log", f"{name}.out"), "ab")
    p = subprocess.Popen(argv, env=ceph_env(cache), stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True, cwd=rundir,
                         close_fds=True)
    out.close()
    append_pid(rundir, p.pid, os.path.basename(argv[0]))
    return p


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
            return 200 <= r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError, ConnectionError):
        return False


def cmd_start(args) -> int:
    t0 = time.monotonic()
    cache = cache_dir(args)
    if not os.path.exists(os.path.join(cache, MARKER)):
        raise Fail(f"ceph is not installed in {cache}: run `{sys.argv[0]} install` first")
    rundir = os.path.abspath(args.dir)
    live = [(p, n) for p, n in read_pids(rundir) if pid_alive(p) and is_ours(p, n)]
    if live:
        raise Fail(f"{rundir} already has running daemons {live}: stop it first")
    if os.path.isdir(rundir) and os.listdir(rundir) and not os.path.exists(os.path.join(rundir, RUN_MARKER)):
        raise Fail(f"{rundir} exists, is not empty and was not made by s3server: refusing to use it")
    shutil.rmtree(rundir, ignore_errors=True)
    for sub in ("", "log", "run", "crash", "rgw", "mon.a", "osd.0"):
        os.makedirs(os.path.join(rundir, sub), exist_ok=True)
    open(os.path.join(rundir, RUN_MARKER), "w").close()
    open(os.path.join(rundir, PIDS_FILE), "w").close()

    def on_term(signum, frame):
        raise Fail(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return _start(args, cache, rundir, t0)
    except BaseException as e:
        if isinstance(e, Fail):
            log(f"start failed: {e}")
        else:
            log(f"start failed: {type(e).__name__}: {e}")
        for name in ("ceph-mon.out", "mon.a.log", "ceph-osd.out", "osd.0.log", "radosgw.out",
                     "client.rgw.log", "radosgw-admin.out"):
            t = tail(os.path.join(rundir, "log", name), 25)
            if t.strip():
                print(f"----- {rundir}/log/{name} (tail) -----\n{t}", file=sys.stderr)
        stop_rundir(rundir, remove=False)
        return 1


def _start(args, cache: str, rundir: str, t0: float) -> int:
    env = ceph_env(cache)
    if args.owner_pid:
        # started first, so that even a `start` killed half-way is cleaned up
        with open(os.path.join(rundir, "log", "watchdog.out"), "ab") as errf:
            wd = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_watchdog", "--dir", rundir,
                                   "--owner-pid", str(args.owner_pid)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                                  start_new_session=True, close_fds=True)
        append_pid(rundir, wd.pid, "watchdog")
    rgw_port = args.port or free_port()
    if not port_is_free(rgw_port):
        raise Fail(f"port {rgw_port} on 127.0.0.1 is in use")
    mon_port = free_port()
    while mon_port == rgw_port:
        mon_port = free_port()
    fsid = str(uuid.uuid4())
    osd_uuid = str(uuid.uuid4())
    write_conf(rundir, cache, fsid, mon_port, rgw_port, args.memstore_mb)
    if not os.path.exists("/etc/mime.types"):
        with open(os.path.join(rundir, "mime.types"), "w") as f:
            f.write("application/octet-stream\tbin\ntext/plain\ttxt\napplication/json\tjson\n")
    conf = os.path.join(rundir, "ceph.conf")

    # cephx keys: generated here, all registered in the mon at mkfs time
    def genkey() -> str:
        return run([binpath(cache, "ceph-authtool"), "--gen-print-key"], env=env).stdout.strip()

    keys = {
        "mon.": (genkey(), {"mon": "allow *"}),
        "client.admin": (genkey(), {"mon": "allow *", "osd": "allow *", "mgr": "allow *"}),
        "osd.0": (genkey(), {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"}),
        "client.rgw": (genkey(), {"mon": "allow rw", "osd": "allow rwx", "mgr": "allow rw"}),
    }
    for name, (key, caps) in keys.items():
        if name != "mon.":
            with open(os.path.join(rundir, f"keyring.{name}"), "w") as f:
                f.write(keyring_entry(name, key, caps))
    mon_keyring = os.path.join(rundir, "keyring.mon-init")
    with open(mon_keyring, "w") as f:
        for name, (key, caps) in keys.items():
            f.write(keyring_entry(name, key, caps))

    # --- monitor ---------------------------------------------------------
    monmap = os.path.join(rundir, "monmap")
    run([binpath(cache, "monmaptool"), "--create", "--clobber", "--fsid", fsid,
         "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", monmap], env=env)
    run([binpath(cache, "ceph-mon"), "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap,
         "--keyring", mon_keyring], env=env, timeout=60)
    mon = spawn(rundir, cache, "ceph-mon", [binpath(cache, "ceph-mon"), "-f", "-c", conf, "-i", "a"])
    log(f"ceph-mon pid {mon.pid} on 127.0.0.1:{mon_port}")

    # --- register osd.0, pre-create radosgw's pools ----------------------
    cmds = [{"prefix": "osd new", "uuid": osd_uuid, "id": 0}]
    for pool in RGW_POOLS:
        cmds.append({"prefix": "osd pool create", "pool": pool, "pg_num": 8, "pgp_num": 8})
        cmds.append({"prefix": "osd pool application enable", "pool": pool, "app": "rgw"})
    mon_commands(cache, rundir, cmds, timeout=args.timeout)
    if mon.poll() is not None:
        raise Fail(f"ceph-mon exited with {mon.returncode}")
    log(f"mon ready, osd.0 registered, pools created ({time.monotonic() - t0:.1f} s)")

    # --- osd -------------------------------------------------------------
    run([binpath(cache, "ceph-osd"), "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
        env=env, timeout=60)
    osd = spawn(rundir, cache, "ceph-osd", [binpath(cache, "ceph-osd"), "-f", "-c", conf, "-i", "0"])
    log(f"ceph-osd pid {osd.pid}")
    mon_commands(cache, rundir, [], wait_osd_up=args.timeout, timeout=args.timeout)
    log(f"osd up ({time.monotonic() - t0:.1f} s)")

    # --- S3 user (also writes the default realm/zonegroup/zone) ----------
    p = run([binpath(cache, "radosgw-admin"), "-c", conf, "-n", "client.admin",
             "user", "create", "--uid", "stepmap-test", "--display-name", "stepmap test user",
             "--access-key", args.access_key, "--secret-key", args.secret_key],
            env=env, timeout=args.timeout, check=False)
    with open(os.path.join(rundir, "log", "radosgw-admin.out"), "a") as f:
        f.write((p.stdout or "") + (p.stderr or ""))
    if p.returncode != 0:
        raise Fail(f"radosgw-admin user create failed ({p.returncode})")
    log(f"S3 user created ({time.monotonic() - t0:.1f} s)")

    # --- radosgw ---------------------------------------------------------
    rgw = spawn(rundir, cache, "radosgw", [binpath(cache, "radosgw"), "-f", "-c", conf, "-n", "client.rgw"])
    log(f"radosgw pid {rgw.pid} on 127.0.0.1:{rgw_port}")
    url = f"http://127.0.0.1:{rgw_port}"
    deadline = time.monotonic() + args.timeout
    while not http_ready(url + "/"):
        for proc, name in ((mon, "ceph-mon"), (osd, "ceph-osd"), (rgw, "radosgw")):
            if proc.poll() is not None:
                raise Fail(f"{name} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise Fail(f"radosgw did not answer on {url} within {args.timeout} s")
        time.sleep(0.1)

    pids = [p for p, _ in read_pids(rundir)]
    log(f"S3 endpoint {url} ready in {time.monotonic() - t0:.1f} s")
    print(json.dumps({
        "endpoint_url": url,
        "access_key": args.access_key,
        "secret_key": args.secret_key,
        "region": REGION,
        "pids": pids,
        "dir": rundir,
    }), flush=True)
    return 0


def cmd_stop(args) -> int:
    rundir = os.path.abspath(args.dir)
    if not os.path.exists(rundir):
        log(f"{rundir} does not exist: nothing to stop")
        return 0
    t0 = time.monotonic()
    stop_rundir(rundir, timeout=args.timeout, keep_logs=args.keep_logs)
    log(f"stopped ({time.monotonic() - t0:.1f} s)")
    return 0


def _watchdog(args) -> int:
    """Hidden subcommand: stop the cluster when the owner process disappears."""
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    rundir = os.path.abspath(args.dir)
    while True:
        time.sleep(1)
        if not os.path.exists(os.path.join(rundir, PIDS_FILE)):
            return 0
        if not pid_alive(args.owner_pid):
            log(f"owner {args.owner_pid} is gone: stopping the cluster in {rundir}")
            procs = [(p, n) for p, n in read_pids(rundir) if p != os.getpid()]
            with open(os.path.join(rundir, PIDS_FILE), "w") as f:
                f.writelines(f"{p} {n}\n" for p, n in procs)
            stop_rundir(rundir)
            return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("install", help="download + unpack ceph into the cache (idempotent)")
    p.add_argument("--cache", help="cache directory (default $STEPMAP_CEPH_CACHE or <repo>/.cache/ceph)")
    p.add_argument("--force", action="store_true", help="re-download and unpack even if installed")

    p = sub.add_parser("start", help="start mon + osd + radosgw in RUNDIR, print JSON")
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0, help="S3 port on 127.0.0.1 (default: a free one)")
    p.add_argument("--cache")
    p.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    p.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    p.add_argument("--memstore-mb", type=int, default=1024,
                   help="OSD capacity (memstore: data lives in RAM, allocated on use)")
    p.add_argument("--timeout", type=float, default=90, help="per-step timeout in seconds")
    p.add_argument("--owner-pid", type=int, default=0,
                   help="stop the cluster automatically when this process exits")

    p = sub.add_parser("stop", help="stop the daemons recorded in RUNDIR/pids, delete RUNDIR")
    p.add_argument("--dir", required=True)
    p.add_argument("--timeout", type=float, default=15, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--keep-logs", action="store_true", help="keep RUNDIR/log")

    p = sub.add_parser("_mon")
    p.add_argument("--conf", required=True)
    p.add_argument("--libdir", required=True)
    p.add_argument("--timeout", type=int, default=60)
    p.add_argument("--wait-osd-up", type=float, default=0)
    p.add_argument("commands", nargs="*")

    p = sub.add_parser("_watchdog")
    p.add_argument("--dir", required=True)
    p.add_argument("--owner-pid", type=int, required=True)

    args = ap.parse_args(argv)
    try:
        return {"install": cmd_install, "start": cmd_start, "stop": cmd_stop,
                "_mon": _mon_child, "_watchdog": _watchdog}[args.cmd](args)
    except Fail as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
