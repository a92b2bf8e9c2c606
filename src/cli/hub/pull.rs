//! `dycoke pull`: fetch (and convert) a model ahead of use, or list what the caches hold.

use clap::Args;

use super::cache::{dir_size, subdirs, Caches};
use super::{resolve, Freshness, HubSpec};

#[derive(Args)]
pub struct PullArgs {
    /// The model: REPO[:TYPE][@REV] (see -hf).
    #[arg(value_name = "REPO[:TYPE][@REV]", required_unless_present = "list", value_parser = HubSpec::parse)]
    spec: Option<HubSpec>,
    /// List the cached repositories (downloads and converted models) and their sizes.
    #[arg(long, conflicts_with = "spec")]
    list: bool,
}

pub fn run(a: PullArgs) -> dycoke::Result<()> {
    let Some(spec) = a.spec else { return list() };
    let m = resolve(&spec, Freshness::Refresh)?;
    println!("llm     {}", m.llm.display());
    match &m.mmproj {
        Some(p) => println!("mmproj  {}", p.display()),
        None => println!("mmproj  (none: a language model only)"),
    }
    println!("commit  {}", m.commit);
    Ok(())
}

fn list() -> dycoke::Result<()> {
    let caches = Caches::from_env()?;
    println!("downloads: {}", caches.hub.display());
    for (name, dir) in subdirs(&caches.hub) {
        let Some(repo) = name.strip_prefix("models--") else { continue };
        let repo = repo.replace("--", "/");
        let refs: Vec<String> = subdirs(&dir.join("snapshots")).into_iter().map(|(c, _)| c.chars().take(12).collect::<String>()).collect();
        println!("  {repo:<56} {:>10}  snapshots {}", indicatif::HumanBytes(dir_size(&dir)).to_string(), refs.join(" "));
    }
    println!("converted and picked models: {}", caches.derived.display());
    for (name, dir) in subdirs(&caches.derived) {
        let Some(repo) = name.strip_prefix("models--") else { continue };
        let repo = repo.replace("--", "/");
        for (commit, cdir) in subdirs(&dir) {
            for (key, kdir) in subdirs(&cdir) {
                if key.starts_with('.') {
                    continue;
                }
                let what = format!("{repo}:{key}");
                println!("  {what:<56} {:>10}  commit {}", indicatif::HumanBytes(dir_size(&kdir)).to_string(), commit.chars().take(12).collect::<String>());
            }
        }
    }
    println!("To remove a model, delete its folder (models--OWNER--NAME) in either cache.");
    Ok(())
}
