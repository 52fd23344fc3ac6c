//! The function policy: which calls to functions the router cannot see into
//! (user-defined ones) keep a statement off the replicas.
//!
//! A [`FunctionPolicy`] is immutable and built once from the primary's catalog
//! (`pg_proc`: schema, name and volatility of every function, see
//! `monitor::catalog`) and the `[routing]` config lists; the classifier cache
//! swaps it whole. Rules, for a call found by the token scan:
//!
//! 1. A name on the deny-list ([`super::functions::DENIED_FUNCTIONS`]) is
//!    handled by the scan before the policy is asked: primary, always.
//! 2. `routing.primary_functions` forces the primary, whatever the volatility.
//! 3. Without a catalog (none loaded yet, or the load failed) every other call
//!    is allowed: the classifier's behaviour before policies existed.
//! 4. With a catalog: a user function (any schema but `pg_catalog` and
//!    `information_schema`) that is VOLATILE needs the primary unless listed
//!    in `routing.read_only_functions`; STABLE and IMMUTABLE ones are safe.
//!    Built-in functions (found in `pg_catalog` or `information_schema`) are
//!    safe: only the deny-list matters for them (`random()` is volatile but
//!    harmless on a standby). A name found nowhere needs the primary (when
//!    unsure, primary) unless it is listed as read-only.
//!
//! Names: an unqualified call (`f(...)`) may resolve to a function of that
//! name in any schema on the search path, so it is compared case-insensitively
//! with every function of that name, and is safe only if all of them are. A
//! qualified call (`s.f(...)`) is compared exactly, with unquoted parts folded
//! to lower case as PostgreSQL does. Config entries are written the same way
//! (`"f"`, `"s.f"`, `"\"MySchema\".f"`): an unqualified entry covers the name
//! in every schema, a qualified one that schema only (a qualified primary
//! entry also catches unqualified calls of its name, to be safe).
//!
//! This module must not scan SQL (the scan in `functions.rs` finds calls and
//! asks `FunctionPolicy::call_risk`) nor do I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::RoutingConfig;

/// Schemas whose functions are built in: only the deny-list applies to them.
const BUILTIN_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// `pg_proc.provolatile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    /// From `provolatile` ('i', 's', 'v'); anything else counts as volatile.
    pub fn from_code(code: char) -> Self {
        match code {
            'i' => Self::Immutable,
            's' => Self::Stable,
            _ => Self::Volatile,
        }
    }
}

/// A config entry that is not a function name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a function name (`name` or `schema.name`): {problem}")]
pub struct FunctionNameError {
    text: String,
    problem: &'static str,
}

/// A function name as PostgreSQL resolves it: unquoted parts lower-cased,
/// quoted parts verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunctionName {
    pub schema: Option<String>,
    pub name: String,
}

impl FunctionName {
    /// Parses `name`, `schema.name`, `"Quoted Schema"."Name"` (`""` inside
    /// quotes is one `"`).
    pub fn parse(text: &str) -> Result<Self, FunctionNameError> {
        let fail = |problem| FunctionNameError {
            text: text.to_owned(),
            problem,
        };
        let mut parts = Vec::new();
        let mut rest = text.trim();
        loop {
            let (part, after) = identifier(rest).ok_or_else(|| fail("bad identifier"))?;
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(fail("unexpected character after a name")),
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Ok(Self {
                schema: Some(schema),
                name,
            }),
            Err(mut parts) if parts.len() == 1 => Ok(Self {
                schema: None,
                name: parts.remove(0),
            }),
            Err(_) => Err(fail("more than two parts")),
        }
    }
}

/// One identifier at the start of `text` and what follows it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                out.push(c);
            } else if quoted[i + 1..].starts_with('"') {
                out.push('"');
                chars.next();
            } else {
                return (!out.is_empty()).then(|| (out, &quoted[i + 1..]));
            }
        }
        return None;
    }
    let len = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    let word = &text[..len];
    let first_ok = word
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_');
    first_ok.then(|| (word.to_ascii_lowercase(), &text[len..]))
}

/// A call as the scan found it: qualifier and name already normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call<'a> {
    pub(crate) schema: Option<&'a str>,
    pub(crate) name: &'a str,
}

/// What the policy says about one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CallRisk {
    #[default]
    Safe,
    /// Not in the catalog and not listed: when unsure, primary.
    Unknown,
    /// A VOLATILE user function not listed as read-only.
    Volatile,
    /// Listed in `routing.primary_functions`.
    Forced,
}

/// A set of config-listed names.
#[derive(Clone, Debug, Default)]
struct NameSet {
    /// Unqualified entries, lower-cased: they cover every schema.
    any_schema: HashSet<String>,
    /// Qualified entries: schema -> names, exact.
    qualified: HashMap<String, HashSet<String>>,
    /// Lower-cased names of the qualified entries.
    qualified_names: HashSet<String>,
}

impl NameSet {
    /// Entries that do not parse are skipped: `Config::validate` rejects them.
    fn from_entries(entries: &[String]) -> Self {
        let mut set = Self::default();
        for name in entries.iter().filter_map(|e| FunctionName::parse(e).ok()) {
            match name.schema {
                None => {
                    set.any_schema.insert(name.name.to_lowercase());
                }
                Some(schema) => {
                    set.qualified_names.insert(name.name.to_lowercase());
                    set.qualified.entry(schema).or_default().insert(name.name);
                }
            }
        }
        set
    }

    fn is_empty(&self) -> bool {
        self.any_schema.is_empty() && self.qualified.is_empty()
    }

    /// Whether the entries name exactly this function.
    fn covers(&self, schema: &str, name: &str, lower: &str) -> bool {
        self.any_schema.contains(lower)
            || self.qualified.get(schema).is_some_and(|s| s.contains(name))
    }

    /// Whether a call may reach a listed function (qualified entries also
    /// match unqualified calls of their name).
    fn may_match(&self, call: Call<'_>, lower: &str) -> bool {
        match call.schema {
            Some(schema) => self.covers(schema, call.name, lower),
            None => self.any_schema.contains(lower) || self.qualified_names.contains(lower),
        }
    }
}

/// One user function (all overloads of a schema and name together).
#[derive(Clone, Debug)]
struct UserFunction {
    schema: String,
    name: String,
    /// The most volatile of its overloads.
    volatility: Volatility,
}

/// What was read from `pg_proc`.
#[derive(Debug, Default)]
struct Catalog {
    /// User functions by lower-cased name.
    user: HashMap<String, Vec<UserFunction>>,
    /// Built-in functions: schema -> exact names.
    builtin: HashMap<String, HashSet<String>>,
    /// Lower-cased names of the built-in functions.
    builtin_names: HashSet<String>,
    /// Rows read, for logs.
    rows: usize,
}

/// Which function calls keep a statement on the primary. Immutable; cheap to
/// clone (the catalog is shared).
#[derive(Clone, Debug, Default)]
pub struct FunctionPolicy {
    catalog: Option<Arc<Catalog>>,
    read_only: NameSet,
    primary: NameSet,
}

impl FunctionPolicy {
    /// A policy from the config lists alone: no catalog, so only the
    /// deny-list and `routing.primary_functions` send calls to the primary.
    pub fn without_catalog(routing: &RoutingConfig) -> Self {
        Self {
            catalog: None,
            read_only: NameSet::from_entries(&routing.read_only_functions),
            primary: NameSet::from_entries(&routing.primary_functions),
        }
    }

    /// A policy from `pg_proc` rows — (schema, name, provolatile) for every
    /// function of every schema — and the config lists.
    pub fn from_rows(
        rows: impl IntoIterator<Item = (String, String, char)>,
        routing: &RoutingConfig,
    ) -> Self {
        let mut catalog = Catalog::default();
        for (schema, name, code) in rows {
            catalog.rows += 1;
            let lower = name.to_lowercase();
            if BUILTIN_SCHEMAS.contains(&schema.as_str()) {
                catalog.builtin_names.insert(lower);
                catalog.builtin.entry(schema).or_default().insert(name);
                continue;
            }
            let volatility = Volatility::from_code(code);
            let same_name = catalog.user.entry(lower).or_default();
            match same_name
                .iter_mut()
                .find(|f| f.schema == schema && f.name == name)
            {
                Some(f) => f.volatility = f.volatility.max(volatility),
                None => same_name.push(UserFunction {
                    schema,
                    name,
                    volatility,
                }),
            }
        }
        Self {
            catalog: Some(Arc::new(catalog)),
            ..Self::without_catalog(routing)
        }
    }

    /// The same catalog with the lists of another config (for a reload that
    /// does not read the catalog again).
    pub fn with_routing(&self, routing: &RoutingConfig) -> Self {
        Self {
            catalog: self.catalog.clone(),
            ..Self::without_catalog(routing)
        }
    }

    /// Whether a catalog was loaded (unknown names then need the primary).
    pub fn has_catalog(&self) -> bool {
        self.catalog.is_some()
    }

    /// Number of `pg_proc` rows the catalog was built from (0 without one).
    pub fn catalog_rows(&self) -> usize {
        self.catalog.as_ref().map_or(0, |c| c.rows)
    }

    /// Whether no call can need the primary (beyond the deny-list): lets the
    /// scan skip finding calls.
    pub(crate) fn allows_everything(&self) -> bool {
        self.catalog.is_none() && self.primary.is_empty()
    }

    /// What one call (not on the deny-list) needs.
    pub(crate) fn call_risk(&self, call: Call<'_>) -> CallRisk {
        let lower = call.name.to_lowercase();
        if self.primary.may_match(call, &lower) {
            return CallRisk::Forced;
        }
        let Some(catalog) = &self.catalog else {
            return CallRisk::Safe;
        };
        let candidates = catalog.user.get(&lower).map_or(&[][..], Vec::as_slice);
        let (known, volatile) = match call.schema {
            Some(schema) if BUILTIN_SCHEMAS.contains(&schema) => {
                let found = catalog
                    .builtin
                    .get(schema)
                    .is_some_and(|names| names.contains(call.name));
                (found, false)
            }
            Some(schema) => {
                let found = candidates
                    .iter()
                    .find(|f| f.schema == schema && f.name == call.name);
                let volatile = found.is_some_and(|f| self.is_volatile(f, &lower));
                (found.is_some(), volatile)
            }
            None => {
                let volatile = candidates.iter().any(|f| self.is_volatile(f, &lower));
                let known = !candidates.is_empty() || catalog.builtin_names.contains(&lower);
                (known, volatile)
            }
        };
        if volatile {
            CallRisk::Volatile
        } else if known || self.read_only.may_match(call, &lower) {
            CallRisk::Safe
        } else {
            CallRisk::Unknown
        }
    }

    /// A volatile user function the config does not vouch for.
    fn is_volatile(&self, f: &UserFunction, lower: &str) -> bool {
        f.volatility == Volatility::Volatile && !self.read_only.covers(&f.schema, &f.name, lower)
    }
}
