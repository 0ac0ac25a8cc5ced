//! `cbfs-keytool`: create and manage cbfs keys and delegations.
//!
//! Exit codes: 0 success, 1 other error, 2 usage error, 3 key material not
//! found, locked, refused by the key service, or unsafe (permissions), 4 a signature or key check failed,
//! 5 the key management service is unreachable or failing (worth retrying),
//! 6 too few delegation nodes did what was asked (`delegate --node`, `revoke`).

#![forbid(unsafe_code)]

mod commands;
mod delegate;
mod nodes;
mod output;
mod rotate;

use std::path::PathBuf;
use std::process::ExitCode;

use cbfs_core::{KeySource, ScopeLabel, UserName};
use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # The tiering agent's writer key, then a new file system that trusts it:
  # its root secret in a 0600 file, its public keyset beside it
  cbfs-keytool create-user agent --secret file:agent.key --public agent.pub
  cbfs-keytool create-admin --fs projects --secret file:admin.key --keyset keyset.json \
      --writer agent.pub
  # A scope per project or home directory
  cbfs-keytool add-scope --admin file:admin.key --keyset keyset.json --scope alice
  # A user key pair (the secret could as well live in the kernel keyring)
  cbfs-keytool create-user alice --secret keyring:cbfs/alice --public alice.pub
  # Delegate scope alice to user alice for 30 days, 2 of 3 nodes: each share
  # goes straight to its own delegation node, encrypted for it (over plain
  # HTTP, pin each node's key: --node-key NODEi.pub after each --node)
  cbfs-keytool delegate --admin file:admin.key --keyset keyset.json --scope alice \\
      --to alice.pub --threshold 2 --expires 30d \\
      --node https://node1:7600 --node https://node2:7600 --node https://node3:7600
  # ... or, for nodes this machine cannot reach, sealed into files for
  # `cbfs-delegation import` (one NODE.pub per share)
  cbfs-keytool delegate --admin file:admin.key --keyset keyset.json --scope alice \\
      --to alice.pub --threshold 2 --out shares/ \\
      --node-key node1.pub --node-key node2.pub --node-key node3.pub
  # Revoke it: holds once n - m + 1 nodes have deleted their share. File keys
  # alice has already unlocked CANNOT be revoked; re-key the data if that matters.
  cbfs-keytool revoke --admin file:admin.key --scope alice --user alice.pub \\
      --node http://node1:7600 --node http://node2:7600 --node http://node3:7600
  cbfs-keytool list --keyset keyset.json --json
  # Rotate scope alice's key: lockboxes sealed again, no data rewritten;
  # the nodes get the new keyset, then the delegations are issued again
  cbfs-keytool rotate-scope --admin file:admin.key --keyset keyset.json --scope alice \
      --store /mnt/archive --node http://node1:7600 --node http://node2:7600 --node http://node3:7600
  cbfs-keytool delegate --reissue --admin file:admin.key --keyset keyset.json --scope alice \
      --node http://node1:7600 --node http://node2:7600 --node http://node3:7600
  # Hand the administrator's signing key over; retire a writer key
  cbfs-keytool rotate-admin --admin file:admin.key --keyset keyset.json --store /mnt/archive
  cbfs-keytool rotate-writer --admin file:admin.key --keyset keyset.json --writer agent \
      --public agent2.pub --store /mnt/archive

Key sources:
  file:PATH             the key alone in a 0600 file, or age-wrapped (--protect)
  keyring:SERVICE/NAME  the OS keyring (Linux kernel keyutils: lost at reboot)
  openbao:KEY:PATH      PATH holds the key wrapped by OpenBao/Vault transit key KEY
                        (BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN)
  awskms:KEY_ID:PATH    PATH holds the key wrapped by AWS KMS key KEY_ID (id, alias/NAME
                        or ARN); AWS_* variables and profiles as the AWS CLI reads them
  pkcs11:token=T;object=O?module-path=LIB&pin-source=file:PIN&x-wrapped=PATH
                        PATH holds the key wrapped by AES key O of PKCS#11 token T; the
                        PIN from a 0600 file, pin-source=env:VAR or CBFS_PKCS11_PIN

Exit codes: 0 ok, 1 error, 2 usage, 3 key not found/locked/unsafe,
            4 signature or key check failed, 5 key service unavailable (retry),
            6 too few delegation nodes complied (retry when they are back)";

/// Create and manage cbfs administrator, scope and user keys, and delegations.
#[derive(Parser)]
#[command(name = "cbfs-keytool", version, after_long_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v, -vv, -vvv). Logs never contain secrets.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    unlock: UnlockArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ProtectArgs {
    /// How to protect a new file: key: `none`, `passphrase` (asked on the
    /// terminal, or read from CBFS_PASSPHRASE_FILE), or `age` (x25519, see --recipient).
    #[arg(long, value_enum, default_value_t = ProtectKind::None)]
    protect: ProtectKind,
    /// age x25519 recipient (age1...) for --protect age; repeatable.
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
    recipients: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProtectKind {
    None,
    Passphrase,
    Age,
}

#[derive(Args, Clone)]
struct UnlockArgs {
    /// age identity file for age-wrapped key files (or CBFS_AGE_IDENTITY).
    #[arg(long, value_name = "PATH", env = "CBFS_AGE_IDENTITY", global = true)]
    age_identity: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a file system's root secret and its signed public keyset.
    CreateAdmin {
        /// The file system's name.
        #[arg(long)]
        fs: cbfs_core::FsName,
        /// Where to store the new root secret.
        #[arg(long, value_name = "SOURCE")]
        secret: KeySource,
        /// Where to write the public keyset (must not exist).
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// A writer (tiering agent) to register at once, by its public key
        /// file (made with create-user); repeatable. Snapshots are trusted
        /// only from registered writers.
        #[arg(long = "writer", value_name = "NAME.pub")]
        writers: Vec<PathBuf>,
        #[command(flatten)]
        protect: ProtectArgs,
    },
    /// Add a scope (a key pair derived from the root) to the keyset.
    AddScope {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset to update.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The new scope's label.
        #[arg(long)]
        scope: ScopeLabel,
    },
    /// Register a writer (tiering agent) whose snapshot manifests are trusted.
    AddWriter {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset to update.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The writer's public key file (made with create-user).
        #[arg(long, value_name = "NAME.pub")]
        public: PathBuf,
    },
    /// Create a user's key pair: the secret in SOURCE, the public keys in NAME.pub.
    CreateUser {
        /// The user's name.
        name: UserName,
        /// Where to store the new secret.
        #[arg(long, value_name = "SOURCE")]
        secret: KeySource,
        /// Where to write the public key file (must not exist).
        #[arg(long, value_name = "NAME.pub")]
        public: PathBuf,
        #[command(flatten)]
        protect: ProtectArgs,
    },
    /// Delegate a scope to a user: m-of-n key fragments, one per proxy node.
    ///
    /// Delegation is always from a scope key, never from the root. Each
    /// share is bound to its node (the node's key is part of what the
    /// administrator signs) and encrypted for that node alone; n is the
    /// number of nodes. With --node the shares are sent, each sealed for the
    /// key its node answers with over HTTPS or loopback, or for the key
    /// --node-key pins; with --node-key and --out they are written into
    /// files for nodes without a network path (`cbfs-delegation import`
    /// stores them). No share is ever readable by
    /// the user: with Umbral, a user holding m kfrags could compute the
    /// scope secret, and expiry and revocation would mean nothing.
    ///
    /// Revocation (`cbfs-keytool revoke`) stops new unlocks only: a file key
    /// that a user has already unlocked cannot be revoked or taken back.
    Delegate {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset that holds the scope.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The scope to delegate.
        #[arg(long)]
        scope: ScopeLabel,
        /// The user's public key file.
        #[arg(long, value_name = "NAME.pub")]
        to: Option<PathBuf>,
        /// Issue again every current (not revoked, not expired) delegation
        /// of the scope that the nodes hold, under the scope's current key
        /// and the administrator's current key: after `rotate-scope` or
        /// `rotate-admin`. The nodes say who holds one (asked with the
        /// administrator's signature); users revoked on any node are left out.
        #[arg(long, conflicts_with = "to")]
        reissue: bool,
        /// How many nodes must answer (m). With --reissue: default, each
        /// delegation's own.
        #[arg(long, value_name = "M")]
        threshold: Option<u32>,
        /// When the delegation ends: an RFC 3339 time, or a duration like 30d, 12h.
        /// Nodes refuse an expired delegation.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// A delegation node (https://HOST:PORT), one per share: share i goes
        /// to the i-th node, encrypted for the key the node answers with.
        /// Repeat for each node. Plain http:// is accepted on loopback, or
        /// elsewhere only with each node's key pinned by --node-key.
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// A node's public key file (its DATA/node.pub), one per share. With
        /// --node: the i-th key pins the i-th node, and nothing is sent
        /// unless every node answers with its pinned key. Without --node: for
        /// nodes this machine cannot reach, the shares go into --out.
        #[arg(long = "node-key", value_name = "NODE.pub")]
        node_keys: Vec<PathBuf>,
        /// With --node-key: the directory to write the sealed shares into
        /// (created 0700; files 0600).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Seconds to wait for each node.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        node_timeout: u64,
    },
    /// Revoke a user's delegation of a scope on every node.
    ///
    /// Each node deletes the user's kfrag of the scope and refuses that
    /// delegation from then on (a new `delegate` made later is accepted). The
    /// revocation holds once n - m + 1 nodes comply, because then fewer than
    /// m can still answer; the command fails (exit 6) until then: rerun it
    /// when the missing nodes are back.
    ///
    /// Revocation stops new unlocks only. File keys that the user has
    /// already unlocked CANNOT be revoked or taken back: if that matters,
    /// re-key the data (new group keys, re-encrypted members).
    Revoke {
        /// The administrator's root secret (it signs the revocation).
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset, to check that the secret is its administrator's.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: Option<PathBuf>,
        /// The scope.
        #[arg(long)]
        scope: ScopeLabel,
        /// The user's public key file.
        #[arg(long, value_name = "NAME.pub")]
        user: PathBuf,
        /// Every node of the delegation (all n). Repeat for each node.
        #[arg(long = "node", value_name = "URL", required = true)]
        nodes: Vec<String>,
        /// m of the delegation, if no node returns its signed record (or to
        /// ask more). m and n come from the delegation record you signed,
        /// which each node returns for the share it deleted, checked with
        /// your key; a node's own word never counts. With no record and no
        /// --threshold, every node must comply.
        #[arg(long, value_name = "M")]
        threshold: Option<u32>,
        /// Seconds to wait for each node.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        node_timeout: u64,
    },
    /// Rotate a scope's key: a new key version, and every lockbox of the
    /// scope in the store sealed again under it. No segment is rewritten.
    ///
    /// The new key derives from the root with the version in its label, so
    /// the root secret still opens every version. The new keyset (the new
    /// key current, the old one retired) goes to the keyset file, the store
    /// and the --node nodes, which then refuse delegations of the retired
    /// key: issue them again with `delegate --reissue`. Each group gets a
    /// new lockbox object beside the old one, which becomes garbage;
    /// restores work throughout (either opens). Interrupted, a rerun of the
    /// same command resumes (the journal KEYSET.rotation says where).
    ///
    /// This protects against a scope secret that leaked from now on: new
    /// lockboxes, and after GC the whole store, are sealed to the new key.
    /// It does not change group or file keys: whoever kept those still
    /// opens the data they open (only re-keying the data helps there).
    RotateScope {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset to update.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The scope to rotate.
        #[arg(long)]
        scope: ScopeLabel,
        /// The store whose lockboxes to seal again (a directory or s3://BUCKET/PREFIX).
        #[arg(long, value_name = "STORE")]
        store: String,
        /// A delegation node to give the new keyset (repeatable).
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// Seconds to wait for each node.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        node_timeout: u64,
    },
    /// Hand the administrator's signing key over to its next version: the
    /// new keyset is signed by the new key and carries the old key's signed
    /// hand-over, so agents and readers that pinned the old key accept it,
    /// and from then on refuse anything the old key signs alone.
    ///
    /// Delegations (signed by the old key) stop working on nodes that get
    /// the new keyset: issue them again with `delegate --reissue`.
    RotateAdmin {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset to update.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// A store to publish the new keyset in.
        #[arg(long, value_name = "STORE")]
        store: Option<String>,
        /// A delegation node to give the new keyset (repeatable).
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// Seconds to wait for each node.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        node_timeout: u64,
    },
    /// Register a new writer key and retire the old one: manifests the old
    /// key signed up to the last snapshot it wrote stay valid; anything it
    /// signs later is refused. Stop the agent while rotating.
    RotateWriter {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset to update.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The registered writer to retire, by name.
        #[arg(long, value_name = "NAME")]
        writer: UserName,
        /// The new writer's public key file (made with create-user).
        #[arg(long, value_name = "NAME.pub")]
        public: PathBuf,
        /// The last snapshot sequence the old writer signed (default: the
        /// newest in --store signed by it).
        #[arg(long, value_name = "N")]
        last_sequence: Option<u64>,
        /// The store: where the old writer's last snapshot is found, and
        /// where the new keyset is published.
        #[arg(long, value_name = "STORE")]
        store: Option<String>,
        /// A delegation node to give the new keyset (repeatable).
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// Seconds to wait for each node.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        node_timeout: u64,
    },
    /// Export one scope's secret, to open that scope alone without the root.
    ExportScope {
        /// The administrator's root secret.
        #[arg(long, value_name = "SOURCE")]
        admin: KeySource,
        /// The keyset that holds the scope.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The scope to export.
        #[arg(long)]
        scope: ScopeLabel,
        /// Which key version (default: the current one). Each version opens
        /// the lockboxes sealed under it only.
        #[arg(long, value_name = "N")]
        version: Option<u32>,
        /// Where to store the scope secret.
        #[arg(long, value_name = "SOURCE")]
        secret: KeySource,
        #[command(flatten)]
        protect: ProtectArgs,
    },
    /// Copy a secret from one key source to another (for example a durable
    /// backup of a keyring key).
    Copy {
        /// The source to read.
        #[arg(long, value_name = "SOURCE")]
        from: KeySource,
        /// The source to create.
        #[arg(long, value_name = "SOURCE")]
        to: KeySource,
        #[command(flatten)]
        protect: ProtectArgs,
    },
    /// Wrap a secret again, in place, without changing the secret.
    ///
    /// openbao: under the transit key's newest version. awskms: under the
    /// KMS key's current material (after a rotation), or under another KMS
    /// key with --new-key (the secret never leaves the service). pkcs11:
    /// under another AES key object of the token with --new-key (after
    /// making a new one), else the same key with a fresh IV. file: under a
    /// new age protection (--protect passphrase, or --protect age
    /// --recipient age1...; the old one unlocks it as usual).
    Rewrap {
        /// The source to rewrap.
        #[arg(long, value_name = "SOURCE")]
        secret: KeySource,
        /// awskms: the KMS key to move to (id, alias/NAME or ARN); pkcs11:
        /// the label of the token's key object to move to.
        #[arg(long, value_name = "KEY")]
        new_key: Option<String>,
        #[command(flatten)]
        protect: ProtectArgs,
    },
    /// Show a keyset, a user key file, a share file's terms, or which key a secret is.
    Show {
        /// A keyset file.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: Option<PathBuf>,
        /// A user public key file.
        #[arg(long, value_name = "NAME.pub")]
        user: Option<PathBuf>,
        /// A share file of `delegate --out` (needs --keyset to verify its
        /// terms; its kfrag is sealed for its node and stays so).
        #[arg(long, value_name = "FILE")]
        share: Option<PathBuf>,
        /// A secret to identify against --keyset or --user (prints no secret).
        #[arg(long, value_name = "SOURCE")]
        secret: Option<KeySource>,
    },
    /// List the scopes and writers of a keyset, or the share files in a directory.
    List {
        /// The keyset.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// A directory of share files (`delegate --out`) to list as well.
        #[arg(long, value_name = "DIR")]
        shares: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(Some("CBFS_KEYTOOL_CONFIG"));
    init_logging(cli.verbose);
    let json = cli.json;
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = output::exit_code(&err);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": cbfs_core::error_chain(err.as_ref()), "exit_code": code })
                );
            }
            eprintln!(
                "cbfs-keytool: error: {}",
                cbfs_core::error_chain(err.as_ref())
            );
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!(
            "warn,cbfs_core={level},cbfs_localkeys={level},cbfs_keysource={level},cbfs_keytool={level}"
        )));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
