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
  # goes straight to its own delegation node, encrypted for it
  cbfs-keytool delegate --admin file:admin.key --keyset keyset.json --scope alice \\
      --to alice.pub --threshold 2 --expires 30d \\
      --node http://node1:7600 --node http://node2:7600 --node http://node3:7600
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

Key sources:
  file:PATH             the key alone in a 0600 file, or age-wrapped (--protect)
  keyring:SERVICE/NAME  the OS keyring (Linux kernel keyutils: lost at reboot)
  openbao:KEY:PATH      PATH holds the key wrapped by OpenBao/Vault transit key KEY
                        (BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN)

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
    /// number of nodes. With --node the shares are sent; with --node-key and
    /// --out they are written into files for nodes without a network path
    /// (`cbfs-delegation import` stores them). No share is ever readable by
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
        to: PathBuf,
        /// How many nodes must answer (m).
        #[arg(long, value_name = "M")]
        threshold: u32,
        /// When the delegation ends: an RFC 3339 time, or a duration like 30d, 12h.
        /// Nodes refuse an expired delegation.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// A delegation node (http://HOST:PORT), one per share: share i goes to
        /// the i-th node, encrypted for it. Repeat for each node.
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// A node's public key file (its DATA/node.pub), one per share, for
        /// nodes this machine cannot reach: the shares go into --out.
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
    /// Re-wrap an openbao: secret under the transit key's newest version.
    Rewrap {
        /// The openbao:KEY:PATH source.
        #[arg(long, value_name = "SOURCE")]
        secret: KeySource,
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
    let cli = Cli::parse();
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
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,cbfs_core={level},cbfs_keytool={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
