//! What a caller's SQL may be, decided on its text before anything is planned: exactly one
//! read-only query; no table functions; only the functions of [`super::functions::ALLOWED`];
//! expressions nested at most [`MAX_DEPTH`] deep and functions of at most [`MAX_ARGS`]
//! arguments; at most [`MAX_CHARS`] characters.
//!
//! The depth bound is what keeps a query from overflowing a stack: parsing a left-deep chain
//! (`1+1+…`, `a AND b AND …`, `x || y || …`) is iterative, but everything after it — planning,
//! optimizing, evaluating, even dropping the syntax tree — recurses once per level. The walk
//! below stops at the first level past the bound, so it recurses at most that deep itself.
//! Checks run on the sandbox's threads ([`super::Sandbox`]), whose stacks are sized for the
//! deepest tree [`MAX_CHARS`] can spell.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArguments, ObjectNamePart, Statement, TableFactor, Visit, Visitor,
};

/// Longest query text accepted.
pub const MAX_CHARS: usize = 64 * 1024;
/// Deepest expression nesting accepted.
pub const MAX_DEPTH: usize = 100;
/// Most arguments a function call may have.
pub const MAX_ARGS: usize = 64;

/// Why a query was refused before planning; the text is for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stack for parsing and walking one query, whatever thread asks: the syntax tree of a
/// [`MAX_CHARS`]-long chain is tens of thousands of levels deep, and dropping it recurses.
const CHECK_STACK: usize = 256 * 1024 * 1024;

/// Checks `sql` (see the module docs). Safe on any thread: it runs on a stack of its own.
pub fn check(sql: &str) -> Result<(), Refusal> {
    stacker::grow(CHECK_STACK, || check_here(sql))
}

fn check_here(sql: &str) -> Result<(), Refusal> {
    if sql.trim().is_empty() {
        return Err(Refusal("sql is empty".into()));
    }
    if sql.len() > MAX_CHARS {
        return Err(Refusal(format!(
            "sql is {} characters long; at most {MAX_CHARS} are accepted",
            sql.len()
        )));
    }
    let statements =
        DFParser::parse_sql(sql).map_err(|e| Refusal(format!("cannot parse the query: {e}")))?;
    if statements.len() != 1 {
        return Err(Refusal(format!(
            "exactly one statement is accepted, found {}",
            statements.len()
        )));
    }
    match &statements[0] {
        DfStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)) => {
            match s.visit(&mut Shape::default()) {
                ControlFlow::Continue(()) => Ok(()),
                ControlFlow::Break(refusal) => Err(refusal),
            }
        }
        other => {
            let kind = format!("{other}");
            let first = kind.split_whitespace().next().unwrap_or("statement");
            Err(Refusal(format!(
                "only read-only queries (SELECT, WITH) are accepted, not {}",
                first.to_uppercase()
            )))
        }
    }
}

/// Walks a query, refusing what [`check`] refuses.
#[derive(Default)]
struct Shape {
    depth: usize,
}

impl Visitor for Shape {
    type Break = Refusal;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Refusal> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return ControlFlow::Break(Refusal(format!(
                "the query nests expressions more than {MAX_DEPTH} levels deep; long chains of \
                 AND, OR, + or || count one level per term (write a long list as IN (…))"
            )));
        }
        if let Expr::Function(f) = expr {
            let name = function_name(&f.name.0)?;
            if !super::functions::allowed(&name) {
                return ControlFlow::Break(Refusal(format!(
                    "function {name} is not available in query_sql (describe_tables lists what \
                     is)"
                )));
            }
            if let FunctionArguments::List(list) = &f.args
                && list.args.len() > MAX_ARGS
            {
                return ControlFlow::Break(Refusal(format!(
                    "{name} is called with {} arguments; at most {MAX_ARGS} are accepted",
                    list.args.len()
                )));
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<Refusal> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    /// Table functions (`generate_series(…)`, `range(…)`, file readers and any a future
    /// DataFusion registers): a query reads the caller's tables and nothing else.
    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<Refusal> {
        let found = match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => Some(name.to_string()),
            TableFactor::Function { name, .. } => Some(name.to_string()),
            TableFactor::TableFunction { expr, .. } => Some(expr.to_string()),
            _ => None,
        };
        match found {
            Some(f) => ControlFlow::Break(Refusal(format!(
                "table functions are not available in query_sql (found {f}); read tables and views"
            ))),
            None => ControlFlow::Continue(()),
        }
    }
}

/// A function's name as DataFusion resolves it: unquoted names fold to lower case.
fn function_name(parts: &[ObjectNamePart]) -> ControlFlow<Refusal, String> {
    match parts {
        [ObjectNamePart::Identifier(ident)] => ControlFlow::Continue(match ident.quote_style {
            None => ident.value.to_lowercase(),
            Some(_) => ident.value.clone(),
        }),
        _ => ControlFlow::Break(Refusal(format!(
            "qualified function names are not accepted ({})",
            parts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(".")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_read_only_query_passes() {
        assert!(check("SELECT 1").is_ok());
        assert!(check("WITH a AS (SELECT 1 AS x) SELECT x FROM a").is_ok());
        assert!(
            check("SELECT * FROM iot.telemetry t JOIN views.track_shipments s ON true").is_ok()
        );
        for bad in [
            "",
            "SELECT 1; SELECT 2",
            "DROP TABLE iot.telemetry",
            "INSERT INTO ops.alerts VALUES (1)",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
            "DELETE FROM support.tickets",
            "EXPLAIN SELECT 1",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT * FROM iot.telemetry t JOIN range(5) r ON true",
            "WITH x AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM x",
            "SELECT * FROM (SELECT 1) a WHERE EXISTS (SELECT * FROM GENERATE_SERIES(1, 2))",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    /// Chains far longer than the bound are refused with a message naming it, without the
    /// walk itself going deeper than the bound (this runs on a test thread's small stack).
    #[test]
    fn deep_expressions_are_refused_by_name() {
        let chain = |op: &str, n: usize| {
            let terms = vec!["1"; n];
            format!("SELECT {}", terms.join(op))
        };
        assert!(check(&chain(" + ", MAX_DEPTH - 1)).is_ok());
        for q in [
            chain("+", 10_000),
            chain(" AND ", 5_000).replace("SELECT 1", "SELECT true"),
            chain("||", 10_000),
            format!("SELECT 1 WHERE {}", vec!["1=1"; 3_000].join(" OR ")),
        ] {
            let e = check(&q).unwrap_err().0;
            assert!(e.contains("more than 100 levels"), "{e}");
        }
        let long = format!("SELECT {}", "1+".repeat(MAX_CHARS));
        assert!(check(&long).unwrap_err().0.contains("characters long"));
    }

    #[test]
    fn only_allowed_functions_with_few_arguments() {
        assert!(
            check("SELECT upper(part_id), count(*) FROM supply_chain.parts GROUP BY 1").is_ok()
        );
        assert!(check("SELECT row_number() OVER (ORDER BY ts) FROM iot.telemetry").is_ok());
        for (q, want) in [
            (
                "SELECT array_repeat(1, 1000000000)",
                "array_repeat is not available",
            ),
            ("SELECT \"UPPER\"('x')", "UPPER is not available"),
            ("SELECT public.upper('x')", "qualified function names"),
            ("SELECT range(1, 100000000)", "range is not available"),
        ] {
            let e = check(q).unwrap_err().0;
            assert!(e.contains(want), "{q}: {e}");
        }
        let many = format!("SELECT concat({})", vec!["'x'"; MAX_ARGS + 1].join(","));
        assert!(check(&many).unwrap_err().0.contains("arguments"));
    }
}
