//! Cedar policies: loading and validating a policy folder, and deciding one
//! re-encryption request.
//!
//! A folder holds exactly one `*.cedarschema` and one or more `*.cedar`
//! files; `policies/README.md` describes the request a node asks about. Each
//! policy is named by its `@id` annotation, or `<file>#<n>` without one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cbfs_core::{ScopeLabel, UserName};
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::error::Error;

/// The default policy folder, `policies/default`, built into the binary.
pub const DEFAULT_POLICIES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../policies/default/schema.cedarschema"),
    ),
    (
        "live-delegation.cedar",
        include_str!("../../policies/default/live-delegation.cedar"),
    ),
];

/// Where a policy set came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// The default policies built into the binary (`policies/default`).
    BuiltIn,
    /// Other policies built into a binary: a name for messages, and the
    /// files (one `*.cedarschema`, one or more `*.cedar`).
    Embedded {
        /// What they are, for messages (`policies/gateway`).
        name: &'static str,
        /// File name and text of each.
        files: &'static [(&'static str, &'static str)],
    },
    /// A policy folder.
    Dir(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::BuiltIn => {
                f.write_str("the built-in default policies (policies/default)")
            }
            PolicySource::Embedded { name, .. } => write!(f, "the built-in policies ({name})"),
            PolicySource::Dir(dir) => write!(f, "policy folder {}", dir.display()),
        }
    }
}

/// A validated schema and policy set.
pub struct Policies {
    source: PolicySource,
    schema: Schema,
    set: PolicySet,
    authorizer: Authorizer,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("source", &self.source)
            .field("policies", &self.ids())
            .finish()
    }
}

/// One question to the policies.
#[derive(Clone, Debug)]
pub struct Question<'a> {
    /// Who asks.
    pub user: &'a UserName,
    /// Which scope.
    pub scope: &'a ScopeLabel,
    /// Which path prefix.
    pub path: &'a str,
    /// How many capsules.
    pub count: usize,
    /// The node's clock, seconds since the Unix epoch.
    pub time: i64,
    /// Whether the user holds a live delegation of the scope on this node.
    pub live_delegation: bool,
}

/// The answer, with what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or not.
    pub allowed: bool,
    /// The policies that decided (the permits of an allow, the forbids of a
    /// deny; none when nothing permits).
    pub policies: Vec<String>,
    /// Why, for the audit log and the refusal.
    pub reason: String,
}

fn policy_error(source: &PolicySource, file: Option<&str>, reason: impl Into<String>) -> Error {
    Error::Policy {
        location: match file {
            Some(file) => match source {
                PolicySource::Dir(dir) => dir.join(file).display().to_string(),
                PolicySource::BuiltIn | PolicySource::Embedded { .. } => {
                    format!("built-in {file}")
                }
            },
            None => source.to_string(),
        },
        reason: reason.into(),
    }
}

/// The error and where it points, as `line L: message (help)`.
fn describe(diag: &dyn miette::Diagnostic, err: &dyn fmt::Display, text: &str) -> String {
    let mut out = String::new();
    if let Some(label) = diag.labels().and_then(|mut l| l.next()) {
        let offset = label.offset().min(text.len());
        let line = text[..offset].matches('\n').count() + 1;
        out.push_str(&format!("line {line}: "));
    }
    out.push_str(&err.to_string());
    if let Some(help) = diag.help() {
        out.push_str(&format!(" ({help})"));
    }
    out
}

impl Policies {
    /// The built-in default policies.
    pub fn built_in() -> Result<Self, Error> {
        let files = DEFAULT_POLICIES
            .iter()
            .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
            .collect();
        Self::from_files(PolicySource::BuiltIn, files)
    }

    /// Loads and validates the policy folder `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let source = PolicySource::Dir(dir.to_path_buf());
        let entries = std::fs::read_dir(dir)
            .map_err(|e| policy_error(&source, None, format!("cannot read the folder: {e}")))?;
        let mut files = BTreeMap::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| policy_error(&source, None, format!("cannot read the folder: {e}")))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !(name.ends_with(".cedar") || name.ends_with(".cedarschema")) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| policy_error(&source, Some(&name), format!("cannot read it: {e}")))?;
            files.insert(name, text);
        }
        Self::from_files(source, files)
    }

    /// Loads the policies named by `dir`, or the built-in ones.
    pub fn load_from(source: &PolicySource) -> Result<Self, Error> {
        match source {
            PolicySource::BuiltIn => Self::built_in(),
            PolicySource::Embedded { files, .. } => {
                let files = files
                    .iter()
                    .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
                    .collect();
                Self::from_files(source.clone(), files)
            }
            PolicySource::Dir(dir) => Self::load(dir),
        }
    }

    /// The schema the policies were validated against: requests and
    /// entities are checked against it too.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Decides any request of the policies' schema (the node's own
    /// question is [`decide`](Self::decide)).
    pub fn authorize(&self, request: &cedar_policy::Request, entities: &Entities) -> Verdict {
        let response = self.authorizer.is_authorized(request, &self.set, entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        policies.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let allowed = response.decision() == Decision::Allow;
        let mut reason = if allowed {
            format!("permitted by {}", policies.join(", "))
        } else if policies.is_empty() {
            "no policy permits it".to_owned()
        } else {
            format!("forbidden by {}", policies.join(", "))
        };
        if !errors.is_empty() {
            reason.push_str(&format!(
                " (policies that failed to evaluate: {})",
                errors.join("; ")
            ));
        }
        Verdict {
            allowed,
            policies,
            reason,
        }
    }

    fn from_files(source: PolicySource, files: BTreeMap<String, String>) -> Result<Self, Error> {
        let schemas: Vec<_> = files
            .keys()
            .filter(|n| n.ends_with(".cedarschema"))
            .collect();
        let schema_name = match schemas.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(policy_error(
                    &source,
                    None,
                    "it has no schema: put the schema in a *.cedarschema file (copy policies/default/schema.cedarschema)",
                ));
            }
            many => {
                return Err(policy_error(
                    &source,
                    None,
                    format!(
                        "it has {} schema files ({}); keep exactly one *.cedarschema",
                        many.len(),
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        let schema_text = &files[&schema_name];
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_text).map_err(|e| {
            policy_error(&source, Some(&schema_name), describe(&e, &e, schema_text))
        })?;

        let mut set = PolicySet::new();
        let mut seen = HashSet::new();
        for (name, text) in files.iter().filter(|(n, _)| n.ends_with(".cedar")) {
            let parsed = PolicySet::from_str(text)
                .map_err(|e| policy_error(&source, Some(name), describe(&e, &e, text)))?;
            if parsed.templates().next().is_some() {
                return Err(policy_error(
                    &source,
                    Some(name),
                    "policy templates are not supported",
                ));
            }
            // Parsing gives positional ids; name each policy by its @id or its place.
            let mut in_file: Vec<&Policy> = parsed.policies().collect();
            in_file.sort_by_key(|p| {
                let id = p.id().to_string();
                id.trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (n, policy) in in_file.into_iter().enumerate() {
                let id = policy
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{name}#{n}"));
                if !seen.insert(id.clone()) {
                    return Err(policy_error(
                        &source,
                        Some(name),
                        format!("policy id `{id}` is used twice; give each policy its own @id"),
                    ));
                }
                set.add(policy.new_id(PolicyId::new(&id)))
                    .map_err(|e| policy_error(&source, Some(name), e.to_string()))?;
            }
        }
        if set.is_empty() {
            return Err(policy_error(
                &source,
                None,
                "it has no policies (*.cedar files); with none, every request would be refused",
            ));
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let reasons: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(policy_error(
                &source,
                None,
                format!(
                    "the policies do not validate against {schema_name}: {}",
                    reasons.join("; ")
                ),
            ));
        }
        Ok(Policies {
            source,
            schema,
            set,
            authorizer: Authorizer::new(),
        })
    }

    /// Where these policies came from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// The ids of the policies, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    /// Decides one request. Anything that keeps Cedar from answering is a
    /// refusal.
    pub fn decide(&self, q: &Question<'_>) -> Verdict {
        match self.try_decide(q) {
            Ok(verdict) => verdict,
            Err(reason) => Verdict {
                allowed: false,
                policies: Vec::new(),
                reason: format!("the policy request could not be built: {reason}"),
            },
        }
    }

    fn try_decide(&self, q: &Question<'_>) -> Result<Verdict, String> {
        let uid = |ty: &str, id: &str| {
            EntityTypeName::from_str(ty)
                .map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(id)))
                .map_err(|e| e.to_string())
        };
        let scope = uid("Cbfs::Scope", q.scope.as_str())?;
        let user = uid("Cbfs::User", q.user.as_str())?;
        let prefix = uid("Cbfs::Prefix", &format!("{}:{}", q.scope, q.path))?;
        let action = EntityUid::from_str(r#"Cbfs::Action::"unlock""#).map_err(|e| e.to_string())?;
        let count = i64::try_from(q.count).map_err(|e| e.to_string())?;

        let user_parents = if q.live_delegation {
            HashSet::from([scope.clone()])
        } else {
            HashSet::new()
        };
        let entities = [
            Entity::new_no_attrs(scope.clone(), HashSet::new()),
            Entity::new_no_attrs(user.clone(), user_parents),
            Entity::new(
                prefix.clone(),
                HashMap::from([
                    (
                        "scope".to_owned(),
                        RestrictedExpression::new_entity_uid(scope.clone()),
                    ),
                    (
                        "path".to_owned(),
                        RestrictedExpression::new_string(q.path.to_owned()),
                    ),
                ]),
                HashSet::from([scope]),
            )
            .map_err(|e| e.to_string())?,
        ];
        let entities =
            Entities::from_entities(entities, Some(&self.schema)).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("time".to_owned(), RestrictedExpression::new_long(q.time)),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(q.path.to_owned()),
            ),
            ("count".to_owned(), RestrictedExpression::new_long(count)),
        ])
        .map_err(|e| e.to_string())?;
        let request = cedar_policy::Request::new(user, action, prefix, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        Ok(self.authorize(&request, &entities))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question<'a>(user: &'a UserName, scope: &'a ScopeLabel, path: &'a str) -> Question<'a> {
        Question {
            user,
            scope,
            path,
            count: 1000,
            time: 1_800_000_000,
            live_delegation: true,
        }
    }

    fn folder(extra: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in DEFAULT_POLICIES.iter().chain(extra) {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn default_allows_a_live_delegation_only() {
        let p = Policies::built_in().unwrap();
        assert_eq!(p.ids(), ["live-delegation"]);
        let (u, s) = (
            UserName::new("alice").unwrap(),
            ScopeLabel::new("proj").unwrap(),
        );
        let v = p.decide(&question(&u, &s, "/any/where"));
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies, ["live-delegation"]);
        assert_eq!(v.reason, "permitted by live-delegation");
        let mut q = question(&u, &s, "/");
        q.live_delegation = false;
        let v = p.decide(&q);
        assert!(!v.allowed);
        assert_eq!(v.reason, "no policy permits it");
    }

    #[test]
    fn the_shipped_folder_matches_the_built_in_copy() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default");
        let p = Policies::load(&dir).unwrap();
        assert_eq!(p.ids(), Policies::built_in().unwrap().ids());
    }

    #[test]
    fn forbid_on_a_path_prefix_and_context() {
        let dir = folder(&[(
            "paths.cedar",
            r#"@id("no-secret")
forbid (principal, action == Cbfs::Action::"unlock", resource)
when { context.path like "/secret/*" || resource.path == "/secret" };
forbid (principal, action, resource) when { context.count > 5000 };"#,
        )]);
        let p = Policies::load(dir.path()).unwrap();
        assert_eq!(p.ids(), ["live-delegation", "no-secret", "paths.cedar#1"]);
        let (u, s) = (
            UserName::new("alice").unwrap(),
            ScopeLabel::new("proj").unwrap(),
        );
        assert!(p.decide(&question(&u, &s, "/public/x")).allowed);
        let v = p.decide(&question(&u, &s, "/secret/plans"));
        assert!(!v.allowed);
        assert_eq!(v.reason, "forbidden by no-secret");
        let mut q = question(&u, &s, "/public");
        q.count = 6000;
        let v = p.decide(&q);
        assert_eq!(v.reason, "forbidden by paths.cedar#1");
    }

    #[test]
    fn broken_folders_are_refused_with_the_file_and_line() {
        let dir = folder(&[(
            "bad.cedar",
            "permit (principal, action, resource)\nwhen { context.nope };",
        )]);
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("do not validate") && err.contains("nope"),
            "{err}"
        );

        let dir = folder(&[("syntax.cedar", "permit (principal,\n action resource);")]);
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("syntax.cedar") && err.contains("line 2"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), DEFAULT_POLICIES[1].1).unwrap();
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no schema"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.cedarschema"), DEFAULT_POLICIES[0].1).unwrap();
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no policies"), "{err}");

        let dir = folder(&[("dup.cedar", DEFAULT_POLICIES[1].1)]);
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");

        let err = Policies::load(Path::new("/no/such/dir"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/dir"), "{err}");
    }
}
