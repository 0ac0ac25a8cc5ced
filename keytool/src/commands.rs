//! The subcommands: thin wrappers over `cbfs-core`.

use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cbfs_core::{
    AdminSecret, DelegationRecord, KeySource, Keyset, Protection, ScopeSecret, Seed, Unlock,
    UserPublic, UserSecret, fingerprint,
};
use clap::CommandFactory;
use secrecy::SecretString;
use serde_json::json;

use crate::output::emit;
use crate::{Cli, Command, ProtectArgs, ProtectKind};

pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let mut unlock = cbfs_keysource::unlock_from_env();
    if cli.unlock.age_identity.is_some() {
        unlock.age_identity = cli.unlock.age_identity.clone();
    }
    match cli.command {
        Command::CreateAdmin {
            fs,
            secret,
            keyset,
            writers,
            protect,
        } => {
            refuse_existing(&keyset, "keyset")?;
            let protection = protection(&protect)?;
            let writers = writers
                .iter()
                .map(|p| UserPublic::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let admin = AdminSecret::generate();
            let mut ks = Keyset::new(fs, &admin);
            for w in &writers {
                ks.add_writer(&admin, w.name(), *w.verifying_key())?;
            }
            let bytes = ks.to_signed_bytes(&admin)?;
            store_with_public(&secret, admin.seed(), &protection, &unlock, &keyset, &bytes)?;
            note_durability(&secret, &unlock);
            let fp = fingerprint(ks.admin_verifying_key());
            emit(
                json,
                json!({
                    "fs": ks.fs(), "secret": secret.to_string(), "keyset": keyset,
                    "admin_fingerprint": fp, "scopes": ["default"],
                    "writers": writers.iter().map(|w| json!({
                        "writer": w.name(), "fingerprint": fingerprint(w.verifying_key()),
                    })).collect::<Vec<_>>(),
                }),
                || {
                    let mut s = format!(
                        "created root secret for file system `{}`\n  secret:    {secret}\n  keyset:    {}\n  admin key: {fp}\n  scopes:    default\n",
                        ks.fs(),
                        keyset.display()
                    );
                    for w in &writers {
                        s.push_str(&format!(
                            "  writer:    {} ({})\n",
                            w.name(),
                            fingerprint(w.verifying_key())
                        ));
                    }
                    if writers.is_empty() {
                        s.push_str(
                            "  writers:   none yet: register the tiering agent's key with `cbfs-keytool add-writer` before it tiers out\n",
                        );
                    }
                    s.push_str(
                        "Keep the root secret offline and backed up: it opens every scope.\n\
                         Readers pin the admin key above: give its fingerprint to your users (--admin-key).\n",
                    );
                    s
                },
            );
        }
        Command::AddScope {
            admin,
            keyset,
            scope,
        } => {
            let mut ks = Keyset::load(&keyset)?;
            let admin_secret = load_admin(&admin, &unlock, &ks)?;
            let added = ks.add_scope(&admin_secret, &scope)?;
            if added {
                replace_public(&keyset, &ks.to_signed_bytes(&admin_secret)?)?;
            }
            let fp = fingerprint(ks.scope(&scope).expect("scope was just added"));
            emit(
                json,
                json!({ "scope": scope, "added": added, "serial": ks.serial(), "scope_fingerprint": fp }),
                || {
                    if added {
                        format!(
                            "added scope `{scope}` (key {fp}); keyset serial is now {}\n",
                            ks.serial()
                        )
                    } else {
                        format!("scope `{scope}` already exists (key {fp}); keyset unchanged\n")
                    }
                },
            );
        }
        Command::AddWriter {
            admin,
            keyset,
            public,
        } => {
            let mut ks = Keyset::load(&keyset)?;
            let admin_secret = load_admin(&admin, &unlock, &ks)?;
            let writer = UserPublic::load(&public)?;
            let added = ks.add_writer(&admin_secret, writer.name(), *writer.verifying_key())?;
            if added {
                replace_public(&keyset, &ks.to_signed_bytes(&admin_secret)?)?;
            }
            emit(
                json,
                json!({ "writer": writer.name(), "added": added, "serial": ks.serial() }),
                || {
                    format!(
                        "writer `{}` {}\n",
                        writer.name(),
                        if added {
                            "registered"
                        } else {
                            "was already registered"
                        }
                    )
                },
            );
        }
        Command::CreateUser {
            name,
            secret,
            public,
            protect,
        } => {
            refuse_existing(&public, "public key file")?;
            let protection = protection(&protect)?;
            let user = UserSecret::generate();
            let pubkeys = UserPublic::from_secret(name.clone(), &user);
            let bytes = pubkeys.to_signed_bytes(&user)?;
            store_with_public(&secret, user.seed(), &protection, &unlock, &public, &bytes)?;
            note_durability(&secret, &unlock);
            let fp = fingerprint(pubkeys.public_key());
            emit(
                json,
                json!({ "user": name, "secret": secret.to_string(), "public": public, "fingerprint": fp }),
                || {
                    format!(
                        "created user `{name}`\n  secret: {secret}\n  public: {}\n  key:    {fp}\n",
                        public.display()
                    )
                },
            );
        }
        Command::Delegate {
            admin,
            keyset,
            scope,
            to: None,
            threshold,
            expires,
            nodes,
            node_keys,
            out,
            node_timeout,
            reissue: true,
        } => {
            if !node_keys.is_empty() || out.is_some() {
                return Err(cbfs_core::Error::Usage(
                    "--reissue asks the nodes who holds a delegation: give --node URL for each node".into(),
                )
                .into());
            }
            crate::delegate::reissue(
                json,
                &unlock,
                crate::delegate::ReissueArgs {
                    admin,
                    keyset,
                    scope,
                    threshold,
                    expires,
                    nodes,
                    node_timeout,
                },
            )?
        }
        Command::Delegate { reissue: true, .. } => {
            return Err(cbfs_core::Error::Usage(
                "--reissue issues again for every current user of the scope: give no --to".into(),
            )
            .into());
        }
        Command::Delegate { to: None, .. } => {
            return Err(cbfs_core::Error::Usage(
                "give the user's public key file with --to NAME.pub (or --reissue for every current user)".into(),
            )
            .into());
        }
        Command::Delegate {
            admin,
            keyset,
            scope,
            to: Some(to),
            threshold,
            expires,
            nodes,
            node_keys,
            out,
            node_timeout,
            reissue: false,
        } => crate::delegate::delegate(
            json,
            &unlock,
            crate::delegate::DelegateArgs {
                admin,
                keyset,
                scope,
                to,
                threshold: threshold.ok_or_else(|| {
                    cbfs_core::Error::Usage("give --threshold M: how many nodes must answer".into())
                })?,
                expires,
                nodes,
                node_keys,
                out,
                node_timeout,
            },
        )?,
        Command::Revoke {
            admin,
            keyset,
            scope,
            user,
            nodes,
            threshold,
            node_timeout,
        } => crate::delegate::revoke(
            json,
            &unlock,
            crate::delegate::RevokeArgs {
                admin,
                keyset,
                scope,
                user,
                nodes,
                threshold,
                node_timeout,
            },
        )?,
        Command::RotateScope {
            admin,
            keyset,
            scope,
            store,
            nodes,
            node_timeout,
        } => crate::rotate::rotate_scope(
            json,
            &unlock,
            crate::rotate::RotateScope {
                admin,
                keyset,
                scope,
                store,
                publish: crate::rotate::Publish {
                    store: None,
                    nodes,
                    node_timeout,
                },
            },
        )?,
        Command::RotateAdmin {
            admin,
            keyset,
            store,
            nodes,
            node_timeout,
        } => crate::rotate::rotate_admin(
            json,
            &unlock,
            crate::rotate::RotateAdmin {
                admin,
                keyset,
                publish: crate::rotate::Publish {
                    store,
                    nodes,
                    node_timeout,
                },
            },
        )?,
        Command::RotateWriter {
            admin,
            keyset,
            writer,
            public,
            last_sequence,
            store,
            nodes,
            node_timeout,
        } => crate::rotate::rotate_writer(
            json,
            &unlock,
            crate::rotate::RotateWriter {
                admin,
                keyset,
                writer,
                public,
                last_sequence,
                publish: crate::rotate::Publish {
                    store,
                    nodes,
                    node_timeout,
                },
            },
        )?,
        Command::ExportScope {
            admin,
            keyset,
            scope,
            version,
            secret,
            protect,
        } => {
            let ks = Keyset::load(&keyset)?;
            if ks.scope(&scope).is_none() {
                return Err(cbfs_core::Error::Usage(format!(
                    "scope `{scope}` is not in keyset {}; add it first with cbfs-keytool add-scope",
                    keyset.display()
                ))
                .into());
            }
            let protection = protection(&protect)?;
            let admin_secret = load_admin(&admin, &unlock, &ks)?;
            let version = match version {
                Some(v) if ks.scope_key(&scope, v).is_none() => {
                    return Err(cbfs_core::Error::Usage(format!(
                        "scope `{scope}` has no key version {v}"
                    ))
                    .into());
                }
                Some(v) => v,
                None => ks.scope_version(&scope).unwrap_or(1),
            };
            let scope_secret = admin_secret.scope_at(&scope, version);
            secret.store_new(scope_secret.seed(), &protection, &unlock)?;
            note_durability(&secret, &unlock);
            emit(
                json,
                json!({ "scope": scope, "secret": secret.to_string() }),
                || {
                    format!(
                        "exported the secret of scope `{scope}` to {secret}\nIt opens that scope only.\n"
                    )
                },
            );
        }
        Command::Copy { from, to, protect } => {
            let protection = protection(&protect)?;
            let seed = from.load(&unlock)?;
            to.store_new(&seed, &protection, &unlock)?;
            // Prove the copy by reading it back, unless that needs a passphrase.
            if matches!(protection, Protection::None) {
                let back = to.load(&unlock)?;
                if back.expose_secret_bytes() != seed.expose_secret_bytes() {
                    bail!("the copy at {to} does not read back the same key");
                }
            }
            note_durability(&to, &unlock);
            emit(
                json,
                json!({ "from": from.to_string(), "to": to.to_string() }),
                || format!("copied {from} to {to}\n"),
            );
        }
        Command::Rewrap {
            secret,
            new_key,
            protect,
        } => {
            let protection = match (&secret, protect.protect) {
                (KeySource::File(_), _) => Some(protection(&protect)?),
                (_, ProtectKind::None) if protect.recipients.is_empty() => None,
                _ => bail!("--protect and --recipient apply to file: sources only"),
            };
            let (r, now) = secret.rewrap(
                &unlock,
                cbfs_core::RewrapTo {
                    key: new_key,
                    protection,
                },
            )?;
            emit(
                json,
                json!({
                    "secret": secret.to_string(), "source": now.to_string(),
                    "from": r.from, "to": r.to,
                    "from_version": r.from_version, "to_version": r.to_version,
                }),
                || {
                    let mut s = match (r.from_version, r.to_version) {
                        (Some(a), Some(b)) => format!("{secret}: transit key version {a} -> {b}\n"),
                        _ => format!("{secret}: rewrapped from {} to {}\n", r.from, r.to),
                    };
                    if now != secret {
                        s.push_str(&format!("the secret is now named {now}\n"));
                    }
                    s
                },
            );
        }
        Command::Show {
            keyset,
            user,
            share,
            secret,
        } => show(json, &unlock, keyset, user, share, secret)?,
        Command::List { keyset, shares } => list(json, &keyset, shares)?,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cbfs-keytool", &mut buf);
            crate::output::write_stdout(&buf);
        }
    }
    Ok(())
}

fn show(
    json: bool,
    unlock: &Unlock,
    keyset: Option<PathBuf>,
    user: Option<PathBuf>,
    share: Option<PathBuf>,
    secret: Option<KeySource>,
) -> Result<()> {
    if keyset.is_none() && user.is_none() && share.is_none() {
        bail!("nothing to show: give --keyset, --user or --share");
    }
    let ks = keyset.as_deref().map(Keyset::load).transpose()?;
    let up = user.as_deref().map(UserPublic::load).transpose()?;
    let mut out = serde_json::Map::new();
    let mut text = String::new();
    if let Some(ks) = &ks {
        let v = keyset_json(ks);
        text.push_str(&keyset_text(ks));
        out.insert("keyset".into(), v);
    }
    if let Some(u) = &up {
        out.insert(
            "user".into(),
            json!({ "name": u.name(), "created": u.created(), "fingerprint": fingerprint(u.public_key()),
                    "verifying_fingerprint": fingerprint(u.verifying_key()) }),
        );
        text.push_str(&format!(
            "user `{}` (created {})\n  key:         {}\n  signing key: {}\n",
            u.name(),
            u.created(),
            fingerprint(u.public_key()),
            fingerprint(u.verifying_key())
        ));
    }
    if let Some(path) = &share {
        let Some(ks) = &ks else {
            bail!("--share needs --keyset, to check the administrator's signature");
        };
        let r = load_share(path, ks)?;
        out.insert("share".into(), share_json(path, &r));
        text.push_str(&share_text(path, &r));
    }
    if let Some(src) = &secret {
        let seed = src.load(unlock)?;
        let identity = identify(&seed, ks.as_ref(), up.as_ref());
        out.insert(
            "secret".into(),
            json!({ "source": src.to_string(), "is": identity }),
        );
        text.push_str(&format!("{src} is {identity}\n"));
    }
    emit(json, serde_json::Value::Object(out), || text);
    Ok(())
}

fn identify(seed: &Seed, ks: Option<&Keyset>, user: Option<&UserPublic>) -> String {
    let bytes = seed.expose_secret_bytes();
    if let Some(ks) = ks {
        let admin = AdminSecret::from_seed(Seed::from_slice(bytes, "").expect("32 bytes"));
        if ks.admin_secret(admin).is_ok() {
            return format!("the root secret of file system `{}`", ks.fs());
        }
        for label in ks.scopes().keys() {
            for (version, pk) in ks.scope_versions(label) {
                let s = ScopeSecret::from_seed_at(
                    label.clone(),
                    version,
                    Seed::from_slice(bytes, "").expect("32 bytes"),
                );
                if s.public_key() == pk {
                    return if version == 1 {
                        format!("the secret of scope `{label}`")
                    } else {
                        format!("the secret of scope `{label}` key version {version}")
                    };
                }
            }
        }
    }
    if let Some(u) = user {
        let s = UserSecret::from_seed(Seed::from_slice(bytes, "").expect("32 bytes"));
        if u.check_secret(&s).is_ok() {
            return format!("the secret of user `{}`", u.name());
        }
    }
    "a key that matches none of the given files".into()
}

fn list(json: bool, keyset: &Path, shares: Option<PathBuf>) -> Result<()> {
    let ks = Keyset::load(keyset)?;
    let mut value = keyset_json(&ks);
    let mut text = keyset_text(&ks);
    if let Some(dir) = shares {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("cannot read share directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "share"))
            .collect();
        entries.sort();
        let mut list = Vec::new();
        for path in entries {
            let r = load_share(&path, &ks)?;
            text.push_str(&share_text(&path, &r));
            list.push(share_json(&path, &r));
        }
        value["shares"] = list.into();
    }
    emit(json, value, || text);
    Ok(())
}

/// The delegation record of a share file, verified against the keyset's
/// administrator. The kfrag in it stays sealed for its node.
fn load_share(path: &Path, ks: &Keyset) -> Result<DelegationRecord> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let upload: cbfs_wire::GrantUpload = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a share file", path.display()))?;
    // The signature check's own error: a tampered share or another
    // administrator's exits 4 (verification failed), naming the file.
    let record = serde_json::to_vec(&upload.delegation)?;
    Ok(DelegationRecord::from_bytes(
        &record,
        &path.display().to_string(),
        ks.admin_verifying_key(),
    )?)
}

fn keyset_json(ks: &Keyset) -> serde_json::Value {
    json!({
        "fs": ks.fs(), "serial": ks.serial(), "updated": ks.updated(),
        "admin_fingerprint": fingerprint(ks.admin_verifying_key()),
        "admin_key_version": ks.admin_key_version(),
        "scopes": ks.scopes().iter().map(|(l, k)| json!({
            "scope": l, "fingerprint": fingerprint(k),
            "version": ks.scope_version(l),
            "retired": ks.scope_versions(l).iter().filter(|(v, _)| ks.is_retired(l, *v))
                .map(|(v, k)| json!({ "version": v, "fingerprint": fingerprint(k) })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "writers": ks.writers().iter().map(|(n, k)| json!({ "writer": n, "fingerprint": fingerprint(k) })).collect::<Vec<_>>(),
        "retired_writers": ks.retired_writers().iter().map(|(n, r)| json!({
            "writer": n, "fingerprint": fingerprint(&r.key), "retired": r.retired, "last_sequence": r.last_sequence,
        })).collect::<Vec<_>>(),
        "handovers": ks.handovers().iter().map(|h| json!({
            "from": fingerprint(&h.from), "to": fingerprint(&h.to), "serial": h.serial,
        })).collect::<Vec<_>>(),
    })
}

fn keyset_text(ks: &Keyset) -> String {
    let mut s = format!(
        "keyset of file system `{}`, serial {}, updated {}\n  admin key: {}\n  scopes:\n",
        ks.fs(),
        ks.serial(),
        ks.updated(),
        fingerprint(ks.admin_verifying_key())
    );
    for (l, k) in ks.scopes() {
        match ks.scope_version(l) {
            Some(v) if v > 1 => s.push_str(&format!(
                "    {l:<24} {} (key version {v}; {} retired)\n",
                fingerprint(k),
                v - 1
            )),
            _ => s.push_str(&format!("    {l:<24} {}\n", fingerprint(k))),
        }
    }
    if !ks.writers().is_empty() {
        s.push_str("  writers:\n");
        for (n, k) in ks.writers() {
            s.push_str(&format!("    {n:<24} {}\n", fingerprint(k)));
        }
    }
    for (n, r) in ks.retired_writers() {
        s.push_str(&format!(
            "  retired writer {n} {} (after snapshot {}, at {})\n",
            fingerprint(&r.key),
            r.last_sequence,
            r.retired
        ));
    }
    for h in ks.handovers() {
        s.push_str(&format!(
            "  hand-over at serial {}: {} -> {}\n",
            h.serial,
            fingerprint(&h.from),
            fingerprint(&h.to)
        ));
    }
    s
}

fn share_json(path: &Path, r: &DelegationRecord) -> serde_json::Value {
    json!({
        "file": path, "fs": r.fs(), "scope": r.scope(), "user": r.user(),
        "threshold": r.threshold(), "shares": r.shares(), "issued": r.issued(), "expires": r.expires(),
        "expired": r.is_expired(cbfs_core::system_clock().as_ref()),
        "nodes": r.nodes().iter().map(fingerprint).collect::<Vec<_>>(),
    })
}

fn share_text(path: &Path, r: &DelegationRecord) -> String {
    format!(
        "share {}: scope `{}` to `{}`, {} of {}, issued {}, {}\n",
        path.display(),
        r.scope(),
        r.user(),
        r.threshold(),
        r.shares(),
        r.issued(),
        match r.expires() {
            Some(e) if r.is_expired(cbfs_core::system_clock().as_ref()) => format!("EXPIRED {e}"),
            Some(e) => format!("expires {e}"),
            None => "no expiry".into(),
        }
    )
}

pub(crate) fn load_admin(source: &KeySource, unlock: &Unlock, ks: &Keyset) -> Result<AdminSecret> {
    // Signing with the version of the administrator's key the keyset names.
    Ok(ks.admin_secret(AdminSecret::from_seed(source.load(unlock)?))?)
}

fn protection(args: &ProtectArgs) -> Result<Protection> {
    match args.protect {
        ProtectKind::None => {
            if !args.recipients.is_empty() {
                bail!("--recipient needs --protect age");
            }
            Ok(Protection::None)
        }
        ProtectKind::Age => {
            if args.recipients.is_empty() {
                bail!("--protect age needs at least one --recipient age1...");
            }
            Ok(Protection::Recipients(args.recipients.clone()))
        }
        ProtectKind::Passphrase => Ok(Protection::Passphrase(new_passphrase()?)),
    }
}

fn new_passphrase() -> Result<SecretString> {
    if let Some(path) = std::env::var_os("CBFS_PASSPHRASE_FILE") {
        let unlock = Unlock {
            passphrase_file: Some(PathBuf::from(&path)),
            ..Unlock::default()
        };
        // Read through the same checks as for unlocking (0600 or refused).
        let pass = read_passphrase_file(&unlock)?;
        return Ok(pass);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "--protect passphrase needs a terminal to ask for the passphrase, or CBFS_PASSPHRASE_FILE naming a 0600 file that holds it"
        );
    }
    let first = rpassword::prompt_password("New passphrase: ")?;
    let second = rpassword::prompt_password("Repeat passphrase: ")?;
    if first != second {
        bail!("the passphrases do not match");
    }
    if first.chars().count() < 12 {
        bail!("the passphrase is too short: use at least 12 characters");
    }
    Ok(SecretString::from(first))
}

fn read_passphrase_file(unlock: &Unlock) -> Result<SecretString> {
    let path = unlock.passphrase_file.as_ref().expect("set by caller");
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(cbfs_core::Error::InsecurePermissions {
            path: path.clone(),
            mode,
        }
        .into());
    }
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read passphrase file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() < 12 {
        bail!(
            "the passphrase in {} is too short: use at least 12 characters",
            path.display()
        );
    }
    Ok(SecretString::from(line.to_owned()))
}

fn note_durability(source: &KeySource, unlock: &Unlock) {
    if let Some(note) = source.durability_note(unlock) {
        eprintln!("note: {note}");
    }
}

pub(crate) fn parse_expiry(text: &str) -> Result<String> {
    let now = cbfs_core::now().replace_nanosecond(0).expect("valid");
    let fmt = &time::format_description::well_known::Rfc3339;
    if let Some((num, unit)) = text.len().checked_sub(1).map(|i| text.split_at(i))
        && let Ok(n) = num.parse::<i64>()
    {
        let secs = match unit {
            "s" => Some(n),
            "m" => Some(n * 60),
            "h" => Some(n * 3600),
            "d" => Some(n * 86400),
            _ => None,
        };
        if let Some(secs) = secs {
            if secs <= 0 {
                bail!("--expires {text}: the duration must be positive");
            }
            return Ok((now + time::Duration::seconds(secs)).format(fmt)?);
        }
    }
    let t = cbfs_core::parse_time(text).map_err(anyhow::Error::msg)?;
    Ok(t.format(fmt)?)
}

fn refuse_existing(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        bail!(
            "{what} {} already exists; refusing to overwrite it (choose another path)",
            path.display()
        );
    }
    Ok(())
}

/// Writes the public file first, then stores the secret; if storing fails,
/// the public file goes again, so a retry starts clean and no orphan secret
/// or orphan public file is left.
fn store_with_public(
    source: &KeySource,
    seed: &Seed,
    protection: &Protection,
    unlock: &Unlock,
    public_path: &Path,
    public_bytes: &[u8],
) -> Result<()> {
    write_new_public(public_path, public_bytes)?;
    if let Err(e) = source.store_new(seed, protection, unlock) {
        let _ = fs::remove_file(public_path);
        return Err(e.into());
    }
    Ok(())
}

fn write_new_public(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    use std::io::Write;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    use std::io::Write;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn replace_public(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    write_new_public(&tmp, bytes)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

pub(crate) fn make_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}
