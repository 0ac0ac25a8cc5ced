//! No secret leaks: every subcommand, and the error paths, at `-vvv` with
//! `RUST_LOG=trace` (every dependency's trace logs too), with all three key
//! sources. Nothing printed, no argument and no public or wrapped file may
//! hold a root, scope, user or delegation node seed, the OpenBao token, the
//! age passphrase or an age identity, in any encoding `assert_no_secret`
//! knows; nor may anything printed, or a share file, hold a kfrag in the
//! clear (shares are sealed for their nodes).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cbfs_tests::{KeyringSession, OpenBao, Workdir, captured_output, random_bytes, run_ok};
use serde_json::Value;

use crate::{
    Secrets, admin_from, age_identity, chmod, init_node, keytool_traced, kfrag_bytes,
    node_key_args, node_secret, node_seed, open_share, raw_key_file, read, run_code, share_files,
    text, traced_command_lines, words,
};

type Envs = [(String, OsString)];

fn env(key: &str, value: impl Into<OsString>) -> (String, OsString) {
    (key.to_string(), value.into())
}

/// Runs traced keytool command lines (split on whitespace) in one
/// directory, and counts them.
struct Traced<'a> {
    dir: &'a Path,
    runs: usize,
}

impl Traced<'_> {
    fn command(&mut self, line: &str, envs: &Envs) -> Command {
        self.runs += 1;
        let mut cmd = keytool_traced(self.dir);
        cmd.args(words(line));
        cmd.envs(envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn ok(&mut self, line: &str) -> Output {
        self.ok_env(line, &[])
    }

    fn ok_env(&mut self, line: &str, envs: &Envs) -> Output {
        run_ok(&mut self.command(line, envs))
    }

    fn fails(&mut self, line: &str, code: i32) {
        self.fails_env(line, &[], code);
    }

    fn fails_env(&mut self, line: &str, envs: &Envs, code: i32) {
        run_code(&mut self.command(line, envs), code);
    }

    fn ok_in(&mut self, session: &KeyringSession, line: &str) {
        let cmd = self.command(line, &[]);
        run_ok(&mut session.wrap(cmd));
    }

    fn fails_in(&mut self, session: &KeyringSession, line: &str, code: i32) {
        let cmd = self.command(line, &[]);
        run_code(&mut session.wrap(cmd), code);
    }
}

#[test]
fn no_secret_leaks_from_any_command_even_at_trace_level() {
    let work = Workdir::new();
    let bao = OpenBao::start();
    bao.create_transit_key("leak-kek");
    let session = KeyringSession::new();
    let (identity, recipient, identity_secret) = age_identity(&work, "id.txt");
    let (stranger, _, stranger_secret) = age_identity(&work, "stranger.txt");
    let passphrase = format!("leak test passphrase {}", hex::encode(random_bytes(12)));
    let pass_file = work.write_private("pass.txt", format!("{passphrase}\n"));
    let wrong_pass = work.write_private("wrong-pass.txt", "an entirely wrong passphrase\n");
    let with_pass = [env("CBFS_PASSPHRASE_FILE", &pass_file)];
    let with_wrong_pass = [env("CBFS_PASSPHRASE_FILE", &wrong_pass)];
    let with_identity = [env("CBFS_AGE_IDENTITY", &identity)];
    let identity = identity.display();
    let stranger = stranger.display();
    let mut kt = Traced {
        dir: work.root(),
        runs: 0,
    };

    // ---------------------------------------------------------------- file:
    let admin = "--admin file:admin.key --keyset keyset.json";
    kt.ok("create-admin --fs leak --secret file:admin.key --keyset keyset.json");
    kt.ok(&format!("add-scope {admin} --scope alice"));
    kt.ok(&format!("--json add-scope {admin} --scope bob"));
    kt.ok("create-user alice --secret file:alice.key --public alice.pub");
    kt.ok(&format!(
        "create-user agent --secret file:agent.age \
             --public agent.pub --protect age --recipient {recipient}"
    ));
    kt.ok_env(
        "--json create-user carol --secret file:carol.age --public carol.pub --protect passphrase",
        &with_pass,
    );
    kt.ok(&format!("add-writer {admin} --public agent.pub"));
    // The delegation nodes' key pairs, made by the node's own tool.
    let node_names = ["node1", "node2", "node3"];
    let nodes: Vec<PathBuf> = node_names.iter().map(|n| init_node(&work, n)).collect();
    let all_nodes = node_key_args(&node_names);
    kt.ok(&format!(
        "delegate {admin} --scope alice --to alice.pub \
             --threshold 2 {all_nodes} --expires 30d --out grants"
    ));
    kt.ok(&format!(
        "--json delegate {admin} --scope bob --to carol.pub --threshold 1 \
             --node-key node2/node.pub --out grants"
    ));
    kt.ok(&format!(
        "export-scope {admin} --scope alice --secret file:alice-scope.key"
    ));
    kt.ok(&format!(
        "--json export-scope {admin} --scope bob \
             --secret file:bob-scope.age --protect age --recipient {recipient}"
    ));
    kt.ok("copy --from file:admin.key --to file:admin-backup.key");
    kt.ok_env(
        "copy --from file:agent.age --to file:agent.key",
        &with_identity,
    );
    kt.ok_env(
        "--json copy --from file:carol.age --to file:carol.key",
        &with_pass,
    );
    kt.ok("show --keyset keyset.json --user alice.pub --secret file:alice.key");
    kt.ok("--json show --keyset keyset.json --secret file:admin.key");
    kt.ok("show --keyset keyset.json --secret file:alice-scope.key");
    kt.ok("show --keyset keyset.json --share grants/alice.alice.1-of-3.share");
    kt.ok("--json show --keyset keyset.json --share grants/bob.carol.1-of-1.share");
    kt.ok_env(
        "show --user agent.pub --secret file:agent.age",
        &with_identity,
    );
    kt.ok(&format!(
        "--json show --keyset keyset.json --secret file:bob-scope.age --age-identity {identity}"
    ));
    kt.ok_env(
        "--json show --user carol.pub --secret file:carol.age",
        &with_pass,
    );
    kt.ok("list --keyset keyset.json --shares grants");
    kt.ok("--json list --keyset keyset.json --shares grants");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        kt.ok(&format!("completions {shell}"));
    }

    // The error paths, each with a secret close at hand.
    kt.fails(
        "add-scope --admin file:alice.key --keyset keyset.json --scope x",
        4,
    );
    kt.fails(
        "--json delegate --admin file:alice-scope.key --keyset keyset.json --scope alice \
         --to alice.pub --threshold 1 --node-key node1/node.pub --out nogrants",
        4,
    );
    let admin_bytes = raw_key_file(&work.path("admin.key"));
    let loose = work.write("loose.key", &admin_bytes);
    chmod(&loose, 0o644);
    kt.fails(
        "add-scope --admin file:loose.key --keyset keyset.json --scope x",
        3,
    );
    kt.fails(
        "--json show --keyset keyset.json --secret file:loose.key",
        3,
    );
    // `echo`ed into a file: the seed and a newline.
    work.write_private("newline.key", [admin_bytes.as_slice(), b"\n"].concat());
    kt.fails("show --keyset keyset.json --secret file:newline.key", 3);
    kt.fails(
        "add-scope --admin admin.key --keyset keyset.json --scope x",
        2,
    );
    kt.fails("show --keyset keyset.json --secret keyring:no-slash", 2);
    kt.fails(
        "show --keyset keyset.json --secret openbao:bad/key:admin.key",
        2,
    );
    kt.fails("show --user agent.pub --secret file:agent.age", 3);
    kt.fails(
        &format!("show --user agent.pub --secret file:agent.age --age-identity {stranger}"),
        3,
    );
    kt.fails_env(
        "show --user carol.pub --secret file:carol.age",
        &with_wrong_pass,
        3,
    );
    kt.fails("show --user carol.pub --secret file:carol.age", 3);
    let mut forged: Value = serde_json::from_slice(&read(&work.path("keyset.json"))).unwrap();
    forged["scopes"]["alice"] = forged["scopes"]["bob"].clone();
    work.write("forged.json", serde_json::to_vec_pretty(&forged).unwrap());
    kt.fails("show --keyset forged.json --secret file:admin.key", 4);
    kt.fails(
        "add-scope --admin file:admin.key --keyset forged.json --scope x",
        4,
    );

    // ------------------------------------------------------------- keyring:
    let service = session.name().to_string();
    let kr_admin = format!("keyring:{service}/admin");
    let kr_user = format!("keyring:{service}/bob");
    let s = &session;
    kt.ok_in(
        s,
        &format!("create-admin --fs kr --secret {kr_admin} --keyset kr.json"),
    );
    kt.ok_in(
        s,
        &format!("--json show --keyset kr.json --secret {kr_admin}"),
    );
    kt.ok_in(
        s,
        &format!("add-scope --admin {kr_admin} --keyset kr.json --scope kr-scope"),
    );
    kt.ok_in(s, &format!("copy --from {kr_admin} --to file:kr-admin.key"));
    kt.ok_in(
        s,
        &format!("create-user bob --secret {kr_user} --public bob.pub"),
    );
    kt.ok_in(
        s,
        &format!("--json copy --from {kr_user} --to file:bob.key"),
    );
    kt.ok_in(
        s,
        &format!("copy --from file:alice.key --to keyring:{service}/alice"),
    );
    kt.fails_in(
        s,
        &format!("show --keyset kr.json --secret keyring:{service}/missing"),
        3,
    );
    kt.fails_in(
        s,
        &format!("create-admin --fs kr --secret {kr_admin} --keyset kr2.json"),
        3,
    );
    kt.fails_in(
        s,
        &format!("add-scope --admin {kr_user} --keyset kr.json --scope x"),
        4,
    );

    // ------------------------------------------------------------- openbao:
    let ob = "openbao:leak-kek:ob.wrapped";
    let with_bao: Vec<(String, OsString)> = bao
        .envs()
        .into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect();
    let with_vault = [
        env("VAULT_ADDR", bao.addr()),
        env("VAULT_TOKEN", bao.token()),
    ];
    kt.ok_env(
        &format!("create-admin --fs ob --secret {ob} --keyset ob.json"),
        &with_bao,
    );
    kt.ok_env(
        &format!("--json show --keyset ob.json --secret {ob}"),
        &with_bao,
    );
    kt.ok_env(
        &format!("add-scope --admin {ob} --keyset ob.json --scope ob-scope"),
        &with_vault,
    );
    kt.ok_env(
        "copy --from file:alice.key --to openbao:leak-kek:alice.wrapped",
        &with_bao,
    );
    kt.ok_env(
        "show --user alice.pub --secret openbao:leak-kek:alice.wrapped",
        &with_bao,
    );
    bao.rotate_transit_key("leak-kek");
    kt.ok_env(&format!("rewrap --secret {ob}"), &with_bao);
    kt.ok_env(
        "--json rewrap --secret openbao:leak-kek:alice.wrapped",
        &with_vault,
    );
    kt.ok_env(&format!("show --keyset ob.json --secret {ob}"), &with_bao);
    let wrong_token = format!("wrong-token-{}", hex::encode(random_bytes(16)));
    let bad_token = [env("BAO_ADDR", bao.addr()), env("BAO_TOKEN", &wrong_token)];
    kt.fails_env(
        &format!("show --keyset ob.json --secret {ob}"),
        &bad_token,
        3,
    );
    kt.fails_env(&format!("--json rewrap --secret {ob}"), &bad_token, 3);
    kt.fails_env(
        "create-user dan --secret openbao:leak-kek:dan.wrapped --public dan.pub",
        &[
            env("VAULT_ADDR", bao.addr()),
            env("VAULT_TOKEN", &wrong_token),
        ],
        3,
    );
    let ob_seed = bao.transit_decrypt("leak-kek", text(&read(&work.path("ob.wrapped"))).trim());
    let token = bao.token().to_string();
    drop(bao);
    kt.fails_env(
        &format!("show --keyset ob.json --secret {ob}"),
        &with_bao,
        5,
    );
    kt.fails_env(&format!("--json rewrap --secret {ob}"), &with_vault, 5);

    // ------------------------------------------------------------ the check
    let mut secrets = Secrets::default();
    secrets.add_admin(
        "file: root",
        &admin_from(&admin_bytes),
        &["default", "alice", "bob", "x"],
    );
    secrets.add_admin(
        "keyring: root",
        &admin_from(&raw_key_file(&work.path("kr-admin.key"))),
        &["default", "kr-scope", "x"],
    );
    secrets.add_admin(
        "openbao: root",
        &admin_from(&ob_seed),
        &["default", "ob-scope"],
    );
    for user in ["alice", "agent", "carol", "bob"] {
        let bytes = raw_key_file(&work.path(format!("{user}.key")));
        secrets.add(format!("{user}'s user seed"), &bytes);
    }
    for (name, data) in node_names.iter().zip(&nodes) {
        secrets.add(format!("{name}'s node seed"), node_seed(data));
    }
    secrets.add("OpenBao token", token.as_bytes());
    secrets.add("wrong OpenBao token", wrong_token.as_bytes());
    secrets.add("age passphrase", passphrase.as_bytes());
    secrets.add("age identity", &identity_secret);
    secrets.add("stranger's age identity", &stranger_secret);

    // The haystack is the real thing: trace logs of our crates and of the
    // HTTP stack were on, and every command line was recorded, so argv was
    // checked too.
    let captured = text(&captured_output());
    for needle in [
        "TRACE",
        "cbfs_core::source",
        "loaded key",
        "stored new key",
        "hyper",
    ] {
        assert!(
            captured.contains(needle),
            "no `{needle}` in the captured logs"
        );
    }
    assert_eq!(
        traced_command_lines(),
        kt.runs,
        "the captured output must hold every keytool command line"
    );
    secrets.assert_absent_from_commands();

    // The public and the wrapped files hold no seed either. Nor do the
    // share files hold their kfrag in the clear: each is sealed for its node.
    let mut checked = 0;
    for file in walk(work.root()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let kept = [".json", ".pub", ".share", ".age", ".wrapped"];
        if kept.iter().any(|ext| name.ends_with(ext)) {
            secrets.assert_absent(&read(&file), &file.display().to_string());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} files checked");

    // The kfrags, as the nodes see them once they open their shares, are
    // nowhere in what the commands printed, and in no share file.
    let admin_vk = admin_from(&admin_bytes).verifying_key();
    let shares = share_files(&work.path("grants"));
    assert_eq!(shares.len(), 4, "{shares:?}");
    let mut kfrags = Secrets::default();
    for (file, node) in shares.iter().zip([0, 1, 2, 1]) {
        let grant = open_share(file, &node_secret(&nodes[node]), &admin_vk)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        kfrags.add(format!("kfrag of {}", file.display()), kfrag_bytes(&grant));
    }
    kfrags.assert_absent_from_commands();
    for file in &shares {
        kfrags.assert_absent(&read(file), &file.display().to_string());
    }
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
