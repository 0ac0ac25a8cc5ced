"""Tiering proper in the benchmark: release rate, recall throughput against
a restore of the same files, and the latency of the first read of a stub
through the fault-in handler (the key opened through a 2-of-3 delegation on
loopback) against a cold read of the resident file.

Needs root (a loop-mounted ext4 made here, fanotify, the `trusted` xattr
namespace); without it the rows say so. Called from bench.py."""

import os
import shutil
import statistics
import subprocess
import time

MIB = 1024 * 1024


class Tiering:
    def __init__(self, bench):
        self.b = bench
        self.mnt = bench.p("tiering-mnt")
        self.img = bench.p("tiering.img")
        self.store = bench.p("tiering-store")
        self.index = bench.p("tiering-index")
        self.procs = []

    # -- set-up

    def available(self):
        if os.geteuid() != 0:
            return "needs root (loop mount, fanotify, trusted xattrs)"
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                return f"needs {tool}"
        return None

    def sh(self, cmd, **kw):
        return subprocess.run(cmd, check=True, capture_output=True, **kw).stdout

    def setup(self):
        from bench import rm, log
        b = self.b
        self.teardown_mount()
        rm(self.img, self.store, self.index)
        small, large = b.data["small"]["bytes"], b.data["large"]["bytes"]
        # The datasets, the restore of a recall row (one at a time), the
        # fault-in files, and room.
        need = 3 * small + 3 * large + 3 * 64 * MIB + 40 * MIB + 512 * MIB
        with open(self.img, "wb") as f:
            f.truncate(need)
        # 512-byte inodes, as the README advises for ext4 that holds stubs:
        # a stub record then lives in its inode instead of a block of its
        # own (both the restores and the recalls below write to it).
        self.sh(["mkfs.ext4", "-q", "-F", "-I", "512", self.img])
        os.makedirs(self.mnt, exist_ok=True)
        self.sh(["mount", "-o", "loop", self.img, self.mnt])
        log("tiering: copying the datasets onto a loop-mounted ext4")
        for kind in ("small", "large"):
            self.sh(["cp", "-a", b.p(kind), os.path.join(self.mnt, kind)])
        fault = os.path.join(self.mnt, "fault")
        os.makedirs(fault)
        self.fault = {}
        for label, size, count in (("64k", 64 * 1024, 30), ("1m", MIB, 20), ("64m", 64 * MIB, 3)):
            names = []
            for i in range(count):
                p = os.path.join(fault, f"{label}-{i}")
                with open(p, "wb") as f:
                    f.write(os.urandom(size))
                names.append(p)
            self.fault[label] = names
        self.resident = {}
        for label, size in (("64k", 64 * 1024), ("1m", MIB), ("64m", 64 * MIB)):
            p = os.path.join(fault, f"resident-{label}")
            with open(p, "wb") as f:
                f.write(os.urandom(size))
            self.resident[label] = p
        self.sh(b.tier_out(self.mnt, self.store, self.index), env={**os.environ, **b.env})

    def teardown_mount(self):
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", self.mnt], check=False)

    def teardown(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs.clear()
        self.teardown_mount()

    def tier(self, sub, *args, identity=None):
        b = self.b
        cmd = [b.b("cbfs-tier"), sub, "--store", self.store, "--index", self.index, "--tree", self.mnt]
        if identity:
            cmd += ["--identity", identity]
        return cmd + list(args)

    def admin(self):
        return f"file:{self.b.keys}/admin.key"

    # -- rows

    def release_rate(self):
        """`cbfs-tier release` of the small set (files/s); each run after a
        recall of the set."""
        from bench import run_once, log
        b = self.b
        files = b.data["small"]["files"]
        small = os.path.join(self.mnt, "small")
        samples = []
        for i in range(b.runs):
            s = run_once(self.tier("release", small), env=b.env)
            log(f"cbfs-tier release small run {i + 1}/{b.runs}: {s.wall:.2f} s, {files / s.wall:.0f} files/s")
            samples.append(s)
            run_once(self.tier("recall", small, identity=self.admin()), env=b.env)
        return samples, files

    def recall_vs_restore(self, kind):
        """`cbfs-tier recall` of a released set in place, against `cbfs-tier
        restore` of the same files into a new folder of the same file
        system, both with the administrator's key. Each starts after a
        `sync`, so that neither flushes what the other left dirty. Each
        restore is removed once it is timed: kept, the restores after it
        wrote into memory the machine had not used yet, and on a virtual
        machine that is slow (the copy into the page cache took 20 times
        as long, and such restores about 1.6 s against 0.95 s)."""
        from bench import run_once, rm, log, median_sample
        b = self.b
        tree = os.path.join(self.mnt, kind)
        recalls, restores, synced = [], [], []
        for i in range(b.runs):
            run_once(self.tier("release", tree), env=b.env)
            os.sync()
            r = run_once(self.tier("recall", tree, identity=self.admin()), env=b.env)
            log(f"cbfs-tier recall {kind} run {i + 1}/{b.runs}: {r.wall:.2f} s")
            recalls.append(r)
            dest = os.path.join(self.mnt, f"restored-{kind}-{i}")
            os.sync()
            t = run_once([b.b("cbfs-tier"), "restore", "--store", self.store, "--identity", self.admin(),
                          "--index", self.index, "--trust-file", b.p("tiering-trust.json"), kind, dest],
                         env=b.env)
            # The sync that follows makes the restored files as durable
            # as a recall's are when it returns: timed apart, for the
            # note (the row's ratio is against the restore alone).
            started = time.perf_counter()
            os.sync()
            synced.append(t.wall + time.perf_counter() - started)
            log(f"cbfs-tier restore {kind} run {i + 1}/{b.runs}: {t.wall:.2f} s, {synced[-1]:.2f} s with its sync")
            restores.append(t)
            rm(dest)
            os.sync()
        return median_sample(recalls), median_sample(restores), statistics.median(synced)

    def delegate_2_of_3(self):
        """Three nodes on 127.0.0.1 and the agent's own user key, delegated
        the bench scope 2-of-3 through them."""
        b = self.b
        k = b.keys
        self.sh([b.b("cbfs-keytool"), "create-user", "tiering", "--secret", f"file:{k}/tiering.key",
                 "--public", f"{k}/tiering.pub"])
        urls = []
        for i in range(3):
            node, url = b.start_node(f"tiering-node{i}", delegate=False)
            self.procs.append(node)
            urls.append(url)
        cmd = [b.b("cbfs-keytool"), "delegate", "--admin", f"file:{k}/admin.key", "--keyset", f"{k}/keyset.json",
               "--scope", "bench", "--to", f"{k}/tiering.pub", "--threshold", "2"]
        for u in urls:
            cmd += ["--node", u]
        self.sh(cmd)
        return urls

    def fault_in(self):
        """p50 and p99 of reading a stub of each size whole (open, then
        read to the end: the first read waits for the fill) through
        `cbfs-tier watch`, whose user key opens lockboxes through a 2-of-3
        delegation; and of the same read of a resident file whose pages
        were dropped from the cache."""
        from bench import log
        b = self.b
        k = b.keys
        urls = self.delegate_2_of_3()
        fault = os.path.join(self.mnt, "fault")
        for label in ("64k", "1m", "64m"):
            for p in self.fault[label]:
                self.sh(self.tier("release", p), env={**os.environ, **b.env})
        watch_log = open(b.p("tiering-watch.log"), "wb")
        cmd = self.tier("watch", identity=f"file:{k}/tiering.key") + ["--user", f"{k}/tiering.pub"]
        for u in urls:
            cmd += ["--node", u]
        watch = subprocess.Popen(cmd, stdout=watch_log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **b.env, "RUST_LOG": "cbfs_tiering=info"})
        self.procs.append(watch)
        deadline = time.time() + 120
        while b"fault-in handler watching" not in open(b.p("tiering-watch.log"), "rb").read():
            if time.time() > deadline or watch.poll() is not None:
                raise SystemExit("cbfs-tier watch did not start; see " + b.p("tiering-watch.log"))
            time.sleep(0.05)
        out = {}
        for label in ("64k", "1m", "64m"):
            times = [read_whole(p) for p in self.fault[label]]
            cold = []
            for _ in range(max(5, len(self.fault[label]))):
                p = self.resident[label]
                fd = os.open(p, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
                cold.append(read_whole(p))
            out[label] = (pct(times, 50), pct(times, 99), pct(cold, 50), pct(cold, 99), len(times))
            log(f"fault-in {label}: p50 {out[label][0] * 1000:.1f} ms, p99 {out[label][1] * 1000:.1f} ms; "
                f"resident cold read p50 {out[label][2] * 1000:.3f} ms")
        watch.terminate()
        watch.wait(timeout=120)
        return out


def read_whole(path):
    """Seconds to open `path` and read it to the end."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def pct(values, p):
    s = sorted(values)
    if not s:
        return 0.0
    i = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[i]


def rows(bench):
    """Adds the tiering rows to the table."""
    from bench import Sample
    t = Tiering(bench)
    why = t.available()
    if why:
        bench.row("tiering", "release, recall, fault-in", None, None, None, None, None, None, f"not measured: {why}")
        return
    try:
        t.setup()
        samples, files = t.release_rate()
        wall = statistics.median(s.wall for s in samples)
        rate = files / wall
        bench.row("release, small", "cbfs-tier release (every file)", Sample(wall, None, max(s.rss for s in samples)),
                  None, None, None, None, None, f"{rate:.0f} files/s over {files} files")
        for kind in ("small", "large"):
            recall, restore, durable = t.recall_vs_restore(kind)
            size = bench.data[kind]["bytes"]
            r = restore.wall / recall.wall
            bench.row(f"recall, {kind}", "cbfs-tier recall (in place, verified)", recall, size)
            bench.row(f"recall, {kind}", "cbfs-tier restore of the same files, into the same file system", restore,
                      size, None, r,
                      ">= 0.9x restore", r >= 0.9,
                      f"ratio = restore time / recall time; a recall returns with its files durable (flushed "
                      f"before their stub records go), a restore does not: with the sync that follows it, "
                      f"{durable:.2f} s ({durable / recall.wall:.2f}x the recall)")
        lat = t.fault_in()
        for label, name in (("64k", "64 KiB"), ("1m", "1 MiB"), ("64m", "64 MiB")):
            p50, p99, c50, c99, n = lat[label]
            bench.row(f"fault-in, first read of a {name} stub",
                      "cbfs-tier watch (key through a 2-of-3 delegation)", None, None, None,
                      p50 / c50 if c50 else None, None, None,
                      f"whole first read p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {n} stubs; the same "
                      f"read of the resident file, not cached, p50 {c50 * 1000:.2f} ms, p99 {c99 * 1000:.2f} ms; "
                      f"ratio = stub p50 / resident p50")
    finally:
        t.teardown()
