//! The menu a configuration leaves behind: running it from GRUB's initial
//! variables, the entry `default` names (an index, an id or a title, per
//! `>`-separated level), and each entry's body run for its `linux` and
//! `initrd`.

use std::collections::BTreeMap;

use super::super::choose::{BootEntry, Files, FsSel, Location, Menu};
use super::{parse, Block, Item, Run, State};

/// The variables GRUB itself provides to generated configurations.
fn initial_vars(path: &str) -> BTreeMap<String, String> {
    let prefix = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    [
        ("feature_menuentry_id", "y"),
        ("feature_all_video_module", "y"),
        ("feature_timeout_style", "y"),
        ("feature_default_font_path", "y"),
        ("feature_platform_search_hint", "y"),
        ("grub_platform", "pc"),
        ("grub_cpu", "i386"),
        ("prefix", prefix),
        ("config_directory", prefix),
        ("config_file", path),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// Runs `text` (read from `path` on file system `base`) and returns its
/// menu, flattened (`Submenu>Entry` titles), with the default entry; `None`
/// when it defines no entry.
pub fn menu(
    files: &dyn Files,
    base: usize,
    path: &str,
    text: &str,
) -> Result<Option<(Menu, usize)>, String> {
    let stmts = parse(text)?;
    let mut run = Run {
        files,
        base,
        state: State {
            vars: initial_vars(path),
            functions: BTreeMap::new(),
            root: FsSel::This,
        },
        items: Vec::new(),
        steps: 0,
        replaced: false,
        loading: None,
    };
    run.block(&stmts, 0)?;
    let items = std::mem::take(&mut run.items);
    let default = run.state.vars.get("default").cloned().unwrap_or_default();
    let chosen = default_path(&items, &default);
    let mut entries = Vec::new();
    let mut default_index = None;
    flatten(
        &mut run,
        &items,
        "",
        &chosen,
        &mut Vec::new(),
        &mut entries,
        &mut default_index,
    )?;
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        Menu {
            entries,
            default: default_index.unwrap_or(0),
        },
        base,
    )))
}

/// The item positions `default` names: an index, an id or a title, each
/// level separated by `>`; the first entry when it names nothing.
fn default_path(items: &[Item], default: &str) -> Vec<usize> {
    let mut path = Vec::new();
    let mut level = items;
    for part in default.split('>') {
        let found = part
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n < level.len())
            .or_else(|| {
                level.iter().position(|item| match item {
                    Item::Entry { title, id, .. } | Item::Submenu { title, id, .. } => {
                        id == part || title == part
                    }
                    Item::Ready { id, entry } => id == part || entry.title == part,
                })
            });
        let Some(found) = found else {
            return Vec::new();
        };
        path.push(found);
        match &level[found] {
            Item::Submenu { items, .. } => level = items,
            _ => break,
        }
    }
    path
}

fn flatten(
    run: &mut Run,
    items: &[Item],
    prefix: &str,
    chosen: &[usize],
    position: &mut Vec<usize>,
    entries: &mut Vec<BootEntry>,
    default_index: &mut Option<usize>,
) -> Result<(), String> {
    for (index, item) in items.iter().enumerate() {
        position.push(index);
        // A default naming a submenu boots its first entry.
        let is_default =
            position.starts_with(chosen) && !chosen.is_empty() && default_index.is_none();
        match item {
            Item::Submenu { title, items, .. } => {
                flatten(
                    run,
                    items,
                    &format!("{prefix}{title}>"),
                    chosen,
                    position,
                    entries,
                    default_index,
                )?;
            }
            Item::Entry { title, body, .. } => {
                if let Some(entry) = run_entry(run, &format!("{prefix}{title}"), body)? {
                    if is_default {
                        *default_index = Some(entries.len());
                    }
                    entries.push(entry);
                }
            }
            Item::Ready { entry, .. } => {
                if is_default {
                    *default_index = Some(entries.len());
                }
                entries.push(entry.clone());
            }
        }
        position.pop();
    }
    Ok(())
}

/// Runs one entry's body on a copy of the final state; `None` if it loads
/// no Linux kernel (a chainloader, memtest, firmware setup).
fn run_entry(run: &mut Run, title: &str, body: &Block) -> Result<Option<BootEntry>, String> {
    let saved = run.state.clone();
    run.loading = Some(BootEntry {
        title: title.to_owned(),
        kernel: Location::here(""),
        initrds: Vec::new(),
        cmdline: String::new(),
    });
    run.replaced = false;
    let outcome = run.block(body, 1);
    let entry = run.loading.take();
    run.state = saved;
    outcome?;
    Ok(entry.filter(|entry| !entry.kernel.path.is_empty()))
}
