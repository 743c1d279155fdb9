//! GRUB's script syntax, as far as generated configurations use it:
//! words (quotes, escapes, `$name` and `${name}`), `;` and newlines,
//! `if`/`elif`/`else`/`fi`, `menuentry`/`submenu`/`function` blocks.
//! Lexing and parsing only; `super` runs the result. Nesting is bounded.

use std::rc::Rc;

/// Blocks nested deeper than this are refused (the parser recurses).
const MAX_NESTING: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    Text(String),
    Var(String),
}

pub(super) type Word = Vec<Piece>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(Word),
    /// A literal `{` or `}` standing alone.
    Brace(char),
    Separator,
}

fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '\n' | ';' => {
                tokens.push(Token::Separator);
                index += 1;
            }
            c if c.is_whitespace() => index += 1,
            '#' => {
                while index < chars.len() && chars[index] != '\n' {
                    index += 1;
                }
            }
            '\\' if chars.get(index + 1) == Some(&'\n') => index += 2,
            _ => {
                let (word, plain, next) = lex_word(&chars, index);
                index = next;
                match (plain.as_str(), word.len()) {
                    ("{", 1) => tokens.push(Token::Brace('{')),
                    ("}", 1) => tokens.push(Token::Brace('}')),
                    _ => tokens.push(Token::Word(word)),
                }
            }
        }
    }
    tokens
}

/// One word from `start`: its pieces, its unquoted text (to spot braces),
/// and where the next token starts.
fn lex_word(chars: &[char], start: usize) -> (Word, String, usize) {
    let mut word = Vec::new();
    let mut text = String::new();
    let mut plain = String::new();
    let mut index = start;
    let flush = |text: &mut String, word: &mut Word| {
        if !text.is_empty() {
            word.push(Piece::Text(std::mem::take(text)));
        }
    };
    let mut quote: Option<char> = None;
    while index < chars.len() {
        let c = chars[index];
        match (quote, c) {
            (None, c) if c.is_whitespace() || c == ';' => break,
            (None, '\'') | (None, '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => text.push(c),
            (_, '\\') => {
                index += 1;
                match chars.get(index) {
                    Some('\n') | None => {}
                    Some(&escaped) => text.push(escaped),
                }
            }
            (_, '$') => {
                let (name, next) = variable_name(chars, index + 1);
                if name.is_empty() {
                    text.push('$');
                } else {
                    flush(&mut text, &mut word);
                    word.push(Piece::Var(name));
                    index = next;
                    continue;
                }
            }
            (_, c) => {
                text.push(c);
                if quote.is_none() {
                    plain.push(c);
                }
            }
        }
        index += 1;
    }
    flush(&mut text, &mut word);
    if word.is_empty() {
        word.push(Piece::Text(String::new()));
    }
    (word, plain, index)
}

fn variable_name(chars: &[char], start: usize) -> (String, usize) {
    if chars.get(start) == Some(&'{') {
        let mut index = start + 1;
        let mut name = String::new();
        while index < chars.len() && chars[index] != '}' {
            name.push(chars[index]);
            index += 1;
        }
        return (name, index + 1);
    }
    let mut index = start;
    let mut name = String::new();
    while index < chars.len()
        && (chars[index].is_ascii_alphanumeric() || chars[index] == '_' || chars[index] == '?')
    {
        name.push(chars[index]);
        index += 1;
    }
    (name, index)
}

pub(super) type Block = Rc<Vec<Stmt>>;

#[derive(Debug)]
pub(super) enum Stmt {
    Command(Vec<Word>),
    If {
        arms: Vec<(Vec<Stmt>, Vec<Stmt>)>,
        otherwise: Vec<Stmt>,
    },
    Menu {
        submenu: bool,
        args: Vec<Word>,
        body: Block,
    },
    Function {
        name: String,
        body: Block,
    },
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn keyword(&self) -> Option<String> {
        match self.tokens.get(self.at) {
            Some(Token::Word(word)) => match word.as_slice() {
                [Piece::Text(text)] => Some(text.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Statements until one of `ends` (a keyword or `}`) starts a command;
    /// returns them and the end found (consumed), or `None` at the end.
    fn list(&mut self, ends: &[&str], depth: usize) -> Result<(Vec<Stmt>, Option<String>), String> {
        if depth > MAX_NESTING {
            return Err(format!("blocks nested more than {MAX_NESTING} deep"));
        }
        let mut stmts = Vec::new();
        loop {
            match self.tokens.get(self.at) {
                None => return Ok((stmts, None)),
                Some(Token::Separator) => self.at += 1,
                Some(Token::Brace('}')) if ends.contains(&"}") => {
                    self.at += 1;
                    return Ok((stmts, Some("}".to_owned())));
                }
                Some(Token::Brace(c)) => return Err(format!("unexpected '{c}'")),
                Some(Token::Word(_)) => {
                    let keyword = self.keyword().unwrap_or_default();
                    if ends.contains(&keyword.as_str()) {
                        self.at += 1;
                        return Ok((stmts, Some(keyword)));
                    }
                    stmts.push(self.statement(&keyword, depth)?);
                }
            }
        }
    }

    fn statement(&mut self, keyword: &str, depth: usize) -> Result<Stmt, String> {
        match keyword {
            "if" => {
                self.at += 1;
                let mut arms = Vec::new();
                loop {
                    let (condition, end) = self.list(&["then"], depth + 1)?;
                    if end.is_none() {
                        return Err("an if without then".to_owned());
                    }
                    let (body, end) = self.list(&["elif", "else", "fi"], depth + 1)?;
                    arms.push((condition, body));
                    match end.as_deref() {
                        Some("elif") => continue,
                        Some("else") => {
                            let (otherwise, end) = self.list(&["fi"], depth + 1)?;
                            if end.is_none() {
                                return Err("an if without fi".to_owned());
                            }
                            return Ok(Stmt::If { arms, otherwise });
                        }
                        Some(_) => {
                            return Ok(Stmt::If {
                                arms,
                                otherwise: Vec::new(),
                            })
                        }
                        None => return Err("an if without fi".to_owned()),
                    }
                }
            }
            "for" | "while" | "until" => {
                // Loops are not in generated configurations; skip the body.
                let (_, end) = self.list(&["do"], depth + 1)?;
                let (_, done) = self.list(&["done"], depth + 1)?;
                if end.is_none() || done.is_none() {
                    return Err(format!("a {keyword} loop without do … done"));
                }
                Ok(Stmt::Command(Vec::new()))
            }
            "menuentry" | "submenu" | "function" => {
                self.at += 1;
                let mut args = Vec::new();
                loop {
                    match self.tokens.get(self.at) {
                        Some(Token::Word(word)) => args.push(word.clone()),
                        Some(Token::Brace('{')) => break,
                        Some(Token::Separator) if keyword == "function" => {}
                        _ => return Err(format!("a {keyword} without '{{'")),
                    }
                    self.at += 1;
                }
                self.at += 1;
                let (body, end) = self.list(&["}"], depth + 1)?;
                if end.is_none() {
                    return Err(format!("a {keyword} without its closing '}}'"));
                }
                let body = Rc::new(body);
                if keyword == "function" {
                    let name = args.first().map(plain_text).unwrap_or_default();
                    Ok(Stmt::Function { name, body })
                } else {
                    Ok(Stmt::Menu {
                        submenu: keyword == "submenu",
                        args,
                        body,
                    })
                }
            }
            _ => {
                let mut words = Vec::new();
                while let Some(Token::Word(word)) = self.tokens.get(self.at) {
                    words.push(word.clone());
                    self.at += 1;
                }
                Ok(Stmt::Command(words))
            }
        }
    }
}

pub(super) fn plain_text(word: &Word) -> String {
    word.iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.as_str(),
            Piece::Var(_) => "",
        })
        .collect()
}

pub(super) fn parse(text: &str) -> Result<Vec<Stmt>, String> {
    let mut parser = Parser {
        tokens: lex(text),
        at: 0,
    };
    let (stmts, end) = parser.list(&[], 0)?;
    match end {
        None => Ok(stmts),
        Some(end) => Err(format!("unexpected {end}")),
    }
}
