//! What an operator meets before any data moves: `--version` names the
//! object formats each program writes and reads, options come from a
//! config file, and `scripts/dist` lays out the programs, man pages,
//! completions, systemd units and example configs.

use std::path::{Path, PathBuf};
use std::process::Command;

use cbfs_tests::{Workdir, cbfs_bin, cbfs_cmd, run_fail, run_ok};

const PROGRAMS: [&str; 6] = [
    "cbfs-keytool",
    "cbfs-tier",
    "cbfs-recover",
    "cbfs-delegation",
    "cbfs-gateway",
    "cbfs-gc",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_program_names_the_formats_it_writes_and_reads() {
    for p in PROGRAMS {
        let long = text(&run_ok(cbfs_cmd(p).arg("--version")).stdout);
        assert!(
            long.starts_with(&format!("{p} {}", env!("CARGO_PKG_VERSION"))),
            "{long}"
        );
        for needle in [
            "CBFSSNAP",
            "CBFSLOCK",
            "cbfs-segment",
            "cbfs-keyset",
            "cbfs-delegation",
        ] {
            assert!(
                long.contains(needle),
                "{p} --version lacks {needle}:\n{long}"
            );
        }
        let manifest = long.lines().find(|l| l.contains("CBFSSNAP")).unwrap();
        assert!(
            manifest.contains("writes 2") && manifest.contains("reads 1, 2"),
            "{manifest}"
        );
        let short = text(&run_ok(cbfs_cmd(p).arg("-V")).stdout);
        assert_eq!(short.trim(), format!("{p} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn options_come_from_a_config_file_and_the_command_line_wins() {
    let work = Workdir::new();
    std::fs::write(
        work.path("keytool.toml"),
        "[create-user]\nsecret = \"file:alice.key\"\npublic = \"alice.pub\"\n",
    )
    .unwrap();
    let keytool = || {
        let mut c = cbfs_cmd("cbfs-keytool");
        c.current_dir(work.root());
        c
    };
    run_ok(keytool().args(["--config", "keytool.toml", "create-user", "alice"]));
    assert!(work.path("alice.key").exists() && work.path("alice.pub").exists());
    // Named by the environment; the command line's --public wins.
    run_ok(keytool().env("CBFS_KEYTOOL_CONFIG", "keytool.toml").args([
        "create-user",
        "bob",
        "--secret",
        "file:bob.key",
        "--public=bob.pub",
    ]));
    assert!(work.path("bob.key").exists() && work.path("bob.pub").exists());

    // A key that is no option: a usage error naming it and the file.
    std::fs::write(work.path("bad.toml"), "[out]\nstroe = \"/tmp/x\"\n").unwrap();
    let out = run_fail(cbfs_cmd("cbfs-tier").current_dir(work.root()).args([
        "--config",
        "bad.toml",
        "out",
        "/nonexistent",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("`stroe`") && err.contains("bad.toml"), "{err}");
    // A file that is not there.
    let out = run_fail(cbfs_cmd("cbfs-gc").args(["--config", "/nonexistent/gc.toml", "--help"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/gc.toml"));
}

/// The example configs that `scripts/dist` installs use only real options.
#[test]
fn the_example_configs_name_real_options() {
    for (program, file, sub) in [
        ("cbfs-tier", "dist/config/tier.toml", "out"),
        ("cbfs-delegation", "dist/config/delegation.toml", "serve"),
    ] {
        let out = run_ok(
            cbfs_cmd(program)
                .arg("--config")
                .arg(repo().join(file))
                .args([sub, "--help"]),
        );
        assert!(text(&out.stdout).contains("--config"), "{program}");
    }
}

#[test]
fn dist_lays_out_programs_man_pages_completions_and_units() {
    let work = Workdir::new();
    let bins = cbfs_bin("cbfs-tier").parent().unwrap().to_path_buf();
    let dest = work.path("pkg");
    run_ok(
        Command::new(repo().join("scripts/dist"))
            .arg("--bin-dir")
            .arg(&bins)
            .arg("--destdir")
            .arg(&dest)
            .args(["--prefix", "/usr"]),
    );
    let usr = dest.join("usr");
    for p in PROGRAMS {
        assert!(usr.join("bin").join(p).exists(), "{p}");
        let page = std::fs::read_to_string(usr.join(format!("share/man/man1/{p}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{p}.1");
        assert!(
            usr.join(format!("share/bash-completion/completions/{p}"))
                .exists()
        );
        assert!(usr.join(format!("share/zsh/site-functions/_{p}")).exists());
        assert!(
            usr.join(format!("share/fish/vendor_completions.d/{p}.fish"))
                .exists()
        );
    }
    // A page per subcommand, with its options.
    let out = std::fs::read_to_string(usr.join("share/man/man1/cbfs-tier-out.1")).unwrap();
    assert!(out.contains("store") && out.contains("segment"), "{out}");
    let bash =
        std::fs::read_to_string(usr.join("share/bash-completion/completions/cbfs-tier")).unwrap();
    assert!(bash.contains("restore") && bash.contains("recall"));
    for unit in [
        "cbfs-delegation.service",
        "cbfs-gateway.service",
        "cbfs-tier-out@.service",
        "cbfs-tier-out@.timer",
    ] {
        let text = std::fs::read_to_string(usr.join("lib/systemd/system").join(unit)).unwrap();
        assert!(!text.contains("@BINDIR@"), "{unit}");
        if unit.ends_with(".service") {
            assert!(text.contains("ExecStart=/usr/bin/cbfs-"), "{unit}");
            for hardening in [
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "PrivateTmp=yes",
            ] {
                assert!(text.contains(hardening), "{unit} lacks {hardening}");
            }
        }
    }
    let delegation =
        std::fs::read_to_string(usr.join("lib/systemd/system/cbfs-delegation.service")).unwrap();
    assert!(delegation.contains("DynamicUser=yes") && delegation.contains("StateDirectory="));
    for example in ["tier.toml", "delegation.toml", "gateway.toml"] {
        assert!(
            usr.join("share/doc/cbfs/examples").join(example).exists(),
            "{example}"
        );
    }
}
