//! `millstream search "…"`: knowledge search for people, with the same engine, grants and row
//! filters as the MCP tool `search_knowledge` (it runs that tool as the principal given).

use clap::Args;
use rmcp::handler::server::wrapper::Parameters;

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::mcp::tools::knowledge::{Kind, SearchKnowledgeAnswer, SearchKnowledgeArgs};

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in your own words.
    pub query: String,
    /// Only documents of this kind (repeat for several).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<KindArg>,
    /// Search as this principal of the policies (its grants and row filters); default:
    /// serve.principal.
    #[arg(long = "as")]
    pub principal: Option<String>,
    /// How many documents (1 to 50).
    #[arg(short, long, default_value_t = 5)]
    pub k: u32,
    /// Only documents about this customer, machine, part, …: ENTITY=ID, e.g. machine_id=M-0003.
    #[arg(long = "about", value_parser = parse_about)]
    pub about: Vec<(String, String)>,
    /// Print the answer as JSON (as the MCP tool returns it).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Sop,
    Incident,
    Proposal,
    Ticket,
}

fn parse_about(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ENTITY=ID, got {s:?}"))?;
    if !crate::knowledge::source::LINK_COLUMNS.contains(&k) {
        return Err(format!(
            "{k:?} is not one of {}",
            crate::knowledge::source::LINK_COLUMNS.join(", ")
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(config: Config, args: SearchArgs) -> anyhow::Result<()> {
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    let principal = args
        .principal
        .clone()
        .unwrap_or_else(|| config.serve.principal.clone());
    let policies = std::sync::Arc::new(crate::auth::Policies::load(&config.serve.policies)?);
    let (knowledge, _) = super::eval::indexed(lake.clone(), &config.knowledge, "search").await?;
    let defs =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let catalog = crate::mcp::LiveCatalog::open(
        lake,
        defs,
        crate::mcp::CatalogOptions::from_config(&config.serve),
    )
    .await?;
    let server = crate::mcp::Millstream::new(
        catalog,
        None,
        std::time::Duration::from_millis(config.serve.query_timeout_ms),
        policies,
        &principal,
    )?
    .with_knowledge(Ok(knowledge));
    let about = |name: &str| {
        args.about
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let request = SearchKnowledgeArgs {
        query: args.query.clone(),
        kinds: (!args.kinds.is_empty()).then(|| {
            args.kinds
                .iter()
                .map(|k| match k {
                    KindArg::Sop => Kind::Sop,
                    KindArg::Incident => Kind::Incident,
                    KindArg::Proposal => Kind::Proposal,
                    KindArg::Ticket => Kind::Ticket,
                })
                .collect()
        }),
        plant_id: about("plant_id"),
        warehouse_id: about("warehouse_id"),
        customer_id: about("customer_id"),
        machine_id: about("machine_id"),
        machine_type: about("machine_type"),
        sensor_type: about("sensor_type"),
        part_id: about("part_id"),
        supplier_id: about("supplier_id"),
        since: None,
        until: None,
        k: Some(args.k),
    };
    let answer = server
        .search_knowledge(Parameters(request))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?
        .0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_answer(&principal, &answer);
    }
    Ok(())
}

fn print_answer(principal: &str, answer: &SearchKnowledgeAnswer) {
    if answer.hits.is_empty() {
        println!("no documents found (searching as {principal})");
    }
    for (i, h) in answer.hits.iter().enumerate() {
        println!(
            "{:>2}. [{}] {}  {}  (score {:.4})",
            i + 1,
            h.kind,
            h.doc_id,
            h.title,
            h.score
        );
        for line in textwrap(&h.snippet, 96) {
            println!("      {line}");
        }
        println!();
    }
    let versions: Vec<String> = answer
        .as_of
        .tables
        .iter()
        .map(|t| format!("{}@v{}", t.table, t.version))
        .collect();
    println!("as of {} (as {principal})", versions.join(", "));
}

/// `text` as lines of at most `width` characters, broken at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
