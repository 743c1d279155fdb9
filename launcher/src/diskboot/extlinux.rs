//! Line-oriented boot menus: extlinux/syslinux (`extlinux.conf`, as
//! Alpine and many small images use) and GRUB Legacy's `menu.lst` (older
//! images such as CirrOS). Keywords are case-insensitive.

use super::choose::{BootEntry, Files, FsSel, Location, Menu};

/// `INCLUDE` depth: syslinux allows nesting; loops must end.
const MAX_INCLUDE_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 1024;

#[derive(Default)]
struct Label {
    name: String,
    title: String,
    kernel: Option<String>,
    initrds: Vec<String>,
    append: String,
    menu_default: bool,
}

struct Parsed {
    default: Option<String>,
    labels: Vec<Label>,
}

/// Parses an extlinux.conf found at `path` (relative paths in it are
/// relative to its directory).
pub fn menu(files: &dyn Files, base: usize, path: &str, text: &str) -> Result<Menu, String> {
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
    let mut parsed = Parsed {
        default: None,
        labels: Vec::new(),
    };
    parse(files, base, &dir, text, &mut parsed, 0)?;
    let resolve = |file: &str| -> Location {
        if file.starts_with('/') {
            Location::here(file)
        } else {
            Location::here(format!("{dir}/{file}"))
        }
    };
    let mut entries = Vec::new();
    let mut default = None;
    for label in &parsed.labels {
        let Some(kernel) = &label.kernel else {
            continue;
        };
        // `APPEND initrd=…` is syslinux's other way to name the initrd.
        let mut initrds = label.initrds.clone();
        let mut args = Vec::new();
        for arg in label.append.split_whitespace() {
            match arg.strip_prefix("initrd=") {
                Some(list) if initrds.is_empty() => {
                    initrds.extend(list.split(',').map(str::to_owned))
                }
                _ => args.push(arg),
            }
        }
        if parsed.default.as_deref() == Some(label.name.as_str())
            || (label.menu_default && default.is_none())
        {
            default = Some(entries.len());
        }
        entries.push(BootEntry {
            title: if label.title.is_empty() {
                label.name.clone()
            } else {
                label.title.clone()
            },
            kernel: resolve(kernel),
            initrds: initrds.iter().map(|file| resolve(file)).collect(),
            cmdline: args.join(" "),
        });
    }
    if entries.is_empty() {
        return Err("no LABEL has a KERNEL or LINUX line".to_owned());
    }
    Ok(Menu {
        entries,
        default: default.unwrap_or(0),
    })
}

fn parse(
    files: &dyn Files,
    base: usize,
    dir: &str,
    text: &str,
    parsed: &mut Parsed,
    depth: usize,
) -> Result<(), String> {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, value) = split_keyword(line);
        let keyword = keyword.to_ascii_lowercase();
        let current = parsed.labels.last_mut();
        match (keyword.as_str(), current) {
            ("default", _) => parsed.default = Some(value.to_owned()),
            ("label", _) => {
                if parsed.labels.len() >= MAX_ENTRIES {
                    return Err(format!("more than {MAX_ENTRIES} labels"));
                }
                parsed.labels.push(Label {
                    name: value.to_owned(),
                    ..Label::default()
                });
            }
            ("menu", Some(label)) => {
                let (sub, rest) = split_keyword(value);
                match sub.to_ascii_lowercase().as_str() {
                    "label" => label.title = rest.replace('^', ""),
                    "default" => label.menu_default = true,
                    _ => {}
                }
            }
            ("kernel" | "linux", Some(label)) => {
                // `KERNEL path args…`: the arguments join APPEND.
                let (file, args) = split_keyword(value);
                label.kernel = Some(file.to_owned());
                if !args.is_empty() {
                    label.append = format!("{args} {}", label.append);
                }
            }
            ("initrd", Some(label)) => {
                label.initrds = value.split(',').map(|f| f.trim().to_owned()).collect()
            }
            // `APPEND -` means "no arguments".
            ("append", Some(label)) if value != "-" => {
                label.append = format!("{} {value}", label.append);
            }
            ("include", _) => {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(format!("INCLUDE nested more than {MAX_INCLUDE_DEPTH} deep"));
                }
                let file = split_keyword(value).0;
                let path = if file.starts_with('/') {
                    file.to_owned()
                } else {
                    format!("{dir}/{file}")
                };
                if let Some(text) = files.text(base, &Location::here(path.as_str()))? {
                    parse(files, base, dir, &text, parsed, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn split_keyword(line: &str) -> (&str, &str) {
    match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((keyword, rest)) => (keyword, rest.trim()),
        None => (line, ""),
    }
}

/// GRUB Legacy's `menu.lst`: `default N`, then `title` blocks with
/// `root (hd0,N)` (partitions counted from 0), `kernel` and `initrd`.
pub fn grub_legacy_menu(text: &str) -> Result<Menu, String> {
    let mut default = 0usize;
    let mut entries: Vec<BootEntry> = Vec::new();
    let mut root = FsSel::This;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, value) = line
            .split_once(|c: char| c.is_ascii_whitespace() || c == '=')
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match keyword {
            "default" => default = value.parse().unwrap_or(0),
            "title" => {
                if entries.len() >= MAX_ENTRIES {
                    return Err(format!("more than {MAX_ENTRIES} entries"));
                }
                root = FsSel::This;
                entries.push(BootEntry {
                    title: value.to_owned(),
                    kernel: Location::here(""),
                    initrds: Vec::new(),
                    cmdline: String::new(),
                });
            }
            "root" => {
                root = value
                    .trim_matches(|c| c == '(' || c == ')')
                    .split_once(',')
                    .and_then(|(_, part)| part.parse::<u32>().ok())
                    .map_or(FsSel::This, |part| FsSel::Partition(part + 1));
            }
            "kernel" => {
                if let Some(entry) = entries.last_mut() {
                    let (file, args) = split_keyword(value);
                    entry.kernel = Location {
                        fs: root.clone(),
                        path: file.to_owned(),
                    };
                    entry.cmdline = args.to_owned();
                }
            }
            "initrd" => {
                if let Some(entry) = entries.last_mut() {
                    entry.initrds = vec![Location {
                        fs: root.clone(),
                        path: split_keyword(value).0.to_owned(),
                    }];
                }
            }
            _ => {}
        }
    }
    entries.retain(|entry| !entry.kernel.path.is_empty());
    if entries.is_empty() {
        return Err("no entry has a kernel line".to_owned());
    }
    Ok(Menu {
        default: if default < entries.len() { default } else { 0 },
        entries,
    })
}
