//! `millstream tables …`, `millstream maintain` and `millstream schemas`: the lakehouse's tables
//! and the event schemas, inspected and kept.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::lakehouse::maintain::MaintainOptions;
use crate::model::{EventKind, tables};

#[derive(Debug, Subcommand)]
pub enum TablesCommand {
    /// Create every table that does not exist yet.
    Create,
    /// List tables with version, files and rows.
    List,
    /// Show a table's definition.
    Describe { name: String },
    /// Rows in the Change Data Feed between two versions (inclusive).
    Cdf {
        name: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// Plain bin-packing instead of Z-order.
    #[arg(long)]
    pub no_zorder: bool,
}

#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Output folder.
    #[arg(long, default_value = "schemas/events")]
    pub out: PathBuf,
}

pub async fn run(config: Config, command: TablesCommand) -> anyhow::Result<()> {
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    match command {
        TablesCommand::Create => {
            for t in lake.ensure_all().await? {
                println!("{} (version {})", t.table_url(), t.version().unwrap_or(0));
            }
        }
        TablesCommand::List => {
            println!(
                "{:<36} {:<11} {:>8} {:>7} {:>12}",
                "table", "role", "version", "files", "rows"
            );
            for def in tables::catalog() {
                let role = def.role.name();
                match lake.open(&def.name).await {
                    Ok(t) => {
                        let files = t.get_file_uris().map(|f| f.count()).unwrap_or(0);
                        let rows = lake.count_rows(&def.name).await.unwrap_or(-1);
                        println!(
                            "{:<36} {:<11} {:>8} {:>7} {:>12}",
                            def.name,
                            role,
                            t.version().unwrap_or(0),
                            files,
                            rows
                        );
                    }
                    Err(_) => println!("{:<36} {:<11} {:>8}", def.name, role, "-"),
                }
            }
        }
        TablesCommand::Describe { name } => {
            let def = tables::get(&name)?;
            println!("{}: {}", def.name, def.comment);
            println!(
                "role {}; event time {}; source topic {}",
                def.role.name(),
                def.event_time.as_deref().unwrap_or("-"),
                def.source_topic.as_deref().unwrap_or("-")
            );
            println!(
                "partitioned by {:?}; z-order by {:?}; change data feed on",
                def.partition_by, def.zorder_by
            );
            for c in &def.columns {
                println!(
                    "  {:<16} {:<10} {:<9} {}",
                    c.name,
                    format!("{:?}", c.ty).to_lowercase(),
                    if c.nullable { "null" } else { "not null" },
                    c.comment
                );
            }
        }
        TablesCommand::Cdf { name, from, to } => {
            let table = lake.open(&name).await?;
            let batches = crate::lakehouse::cdf::read_changes(table, &name, from, to).await?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        }
    }
    Ok(())
}

pub async fn maintain(config: Config, args: MaintainArgs) -> anyhow::Result<()> {
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    super::check_dependencies(&config, None, Some(&lake)).await?;
    let options = MaintainOptions::from_config(&config.maintain, !args.no_zorder);
    let reports = crate::lakehouse::maintain::run(&lake, &options).await;
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    if reports.iter().any(|r| r.error.is_some()) {
        bail!("maintenance failed for some tables (see error fields)");
    }
    Ok(())
}

pub fn schemas(args: SchemasArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    for kind in EventKind::ALL {
        let path = args.out.join(format!("{}.schema.json", kind.schema_name()));
        std::fs::write(&path, kind.schema_text())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
