//! `config/policies.toml`: personas (tools and read grants), row filters by column, column
//! masks, tenant groups and principals. Loaded and checked once at start: a policy naming an
//! unknown persona, group, table or column fails with the file and what is wrong, and one
//! naming an unknown tool fails when the MCP server checks it against its tools
//! ([`Policies::check_tools`]).
//!
//! [`Policies::access`] resolves one principal to an [`Access`]: what it may call and read, and
//! with which filters and masks. Anything a principal is not granted is denied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::tables;

const BUILT_IN: &str = include_str!("../../config/policies.toml");

/// Every table or schema name ("*" = all).
const ALL: &str = "*";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    personas: BTreeMap<String, Persona>,
    #[serde(default)]
    row_filters: BTreeMap<String, RowFilter>,
    /// Tables where a filtered column that is NULL does not restrict the row.
    #[serde(default)]
    null_passes: BTreeSet<String>,
    #[serde(default)]
    masks: Vec<Mask>,
    #[serde(default)]
    groups: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    principals: BTreeMap<String, PrincipalDef>,
    /// The key of `hash` masks (`auth.mask_key`, or one for this process; see
    /// [`Policies::with_mask_key`]).
    #[serde(skip, default = "HmacKey::random")]
    mask_key: HmacKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persona {
    tools: Vec<String>,
    read: Vec<String>,
}

/// How a column restricts rows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RowFilter {
    /// The value must be in the caller's attribute list.
    Attribute { attribute: String },
    /// The value must appear in this table's column of the same name, as the caller sees it.
    VisibleIn { visible_in: String },
    /// The value names a table (`schema.table`) the caller may read.
    Readable { readable: bool },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskKind {
    Redact,
    Null,
    Hash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mask {
    table: String,
    column: String,
    with: MaskKind,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct PrincipalDef {
    persona: String,
    #[serde(default)]
    groups: Vec<String>,
    /// Attribute lists of its own (replacing its groups' for the same attribute).
    #[serde(flatten)]
    attributes: BTreeMap<String, Vec<String>>,
}

/// What one principal may do, resolved from the policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub principal: String,
    pub persona: String,
    tools: BTreeSet<String>,
    read: BTreeSet<String>,
    attributes: BTreeMap<String, Vec<String>>,
    row_filters: BTreeMap<String, RowFilter>,
    null_passes: BTreeSet<String>,
    masks: BTreeMap<(String, String), MaskKind>,
    mask_key: HmacKey,
    /// Whether any table it reads is filtered or masked for it.
    restricted: bool,
}

/// An HMAC-SHA256 key whose `Debug` never shows it: the key of `hash` masks (a digest cannot be
/// reversed by hashing every value of a small domain) and of the console's session cookies.
#[derive(Clone)]
pub struct HmacKey(Arc<aws_lc_rs::hmac::Key>);

impl HmacKey {
    pub fn new(secret: &[u8]) -> HmacKey {
        HmacKey(Arc::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        )))
    }

    /// A key for this process only: digests are stable until it restarts.
    pub fn random() -> HmacKey {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("system randomness");
        HmacKey::new(&secret)
    }

    /// The hex HMAC-SHA256 of `value`.
    pub fn digest_hex(&self, value: &[u8]) -> String {
        hex::encode(aws_lc_rs::hmac::sign(&self.0, value))
    }

    /// Whether `presented` is the hex HMAC-SHA256 of `value` (compared in constant time).
    pub fn verify_hex(&self, value: &[u8], presented: &str) -> bool {
        hex::decode(presented)
            .is_ok_and(|tag| aws_lc_rs::hmac::verify(&self.0, value, &tag).is_ok())
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl PartialEq for HmacKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A filter on one column of one table, resolved for a principal.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnFilter {
    /// Only these values.
    In(Vec<String>),
    /// Only values present in this table's same-named column (as the principal sees it).
    VisibleIn(String),
    /// No row.
    Nothing,
}

impl Policies {
    /// The policies at `path`, or the built-in ones when `path` is empty.
    pub fn load(path: &str) -> Result<Policies> {
        let (name, text) = if path.is_empty() {
            (
                "config/policies.toml (built in)".to_string(),
                BUILT_IN.to_string(),
            )
        } else {
            let text = std::fs::read_to_string(Path::new(path))
                .map_err(|e| Error::Config(vec![format!("reading policies {path}: {e}")]))?;
            (path.to_string(), text)
        };
        Self::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Policies> {
        let p: Policies =
            toml::from_str(text).map_err(|e| Error::Config(vec![format!("{name}: {e}")]))?;
        let problems = p.problems();
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(Error::Config(
                problems
                    .into_iter()
                    .map(|p| format!("{name}: {p}"))
                    .collect(),
            ))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, persona) in &self.personas {
            for r in &persona.read {
                if !readable_name(r) {
                    out.push(format!(
                        "persona {name}: unknown schema, table or view {r:?}"
                    ));
                }
            }
        }
        for (column, filter) in &self.row_filters {
            if !tables::catalog().iter().any(|t| t.column(column).is_some()) {
                out.push(format!("row_filters.{column}: no table has this column"));
            }
            if *filter == (RowFilter::Readable { readable: false }) {
                out.push(format!(
                    "row_filters.{column}: `readable = false` filters nothing; leave the filter out"
                ));
            }
            if let RowFilter::VisibleIn { visible_in } = filter {
                match tables::get(visible_in) {
                    Ok(def) if def.column(column).is_some() => {
                        let chained = self.row_filters.iter().any(|(c, f)| {
                            c != column
                                && def.column(c).is_some()
                                && matches!(f, RowFilter::VisibleIn { .. })
                        });
                        if chained {
                            out.push(format!(
                                "row_filters.{column}: {visible_in} is itself filtered by visible_in"
                            ));
                        }
                    }
                    _ => out.push(format!(
                        "row_filters.{column}: visible_in {visible_in:?} is not a table with column {column}"
                    )),
                }
            }
        }
        for t in &self.null_passes {
            match tables::get(t) {
                Err(_) => out.push(format!("null_passes: unknown table {t:?}")),
                Ok(def) if tenant_columns(&self.row_filters, def).is_empty() => out.push(format!(
                    "null_passes: {t} has no column a tenant filter (attribute or visible_in) applies to"
                )),
                Ok(_) => {}
            }
        }
        for m in &self.masks {
            match tables::get(&m.table) {
                Ok(def) if def.column(&m.column).is_some() => {}
                _ => out.push(format!("masks: no column {}.{}", m.table, m.column)),
            }
            for p in &m.except {
                if !self.personas.contains_key(p) {
                    out.push(format!(
                        "masks {}.{}: unknown persona {p:?}",
                        m.table, m.column
                    ));
                }
            }
        }
        for (name, def) in &self.principals {
            if !self.personas.contains_key(&def.persona) {
                out.push(format!(
                    "principal {name}: unknown persona {:?}",
                    def.persona
                ));
            }
            for g in &def.groups {
                if !self.groups.contains_key(g) {
                    out.push(format!("principal {name}: unknown group {g:?}"));
                }
            }
        }
        out
    }

    /// Every tool a persona is granted must be one of `known` (the server's tools).
    pub fn check_tools(&self, known: &[String]) -> Result<()> {
        let problems: Vec<String> = self
            .personas
            .iter()
            .flat_map(|(name, persona)| {
                persona
                    .tools
                    .iter()
                    .filter(|t| *t != ALL && !known.contains(t))
                    .map(move |t| format!("policies: persona {name}: unknown tool {t:?}"))
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }

    /// `hash` masks digest under `secret` (HMAC-SHA256) instead of a key made for this process,
    /// so digests stay the same across restarts and replicas.
    pub fn with_mask_key(mut self, secret: &[u8]) -> Policies {
        self.mask_key = HmacKey::new(secret);
        self
    }

    /// Whether some mask digests values (then `auth.mask_key` should be set).
    pub fn hashes(&self) -> bool {
        self.masks.iter().any(|m| m.with == MaskKind::Hash)
    }

    /// Whether `principal` is known.
    pub fn knows(&self, principal: &str) -> bool {
        self.principals.contains_key(principal)
    }

    /// Every principal, in name order.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.principals.keys().map(String::as_str)
    }

    /// What `principal` may do; an unknown principal is an error (never a default grant).
    pub fn access(&self, principal: &str) -> Result<Access> {
        let def = self.principals.get(principal).ok_or_else(|| {
            Error::Config(vec![format!("no principal {principal:?} in the policies")])
        })?;
        let persona = &self.personas[&def.persona];
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in &def.groups {
            for (k, v) in &self.groups[g] {
                attributes
                    .entry(k.clone())
                    .or_default()
                    .extend(v.iter().cloned());
            }
        }
        for (k, v) in &def.attributes {
            attributes.insert(k.clone(), v.clone());
        }
        for v in attributes.values_mut() {
            v.sort();
            v.dedup();
        }
        let masks = self
            .masks
            .iter()
            .filter(|m| !m.except.contains(&def.persona))
            .map(|m| ((m.table.clone(), m.column.clone()), m.with))
            .collect();
        let mut access = Access {
            principal: principal.to_string(),
            persona: def.persona.clone(),
            tools: persona.tools.iter().cloned().collect(),
            read: persona.read.iter().cloned().collect(),
            attributes,
            row_filters: self.row_filters.clone(),
            null_passes: self.null_passes.clone(),
            masks,
            mask_key: self.mask_key.clone(),
            restricted: false,
        };
        let mut restricted = false;
        for t in tables::catalog()
            .iter()
            .filter(|t| access.may_read(&t.name))
        {
            restricted |= !access.filters(&t.name)?.is_empty() || !access.masks(&t.name).is_empty();
        }
        access.restricted = restricted;
        Ok(access)
    }
}

/// A schema, table or view name a grant may use.
fn readable_name(r: &str) -> bool {
    r == ALL
        || r == tables::VIEWS
        || r.starts_with("views.")
        || tables::catalog()
            .iter()
            .any(|t| t.name == r || t.schema_name() == r)
}

impl Access {
    /// Whether the principal may call `tool`.
    pub fn may_call(&self, tool: &str) -> bool {
        self.tools.contains(ALL) || self.tools.contains(tool)
    }

    /// Whether the principal's persona may read every table (an operator's).
    pub fn reads_everything(&self) -> bool {
        self.read.contains(ALL)
    }

    /// Whether the principal may read `name` (`schema.table`, or `views.<name>`).
    pub fn may_read(&self, name: &str) -> bool {
        let schema = name.split_once('.').map_or(name, |(s, _)| s);
        self.read.contains(ALL) || self.read.contains(name) || self.read.contains(schema)
    }

    /// The tables whose rows decide which rows of `tables` the caller sees: `tables`
    /// themselves and, transitively, the tables their `visible_in` filters look into (a
    /// customer handed to another account manager changes what the caller sees of the
    /// transactions).
    pub fn depends_on(&self, tables: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let mut all = tables.clone();
        let mut todo: Vec<String> = tables.iter().cloned().collect();
        while let Some(table) = todo.pop() {
            for (_, filter) in self.filters(&table)? {
                if let ColumnFilter::VisibleIn(other) = filter
                    && all.insert(other.clone())
                {
                    todo.push(other);
                }
            }
        }
        Ok(all)
    }

    /// The filters on `table`'s rows, one per filtered column it has.
    pub fn filters(&self, table: &str) -> Result<Vec<(String, ColumnFilter)>> {
        let def = tables::get(table)?;
        let mut out = Vec::new();
        for (column, filter) in &self.row_filters {
            if def.column(column).is_none() {
                continue;
            }
            let resolved = match filter {
                RowFilter::Attribute { attribute } => match self.attributes.get(attribute) {
                    Some(values) if values.iter().any(|v| v == ALL) => continue,
                    Some(values) if !values.is_empty() => ColumnFilter::In(values.clone()),
                    _ => ColumnFilter::Nothing,
                },
                RowFilter::VisibleIn { visible_in } if visible_in == table => continue,
                RowFilter::VisibleIn { visible_in } if !self.may_read(visible_in) => {
                    ColumnFilter::Nothing
                }
                // Seeing all of that table, the caller may see every value.
                RowFilter::VisibleIn { visible_in } if self.filters(visible_in)?.is_empty() => {
                    continue;
                }
                RowFilter::VisibleIn { visible_in } => ColumnFilter::VisibleIn(visible_in.clone()),
                RowFilter::Readable { .. } if self.read.contains(ALL) => continue,
                RowFilter::Readable { .. } => {
                    let readable: Vec<String> = tables::catalog()
                        .iter()
                        .filter(|t| self.may_read(&t.name))
                        .map(|t| t.name.clone())
                        .collect();
                    if readable.is_empty() {
                        ColumnFilter::Nothing
                    } else {
                        ColumnFilter::In(readable)
                    }
                }
            };
            out.push((column.clone(), resolved));
        }
        Ok(out)
    }

    /// Whether a NULL in one of `table`'s filtered columns leaves the row to its other filters
    /// (`null_passes`: tables whose rows each carry only the tenant columns that apply to them).
    pub fn null_passes(&self, table: &str) -> bool {
        self.null_passes.contains(table)
    }

    /// `table`'s columns that say whose a row is: those an attribute or `visible_in` filter
    /// applies to (a `readable` filter says where a row came from, not whose it is).
    pub fn tenant_columns(&self, table: &str) -> Result<Vec<String>> {
        Ok(tenant_columns(&self.row_filters, tables::get(table)?))
    }

    /// The masks on `table`'s columns.
    pub fn masks(&self, table: &str) -> Vec<(String, MaskKind)> {
        self.masks
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, c), k)| (c.clone(), *k))
            .collect()
    }

    /// Whether some table this principal reads is filtered or masked for it: then errors it
    /// gets from running a query carry no data values.
    pub fn restricted(&self) -> bool {
        self.restricted
    }

    /// The key `hash` masks digest under.
    pub fn mask_key(&self) -> &HmacKey {
        &self.mask_key
    }

    /// A key identifying everything that shapes this principal's view (for caching sessions).
    pub fn key(&self) -> &str {
        &self.principal
    }
}

fn tenant_columns(filters: &BTreeMap<String, RowFilter>, def: &tables::TableDef) -> Vec<String> {
    filters
        .iter()
        .filter(|(column, f)| {
            def.column(column).is_some() && !matches!(f, RowFilter::Readable { .. })
        })
        .map(|(column, _)| column.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_policies_load_and_resolve_tenants_and_personas() {
        let p = Policies::load("").unwrap();
        let maria = p.access("maria@emea").unwrap();
        assert!(maria.may_call("create_order") && !maria.may_call("lookup_customer_info"));
        assert!(maria.may_read("supply_chain.inventory") && !maria.may_read("sales.customers"));
        assert_eq!(
            maria.filters("supply_chain.inventory").unwrap(),
            vec![
                (
                    "region".into(),
                    ColumnFilter::In(vec!["EMEA-North".into(), "EMEA-South".into()])
                ),
                (
                    "warehouse_id".into(),
                    ColumnFilter::In(vec!["WH-01".into(), "WH-02".into()])
                ),
            ]
        );
        let alice = p.access("alice@emea").unwrap();
        assert!(!alice.may_call("create_order") && alice.may_call("create_ticket"));
        // Her own account list replaces her group's; tickets follow the customers she sees.
        assert_eq!(
            alice.filters("sales.customers").unwrap(),
            vec![
                (
                    "account_manager".into(),
                    ColumnFilter::In(vec!["alice".into()])
                ),
                (
                    "region".into(),
                    ColumnFilter::In(vec!["EMEA-North".into(), "EMEA-South".into()])
                ),
            ]
        );
        assert_eq!(
            alice.filters("support.tickets").unwrap(),
            vec![(
                "customer_id".into(),
                ColumnFilter::VisibleIn("sales.customers".into())
            )]
        );
        assert_eq!(
            alice.masks("sales.customers"),
            vec![("email".into(), MaskKind::Redact)]
        );
        // A supply-chain manager cannot read customers, so no ticket row is visible to her.
        assert_eq!(
            maria.filters("support.tickets").unwrap(),
            vec![(
                "customer_id".into(),
                ColumnFilter::VisibleIn("sales.customers".into())
            )]
            .into_iter()
            .map(|(c, _)| (c, ColumnFilter::Nothing))
            .collect::<Vec<_>>()
        );
        let admin = p.access("local-dev").unwrap();
        assert!(admin.filters("sales.transactions").unwrap().is_empty());
        assert!(admin.masks("sales.customers").is_empty());
        assert!(p.access("mallory").is_err());
    }

    #[test]
    fn a_principal_missing_an_attribute_sees_no_rows() {
        let p = Policies::parse(
            "t",
            r#"
            [personas.x]
            tools = []
            read = ["*"]
            [row_filters]
            plant_id = { attribute = "plants" }
            [principals.p]
            persona = "x"
            "#,
        )
        .unwrap();
        assert_eq!(
            p.access("p").unwrap().filters("iot.telemetry").unwrap(),
            vec![("plant_id".into(), ColumnFilter::Nothing)]
        );
    }

    #[test]
    fn mistakes_in_the_policies_are_named() {
        let tools = Policies::parse(
            "t",
            r#"
            [personas.x]
            tools = ["no_such_tool", "query_sql"]
            read = []
            [principals.p]
            persona = "x"
            "#,
        )
        .unwrap()
        .check_tools(&["query_sql".to_string()])
        .unwrap_err()
        .to_string();
        assert!(tools.contains("unknown tool \"no_such_tool\""), "{tools}");
        let e = Policies::parse(
            "bad.toml",
            r#"
            null_passes = ["ops.dead_letters"]
            [personas.x]
            tools = ["no_such_tool"]
            read = ["nope.table"]
            [row_filters]
            colour = { attribute = "c" }
            [[masks]]
            table = "sales.customers"
            column = "shoe_size"
            with = "null"
            [principals.p]
            persona = "y"
            groups = ["g"]
            "#,
        )
        .unwrap_err()
        .to_string();
        for want in [
            "bad.toml",
            "\"nope.table\"",
            "row_filters.colour",
            "sales.customers.shoe_size",
            "unknown persona \"y\"",
            "unknown group \"g\"",
            "null_passes: ops.dead_letters has no column a tenant filter",
        ] {
            assert!(e.contains(want), "{want} missing from: {e}");
        }
    }
}
