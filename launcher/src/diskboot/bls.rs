//! Boot Loader Specification entries (`/loader/entries/*.conf`), as
//! Fedora, RHEL and their kin write them, with GRUB's environment block
//! (`grubenv`) for `saved_entry` and variables such as `$kernelopts`.

use std::collections::BTreeMap;

use super::choose::{BootEntry, Files, Location, Menu};

/// Entries read from one directory, at most.
const MAX_ENTRIES: usize = 256;
const GRUBENV: [&str; 6] = [
    "/grub2/grubenv",
    "/boot/grub2/grubenv",
    "/grub/grubenv",
    "/boot/grub/grubenv",
    "/EFI/fedora/grubenv",
    "/EFI/redhat/grubenv",
];

/// Parses a GRUB environment block: `name=value` lines after a header,
/// padded with `#`.
pub fn parse_grubenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            (
                name.to_owned(),
                value.replace("\\n", "\n").replace("\\\\", "\\"),
            )
        })
        .collect()
}

/// The first grubenv found on the file system of the entries (or any).
pub fn find_grubenv(files: &dyn Files, base: usize) -> Result<BTreeMap<String, String>, String> {
    for path in GRUBENV {
        if let Some(text) = files.text(base, &Location::here(path))? {
            return Ok(parse_grubenv(&text));
        }
    }
    Ok(BTreeMap::new())
}

/// One parsed entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// The file name without `.conf` (what `saved_entry` names).
    pub id: String,
    pub title: String,
    pub version: String,
    pub linux: Option<String>,
    pub initrds: Vec<String>,
    pub options: Vec<String>,
    pub efi: Option<String>,
    pub sort_key: String,
}

pub fn parse_entry(id: &str, text: &str) -> BlsEntry {
    let mut entry = BlsEntry {
        id: id.to_owned(),
        title: String::new(),
        version: String::new(),
        linux: None,
        initrds: Vec::new(),
        options: Vec::new(),
        efi: None,
        sort_key: String::new(),
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match key {
            "title" => entry.title = value.to_owned(),
            "version" => entry.version = value.to_owned(),
            "linux" => entry.linux = Some(value.to_owned()),
            "initrd" => entry
                .initrds
                .extend(value.split_whitespace().map(str::to_owned)),
            "options" => entry.options.push(value.to_owned()),
            "efi" => entry.efi = Some(value.to_owned()),
            "sort-key" => entry.sort_key = value.to_owned(),
            _ => {}
        }
    }
    if entry.title.is_empty() {
        entry.title = id.to_owned();
    }
    entry
}

/// Expands `$name` and `${name}` from the environment; unknown names
/// expand to nothing, as in GRUB.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => (braced, ""),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(&env(name).unwrap_or_default());
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Compares versions as rpm does, closely enough for kernels: digit runs
/// numerically, letter runs as text, separators ignored.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn segments(text: &str) -> Vec<(bool, &str)> {
        let mut found = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            rest = rest.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            let digits = rest.starts_with(|c: char| c.is_ascii_digit());
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() || c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            if end > 0 {
                found.push((digits, &rest[..end]));
            }
            rest = &rest[end..];
        }
        found
    }
    let (left, right) = (segments(a), segments(b));
    for ((left_digits, left), (right_digits, right)) in left.iter().zip(&right) {
        let order = match (left_digits, right_digits) {
            (true, true) => {
                let (l, r) = (left.trim_start_matches('0'), right.trim_start_matches('0'));
                l.len().cmp(&r.len()).then_with(|| l.cmp(r))
            }
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => left.cmp(right),
        };
        if order.is_ne() {
            return order;
        }
    }
    left.len().cmp(&right.len())
}

/// Reads the entries in `dir` on file system `base` and orders them as
/// GRUB's blscfg does (newest version first); the default is
/// `saved_entry` when it names one, else the first.
pub fn menu(files: &dyn Files, base: usize, dir: &str, names: &[String]) -> Result<Menu, String> {
    let env = find_grubenv(files, base)?;
    menu_with_env(files, base, dir, names, &env)
}

pub fn menu_with_env(
    files: &dyn Files,
    base: usize,
    dir: &str,
    names: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Menu, String> {
    let (entries, default) = entries_with_ids(files, base, dir, names, env)?;
    Ok(Menu {
        entries: entries.into_iter().map(|(_, entry)| entry).collect(),
        default,
    })
}

/// The entries with their ids (what GRUB's blscfg gives each menu entry
/// as its id), in menu order, and the default's index.
pub fn entries_with_ids(
    files: &dyn Files,
    base: usize,
    dir: &str,
    names: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(Vec<(String, BootEntry)>, usize), String> {
    let mut entries = Vec::new();
    for name in names
        .iter()
        .filter(|name| name.ends_with(".conf"))
        .take(MAX_ENTRIES)
    {
        let path = format!("{dir}/{name}");
        if let Some(text) = files.text(base, &Location::here(path.as_str()))? {
            entries.push(parse_entry(name.trim_end_matches(".conf"), &text));
        }
    }
    entries.sort_by(|a, b| {
        a.sort_key
            .cmp(&b.sort_key)
            .then_with(|| compare_versions(&b.version, &a.version))
            .then_with(|| compare_versions(&b.id, &a.id))
    });
    let bootable: Vec<&BlsEntry> = entries
        .iter()
        .filter(|entry| entry.linux.is_some())
        .collect();
    if bootable.is_empty() {
        return Err(match entries.iter().find_map(|entry| entry.efi.as_ref()) {
            Some(efi) => {
                format!("its entries boot only EFI programs ({efi}), which vmpod cannot run")
            }
            None => "no entry has a linux line".to_owned(),
        });
    }
    let lookup = |name: &str| env.get(name).cloned();
    let default = env
        .get("saved_entry")
        .and_then(|saved| {
            bootable
                .iter()
                .position(|entry| entry.id == *saved || entry.title == *saved)
        })
        .unwrap_or(0);
    let menu_entries = bootable
        .iter()
        .map(|entry| {
            let boot = BootEntry {
                title: entry.title.clone(),
                kernel: Location::here(entry.linux.clone().unwrap_or_default()),
                initrds: entry
                    .initrds
                    .iter()
                    .map(|p| Location::here(p.as_str()))
                    .collect(),
                cmdline: expand(&entry.options.join(" "), &lookup),
            };
            (entry.id.clone(), boot)
        })
        .collect();
    Ok((menu_entries, default))
}
