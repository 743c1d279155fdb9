//! GRUB's `grub.cfg`, as `grub-mkconfig` writes it (Debian, Ubuntu) and as
//! Fedora's stubs and `blscfg` use it: a small interpreter for the part of
//! GRUB's script language those files use — words with quotes and
//! `$variables`, `set`, `if`/`elif`/`else` with `[ … ]` tests, functions,
//! `load_env`, `search`, `configfile`/`source`, `blscfg`, `menuentry` and
//! `submenu` — which finds the default entry's `linux` and `initrd` the
//! way GRUB would, without running anything else. Bounded everywhere:
//! nesting depth, statements executed, entries.

use std::collections::BTreeMap;

mod menu;
mod script;

pub use menu::menu;

use super::bls;
use super::choose::{BootEntry, Files, FsSel, Location};
use script::{parse, Block, Piece, Stmt, Word};

const MAX_CALL_DEPTH: usize = 16;
const MAX_STEPS: usize = 200_000;
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone)]
enum Item {
    Entry {
        title: String,
        id: String,
        body: Block,
    },
    Submenu {
        title: String,
        id: String,
        items: Vec<Item>,
    },
    /// A BLS entry from blscfg, with its id.
    Ready { id: String, entry: BootEntry },
}

/// The interpreter's state.
#[derive(Clone)]
struct State {
    vars: BTreeMap<String, String>,
    functions: BTreeMap<String, Block>,
    root: FsSel,
}

struct Run<'a> {
    files: &'a dyn Files,
    base: usize,
    state: State,
    items: Vec<Item>,
    steps: usize,
    /// Set by `configfile`: the rest of the current file does not run.
    replaced: bool,
    /// While an entry's body runs: what it loads.
    loading: Option<BootEntry>,
}

impl Run<'_> {
    fn expand(&self, word: &Word) -> String {
        word.iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Var(name) => self.state.vars.get(name).cloned().unwrap_or_default(),
            })
            .collect()
    }

    fn block(&mut self, stmts: &[Stmt], depth: usize) -> Result<bool, String> {
        let mut status = true;
        for stmt in stmts {
            if self.replaced {
                break;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(format!("it runs more than {MAX_STEPS} statements"));
            }
            status = self.statement(stmt, depth)?;
        }
        Ok(status)
    }

    fn statement(&mut self, stmt: &Stmt, depth: usize) -> Result<bool, String> {
        if depth > MAX_CALL_DEPTH {
            return Err(format!("calls nested more than {MAX_CALL_DEPTH} deep"));
        }
        match stmt {
            Stmt::Command(words) => {
                let words: Vec<String> = words.iter().map(|word| self.expand(word)).collect();
                self.command(&words, depth)
            }
            Stmt::If { arms, otherwise } => {
                for (condition, body) in arms {
                    if self.block(condition, depth + 1)? {
                        return self.block(body, depth + 1);
                    }
                }
                self.block(otherwise, depth + 1)
            }
            Stmt::Function { name, body } => {
                self.state.functions.insert(name.clone(), body.clone());
                Ok(true)
            }
            Stmt::Menu {
                submenu,
                args,
                body,
            } => {
                let args: Vec<String> = args.iter().map(|word| self.expand(word)).collect();
                let (title, id) = menu_title(&args);
                if self.items.len() >= MAX_ENTRIES {
                    return Err(format!("more than {MAX_ENTRIES} menu entries"));
                }
                if *submenu {
                    let outer = std::mem::take(&mut self.items);
                    let saved = self.state.clone();
                    self.block(body, depth + 1)?;
                    self.state = saved;
                    let items = std::mem::replace(&mut self.items, outer);
                    self.items.push(Item::Submenu { title, id, items });
                } else {
                    self.items.push(Item::Entry {
                        title,
                        id,
                        body: body.clone(),
                    });
                }
                Ok(true)
            }
        }
    }

    fn command(&mut self, words: &[String], depth: usize) -> Result<bool, String> {
        let Some((name, args)) = words.split_first() else {
            return Ok(true);
        };
        if let Some((var, value)) = assignment(name) {
            self.set(var, value);
            return Ok(true);
        }
        match name.as_str() {
            "set" => {
                for arg in args {
                    let (var, value) = arg.split_once('=').unwrap_or((arg, ""));
                    self.set(var, value);
                }
                Ok(true)
            }
            "unset" => {
                for var in args {
                    self.state.vars.remove(var);
                }
                Ok(true)
            }
            "[" | "test" => Ok(self.test(args.strip_suffix(&["]".to_owned()]).unwrap_or(args))),
            "true" => Ok(true),
            "false" => Ok(false),
            "load_env" => self.load_env(args),
            "search" | "search.fs_uuid" | "search.fs_label" | "search.file" => {
                Ok(self.search(name, args))
            }
            "configfile" | "source" | "." => self.include(name, args, depth),
            "blscfg" => self.blscfg(),
            "linux" | "linux16" | "linuxefi" | "linux32" => {
                if let Some((path, rest)) = args.split_first() {
                    let kernel = self.state_path(path);
                    if let Some(entry) = self.loading.as_mut() {
                        entry.kernel = kernel;
                        entry.cmdline = rest.join(" ");
                    }
                }
                Ok(true)
            }
            "initrd" | "initrd16" | "initrdefi" => {
                let initrds: Vec<Location> = args
                    .iter()
                    .filter(|a| !a.starts_with("--"))
                    .map(|a| self.state_path(a))
                    .collect();
                if let Some(entry) = self.loading.as_mut() {
                    entry.initrds = initrds;
                }
                Ok(true)
            }
            _ => match self.state.functions.get(name).cloned() {
                Some(body) => {
                    let saved: Vec<(String, Option<String>)> = (1..=9)
                        .map(|n| (n.to_string(), self.state.vars.get(&n.to_string()).cloned()))
                        .collect();
                    for (n, arg) in args.iter().take(9).enumerate() {
                        self.state.vars.insert((n + 1).to_string(), arg.clone());
                    }
                    let status = self.block(&body, depth + 1);
                    for (n, value) in saved {
                        match value {
                            Some(value) => self.state.vars.insert(n, value),
                            None => self.state.vars.remove(&n),
                        };
                    }
                    status
                }
                // Commands that only draw, load modules or set up terminals.
                None => Ok(KNOWN_COMMANDS.contains(&name.as_str())),
            },
        }
    }

    fn set(&mut self, var: &str, value: &str) {
        if var == "root" {
            self.state.root = device(value).unwrap_or(FsSel::Uuid(String::new()));
        }
        self.state.vars.insert(var.to_owned(), value.to_owned());
    }

    /// A path as GRUB reads it: `(device)/path`, or relative to `$root`.
    fn state_path(&self, text: &str) -> Location {
        if let Some(rest) = text.strip_prefix('(') {
            if let Some((dev, path)) = rest.split_once(')') {
                return Location {
                    fs: device(dev).unwrap_or(FsSel::Uuid(String::new())),
                    path: if path.is_empty() {
                        "/".to_owned()
                    } else {
                        path.to_owned()
                    },
                };
            }
        }
        Location {
            fs: self.state.root.clone(),
            path: text.to_owned(),
        }
    }

    fn test(&self, args: &[String]) -> bool {
        if let Some(at) = args.iter().position(|a| a == "-o") {
            return self.test(&args[..at]) || self.test(&args[at + 1..]);
        }
        if let Some(at) = args.iter().position(|a| a == "-a") {
            return self.test(&args[..at]) && self.test(&args[at + 1..]);
        }
        match args {
            [bang, rest @ ..] if bang == "!" => !self.test(rest),
            [] => false,
            [one] => !one.is_empty(),
            [op, operand] => match op.as_str() {
                "-n" => !operand.is_empty(),
                "-z" => operand.is_empty(),
                "-e" | "-f" | "-s" => {
                    matches!(self.files.text(self.base, &self.state_path(operand)), Ok(Some(text)) if op != "-s" || !text.is_empty())
                }
                "-d" => {
                    !matches!(self.files.list(self.base, &self.state_path(operand)), Ok(names) if names.is_empty())
                }
                _ => false,
            },
            [left, op, right] => {
                let numbers = || Some((left.parse::<i64>().ok()?, right.parse::<i64>().ok()?));
                match op.as_str() {
                    "=" | "==" => left == right,
                    "!=" => left != right,
                    "-eq" => numbers().is_some_and(|(l, r)| l == r),
                    "-ne" => numbers().is_some_and(|(l, r)| l != r),
                    "-lt" => numbers().is_some_and(|(l, r)| l < r),
                    "-le" => numbers().is_some_and(|(l, r)| l <= r),
                    "-gt" => numbers().is_some_and(|(l, r)| l > r),
                    "-ge" => numbers().is_some_and(|(l, r)| l >= r),
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn load_env(&mut self, args: &[String]) -> Result<bool, String> {
        let mut file = None;
        let mut names = Vec::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "-f" | "--file" => file = rest.next().cloned(),
                "-s" | "--skip-sig" => {}
                name => names.push(name.to_owned()),
            }
        }
        let path = file.unwrap_or_else(|| {
            format!(
                "{}/grubenv",
                self.state.vars.get("prefix").cloned().unwrap_or_default()
            )
        });
        let Some(text) = self.files.text(self.base, &self.state_path(&path))? else {
            return Ok(false);
        };
        for (name, value) in bls::parse_grubenv(&text) {
            if names.is_empty() || names.contains(&name) {
                self.set(&name, &value);
            }
        }
        Ok(true)
    }

    fn search(&mut self, name: &str, args: &[String]) -> bool {
        let mut kind = match name {
            "search.fs_label" => "label",
            "search.file" => "file",
            _ => "uuid",
        };
        let mut var = if name == "search" {
            None
        } else {
            Some("root".to_owned())
        };
        let mut operands = Vec::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "-u" | "--fs-uuid" => kind = "uuid",
                "-l" | "--label" => kind = "label",
                "-f" | "--file" => kind = "file",
                "-s" | "--set" => {
                    var = Some(rest.next().cloned().unwrap_or_else(|| "root".to_owned()))
                }
                other if other.starts_with("--set=") => {
                    var = Some(other["--set=".len()..].to_owned())
                }
                other if other.starts_with('-') => {}
                other => operands.push(other.to_owned()),
            }
        }
        let Some(wanted) = operands.first() else {
            return false;
        };
        // search.fs_uuid UUID VAR
        if name != "search" {
            if let Some(second) = operands.get(1) {
                var = Some(second.clone());
            }
        }
        let device = format!("{kind}:{wanted}");
        if let Some(var) = var {
            self.set(&var, &device);
        }
        true
    }

    fn include(&mut self, name: &str, args: &[String], depth: usize) -> Result<bool, String> {
        let Some(path) = args.first() else {
            return Ok(false);
        };
        let Some(text) = self.files.text(self.base, &self.state_path(path))? else {
            return Ok(false);
        };
        let stmts = parse(&text).map_err(|problem| format!("{path}: {problem}"))?;
        if name == "configfile" {
            let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
            self.set("config_directory", &dir);
            self.set("config_file", path);
            self.items.clear();
            self.block(&stmts, depth + 1)?;
            self.replaced = true;
        } else {
            self.block(&stmts, depth + 1)?;
        }
        Ok(true)
    }

    /// Fedora's `blscfg`: the BLS entries on `$root`, with GRUB's variables.
    fn blscfg(&mut self) -> Result<bool, String> {
        let rooted = Rooted {
            files: self.files,
            root: self.state.root.clone(),
        };
        for dir in ["/loader/entries", "/boot/loader/entries"] {
            let names = rooted.list(self.base, &Location::here(dir))?;
            if !names.iter().any(|name| name.ends_with(".conf")) {
                continue;
            }
            let (entries, default) =
                bls::entries_with_ids(&rooted, self.base, dir, &names, &self.state.vars)?;
            let saved_default = self.state.vars.get("default").cloned();
            for (id, mut entry) in entries {
                for location in std::iter::once(&mut entry.kernel).chain(entry.initrds.iter_mut()) {
                    if location.fs == FsSel::This {
                        location.fs = self.state.root.clone();
                    }
                }
                self.items.push(Item::Ready { id, entry });
            }
            if saved_default.is_none_or(|default| default.is_empty()) {
                self.state
                    .vars
                    .insert("default".to_owned(), default.to_string());
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// Commands that succeed without effect on what boots.
const KNOWN_COMMANDS: [&str; 22] = [
    "insmod",
    "echo",
    "export",
    "save_env",
    "serial",
    "terminal_input",
    "terminal_output",
    "terminal",
    "loadfont",
    "load_video",
    "gfxmode",
    "recordfail",
    "set_gfxpayload",
    "background_image",
    "play",
    "sleep",
    "clear",
    "fwsetup",
    "halt",
    "reboot",
    "cpuid",
    "savedefault",
];

/// The menu's title and id from `menuentry` arguments.
fn menu_title(args: &[String]) -> (String, String) {
    let mut title = None;
    let mut id = String::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--class" | "--users" | "--hotkey" => {
                rest.next();
            }
            "--id" => id = rest.next().cloned().unwrap_or_default(),
            "--unrestricted" => {}
            other if title.is_none() && !other.starts_with("--") => title = Some(other.to_owned()),
            _ => {}
        }
    }
    (title.unwrap_or_default(), id)
}

fn assignment(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once('=')?;
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    valid.then_some((name, value))
}

/// A GRUB device name: `hd0,gpt2`, `hd0,msdos1`, `hd0,2`, `hd0`, or the
/// `uuid:…`/`label:…`/`file:…` that `search` leaves in a variable here.
fn device(text: &str) -> Option<FsSel> {
    let text = text.trim_matches(|c| c == '(' || c == ')');
    if let Some(uuid) = text.strip_prefix("uuid:") {
        return Some(FsSel::Uuid(uuid.to_owned()));
    }
    if let Some(label) = text.strip_prefix("label:") {
        return Some(FsSel::Label(label.to_owned()));
    }
    if let Some(file) = text.strip_prefix("file:") {
        return Some(FsSel::File(file.to_owned()));
    }
    let (disk, partition) = text.split_once(',').unwrap_or((text, ""));
    if !disk.starts_with("hd") {
        return None;
    }
    if partition.is_empty() {
        return Some(FsSel::Partition(0));
    }
    let number = partition
        .split(',')
        .next()?
        .trim_start_matches("gpt")
        .trim_start_matches("msdos");
    number.parse().ok().map(FsSel::Partition)
}

/// Files seen with `$root` as the file system a bare path is on.
struct Rooted<'a> {
    files: &'a dyn Files,
    root: FsSel,
}

impl Rooted<'_> {
    fn at(&self, at: &Location) -> Location {
        Location {
            fs: if at.fs == FsSel::This {
                self.root.clone()
            } else {
                at.fs.clone()
            },
            path: at.path.clone(),
        }
    }
}

impl Files for Rooted<'_> {
    fn text(&self, base: usize, at: &Location) -> Result<Option<String>, String> {
        self.files.text(base, &self.at(at))
    }
    fn list(&self, base: usize, at: &Location) -> Result<Vec<String>, String> {
        self.files.list(base, &self.at(at))
    }
}
