#!/usr/bin/env python3
"""The cbfs benchmark: every row measured side by side, in one run, on this
machine, against the peers a user would otherwise pick and against the
in-process limits. `bench/run` builds the binaries and calls this.

Each command runs several times; the table gives medians. Wall time, CPU
time (user + system, the process and everything it waited for) and peak RSS
(the largest single process) come from wait4(2) on the command itself, so
one run gives all three. Caches are warm for every tool alike: the datasets
are read from the page cache.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import tiering

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measuring

class Sample:
    def __init__(self, wall, cpu, rss):
        self.wall, self.cpu, self.rss = wall, cpu, rss


def run_once(cmd, env=None, cwd=None, stdout=None):
    """Runs `cmd` (a list, or a string for bash), returns a Sample.

    Peak RSS comes from GNU time, which forks the command: a process keeps
    the peak RSS of whatever exec'd it, so a command started straight from
    this (larger) Python process would report Python's."""
    if isinstance(cmd, str):
        cmd = ["bash", "-o", "pipefail", "-c", cmd]
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    with tempfile.NamedTemporaryFile(prefix="cbfs-bench-rss-") as rss_file:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(timed, env=full_env, cwd=cwd, stdout=out, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        rss_kib = int(open(rss_file.name).read().split()[-1] or 0) if status == 0 else 0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdout:
        out.close()
    if proc.returncode != 0:
        raise SystemExit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode(errors='replace')[-4000:]}"
        )
    return Sample(wall, usage.ru_utime + usage.ru_stime, rss_kib * 1024)


def median_sample(samples):
    return Sample(
        statistics.median(s.wall for s in samples),
        statistics.median(s.cpu for s in samples),
        max(s.rss for s in samples),
    )


def measure(name, cmd, runs, prepare=None, **kw):
    samples = []
    for i in range(runs):
        if prepare:
            prepare()
        s = run_once(cmd, **kw)
        log(f"{name} run {i + 1}/{runs}: {s.wall:.2f} s wall, {s.cpu:.2f} s CPU, {s.rss / MIB:.0f} MiB")
        samples.append(s)
    return median_sample(samples)


def du(path):
    """Bytes of the files under `path` (apparent sizes)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def rm(*paths):
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw).stdout


# ---------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.bin = args.bin
        self.work = args.work
        self.runs = args.runs
        self.scale = args.scale
        self.rows = []
        self.notes = []
        self.checks = []
        os.makedirs(self.work, exist_ok=True)
        # Restores write to memory (tmpfs): ext4's inode allocator slows down
        # sharply when the same 20,000 inodes are freed and allocated again
        # run after run, and would measure that instead of the tools.
        self.scratch = args.scratch
        os.makedirs(self.scratch, exist_ok=True)
        self.keys = os.path.join(self.work, "keys")
        self.only = args.rows
        self.env = {"RESTIC_PASSWORD": "cbfs-bench", "RUSTIC_PASSWORD": "cbfs-bench",
                    "BORG_PASSPHRASE": "cbfs-bench", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                    "BORG_BASE_DIR": os.path.join(self.work, "borg-home"), "RUST_LOG": "error"}
        self.rustic = shutil.which("rustic")

    def b(self, name):
        return os.path.join(self.bin, name)

    def p(self, *parts):
        return os.path.join(self.work, *parts)

    # -- set-up

    def datasets(self):
        for kind in ("small", "large"):
            d = self.p(kind)
            if not os.path.isdir(d):
                log(f"generating the {kind} dataset")
                info = json.loads(sh([self.b("cbfs-bench"), "gen", kind, d, "--scale", str(self.scale)]))
                with open(d + ".json", "w") as f:
                    json.dump(info, f)
        self.data = {k: json.load(open(self.p(k + ".json"))) for k in ("small", "large")}
        for k in ("small", "large"):
            z = json.loads(sh([self.b("cbfs-bench"), "zsize", self.p(k)]))
            self.data[k]["compressed"] = z["compressed"]

    def make_keys(self):
        rm(self.keys)
        os.makedirs(self.keys)
        kt = self.b("cbfs-keytool")
        k = self.keys
        sh([kt, "create-user", "agent", "--secret", f"file:{k}/agent.key", "--public", f"{k}/agent.pub"])
        sh([kt, "create-admin", "--fs", "bench", "--secret", f"file:{k}/admin.key", "--keyset", f"{k}/keyset.json",
            "--writer", f"{k}/agent.pub"])
        sh([kt, "add-scope", "--admin", f"file:{k}/admin.key", "--keyset", f"{k}/keyset.json", "--scope", "bench"])
        sh([kt, "create-user", "alice", "--secret", f"file:{k}/alice.key", "--public", f"{k}/alice.pub"])
        sh([kt, "create-user", "host1", "--secret", f"file:{k}/host1.key", "--public", f"{k}/host1.pub"])
        age_key = f"{k}/age.key"
        sh(["age-keygen", "-o", age_key])
        self.age_recipient = [l for l in open(age_key).read().splitlines() if l.startswith("# public key:")][0].split()[-1]
        self.age_key = age_key

    # -- commands

    def tier_out(self, src, store, index):
        return [self.b("cbfs-tier"), "out", src, "--store", store, "--index", index,
                "--keyset", f"{self.keys}/keyset.json", "--writer-key", f"file:{self.keys}/agent.key",
                "--scope", "**=bench"]

    def peers_backup(self, kind):
        src = self.p(kind)
        repo = self.p(f"restic-{kind}")
        tarball = self.p(f"{kind}.tar.zst.age")

        def restic_init():
            rm(repo)
            sh(["restic", "init", "-q", "--repo", repo], env={**os.environ, **self.env})

        restic = measure(f"restic backup {kind}", ["restic", "-q", "--repo", repo, "backup", "."], self.runs,
                         prepare=restic_init, env=self.env, cwd=src)
        pipe = measure(f"tar|zstd|age {kind}",
                       f"tar -C {src} -cf - . | zstd -q -3 | age -r {self.age_recipient} -o {tarball}",
                       self.runs, prepare=lambda: rm(tarball))
        return restic, du(repo), pipe, du(tarball)

    def more_peers_backup(self, kind):
        """borg (repokey encryption, zstd level 3) and rustic (restic's
        format, its default compression) backing up the same tree: [(name,
        sample, stored bytes)]."""
        src = self.p(kind)
        env = {**os.environ, **self.env}
        out = []
        borg_repo = self.p(f"borg-{kind}")

        def borg_init():
            rm(borg_repo)
            sh(["borg", "init", "--encryption=repokey-blake2", borg_repo], env=env)

        borg = measure(f"borg create {kind}", ["borg", "create", "--compression", "zstd,3",
                                               f"{borg_repo}::bench", "."],
                       self.runs, prepare=borg_init, env=self.env, cwd=src)
        out.append(("borg create (zstd 3, repokey)", borg, du(borg_repo)))
        if self.rustic:
            rustic_repo = self.p(f"rustic-{kind}")

            def rustic_init():
                rm(rustic_repo)
                sh([self.rustic, "--no-progress", "-r", rustic_repo, "init"], env=env)

            rustic = measure(f"rustic backup {kind}", [self.rustic, "--no-progress", "-r", rustic_repo,
                                                       "backup", "."],
                             self.runs, prepare=rustic_init, env=self.env, cwd=src)
            out.append(("rustic backup", rustic, du(rustic_repo)))
        return out

    def more_peers_restore(self, kind, dest):
        """borg extract and rustic restore of what more_peers_backup stored."""
        out = []

        def mkdest():
            rm(dest)
            os.makedirs(dest)

        borg = measure(f"borg extract {kind}", ["borg", "extract", f"{self.p(f'borg-{kind}')}::bench"],
                       self.runs, prepare=mkdest, env=self.env, cwd=dest)
        self.check_same(kind, dest)
        out.append(("borg extract", borg))
        if self.rustic:
            rustic = measure(f"rustic restore {kind}", [self.rustic, "--no-progress", "-r",
                                                        self.p(f"rustic-{kind}"), "restore", "latest", dest],
                             self.runs, prepare=lambda: rm(dest), env=self.env)
            self.check_same(kind, dest)
            out.append(("rustic restore", rustic))
        return out

    def cbfs_out(self, kind, incremental=False):
        """Full runs of `cbfs-tier out`; for small, each followed by an
        incremental run after 1% of the files changed."""
        src = self.p(kind)
        store, index, copy = self.p(f"store-{kind}"), self.p(f"index-{kind}"), self.p(f"{kind}-copy")
        full, incr = [], []
        for i in range(self.runs):
            rm(store, index)
            target = src
            if incremental:
                rm(copy)
                sh(["cp", "-a", src, copy])
                target = copy
            s = run_once(self.tier_out(target, store, index), env=self.env)
            log(f"cbfs-tier out {kind} run {i + 1}/{self.runs}: {s.wall:.2f} s wall, {s.cpu:.2f} s CPU, {s.rss / MIB:.0f} MiB")
            full.append(s)
            if incremental:
                sh([self.b("cbfs-bench"), "update", copy])
                s = run_once(self.tier_out(copy, store, index), env=self.env)
                log(f"cbfs-tier out {kind} incremental run {i + 1}/{self.runs}: {s.wall:.2f} s wall")
                incr.append(s)
        stored = du(store)
        if incremental:
            # Keep the store and index of one full run for the restore rows.
            rm(store, index)
            run_once(self.tier_out(src, store, index), env=self.env)
            stored = du(store)
        return median_sample(full), stored, (median_sample(incr) if incr else None)

    def limit(self, kind):
        samples = []
        for i in range(self.runs):
            out = json.loads(sh([self.b("cbfs-bench"), "limit", self.p(kind)]))
            samples.append(out["seconds"])
        return statistics.median(samples)

    def restores(self, kind):
        store = self.p(f"store-{kind}")
        dest = os.path.join(self.scratch, f"restore-{kind}")
        k = self.keys
        # The user unlocks through a local delegation node (1 of 1), as users do.
        node, url = self.start_node("restore-node", delegate=True)
        try:
            user = measure(f"cbfs-tier restore {kind}",
                           [self.b("cbfs-tier"), "restore", "--store", store, "--identity", f"file:{k}/alice.key",
                            "--user", f"{k}/alice.pub", "--node", url, "--keyset", f"{k}/keyset.json",
                            "--trust-file", self.p("trust.json"), "--index", self.p("no-index"), ".", dest],
                           self.runs, prepare=lambda: rm(dest), env=self.env)
        finally:
            node.terminate()
            node.wait(timeout=30)
        self.check_same(kind, dest)
        restic = measure(f"restic restore {kind}",
                         ["restic", "-q", "--repo", self.p(f"restic-{kind}"), "restore", "latest", "--target", dest],
                         self.runs, prepare=lambda: rm(dest), env=self.env)
        self.check_same(kind, dest)
        tarball = self.p(f"{kind}.tar.zst.age")

        def mkdest():
            rm(dest)
            os.makedirs(dest)

        pipe = measure(f"age|zstd|tar -x {kind}",
                       f"age -d -i {self.age_key} {tarball} | zstd -q -d | tar -C {dest} -xf -",
                       self.runs, prepare=mkdest)
        self.check_same(kind, dest)
        out_tar = os.path.join(self.scratch, f"recovered-{kind}.tar")
        recover = measure(f"cbfs-recover {kind}",
                          [self.b("cbfs-recover"), "--identity", f"file:{k}/admin.key", "--store", store, "-o", out_tar],
                          self.runs, prepare=lambda: rm(out_tar), env=self.env)
        plain_tar = os.path.join(self.scratch, f"plain-{kind}.tar")
        age_zstd = measure(f"age -d|zstd -d {kind}",
                           f"age -d -i {self.age_key} {tarball} | zstd -q -d -o {plain_tar}",
                           self.runs, prepare=lambda: rm(plain_tar))
        rm(dest, out_tar, plain_tar)
        return user, restic, pipe, recover, age_zstd

    def check_same(self, kind, dest):
        """The restored tree holds the dataset's files, byte for byte (by size and a sample of contents)."""
        src = self.p(kind)
        n = 0
        for dirpath, _, files in os.walk(src):
            for f in files:
                a = os.path.join(dirpath, f)
                b = os.path.join(dest, os.path.relpath(a, src))
                if os.path.getsize(a) != os.path.getsize(b):
                    raise SystemExit(f"restore of {kind} differs at {b}")
                if n % 97 == 0 and not same_content(a, b):
                    raise SystemExit(f"restore of {kind} differs at {b}")
                n += 1

    def start_node(self, name, delegate):
        """A delegation node on 127.0.0.1 (its address read from its first
        line of output); with `delegate`, alice gets scope bench through it."""
        k = self.keys
        node_dir = self.p(name)
        rm(node_dir)
        log_path = self.p(f"{name}.log")
        log_file = open(log_path, "wb")
        node = subprocess.Popen([self.b("cbfs-delegation"), "serve", "--listen", "127.0.0.1:0",
                                 "--data", node_dir, "--keyset", f"{k}/keyset.json", "--rate", "100000",
                                 "--burst", "10000"],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.time() + 60
        url = None
        while url is None:
            with open(log_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("listening on http://"):
                        url = line.split()[-1]
            if url is None:
                if time.time() > deadline or node.poll() is not None:
                    raise SystemExit("the delegation node did not start; see " + log_path)
                time.sleep(0.05)
        if delegate:
            sh([self.b("cbfs-keytool"), "delegate", "--admin", f"file:{k}/admin.key", "--keyset",
                f"{k}/keyset.json", "--scope", "bench", "--to", f"{k}/alice.pub", "--threshold", "1",
                "--node", url])
        return node, url

    # -- the gateway

    def make_tls(self):
        """A CA and the gateway's certificate for 127.0.0.1 (openssl)."""
        d = self.p("tls")
        rm(d)
        os.makedirs(d)
        with open(os.path.join(d, "server.cnf"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        sh(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=cbfs-bench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign"], cwd=d)
        sh(["openssl", "req", *ec, "-keyout", "gateway.key", "-out", "gateway.csr", "-subj", "/CN=cbfs-gateway"],
           cwd=d)
        sh(["openssl", "x509", "-req", "-in", "gateway.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "gateway.pem", "-days", "2", "-extfile", "server.cnf"], cwd=d)
        return {n: os.path.join(d, n) for n in ("ca.pem", "gateway.pem", "gateway.key")}

    def gateway_config(self, tls, node_url, file_systems):
        k = self.keys
        c = [f'listen = "127.0.0.1:0"', f'state = "{self.p("gw-state")}"', "",
             "[tls]", f'cert = "{tls["gateway.pem"]}"', f'key = "{tls["gateway.key"]}"', "",
             "[users.host1]", f'key = "{k}/host1.pub"', 'roles = ["host"]', "",
             "[users.alice]", f'key = "{k}/alice.pub"', 'roles = ["user"]',
             "homes = { " + ", ".join(f'{name} = ["/"]' for name in file_systems) + " }", ""]
        for name, (store, index) in file_systems.items():
            c += [f"[fs.{name}]", f'store = "{store}"', f'index = "{index}"', f'keyset = "{k}/keyset.json"',
                  'scopes = ["**=bench"]', f'writer_key = "file:{k}/agent.key"', f'nodes = ["{node_url}"]', ""]
        path = self.p("gateway.toml")
        with open(path, "w") as f:
            f.write("\n".join(c))
        return path

    def start_gateway(self, config):
        log_path = self.p("gateway.log")
        log_file = open(log_path, "wb")
        gw = subprocess.Popen([self.b("cbfs-gateway"), "serve", "--config", config],
                              stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.time() + 60
        while True:
            with open(log_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("listening on https://"):
                        return gw, line.split()[-1]
            if time.time() > deadline or gw.poll() is not None:
                raise SystemExit("the gateway did not start; see " + log_path)
            time.sleep(0.05)

    @staticmethod
    def stop(proc):
        proc.terminate()
        proc.wait(timeout=60)

    @staticmethod
    def peak_rss(proc):
        """The peak RSS of a running process (VmHWM), bytes."""
        for line in open(f"/proc/{proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def gateway(self, kind):
        """Push through the gateway (loopback TLS) into a fresh store, a user
        restore through it, and `ls` of a 100,000-entry snapshot."""
        k = self.keys
        src = self.p(kind)
        tls = self.make_tls()
        env = {**self.env, "CBFS_CA_FILE": tls["ca.pem"]}
        store, index = self.p("store-gw"), self.p("index-gw")
        wide = self.p("wide")
        if not os.path.isdir(wide):
            log("generating a tree of 100,000 files for ls")
            sh([self.b("cbfs-bench"), "gen", "million", wide, "--scale", str(0.1 * self.scale)])
        wide_store, wide_index = self.p("store-wide"), self.p("index-wide")
        rm(wide_store, wide_index)
        run_once(self.tier_out(wide, wide_store, wide_index), env=self.env)
        node, node_url = self.start_node("gw-node", delegate=True)
        config = self.gateway_config(tls, node_url, {"bench": (store, index), "wide": (wide_store, wide_index)})
        state = {"gw": None, "url": None}

        def fresh_gateway():
            if state["gw"]:
                self.stop(state["gw"])
            rm(store, index, self.p("gw-state"))
            os.sync()
            state["gw"], state["url"] = self.start_gateway(config)

        push_cmd = lambda: [self.b("cbfs-tier"), "push", src, "--gateway", state["url"], "--fs", "bench",
                            "--prefix", "/", "--identity", f"file:{k}/host1.key", "--user", f"{k}/host1.pub"]
        # Each run of a compared pair alternates with its peer, each side
        # after a `sync` of what came before: the machine's drift over
        # minutes (and the write-back of an earlier row) weighs on neither
        # side more than on the other.
        direct_store, direct_index = self.p("store-gw-direct"), self.p("index-gw-direct")
        try:
            samples, direct, gw_rss = [], [], 0
            for i in range(self.runs):
                rm(direct_store, direct_index)
                os.sync()
                t = run_once(self.tier_out(src, direct_store, direct_index), env=self.env)
                log(f"cbfs-tier out {kind} (beside the push) run {i + 1}/{self.runs}: {t.wall:.2f} s wall")
                direct.append(t)
                fresh_gateway()
                s = run_once(push_cmd(), env=env)
                gw_rss = max(gw_rss, self.peak_rss(state["gw"]))
                log(f"cbfs-tier push {kind} run {i + 1}/{self.runs}: {s.wall:.2f} s wall, gateway {gw_rss / MIB:.0f} MiB")
                samples.append(s)
            push, tier_out = median_sample(samples), median_sample(direct)
            # The user restore, directly from the tier-out's store and
            # through the gateway from the push's, alternated; both unlock
            # through the same node.
            dest = os.path.join(self.scratch, f"restore-gw-{kind}")
            restore_from = lambda where, trust: [
                self.b("cbfs-tier"), "restore", "--store", where, "--identity", f"file:{k}/alice.key",
                "--user", f"{k}/alice.pub", "--keyset", f"{k}/keyset.json", "--trust-file", trust,
                "--index", self.p("no-index"), ".", dest]
            restores, direct_restores = [], []
            for i in range(self.runs):
                rm(dest)
                os.sync()
                d = run_once(restore_from(direct_store, self.p("trust-gw-direct.json")) + ["--node", node_url],
                             env=self.env)
                log(f"cbfs-tier restore {kind} (beside the gateway's) run {i + 1}/{self.runs}: {d.wall:.2f} s wall")
                direct_restores.append(d)
                self.check_same(kind, dest)
                rm(dest)
                os.sync()
                g = run_once(restore_from(f"{state['url']}/v1/fs/bench", self.p("trust-gw.json")), env=env)
                log(f"cbfs-tier restore via gateway {kind} run {i + 1}/{self.runs}: {g.wall:.2f} s wall")
                restores.append(g)
                self.check_same(kind, dest)
            restore, direct_restore = median_sample(restores), median_sample(direct_restores)
            gw_rss = max(gw_rss, self.peak_rss(state["gw"]))
            rm(dest)
            ls = json.loads(sh([self.b("cbfs-bench"), "ls", "--fs", f"{state['url']}/v1/fs/wide", "--path", "/",
                                "--user", "alice", "--identity", f"file:{k}/alice.key", "--ca", tls["ca.pem"],
                                "--requests", str(max(10, 7 * self.runs))]))
            gw_rss = max(gw_rss, self.peak_rss(state["gw"]))
        finally:
            if state["gw"]:
                self.stop(state["gw"])
            self.stop(node)
            rm(store, index, wide_store, wide_index, direct_store, direct_index)
        return push, tier_out, restore, direct_restore, ls, gw_rss

    def delegation(self):
        k = self.keys
        node, url = self.start_node("node", delegate=True)
        try:
            batches = max(3, 6 * self.runs)
            out = json.loads(sh([self.b("cbfs-bench"), "delegation", "--node", url, "--keyset",
                                 f"{k}/keyset.json", "--scope", "bench", "--user", "alice", "--identity",
                                 f"file:{k}/alice.key", "--batch", "1000", "--batches", str(batches),
                                 "--concurrency", "2"]))
        finally:
            node.terminate()
            node.wait(timeout=30)
        raw = json.loads(sh([self.b("cbfs-bench"), "reencrypt", "--capsules", "1000", "--rounds", str(batches)]))
        return out, raw

    def rotation(self):
        """rotate-scope on a store of lockboxes, and the raw Umbral work it does."""
        k = self.keys
        count = max(500, int(20000 * self.scale))
        # On the scratch tmpfs, as restores: creating 20,000 files on an
        # ext4 where the rows before just deleted as many measures its inode
        # allocator (`recently_deleted`), not the rotation.
        store, keyset = os.path.join(self.scratch, "store-rotate"), self.p("rotate-keyset.json")
        samples = []
        for _ in range(self.runs):
            rm(store, keyset, keyset + ".rotation")
            shutil.copy(f"{k}/keyset.json", keyset)
            os.chmod(keyset, 0o644)
            sh([self.b("cbfs-bench"), "lockboxes", "--keyset", keyset, "--admin", f"file:{k}/admin.key",
                "--scope", "bench", "--count", str(count), "--store", store])
            out = json.loads(sh([self.b("cbfs-keytool"), "--json", "rotate-scope", "--admin", f"file:{k}/admin.key",
                                 "--keyset", keyset, "--scope", "bench", "--store", store]))
            samples.append(out["lockboxes_per_second"])
        rm(store, keyset)
        raw = json.loads(sh([self.b("cbfs-bench"), "reseal", "--count", str(count)]))
        samples.sort()
        return samples[len(samples) // 2], raw, count

    def rekey(self, kind):
        """`cbfs-tier rekey` of the whole data set (one scope), each run on a
        fresh tier-out of it: read back with the root secret, stored again
        under new keys, and read back once more to verify."""
        src = self.p(kind)
        store, index = self.p(f"store-rekey-{kind}"), self.p(f"index-rekey-{kind}")
        k = self.keys

        def fresh():
            rm(store, index)
            sh(self.tier_out(src, store, index), env={**os.environ, **self.env})

        s = measure(f"cbfs-tier rekey {kind}",
                    [self.b("cbfs-tier"), "rekey", "--store", store, "--index", index,
                     "--keyset", f"{k}/keyset.json", "--writer-key", f"file:{k}/agent.key",
                     "--admin", f"file:{k}/admin.key", "--scope", "bench"],
                    self.runs, prepare=fresh, env=self.env)
        rm(store, index)
        return s

    def million(self):
        """One run over a generated tree of a million tiny files: its RSS."""
        d = self.p("million")
        if not os.path.isdir(d):
            log("generating a tree of a million files")
            sh([self.b("cbfs-bench"), "gen", "million", d, "--scale", str(self.scale)])
        store, index = self.p("store-million"), self.p("index-million")
        rm(store, index)
        s = run_once(self.tier_out(d, store, index), env=self.env)
        log(f"cbfs-tier out million: {s.wall:.2f} s wall, {s.rss / MIB:.0f} MiB")
        rm(store, index)
        return s

    def gc(self, kind):
        """Garbage collection of a store where half the files of the first
        snapshot were replaced and that snapshot forgotten: cbfs-gc's
        compaction throughput against a plain copy of the same segment
        objects on the same disk, and the store's size after both phases
        against a fresh tier-out of the kept tree."""
        src, store, index = self.p(f"gc-{kind}"), self.p(f"store-gc-{kind}"), self.p(f"index-gc-{kind}")
        fresh, fresh_index = self.p(f"store-gc-fresh-{kind}"), self.p(f"index-gc-fresh-{kind}")
        spool, copy = self.p("gc-spool"), self.p(f"gc-copy-{kind}")
        rm(src, store, index, fresh, fresh_index, spool, copy)
        os.makedirs(spool)
        if not os.path.isdir(self.p(kind)):
            log(f"generating the {kind} dataset")
            sh([self.b("cbfs-bench"), "gen", kind, self.p(kind), "--scale", str(self.scale)])
        sh(["cp", "-a", self.p(kind), src])
        # The agent and the collector share one live-share threshold: the
        # agent stores again the small files of segments below it (packs,
        # which the collector cannot split); the collector copies the live
        # members of the others.
        min_live = "90"

        def agent_run():
            sh(self.tier_out(src, store, index) + ["--min-live", min_live], env={**os.environ, **self.env})

        agent_run()
        # Replace every other file: half of the first snapshot is garbage.
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
                       if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
        for f in files[::2]:
            with open(f, "ab") as out:
                out.write(b"gc")
        agent_run()
        sh([self.b("cbfs-tier"), "forget", "--store", store, "--index", index, "--writer-key",
            f"file:{self.keys}/agent.key", "--keep-last", "1"], env={**os.environ, **self.env})
        gc = [self.b("cbfs-gc"), "--json", "--store", store, "--keyset", f"{self.keys}/keyset.json",
              "--grace", "0s", "--min-live", min_live, "--spool", spool]
        report_file = self.p("gc-report.json")
        # Neither the collector nor the plain copy pays for what the runs
        # before them left dirty in the page cache.
        os.sync()
        s = run_once(gc, env=self.env, stdout=report_file)
        report = json.load(open(report_file))
        comp = report["compaction"]
        copied, seconds = comp["bytes_copied"], comp["seconds"]
        # A plain copy of the same segment objects, in the same run, each
        # flushed to disk as the collector flushes each segment it writes.
        os.makedirs(copy)
        os.sync()
        t0 = time.monotonic()
        plain_bytes = 0
        for key in comp["compacted"]:
            target = os.path.join(copy, os.path.basename(key))
            shutil.copyfile(os.path.join(store, key), target)
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            plain_bytes += os.path.getsize(os.path.join(store, key))
        plain_s = time.monotonic() - t0
        rm(copy)
        gc_rate = copied / seconds if seconds else 0.0
        plain_rate = plain_bytes / plain_s if plain_s else 0.0
        # The agent moves on (a run with nothing to store), then phase two.
        agent_run()
        run_once(gc, env=self.env, stdout=report_file)
        if not json.load(open(report_file))["phase_two"][0]["done"]:
            raise SystemExit("cbfs-gc: phase two did not run: " + open(report_file).read())
        after = du(store)
        sh(self.tier_out(src, fresh, fresh_index), env={**os.environ, **self.env})
        fresh_size = du(fresh)
        rm(src, store, index, fresh, fresh_index, spool)
        return s, copied, seconds, gc_rate, plain_bytes, plain_s, plain_rate, after, fresh_size

    def overhead(self):
        store = self.p("store-small")
        parts = {d: du(os.path.join(store, d)) for d in sorted(os.listdir(store))}
        total = sum(parts.values())
        index = du(self.p("index-small"))
        files = self.data["small"]["files"]
        content = self.data["small"]["compressed"]
        return parts, total, index, files, content

    # -- the table

    def row(self, row, tool, sample=None, bytes_in=None, stored=None, ratio=None, target=None, ok=None, note=""):
        self.rows.append(dict(row=row, tool=tool, sample=sample, bytes_in=bytes_in, stored=stored,
                              ratio=ratio, target=target, ok=ok, note=note))

    def run(self):
        log(f"work folder {self.work}; {self.runs} runs per row")
        self.datasets()
        self.make_keys()
        if self.only == "tiering":
            tiering.rows(self)
            return
        small, large = self.data["small"]["bytes"], self.data["large"]["bytes"]

        # tier out, small (+ incremental)
        cbfs_s, cbfs_s_stored, incr = self.cbfs_out("small", incremental=True)
        if self.only == "keys":
            self.row("tier out, small", "cbfs-tier out", cbfs_s, small, cbfs_s_stored)
            self.key_rows(cbfs_s, small)
            return
        restic_s, restic_s_stored, pipe_s, pipe_s_stored = self.peers_backup("small")
        r1 = restic_s.wall / cbfs_s.wall
        r2 = pipe_s.wall / cbfs_s.wall
        self.row("tier out, small", "cbfs-tier out", cbfs_s, small, cbfs_s_stored)
        self.row("tier out, small", "restic backup", restic_s, small, restic_s_stored, r1, ">= 3x restic", r1 >= 3)
        self.row("tier out, small", "tar \\| zstd -3 \\| age", pipe_s, small, pipe_s_stored, r2, ">= 1.5x tar\\|zstd\\|age", r2 >= 1.5)
        self.peer_rows("tier out, small", cbfs_s, small, self.more_peers_backup("small"))

        # tier out, large, and the limit
        cbfs_l, cbfs_l_stored, _ = self.cbfs_out("large")
        restic_l, restic_l_stored, pipe_l, pipe_l_stored = self.peers_backup("large")
        limit_l = self.limit("large")
        r = limit_l / cbfs_l.wall
        self.row("tier out, large", "cbfs-tier out", cbfs_l, large, cbfs_l_stored)
        self.row("tier out, large", "restic backup", restic_l, large, restic_l_stored, restic_l.wall / cbfs_l.wall)
        self.row("tier out, large", "tar \\| zstd -3 \\| age", pipe_l, large, pipe_l_stored, pipe_l.wall / cbfs_l.wall)
        self.row("tier out, large", "limit: zstd-3 + AEAD in process", Sample(limit_l, None, None), large, None, r,
                 ">= 85% of the limit", r >= 0.85, "ratio = limit time / cbfs time")
        self.peer_rows("tier out, large", cbfs_l, large, self.more_peers_backup("large"))

        # restores
        for kind, size in (("small", small), ("large", large)):
            user, restic, pipe, recover, age_zstd = self.restores(kind)
            if kind == "small":
                self.user_small = user
            self.row(f"user restore, {kind}", "cbfs-tier restore (user key, 1 local node)", user, size)
            rr = restic.wall / user.wall
            self.row(f"user restore, {kind}", "restic restore", restic, size, None, rr,
                     ">= 3x restic" if kind == "small" else None, (rr >= 3) if kind == "small" else None)
            self.row(f"user restore, {kind}", "age -d \\| zstd -d \\| tar -x", pipe, size, None, pipe.wall / user.wall)
            dest = os.path.join(self.scratch, f"restore-{kind}")
            self.peer_rows(f"user restore, {kind}", user, size,
                           [(name, sample, None) for name, sample in self.more_peers_restore(kind, dest)])
            rm(dest)
            rt = age_zstd.wall / recover.wall
            self.row(f"recover to tar, {kind}", "cbfs-recover -o FILE.tar", recover, size)
            self.row(f"recover to tar, {kind}", "age -d \\| zstd -d > FILE.tar", age_zstd, size, None, rt,
                     ">= 1x", rt >= 1.0)

        # through the gateway
        push, tier_out, gw_restore, direct_restore, ls, gw_rss = self.gateway("small")
        rp = tier_out.wall / push.wall
        self.row("push via gateway, small", "cbfs-tier push (loopback TLS, fresh store)", push, small, None, rp,
                 ">= 0.85x cbfs-tier out", rp >= 0.85,
                 f"ratio = tier out time / push time, the tier-out ({tier_out.wall:.2f} s) run by turns with the "
                 f"push, each after a sync; gateway peak RSS {gw_rss / MIB:.0f} MiB")
        rg = direct_restore.wall / gw_restore.wall
        self.row("user restore via gateway, small", "cbfs-tier restore --store https://GATEWAY (nodes relayed)",
                 gw_restore, small, None, rg, ">= 0.9x direct", rg >= 0.9,
                 f"ratio = direct restore time / through the gateway, the direct restore ({direct_restore.wall:.2f} s, "
                 f"same node) run by turns with it, each after a sync")
        self.row(f"ls via gateway, {ls['entries']:,} entries", "signed GET /v1/fs/NAME/ls, one at a time", None,
                 None, None, None, None, None,
                 f"p50 {ls['p50_s'] * 1000:.0f} ms, p99 {ls['p99_s'] * 1000:.0f} ms over {ls['requests']} requests")

        # incremental
        ri = incr.wall / cbfs_s.wall
        self.row("incremental, 1% changed", "cbfs-tier out (update set)", incr, None, None, ri,
                 "<= 10% of the full run", ri <= 0.10, "ratio = incremental time / full time")

        # delegation
        node, raw = self.delegation()
        rd = node["per_second"] / raw["per_second"]
        self.row("delegation", "one node over HTTP, batches of 1,000", None, None, None, rd, ">= 80% of raw", rd >= 0.8,
                 f"{node['per_second']:.0f} re-encryptions/s; p50 {node['p50_s'] * 1000:.0f} ms, "
                 f"p99 {node['p99_s'] * 1000:.0f} ms per batch")
        self.row("delegation", "raw umbral_pre::reencrypt, same cores", None, None, None, None, None, None,
                 f"{raw['per_second']:.0f} re-encryptions/s on {raw['threads']} threads")
        self.row("delegation", "in process: decode (checks the capsule) + reencrypt + encode", None, None, None,
                 node["per_second"] / raw["with_wire_per_second"], None, None,
                 f"{raw['with_wire_per_second']:.0f}/s; ratio = node over HTTP / this")
        self.delegation_figures = (node, raw)

        self.key_rows(cbfs_s, small)
        self.other_rows()

    def peer_rows(self, row, cbfs, size, peers):
        """Rows of borg and rustic beside cbfs: ratio = peer time / cbfs
        time, and cbfs is to be ahead of each (>= 1x)."""
        for name, sample, stored in peers:
            ratio = sample.wall / cbfs.wall
            self.row(row, name, sample, size, stored, ratio, ">= 1x (cbfs ahead)", ratio >= 1.0)

    def key_rows(self, cbfs_s, small):
        """Rotation, re-keying and the collector: the rows of key lifetimes
        and space (`--rows keys` runs only these, and the small tier-out)."""
        # rotate-scope: lockboxes sealed again per second, against raw Umbral
        per_second, raw_reseal, count = self.rotation()
        rr = per_second / raw_reseal["per_second"]
        self.row("rotate-scope", f"cbfs-keytool rotate-scope, {count:,} lockboxes", None, None, None, rr,
                 ">= 80% of raw", rr >= 0.8,
                 f"{per_second:.0f} lockboxes/s; raw {raw_reseal['per_second']:.0f}/s on {raw_reseal['threads']} threads; "
                 "store on the scratch tmpfs")
        self.row("rotate-scope", "in process: the rotation's own lockbox work (decode, capsules checked in batches; open; seal; encode), no store",
                 None, None, None, per_second / raw_reseal["lockbox_per_second"], None, None,
                 f"{raw_reseal['lockbox_per_second']:.0f}/s; ratio = rotate-scope / this")

        # rekey: a scope stored again under new keys, against a full tier-out
        # of the same data
        rekey_s = self.rekey("small")
        rk = cbfs_s.wall / rekey_s.wall
        self.row("rekey, small", "cbfs-tier rekey --scope (read back, re-encrypt, verify)", rekey_s, small, None, rk,
                 ">= 0.8x a full tier-out", rk >= 0.8, "ratio = full tier-out time / rekey time")

        # garbage collection, with no key: on the medium set (a member per
        # file, several per segment) the collector copies the live members of
        # half-dead segments; on the small set (packs) the agent stores the
        # live files of sparse packs again and the collector deletes the old
        # segments whole.
        for kind, what in (("medium", "800 files of 160 KiB-1 MiB"), ("small", "packs of small files")):
            # A compaction takes a fraction of a second: on the medium set,
            # each of --runs measurements on a store made afresh, and the
            # median of their ratios.
            tries = []
            for _ in range(self.runs if kind == "medium" else 1):
                t = self.gc(kind)
                tries.append((t[3] / t[6] if t[6] else 0.0, t))
            tries.sort(key=lambda x: x[0])
            rg, (gc_s, copied, gc_secs, gc_rate, plain_bytes, plain_s, plain_rate, after, fresh) = tries[len(tries) // 2]
            if kind == "medium":
                self.row(f"gc, {kind} (half the files replaced)", "cbfs-gc compaction", gc_s, None, None, rg,
                         ">= 0.8x a plain copy", rg >= 0.8,
                         f"{what}; {copied / 1e6:.1f} MB copied in {gc_secs:.2f} s ({gc_rate / 1e6:.0f} MB/s); "
                         f"plain copy of the same {plain_bytes / 1e6:.1f} MB of segments {plain_rate / 1e6:.0f} MB/s; "
                         "wall includes the mark")
            amp = after / fresh if fresh else 0.0
            self.row(f"gc, {kind}: space after forget + gc", "store after both phases", gc_s if kind == "small" else None,
                     None, after, amp, "<= 1.2x a fresh tier-out", amp <= 1.2,
                     f"{what}; half the files replaced; fresh tier-out of the kept tree {fresh / 1e6:.1f} MB; "
                     f"{copied / 1e6:.1f} MB copied by the collector")

    def other_rows(self):
        # overhead
        parts, total, index, files, content = self.overhead()
        per_file = (total - content) / files
        self.row("overhead, small", "store bytes beyond compressed content", None, None, total - content,
                 per_file, "<= 200 B per file", per_file <= 200,
                 f"per file {per_file:.0f} B; index on disk {index / files:.0f} B per file")
        self.overhead_figures = (parts, total, index, files, content)

        # memory on a tree of a million files
        million = self.million()
        self.row("tier out, 1,000,000 files", "cbfs-tier out (tiny files)", million, None, None,
                 million.rss / MIB, "<= 256 MiB", million.rss <= 256 * MIB,
                 "peak RSS: the walk and the index cursor hold no per-path state")

        # tiering proper: release, recall, fault-in
        tiering.rows(self)

        # peak RSS
        worst = max((r["sample"].rss for r in self.rows if r["sample"] and r["sample"].rss and r["tool"].startswith("cbfs")),
                    default=0)
        self.row("peak RSS", "largest of every cbfs command above", None, None, None, worst / MIB,
                 "<= 256 MiB", worst <= 256 * MIB, f"{worst / MIB:.0f} MiB")

    # -- output

    def table(self):
        lines = ["| row | tool | wall s | MB/s | CPU s | peak RSS MiB | stored MB | ratio | target | met |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in self.rows:
            s = r["sample"]
            wall = f"{s.wall:.2f}" if s else ""
            mbs = f"{r['bytes_in'] / s.wall / 1e6:.0f}" if s and r["bytes_in"] else ""
            cpu = f"{s.cpu:.2f}" if s and s.cpu is not None else ""
            rss = f"{s.rss / MIB:.0f}" if s and s.rss else ""
            stored = f"{r['stored'] / 1e6:.1f}" if r["stored"] is not None else ""
            ratio = ""
            if r["ratio"] is not None:
                ratio = f"{r['ratio']:.2f}"
                if r["row"] == "overhead, small":
                    ratio = f"{r['ratio']:.0f} B"
                if r["row"] == "peak RSS":
                    ratio = f"{r['ratio']:.0f} MiB"
            met = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
            tool = r["tool"] + (f" ({r['note']})" if r["note"] else "")
            lines.append(f"| {r['row']} | {tool} | {wall} | {mbs} | {cpu} | {rss} | {stored} | {ratio} | {r['target'] or ''} | {met} |")
        return "\n".join(lines)

    def machine(self):
        cpu = ""
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        fs = sh(["df", "-T", self.work]).decode().splitlines()[-1].split()[1]

        def version(cmd):
            try:
                return sh(cmd).decode().splitlines()[0].strip()
            except (OSError, subprocess.CalledProcessError):
                return "?"

        return [
            f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem:.0f} GiB; {platform.system()} {platform.release()}",
            f"- Work folder file system: {fs} (datasets, stores and restic repositories on the same disk); "
            f"restores write to {self.scratch} (tmpfs)",
            f"- Peers: {version(['restic', 'version'])}; {version(['borg', '--version'])}; "
            f"{version([self.rustic, '--version']) if self.rustic else 'rustic not installed'}; "
            f"age {version(['age', '--version'])}; "
            f"{version(['zstd', '--version'])}; {version(['tar', '--version'])}",
            f"- {version(['rustc', '--version'])}; cbfs release build",
            f"- Datasets: small {self.data['small']['files']} files, {self.data['small']['bytes'] / 1e6:.0f} MB; "
            f"large {self.data['large']['files']} files, {self.data['large']['bytes'] / 1e6:.0f} MB "
            f"(scale {self.scale}); medians of {self.runs} runs",
        ]

    def report(self):
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if self.only != "all":
            return "\n".join([f"Measured {now} by `bench/run --rows {self.only}`.", "", *self.machine(), "",
                              self.table()]) + "\n"
        parts, total, index, files, content = self.overhead_figures
        node, raw = self.delegation_figures
        out = [f"Measured {now} by `bench/run`.", "", *self.machine(), "", self.table(), "",
               "Overhead of the small set's store, by object kind (bytes):", ""]
        out.append("| objects | bytes | per file |")
        out.append("|---|---:|---:|")
        for name, size in parts.items():
            out.append(f"| {name}/ | {size} | {size / files:.1f} |")
        out.append(f"| all objects | {total} | {total / files:.1f} |")
        out.append(f"| the files' content, zstd -3 one by one | {content} | {content / files:.1f} |")
        out.append(f"| **overhead** (all objects - content) | {total - content} | {(total - content) / files:.1f} |")
        out.append(f"| index on disk (agent side, not stored) | {index} | {index / files:.1f} |")
        out.append("")
        out.append(f"Delegation: {node['batches']} batches of {node['batch']} capsules, {node['concurrency']} in flight: "
                   f"{node['per_second']:.0f}/s, p50 {node['p50_s'] * 1000:.0f} ms, p99 {node['p99_s'] * 1000:.0f} ms; "
                   f"raw reencrypt {raw['per_second']:.0f}/s on {raw['threads']} threads; decode + reencrypt + "
                   f"encode in process {raw['with_wire_per_second']:.0f}/s.")
        return "\n".join(out) + "\n"


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def write_performance(path, generated):
    """Replaces the generated part of docs/PERFORMANCE.md, keeping the rest."""
    begin, end = "<!-- bench/run: begin -->", "<!-- bench/run: end -->"
    text = open(path).read() if os.path.exists(path) else f"# Performance\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{generated}{end}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="folder of the release binaries")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cbfs-bench"))
    ap.add_argument("--scratch", default="/dev/shm/cbfs-bench",
                    help="where restores write (a tmpfs by default)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="dataset scale (1 = the full sets)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    ap.add_argument("--rows", choices=["all", "tiering", "keys"], default="all",
                    help="which rows: all, only tiering proper (release, recall, fault-in), or only "
                         "rotation, re-keying and the collector (with the small tier-out they compare with)")
    args = ap.parse_args()
    bench = Bench(args)
    bench.run()
    generated = bench.report()
    print(generated)
    if args.out != "-":
        write_performance(args.out, generated)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
