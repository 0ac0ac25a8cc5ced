//! Cedar decides every request: principal, action, file system and path.
//! The policy folder is loaded by the delegation node's loader (one
//! implementation of loading and validating); the schema and the defaults
//! are `policies/gateway/`.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cbfs_delegation::{Policies, PolicySource, Verdict};
use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression,
};

use crate::config::Principal;

/// The built-in gateway policies.
pub const GATEWAY_POLICIES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../policies/gateway/schema.cedarschema"),
    ),
    (
        "default.cedar",
        include_str!("../../policies/gateway/default.cedar"),
    ),
];

/// The built-in policies, as a source.
pub fn built_in() -> PolicySource {
    PolicySource::Embedded {
        name: "policies/gateway",
        files: GATEWAY_POLICIES,
    }
}

/// What a caller asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start, read or cancel a tier-out run.
    TierOut,
    /// Push a tree.
    Push,
    /// List snapshots and entries.
    List,
    /// Read the store's objects.
    ReadStore,
    /// Relay a re-encryption request to the nodes.
    Unlock,
    /// Recall released files (their content back in place).
    Recall,
    /// Anything else (reload, job records of everyone).
    Admin,
}

impl Action {
    /// The Cedar action name.
    pub fn name(self) -> &'static str {
        match self {
            Action::TierOut => "TierOut",
            Action::Push => "Push",
            Action::List => "List",
            Action::ReadStore => "ReadStore",
            Action::Unlock => "Unlock",
            Action::Recall => "Recall",
            Action::Admin => "Admin",
        }
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    EntityTypeName::from_str(ty)
        .map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(id)))
        .map_err(|e| e.to_string())
}

fn path_uid(fs: &str, path: &str) -> Result<EntityUid, String> {
    uid("Cbfs::Path", &format!("{fs}:{path}"))
}

/// Decides whether `who` may take `action` on `path` (checked, absolute)
/// of file system `fs`, at `time`. Anything that keeps Cedar from
/// answering is a refusal.
pub fn decide(
    policies: &Policies,
    who: &Principal,
    action: Action,
    fs: &str,
    path: &str,
    time: i64,
) -> Verdict {
    match try_decide(policies, who, action, fs, path, time) {
        Ok(v) => v,
        Err(reason) => Verdict {
            allowed: false,
            policies: Vec::new(),
            reason: format!("the policy request could not be built: {reason}"),
        },
    }
}

fn try_decide(
    policies: &Policies,
    who: &Principal,
    action: Action,
    fs: &str,
    path: &str,
    time: i64,
) -> Result<Verdict, String> {
    let fs_uid = uid("Cbfs::FileSystem", fs)?;
    let mut entities = vec![Entity::new_no_attrs(fs_uid.clone(), HashSet::new())];
    // The path and its ancestors, each `in` its parent; the root `in` the
    // file system. The user's homes too, so that `in` sees them.
    let mut paths: Vec<String> = crate::paths::ancestors(path);
    for h in who.homes.get(fs).into_iter().flatten() {
        for a in crate::paths::ancestors(h) {
            if !paths.contains(&a) {
                paths.push(a);
            }
        }
    }
    for p in &paths {
        let parent = if p == "/" {
            fs_uid.clone()
        } else {
            let up = match p.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => p[..i].to_owned(),
            };
            path_uid(fs, &up)?
        };
        entities.push(
            Entity::new(
                path_uid(fs, p)?,
                HashMap::from([
                    (
                        "fs".to_owned(),
                        RestrictedExpression::new_entity_uid(fs_uid.clone()),
                    ),
                    (
                        "path".to_owned(),
                        RestrictedExpression::new_string(p.clone()),
                    ),
                ]),
                HashSet::from([parent]),
            )
            .map_err(|e| e.to_string())?,
        );
    }
    let mut roles = HashSet::new();
    for r in &who.roles {
        let r = uid("Cbfs::Role", r)?;
        entities.push(Entity::new_no_attrs(r.clone(), HashSet::new()));
        roles.insert(r);
    }
    let homes = who
        .homes
        .get(fs)
        .into_iter()
        .flatten()
        .map(|h| {
            let h = if h.len() > 1 {
                h.trim_end_matches('/')
            } else {
                h
            };
            path_uid(fs, h).map(RestrictedExpression::new_entity_uid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let user = uid("Cbfs::User", who.name.as_str())?;
    entities.push(
        Entity::new(
            user.clone(),
            HashMap::from([("homes".to_owned(), RestrictedExpression::new_set(homes))]),
            roles,
        )
        .map_err(|e| e.to_string())?,
    );
    let entities =
        Entities::from_entities(entities, Some(policies.schema())).map_err(|e| e.to_string())?;
    let resource_path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let resource = path_uid(fs, resource_path)?;
    let action = EntityUid::from_str(&format!(r#"Cbfs::Action::"{}""#, action.name()))
        .map_err(|e| e.to_string())?;
    let context = Context::from_pairs([
        ("time".to_owned(), RestrictedExpression::new_long(time)),
        (
            "path".to_owned(),
            RestrictedExpression::new_string(resource_path.to_owned()),
        ),
    ])
    .map_err(|e| e.to_string())?;
    let request =
        cedar_policy::Request::new(user, action, resource, context, Some(policies.schema()))
            .map_err(|e| e.to_string())?;
    Ok(policies.authorize(&request, &entities))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbfs_core::UserName;
    use std::collections::BTreeMap;

    fn who(name: &str, roles: &[&str], homes: &[&str]) -> Principal {
        Principal {
            name: UserName::new(name).unwrap(),
            verifying_key: None,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            homes: BTreeMap::from([(
                "fs1".to_owned(),
                homes.iter().map(|s| s.to_string()).collect(),
            )]),
        }
    }

    #[test]
    fn the_default_policies_decide_as_documented() {
        let p = Policies::load_from(&built_in()).unwrap();
        let alice = who("alice", &["user"], &["/home/alice"]);
        let host = who("host1", &["host"], &[]);
        let admin = who("root", &["admin"], &[]);
        let nobody = who("mallory", &[], &[]);
        let d = |w: &Principal, a, path| decide(&p, w, a, "fs1", path, 0).allowed;
        assert!(d(&alice, Action::List, "/home/alice"));
        assert!(d(&alice, Action::List, "/home/alice/docs/x"));
        assert!(!d(&alice, Action::List, "/home/bob"));
        assert!(!d(&alice, Action::List, "/home"));
        assert!(!d(&alice, Action::List, "/"));
        assert!(d(&alice, Action::ReadStore, "/"));
        assert!(d(&alice, Action::Unlock, "/"));
        assert!(!d(&alice, Action::Push, "/home/alice"));
        assert!(!d(&alice, Action::TierOut, "/"));
        assert!(d(&host, Action::Push, "/hosts/h1"));
        assert!(d(&host, Action::TierOut, "/"));
        assert!(!d(&host, Action::List, "/"));
        assert!(d(&admin, Action::Admin, "/"));
        assert!(d(&admin, Action::List, "/home/bob"));
        for a in [
            Action::List,
            Action::ReadStore,
            Action::Push,
            Action::TierOut,
            Action::Unlock,
        ] {
            assert!(!d(&nobody, a, "/"), "{a:?}");
        }
    }
}
