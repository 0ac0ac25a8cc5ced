//! `delegate` (to nodes, or sealed for them into files) and `revoke`.
//!
//! No command writes a key fragment anyone but its node can read: with
//! Umbral, a user holding threshold-many kfrags can compute the scope
//! secret, so a share goes only to its node, encrypted for that node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use cbfs_client::NodeProblem;
use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{
    DelegationRecord, DelegationTerms, Error, Grant, KeySource, Keyset, Revocation, ScopeLabel,
    Unlock, UserPublic, fingerprint,
};
use cbfs_wire::{GrantUpload, NodePublicFile, RevokeDone, record_from_value};
use serde_json::json;

use crate::commands::{load_admin, make_private_dir, parse_expiry, write_new_private};
use crate::nodes::{NodeKeyMismatch, Nodes, TooFewNodes, check_url, transport_is_trusted};
use crate::output::emit;

const NOT_REVOCABLE: &str = "Revocation stops new unlocks only: file keys already unlocked cannot be revoked or taken back.";

/// What `delegate` was asked to do.
pub struct DelegateArgs {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub scope: ScopeLabel,
    pub to: PathBuf,
    pub threshold: u32,
    pub expires: Option<String>,
    pub nodes: Vec<String>,
    pub node_keys: Vec<PathBuf>,
    pub out: Option<PathBuf>,
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

/// Refuses nodes whose keys would come from an unauthenticated answer:
/// plain HTTP to another machine. Whoever answers there for m of the URLs
/// would be sent m shares, and with them the scope secret.
fn refuse_unauthenticated(urls: &[String]) -> Result<()> {
    let open: Vec<&String> = urls.iter().filter(|u| !transport_is_trusted(u)).collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "{} {} reached over plain HTTP on another machine: {} key would be taken from an answer anyone on the path could give, and the share sent to whoever gave it. Pin each node's key with --node-key NODE.pub (one per --node, in order), or reach the nodes over https://",
        open.iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if open.len() == 1 { "is" } else { "are" },
        if open.len() == 1 { "its" } else { "their" },
    )))
}

pub fn delegate(json: bool, unlock: &Unlock, a: DelegateArgs) -> Result<()> {
    let urls = urls(&a.nodes)?;
    let pinned = !urls.is_empty() && !a.node_keys.is_empty();
    match (urls.is_empty(), a.node_keys.is_empty(), &a.out) {
        (false, true, None) | (true, false, Some(_)) => {}
        (false, false, None) => {
            if a.node_keys.len() != urls.len() {
                return Err(usage(format!(
                    "--node-key with --node pins each node's key: give one NODE.pub per --node, in the same order ({} nodes, {} keys)",
                    urls.len(),
                    a.node_keys.len()
                )));
            }
        }
        (true, true, _) => {
            return Err(usage(
                "give the delegation nodes: --node URL for each (shares are sent), or --node-key NODE.pub for each with --out DIR (shares are written sealed for their nodes)".into(),
            ));
        }
        (false, _, Some(_)) => {
            return Err(usage(
                "--out writes shares for --node-key nodes given without --node; with --node they are sent".into(),
            ));
        }
        (true, false, None) => {
            return Err(usage(
                "--node-key needs --out DIR (where to write the sealed shares), or a --node URL for each key (where to send them)".into(),
            ));
        }
    }
    if !pinned {
        refuse_unauthenticated(&urls)?;
    }
    let ks = Keyset::load(&a.keyset)?;
    let user = UserPublic::load(&a.to)?;
    let expires = a.expires.map(|e| parse_expiry(&e)).transpose()?;
    let admin = load_admin(&a.admin, unlock, &ks)?;
    let client = Nodes::new(Duration::from_secs(a.node_timeout.max(1)))?;
    // The nodes must know the keyset the grants are made under (a rotated
    // scope's new key); a node with it already, or a newer one, says so.
    if !urls.is_empty() && !ks.signed_bytes().is_empty() {
        client.offer_keyset(&urls, ks.signed_bytes());
    }

    // Every node's key first: nothing is made or sent unless all n answer.
    let pins = a
        .node_keys
        .iter()
        .map(|p| NodePublicFile::load(p).map_err(usage))
        .collect::<Result<Vec<_>>>()?;
    let (keys, names): (Vec<PublicKey>, Vec<String>) = if urls.is_empty() {
        let keys = pins;
        let names = a
            .node_keys
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        (keys, names)
    } else {
        let keys = client.all_keys(
            &urls,
            "nothing was delegated: every node must give its key first, and these did not",
        )?;
        // A pinned node must answer with its pinned key: a share sealed
        // for any other key goes to whoever holds that key.
        let wrong: Vec<String> = urls
            .iter()
            .zip(&keys)
            .zip(pins.iter().zip(&a.node_keys))
            .filter(|((_, got), (pin, _))| got != pin)
            .map(|((url, got), (pin, file))| {
                format!(
                    "  {url} answered key {}, but {} pins {}",
                    fingerprint(got),
                    file.display(),
                    fingerprint(pin)
                )
            })
            .collect();
        if !wrong.is_empty() {
            return Err(NodeKeyMismatch(format!(
                "nothing was delegated: these nodes are not the ones pinned (another server answers at their URL, or a pin names the wrong node):\n{}",
                wrong.join("\n")
            ))
            .into());
        }
        (keys, urls.clone())
    };
    for (i, k) in keys.iter().enumerate() {
        // A share sealed for the user's own key is a share the user can
        // open: with m of them, the scope secret.
        if k == user.public_key() || k == user.verifying_key() {
            return Err(usage(format!(
                "{} has the key of `{}` itself ({}), not a node's: the user could open that share. Give each node's own key",
                names[i],
                user.name(),
                fingerprint(k)
            )));
        }
        if let Some(j) = keys[..i].iter().position(|other| other == k) {
            return Err(usage(format!(
                "{} and {} are the same node (key {}): each share needs a node of its own",
                names[j],
                names[i],
                fingerprint(k)
            )));
        }
    }
    let terms = DelegationTerms {
        threshold: a.threshold,
        shares: keys.len() as u32,
        expires: expires.clone(),
    };
    let delegation = cbfs_core::delegate(
        &admin,
        &ks,
        &a.scope,
        &user,
        &terms,
        &keys,
        cbfs_core::system_clock().as_ref(),
    )?;
    let uploads = delegation
        .grants
        .iter()
        .map(|g| {
            let sealed = g.seal_for_node(&admin)?;
            Ok(GrantUpload::new(&sealed, &delegation.record))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut files = Vec::new();
    let sent = if let Some(out) = &a.out {
        make_private_dir(out)?;
        for (grant, upload) in delegation.grants.iter().zip(&uploads) {
            let path = out.join(format!(
                "{}.{}.{}-of-{}.share",
                a.scope,
                user.name(),
                grant.share(),
                grant.shares()
            ));
            write_new_private(&path, &serde_json::to_vec_pretty(upload)?)?;
            files.push(path);
        }
        Vec::new()
    } else {
        send_grants(&client, &urls, &keys, &delegation.grants, &uploads)
    };
    let failed = sent.iter().filter(|s| s.error.is_some()).count();
    let shares = terms.shares;
    emit(
        json,
        json!({
            "scope": a.scope, "user": user.name(), "threshold": a.threshold, "shares": shares,
            "expires": expires, "issued": delegation.record.issued(), "files": files,
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
            for (f, k) in files.iter().zip(&keys) {
                s.push_str(&format!(
                    "  {} (sealed for node {})\n",
                    f.display(),
                    fingerprint(k)
                ));
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
                s.push_str(
                    "Each file is sealed for its node: only that node can open it. Carry it there and run `cbfs-delegation import`.\n",
                );
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

/// What `delegate --reissue` was asked to do.
pub struct ReissueArgs {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub scope: ScopeLabel,
    pub threshold: Option<u32>,
    pub expires: Option<String>,
    pub nodes: Vec<String>,
    pub node_timeout: u64,
}

/// Issues again, under the scope's current key and the administrator's
/// current key, every live delegation of the scope the nodes hold.
pub fn reissue(json: bool, unlock: &Unlock, a: ReissueArgs) -> Result<()> {
    let urls = urls(&a.nodes)?;
    if urls.is_empty() {
        return Err(usage(
            "--reissue asks the nodes: give --node URL for each node of the delegations".into(),
        ));
    }
    let ks = Keyset::load(&a.keyset)?;
    let admin = load_admin(&a.admin, unlock, &ks)?;
    let client = Nodes::new(Duration::from_secs(a.node_timeout.max(1)))?;
    client.offer_keyset(&urls, ks.signed_bytes());
    let keys = client.all_keys(
        &urls,
        "nothing was issued: every node must answer, and these did not",
    )?;
    let now = cbfs_core::system_clock();
    let requests: Vec<_> = keys
        .iter()
        .map(|k| {
            cbfs_wire::admin::ListBody::new(k, ks.fs(), &a.scope, now.unix()).sign(&admin.signer())
        })
        .collect();
    let history = ks.admin_history();
    let mut latest: std::collections::BTreeMap<cbfs_core::UserName, cbfs_core::DelegationRecord> =
        std::collections::BTreeMap::new();
    let mut revoked: Vec<Revocation> = Vec::new();
    let mut failures = Vec::new();
    for (url, answer) in urls.iter().zip(client.delegations(&urls, &requests)) {
        let list = match answer {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("  {url}: {e}"));
                continue;
            }
        };
        for value in &list.delegations {
            let bytes = serde_json::to_vec(value)?;
            let record = history
                .iter()
                .rev()
                .find_map(|k| cbfs_core::DelegationRecord::from_bytes(&bytes, url, k).ok());
            let Some(record) = record else {
                failures.push(format!(
                    "  {url}: a delegation record no administrator key of the keyset signed"
                ));
                continue;
            };
            if record.scope() != &a.scope || record.fs() != ks.fs() {
                continue;
            }
            let newer = latest.get(record.user()).is_none_or(|old| {
                cbfs_core::parse_time(record.issued()).ok()
                    > cbfs_core::parse_time(old.issued()).ok()
            });
            if newer {
                latest.insert(record.user().clone(), record);
            }
        }
        for value in &list.revocations {
            let bytes = serde_json::to_vec(value)?;
            if let Some(r) = history
                .iter()
                .rev()
                .find_map(|k| Revocation::from_bytes(&bytes, url, k).ok())
            {
                revoked.push(r);
            }
        }
    }
    if !failures.is_empty() {
        return Err(TooFewNodes(format!(
            "nothing was issued: every node must list its delegations, and these did not:\n{}",
            failures.join("\n")
        ))
        .into());
    }
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = 0;
    let mut live = Vec::new();
    for (user, record) in &latest {
        let issued = cbfs_core::parse_time(record.issued()).ok();
        if revoked.iter().any(|r| {
            r.scope() == &a.scope && r.user() == user && issued.is_none_or(|t| t <= r.revoked_at())
        }) {
            skipped.push(json!({ "user": user, "why": "revoked" }));
            continue;
        }
        if record.is_expired(now.as_ref()) {
            skipped.push(json!({ "user": user, "why": "expired" }));
            continue;
        }
        live.push((user, record));
    }
    // The nodes' keys are pinned by the delegations being issued again: the
    // administrator signed them. A key none of them names is not one of
    // their nodes, whatever answered at its URL.
    let strangers: Vec<String> = urls
        .iter()
        .zip(&keys)
        .filter_map(|(url, k)| {
            let users: Vec<String> = live
                .iter()
                .filter(|(_, r)| !r.nodes().contains(k))
                .map(|(u, _)| format!("`{u}`"))
                .collect();
            (!users.is_empty()).then(|| {
                format!(
                    "  {url} answered key {}, which the signed delegation of {} does not name",
                    fingerprint(k),
                    users.join(", ")
                )
            })
        })
        .collect();
    if !strangers.is_empty() {
        return Err(NodeKeyMismatch(format!(
            "nothing was issued: these are not the nodes of the delegations (a new node needs `delegate --to USER.pub` with its key pinned by --node-key):\n{}",
            strangers.join("\n")
        ))
        .into());
    }
    for (user, record) in live {
        let n = keys.len() as u32;
        let threshold = a.threshold.unwrap_or(record.threshold());
        if threshold == 0 || threshold > n {
            return Err(usage(format!(
                "the delegation to `{user}` needs {threshold} of its nodes, and {n} were given: give --threshold"
            )));
        }
        let expires = match &a.expires {
            Some(e) => Some(parse_expiry(e)?),
            None => record.expires().map(str::to_owned),
        };
        let terms = DelegationTerms {
            threshold,
            shares: n,
            expires: expires.clone(),
        };
        let public = UserPublic::from_record(record);
        let delegation =
            cbfs_core::delegate(&admin, &ks, &a.scope, &public, &terms, &keys, now.as_ref())?;
        let uploads = delegation
            .grants
            .iter()
            .map(|g| {
                Ok(GrantUpload::new(
                    &g.seal_for_node(&admin)?,
                    &delegation.record,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let sent = send_grants(&client, &urls, &keys, &delegation.grants, &uploads);
        let errors: Vec<String> = sent
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.url)))
            .collect();
        if !errors.is_empty() {
            failed += 1;
        }
        done.push(json!({
            "user": user, "threshold": threshold, "shares": n, "expires": expires,
            "issued": delegation.record.issued(), "errors": errors,
        }));
    }
    let version = ks.scope_version(&a.scope).unwrap_or(1);
    emit(
        json,
        json!({ "scope": a.scope, "key_version": version, "reissued": done, "skipped": skipped }),
        || {
            let mut s = format!(
                "issued again under key version {version} of scope `{}`: {} delegation(s)\n",
                a.scope,
                done.len()
            );
            for d in &done {
                s.push_str(&format!(
                    "  {} ({} of {}){}\n",
                    d["user"].as_str().unwrap_or("?"),
                    d["threshold"],
                    d["shares"],
                    match d["errors"].as_array() {
                        Some(e) if !e.is_empty() => format!(": FAILED on {}", e.len()),
                        _ => String::new(),
                    }
                ));
            }
            for k in &skipped {
                s.push_str(&format!(
                    "  {}: not issued ({})\n",
                    k["user"].as_str().unwrap_or("?"),
                    k["why"].as_str().unwrap_or("?")
                ));
            }
            s
        },
    );
    if failed > 0 {
        return Err(TooFewNodes(format!(
            "{failed} delegation(s) were not stored on every node; rerun when the nodes are back"
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
    urls: &[String],
    keys: &[PublicKey],
    grants: &[Grant],
    uploads: &[GrantUpload],
) -> Vec<Sent> {
    client
        .upload(urls, uploads)
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
        .collect()
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
        None => cbfs_core::AdminSecret::from_seed(a.admin.load(unlock)?),
    };
    let n = urls.len() as u32;
    if let Some(m) = a.threshold
        && (m == 0 || m > n)
    {
        return Err(usage(format!(
            "--threshold {m} is not possible with {n} nodes"
        )));
    }
    let revocation = Revocation::new(&admin, &a.scope, &user, cbfs_core::system_clock().as_ref())
        .to_signed_bytes(&admin)?;
    let client = Nodes::new(Duration::from_secs(a.node_timeout.max(1)))?;
    let answers = client.revoke(&urls, &revocation);

    // m and n come from what the administrator signed: the delegation
    // records the nodes return, checked with the administrator's key. A
    // node's own word (`threshold` in its answer) counts for nothing.
    let terms = signed_terms(&urls, &answers, &admin.verifying_key(), &a.scope, &user);
    let given = a.threshold.map(|m| (m, n));
    let (m, shares, how_m) = match (terms.strictest(), given) {
        (Some(rec), Some((gm, gn)))
            if gn.saturating_sub(gm) > rec.shares().saturating_sub(rec.threshold()) =>
        {
            (gm, gn, "as given")
        }
        (Some(rec), _) => (
            rec.threshold(),
            rec.shares(),
            "as the administrator signed it",
        ),
        (None, Some((gm, gn))) => (gm, gn, "as given"),
        (None, None) => (1, n, "unknown, so every node must comply"),
    };
    let needed = shares.saturating_sub(m) + 1;
    // Nodes that say they complied, each node once however many URLs reach
    // it, and only nodes of the delegation when its record names them.
    let said_yes: Vec<usize> = (0..urls.len())
        .filter(|&i| answers[i].as_ref().is_ok_and(|d| d.revoked) && !terms.lied.contains_key(&i))
        .collect();
    let yes_urls: Vec<String> = said_yes.iter().map(|&i| urls[i].clone()).collect();
    let mut seen: Vec<PublicKey> = Vec::new();
    let mut complied_at = Vec::new();
    for (&i, key) in said_yes.iter().zip(client.keys(&yes_urls)) {
        match key {
            Ok(k) if seen.contains(&k) => continue,
            Ok(k) => {
                if terms
                    .strictest()
                    .is_some_and(|rec| rec.share_of(&k).is_none())
                {
                    continue;
                }
                seen.push(k);
            }
            // Complied, then would not say which node it is: with a
            // signed record to hold it to, not counted (it may be another
            // URL of a node already counted, or no node of the delegation).
            Err(_) if terms.strictest().is_some() => continue,
            // No record: every node must comply, each counted by its URL.
            Err(_) => {}
        }
        complied_at.push(i);
    }
    let complied = complied_at.len() as u32;
    let holds = complied >= needed;
    emit(
        json,
        json!({
            "scope": a.scope, "user": user.name(), "threshold": m, "shares": shares,
            "terms": how_m, "complied": complied, "needed": needed, "holds": holds,
            "nodes": urls.iter().zip(&answers).enumerate().map(|(i, (url, r))| match (r, terms.lied.get(&i)) {
                (_, Some(why)) => json!({ "url": url, "complied": false, "lied": why }),
                (Ok(d), None) => json!({
                    "url": url, "complied": d.revoked, "counted": complied_at.contains(&i),
                    "deleted": d.deleted,
                }),
                (Err(e), None) => json!({ "url": url, "complied": false, "error": e.to_string() }),
            }).collect::<Vec<_>>(),
        }),
        || {
            let mut s = format!(
                "revocation of scope `{}` for `{}`: {complied} of {n} nodes complied; {needed} needed (n - m + 1, n = {shares}, m = {m} {how_m})\n",
                a.scope,
                user.name()
            );
            for (i, (url, r)) in urls.iter().zip(&answers).enumerate() {
                let counted = if complied_at.contains(&i) {
                    ""
                } else {
                    " (not counted: the same node as another URL, not a node of this delegation, or it would not give its key)"
                };
                match (r, terms.lied.get(&i)) {
                    (_, Some(why)) => s.push_str(&format!("  {url}: LIED: {why}\n")),
                    (Ok(d), None) if d.deleted => {
                        s.push_str(&format!("  {url}: complied, deleted its share{counted}\n"))
                    }
                    (Ok(_), None) => s.push_str(&format!(
                        "  {url}: complied (it held no share; it will refuse one){counted}\n"
                    )),
                    (Err(e), None) => s.push_str(&format!("  {url}: FAILED: {e}\n")),
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

/// The terms of the revoked delegation as the administrator signed them,
/// from the records the nodes returned; and the nodes whose record was not
/// the administrator's, or not of this delegation (by answer index).
struct SignedTerms {
    records: Vec<DelegationRecord>,
    lied: std::collections::BTreeMap<usize, String>,
}

impl SignedTerms {
    /// The record that asks the most nodes to comply (n - m + 1): nodes may
    /// hold shares of more than one delegation of the same (scope, user).
    fn strictest(&self) -> Option<&DelegationRecord> {
        self.records
            .iter()
            .max_by_key(|r| r.shares().saturating_sub(r.threshold()))
    }
}

fn signed_terms(
    urls: &[String],
    answers: &[Result<RevokeDone, NodeProblem>],
    admin: &PublicKey,
    scope: &ScopeLabel,
    user: &UserPublic,
) -> SignedTerms {
    let mut terms = SignedTerms {
        records: Vec::new(),
        lied: Default::default(),
    };
    for (i, answer) in answers.iter().enumerate() {
        let Some(value) = answer.as_ref().ok().and_then(|d| d.delegation.as_ref()) else {
            continue;
        };
        match record_from_value(value, &urls[i], admin) {
            Ok(record)
                if record.scope() == scope
                    && record.user() == user.name()
                    && record.user_public_key() == user.public_key() =>
            {
                terms.records.push(record)
            }
            Ok(record) => {
                terms.lied.insert(
                    i,
                    format!(
                        "it answered with the record of another delegation (scope `{}`, user `{}`)",
                        record.scope(),
                        record.user()
                    ),
                );
            }
            Err(e) => {
                terms.lied.insert(
                    i,
                    format!("its delegation record is not the administrator's: {e}"),
                );
            }
        }
    }
    terms
}
