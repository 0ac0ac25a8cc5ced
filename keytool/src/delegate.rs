//! `delegate` (to files, to nodes, or both) and `revoke`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{
    AdminSecret, DelegationTerms, Error, Grant, KeySource, Keyset, Revocation, ScopeLabel, Unlock,
    UserPublic, fingerprint,
};
use serde_json::json;

use crate::commands::{load_admin, make_private_dir, parse_expiry, write_new_private};
use crate::nodes::{NodeError, Nodes, TooFewNodes, check_url, on_each};
use crate::output::emit;

const NOT_REVOCABLE: &str = "Revocation stops new unlocks only: file keys already unlocked cannot be revoked or taken back.";

/// What `delegate` was asked to do.
pub struct DelegateArgs {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub scope: ScopeLabel,
    pub to: PathBuf,
    pub threshold: u32,
    pub shares: Option<u32>,
    pub expires: Option<String>,
    pub out: Option<PathBuf>,
    pub nodes: Vec<String>,
    pub node_timeout: u64,
}

fn usage(text: String) -> anyhow::Error {
    Error::Usage(text).into()
}

fn urls(nodes: &[String]) -> Result<Vec<String>> {
    let urls = nodes
        .iter()
        .map(|u| check_url(u).map_err(usage))
        .collect::<Result<Vec<_>>>()?;
    for (i, url) in urls.iter().enumerate() {
        if urls[..i].contains(url) {
            return Err(usage(format!(
                "--node {url} is given twice: give each node once"
            )));
        }
    }
    Ok(urls)
}

pub fn delegate(json: bool, unlock: &Unlock, a: DelegateArgs) -> Result<()> {
    let urls = urls(&a.nodes)?;
    let shares = match (a.shares, urls.len()) {
        (Some(s), 0) => s,
        (None, 0) => return Err(usage("give --shares N, or one --node URL per share".into())),
        (None, n) => n as u32,
        (Some(s), n) if s as usize == n => s,
        (Some(s), n) => {
            return Err(usage(format!(
                "--shares {s} with {n} --node: each share goes to its own node, so give as many nodes as shares"
            )));
        }
    };
    let ks = Keyset::load(&a.keyset)?;
    let user = UserPublic::load(&a.to)?;
    let expires = a.expires.map(|e| parse_expiry(&e)).transpose()?;
    let admin = load_admin(&a.admin, unlock, &ks)?;
    let terms = DelegationTerms {
        threshold: a.threshold,
        shares,
        expires: expires.clone(),
    };
    let client = Nodes::new(Duration::from_secs(a.node_timeout.max(1)))?;

    // Every node's key first: nothing is made or sent unless all n answer.
    let keys: Vec<PublicKey> = if urls.is_empty() {
        Vec::new()
    } else {
        let answers = on_each(&urls, |_, url| client.key(url));
        let mut keys = Vec::new();
        let mut down = Vec::new();
        for (url, answer) in urls.iter().zip(answers) {
            match answer {
                Ok(k) => keys.push(k),
                Err(e) => down.push(format!("  {url}: {e}")),
            }
        }
        if !down.is_empty() {
            return Err(TooFewNodes(format!(
                "nothing was delegated: every node must give its key first, and these did not:\n{}",
                down.join("\n")
            ))
            .into());
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(j) = keys[..i].iter().position(|other| other == k) {
                return Err(usage(format!(
                    "{} and {} are the same node (key {}): each share needs a node of its own",
                    urls[j],
                    urls[i],
                    fingerprint(k)
                )));
            }
        }
        keys
    };

    let grants = cbfs_core::delegate(&admin, &ks, &a.scope, &user, &terms)?;
    let grants: Vec<Grant> = if keys.is_empty() {
        grants
    } else {
        grants
            .iter()
            .zip(&keys)
            .map(|(g, k)| g.for_node(k))
            .collect()
    };

    let mut files = Vec::new();
    if let Some(out) = &a.out {
        make_private_dir(out)?;
        for grant in &grants {
            let path = out.join(format!(
                "{}.{}.{}-of-{}.grant",
                a.scope,
                user.name(),
                grant.share(),
                grant.shares()
            ));
            write_new_private(&path, &grant.to_signed_bytes(&admin)?)?;
            files.push(path);
        }
    }

    let sent = send_grants(&client, &admin, &urls, &keys, &grants)?;
    let failed = sent.iter().filter(|s| s.error.is_some()).count();
    emit(
        json,
        json!({
            "scope": a.scope, "user": user.name(), "threshold": a.threshold, "shares": shares,
            "expires": expires, "files": files,
            "nodes": sent.iter().map(|s| json!({
                "url": s.url, "share": s.share, "fingerprint": s.fingerprint,
                "stored": s.error.is_none(), "error": s.error,
            })).collect::<Vec<_>>(),
        }),
        || {
            let mut s = format!(
                "delegated scope `{}` to `{}`: {} of {shares} shares{}\n",
                a.scope,
                user.name(),
                a.threshold,
                expires
                    .as_deref()
                    .map(|e| format!(", until {e}"))
                    .unwrap_or_default()
            );
            for f in &files {
                s.push_str(&format!("  {}\n", f.display()));
            }
            for n in &sent {
                match &n.error {
                    None => s.push_str(&format!(
                        "  share {} -> {} (node {}): stored\n",
                        n.share, n.url, n.fingerprint
                    )),
                    Some(e) => s.push_str(&format!(
                        "  share {} -> {} (node {}): FAILED: {e}\n",
                        n.share, n.url, n.fingerprint
                    )),
                }
            }
            if !files.is_empty() {
                s.push_str("Give each grant file to a different proxy node, never to the user.\n");
            }
            s.push_str(NOT_REVOCABLE);
            s.push('\n');
            s
        },
    );
    if failed > 0 {
        return Err(TooFewNodes(format!(
            "{failed} of {} nodes did not store their share; the user can unlock only if at least {} did. \
             Rerun this delegate when the nodes are back: it replaces every share",
            urls.len(),
            a.threshold
        ))
        .into());
    }
    Ok(())
}

struct Sent {
    url: String,
    share: u32,
    fingerprint: String,
    error: Option<String>,
}

fn send_grants(
    client: &Nodes,
    admin: &AdminSecret,
    urls: &[String],
    keys: &[PublicKey],
    grants: &[Grant],
) -> Result<Vec<Sent>> {
    let sealed = grants
        .iter()
        .take(urls.len())
        .map(|g| g.seal_for_node(admin))
        .collect::<Result<Vec<_>, _>>()?;
    let answers = on_each(urls, |i, url| client.upload(url, sealed[i].clone()));
    Ok(answers
        .into_iter()
        .enumerate()
        .map(|(i, answer)| Sent {
            url: urls[i].clone(),
            share: grants[i].share(),
            fingerprint: fingerprint(&keys[i]),
            error: match answer {
                Ok(stored) if stored.share == grants[i].share() => None,
                Ok(stored) => Some(format!(
                    "it says it stored share {}, not share {}",
                    stored.share,
                    grants[i].share()
                )),
                Err(e) => Some(e.to_string()),
            },
        })
        .collect())
}

/// What `revoke` was asked to do.
pub struct RevokeArgs {
    pub admin: KeySource,
    pub keyset: Option<PathBuf>,
    pub scope: ScopeLabel,
    pub user: PathBuf,
    pub nodes: Vec<String>,
    pub threshold: Option<u32>,
    pub node_timeout: u64,
}

pub fn revoke(json: bool, unlock: &Unlock, a: RevokeArgs) -> Result<()> {
    let urls = urls(&a.nodes)?;
    let user = UserPublic::load(&a.user)?;
    let admin = match &a.keyset {
        Some(path) => load_admin(&a.admin, unlock, &Keyset::load(path)?)?,
        None => AdminSecret::from_seed(a.admin.load(unlock)?),
    };
    let n = urls.len() as u32;
    if let Some(m) = a.threshold
        && (m == 0 || m > n)
    {
        return Err(usage(format!(
            "--threshold {m} is not possible with {n} nodes"
        )));
    }
    let revocation = Revocation::new(&admin, &a.scope, &user).to_signed_bytes(&admin)?;
    let client = Nodes::new(Duration::from_secs(a.node_timeout.max(1)))?;
    let answers: Vec<Result<_, NodeError>> =
        on_each(&urls, |_, url| client.revoke(url, revocation.clone()));

    let reported = answers
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|d| d.threshold))
        .max();
    let m = a.threshold.or(reported).unwrap_or(1).min(n);
    let needed = n - m + 1;
    let complied = answers
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|d| d.revoked))
        .count() as u32;
    let holds = complied >= needed;
    let how_m = match (a.threshold, reported) {
        (Some(_), _) => "as given",
        (None, Some(_)) => "as the nodes report",
        (None, None) => "unknown, so every node must comply",
    };
    emit(
        json,
        json!({
            "scope": a.scope, "user": user.name(), "threshold": m, "complied": complied,
            "needed": needed, "holds": holds,
            "nodes": urls.iter().zip(&answers).map(|(url, r)| match r {
                Ok(d) => json!({ "url": url, "complied": d.revoked, "deleted": d.deleted }),
                Err(e) => json!({ "url": url, "complied": false, "error": e.to_string() }),
            }).collect::<Vec<_>>(),
        }),
        || {
            let mut s = format!(
                "revocation of scope `{}` for `{}`: {complied} of {n} nodes complied; {needed} needed (n - m + 1, m = {m} {how_m})\n",
                a.scope,
                user.name()
            );
            for (url, r) in urls.iter().zip(&answers) {
                match r {
                    Ok(d) if d.deleted => {
                        s.push_str(&format!("  {url}: complied, deleted its share\n"))
                    }
                    Ok(_) => s.push_str(&format!(
                        "  {url}: complied (it held no share; it will refuse one)\n"
                    )),
                    Err(e) => s.push_str(&format!("  {url}: FAILED: {e}\n")),
                }
            }
            if holds {
                s.push_str(
                    "The revocation holds: fewer than m nodes can still answer for this user.\n",
                );
            }
            s.push_str(NOT_REVOCABLE);
            s.push_str(" Re-key the data if that matters.\n");
            s
        },
    );
    if !holds {
        return Err(TooFewNodes(format!(
            "the revocation does not hold yet: {complied} of {n} nodes complied and {needed} must; \
             rerun this revoke when the other nodes are back"
        ))
        .into());
    }
    Ok(())
}
