//! The operator's questions, answered once: usage reports, API keys, and what the
//! policies decide. The API and the console ask through [`Service`]; the CLI, which
//! works without a running server, calls the same functions on the store and the
//! policies it opens itself. So the three cannot disagree.

use super::{Service, ServiceError};
use crate::auth::{KeyEntry, Principal, Role};
use crate::model::Catalog;
use crate::policy::{Decision, PolicySet, Query};
use crate::store::{Store, StoredKey, UsageQuery, UsageRow};

/// Usage totals `asker` may see: an admin everyone's (or one `user`'s), anyone else
/// only their own.
pub async fn usage(store: &dyn Store, asker: &Principal, mut query: UsageQuery) -> Result<Vec<UsageRow>, ServiceError> {
    if asker.role != Role::Admin {
        match &query.user {
            Some(user) if user != &asker.user => {
                return Err(ServiceError::Forbidden(format!(
                    "only admins may read another user's usage (asked for `{user}`)"
                )));
            }
            _ => query.user = Some(asker.user.clone()),
        }
    }
    Ok(store.usage(&query).await?)
}

/// Why a key name cannot be given to a new key: the configuration or the store has
/// it, or the store had it (a revoked key's name stays reserved, so nothing that
/// named the old key, a console sign-in or a usage report, can ever mean the new one).
pub async fn key_name_taken(
    store: &dyn Store,
    configured: &[KeyEntry],
    name: &str,
) -> Result<Option<String>, ServiceError> {
    if configured.iter().any(|key| key.name == name) {
        return Ok(Some(format!("the configuration has a key named `{name}`")));
    }
    if store.key_name_used(name).await? {
        return Ok(Some(format!("the store has or had a key named `{name}` (a revoked key's name stays reserved)")));
    }
    Ok(None)
}

/// Adds `entry` to the store, unless its name is taken (see [`key_name_taken`]).
pub async fn create_stored_key(
    store: &dyn Store,
    configured: &[KeyEntry],
    entry: KeyEntry,
) -> Result<(), ServiceError> {
    if let Some(why) = key_name_taken(store, configured, &entry.name).await? {
        return Err(ServiceError::Invalid(format!("{why}; choose another name")));
    }
    let key = StoredKey { entry: entry.clone(), created_at_ms: crate::time::now_ms() };
    if store.create_key(&key, None).await? != crate::store::KeyCreated::Created {
        return Err(ServiceError::Invalid(format!(
            "the store has or had a key named `{}` (a revoked key's name stays reserved); choose another name",
            entry.name
        )));
    }
    Ok(())
}

/// What to ask the policies about, as an operator names it: a model's tier comes
/// from the model catalog, never from the asker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    Execute,
    /// A tool, and the arguments of a call to it: with them, the rules' conditions
    /// are evaluated as for that call.
    Tool(String, Option<serde_json::Value>),
    /// A model, and a request to it (for the rules' conditions).
    Model(String, Option<serde_json::Value>),
    Tier(String),
}

impl Ask {
    /// The policy query: a model with the tier the catalog puts it in.
    pub fn query(self, catalog: &Catalog) -> Query {
        match self {
            Self::Execute => Query::Execute,
            Self::Tool(tool, _) => Query::Tool(tool),
            Self::Model(name, _) => {
                let tier = catalog.models.get(&name).map(|model| model.tier.clone());
                Query::Model { name, tier }
            }
            Self::Tier(tier) => Query::Tier(tier.trim_start_matches("tier:").to_string()),
        }
    }
}

/// What `set` decides for `subject` and `ask`, with the rule that decided.
/// With a call's arguments, the decision on that call, conditions evaluated now.
pub fn explain(set: &PolicySet, catalog: &Catalog, subject: &Principal, ask: Ask) -> (Query, Decision) {
    use crate::policy::condition::{Facts, Target};
    let args = match &ask {
        Ask::Tool(_, args) | Ask::Model(_, args) => args.clone(),
        _ => None,
    };
    let query = ask.query(catalog);
    let decision = match (&query, args) {
        (Query::Tool(tool), Some(args)) => {
            set.capabilities(subject).call(Target::Tool(tool), None, &Facts::now(subject, &args, None))
        }
        (Query::Model { name, tier }, Some(args)) => {
            set.capabilities(subject).call(Target::Model(name), tier.as_deref(), &Facts::now(subject, &args, None))
        }
        _ => set.explain(subject, &query),
    };
    (query, decision)
}

impl Service {
    /// Usage totals `principal` may see (see [`usage`]).
    pub async fn usage(&self, principal: &Principal, query: UsageQuery) -> Result<Vec<UsageRow>, ServiceError> {
        usage(self.store.as_ref(), principal, query).await
    }

    /// What the policies in force decide for `ask`, asked by `asker` about the user
    /// and team named (an admin about anyone; anyone else only about themselves),
    /// with the rule that decided: the principal asked about, the query, the decision.
    pub fn explain(
        &self,
        asker: &Principal,
        user: Option<String>,
        team: Option<String>,
        ask: Ask,
    ) -> Result<(Principal, Query, Decision), ServiceError> {
        let subject = match (user, team) {
            (None, None) => asker.clone(),
            (user, team) if asker.role == Role::Admin => {
                let team = team.unwrap_or_else(|| asker.team.clone());
                Principal::of_key("", &user.unwrap_or_else(|| asker.user.clone()), &team, Role::Member)
            }
            (user, team)
                if user.as_deref().is_none_or(|u| u == asker.user)
                    && team.as_deref().is_none_or(|t| t == asker.team) =>
            {
                asker.clone()
            }
            _ => {
                return Err(ServiceError::Forbidden(
                    "only admins may ask what the policies decide for someone else".into(),
                ))
            }
        };
        let (query, decision) = explain(&self.policies.current(), self.gateway.catalog(), &subject, ask);
        Ok((subject, query, decision))
    }
}
