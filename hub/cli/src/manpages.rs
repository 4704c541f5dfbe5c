//! `aq man --out DIR`: manual pages made from the clap definitions (clap_mangen), one for `aq`
//! and one for each subcommand (`aq-source-add.1`), hidden ones left out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes the page of `cmd` and of every visible subcommand, at any depth, into `dir`
/// (created if missing); returns the files written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives each subcommand its display name (`aq-source-add`), which names its page.
    cmd.build();
    let mut written = Vec::new();
    write(cmd, dir, &mut written)?;
    Ok(written)
}

fn write(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(sub.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).context("cannot render a manual page")?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    Ok(())
}
