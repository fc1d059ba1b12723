//! Vareon's routing rules: `condition` → `target_model`, by `priority`
//! (highest first; the first rule whose condition holds picks the model).
//! The condition language, small on purpose:
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | "(" expr ")" | "true" | "false" | compare
//! compare := field op value
//! field   := text | length | model | user
//! op      := == | != | < | <= | > | >= | contains | startswith | endswith
//! value   := "a string" | 'a string' | a number
//! ```
//!
//! `text` is the last user message, `length` its length in characters,
//! `model` the model the client asked for, `user` the caller's username.
//! Text comparisons ignore case. Examples: `length > 2000`,
//! `text contains "code" and not model == "gpt-4o"`,
//! `user == "alice" or text startswith "translate"`.

use std::fmt;

/// What a condition is evaluated against.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub text: &'a str,
    pub model: &'a str,
    pub user: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Text,
    Length,
    Model,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Node);

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Const(bool),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(Field, Op, Value),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Text => "text",
            Field::Length => "length",
            Field::Model => "model",
            Field::User => "user",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

/// The longest condition accepted, and the deepest nesting.
const MAX_LEN: usize = 2000;
const MAX_DEPTH: usize = 32;

fn tokens(src: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a string is not closed".into()),
                    Some('\\') if chars.get(i + 1).is_some() => {
                        s.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        s.push(x);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Token::Num(
                text.parse()
                    .map_err(|_| format!("{text} is not a number"))?,
            ));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
            {
                i += 1;
            }
            out.push(Token::Word(
                chars[start..i]
                    .iter()
                    .collect::<String>()
                    .to_ascii_lowercase(),
            ));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match two.as_str() {
                "==" => Some("=="),
                "!=" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Token::Sym(s));
                i += 2;
                continue;
            }
            out.push(Token::Sym(match c {
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                '=' => "==",
                _ => return Err(format!("unexpected character {c:?}")),
            }));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.at), Some(Token::Word(x)) if x == w)
    }

    fn peek_sym(&self, s: &str) -> bool {
        matches!(self.toks.get(self.at), Some(Token::Sym(x)) if *x == s)
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.not()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Node::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("the condition is nested too deeply".into());
        }
        let c = if self.peek_word("not") {
            self.at += 1;
            Node::Not(Box::new(self.not()?))
        } else if self.peek_sym("(") {
            self.at += 1;
            let inner = self.or()?;
            if !self.peek_sym(")") {
                return Err("a ( is not closed".into());
            }
            self.at += 1;
            inner
        } else if self.peek_word("true") || self.peek_word("false") {
            let v = self.peek_word("true");
            self.at += 1;
            Node::Const(v)
        } else {
            self.compare()?
        };
        self.depth -= 1;
        Ok(c)
    }

    fn compare(&mut self) -> Result<Node, String> {
        let field = match self.toks.get(self.at) {
            Some(Token::Word(w)) => match w.as_str() {
                "text" => Field::Text,
                "length" => Field::Length,
                "model" => Field::Model,
                "user" => Field::User,
                other => {
                    return Err(format!(
                        "unknown field {other:?} (text, length, model, user)"
                    ));
                }
            },
            Some(t) => return Err(format!("expected a field, found {t:?}")),
            None => return Err("the condition ends where a field was expected".into()),
        };
        self.at += 1;
        let op = match self.toks.get(self.at) {
            Some(Token::Sym(s)) => match *s {
                "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                _ => return Err(format!("expected an operator after {field}")),
            },
            Some(Token::Word(w)) => match w.as_str() {
                "contains" => Op::Contains,
                "startswith" => Op::StartsWith,
                "endswith" => Op::EndsWith,
                _ => return Err(format!("unknown operator {w:?}")),
            },
            _ => return Err(format!("expected an operator after {field}")),
        };
        self.at += 1;
        let value = match self.toks.get(self.at) {
            Some(Token::Str(s)) => Value::Str(s.clone()),
            Some(Token::Num(n)) => Value::Num(*n),
            _ => return Err(format!("expected a value after {field}")),
        };
        self.at += 1;
        let numeric = field == Field::Length;
        match (&value, numeric, op) {
            (Value::Num(_), true, Op::Contains | Op::StartsWith | Op::EndsWith) => {
                Err("length compares with ==, !=, <, <=, >, >=".into())
            }
            (Value::Str(_), true, _) => Err("length compares with a number".into()),
            (Value::Num(_), false, _) => Err(format!("{field} compares with a string")),
            (Value::Str(_), false, Op::Lt | Op::Le | Op::Gt | Op::Ge) => Err(format!(
                "{field} compares with ==, !=, contains, startswith, endswith"
            )),
            _ => Ok(Node::Compare(field, op, value)),
        }
    }
}

impl Condition {
    /// Parses a condition, or says what is wrong with it.
    pub fn parse(src: &str) -> Result<Condition, String> {
        if src.chars().count() > MAX_LEN {
            return Err(format!("a condition is at most {MAX_LEN} characters"));
        }
        if src.trim().is_empty() {
            return Err("a condition must not be empty".into());
        }
        let mut p = Parser {
            toks: tokens(src)?,
            at: 0,
            depth: 0,
        };
        let c = p.or()?;
        if p.at != p.toks.len() {
            return Err(format!(
                "unexpected {:?} after a whole condition",
                p.toks[p.at]
            ));
        }
        Ok(Condition(c))
    }

    pub fn holds(&self, f: &Facts<'_>) -> bool {
        self.0.holds(f)
    }
}

impl Node {
    fn holds(&self, f: &Facts<'_>) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::Not(c) => !c.holds(f),
            Node::And(a, b) => a.holds(f) && b.holds(f),
            Node::Or(a, b) => a.holds(f) || b.holds(f),
            Node::Compare(field, op, value) => match (field, value) {
                (Field::Length, Value::Num(n)) => {
                    let len = f.text.chars().count() as f64;
                    match op {
                        Op::Eq => len == *n,
                        Op::Ne => len != *n,
                        Op::Lt => len < *n,
                        Op::Le => len <= *n,
                        Op::Gt => len > *n,
                        Op::Ge => len >= *n,
                        _ => false,
                    }
                }
                (_, Value::Str(s)) => {
                    let have = match field {
                        Field::Text => f.text,
                        Field::Model => f.model,
                        _ => f.user,
                    }
                    .to_lowercase();
                    let want = s.to_lowercase();
                    match op {
                        Op::Eq => have == want,
                        Op::Ne => have != want,
                        Op::Contains => have.contains(&want),
                        Op::StartsWith => have.starts_with(&want),
                        Op::EndsWith => have.ends_with(&want),
                        _ => false,
                    }
                }
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(src: &str, text: &str, model: &str, user: &str) -> bool {
        Condition::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .holds(&Facts { text, model, user })
    }

    #[test]
    fn conditions_say_what_they_mean() {
        assert!(holds("length > 5", "longer text", "m", "u"));
        assert!(!holds("length > 5", "short", "m", "u"));
        assert!(holds(
            "text contains \"CODE\"",
            "write code please",
            "m",
            "u"
        ));
        assert!(holds(
            "text contains 'code' and not model == \"gpt-4o\"",
            "code",
            "llama3",
            "u"
        ));
        assert!(!holds(
            "text contains 'code' and not model == \"gpt-4o\"",
            "code",
            "GPT-4o",
            "u"
        ));
        assert!(holds(
            "user == 'alice' or text startswith \"translate\"",
            "Translate this",
            "m",
            "bob"
        ));
        assert!(holds(
            "(length <= 3 or length >= 100) and true",
            "abc",
            "m",
            "u"
        ));
        assert!(holds("model endswith ':8b'", "", "llama3:8b", "u"));
        assert!(holds("text = 'x'", "X", "m", "u"), "= is ==");
        assert!(!holds("false or not true", "", "", ""));
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        for (src, says) in [
            ("", "empty"),
            ("colour == 'red'", "unknown field"),
            ("length > 'x'", "number"),
            ("text > 'x'", "compares with =="),
            ("text contains", "value"),
            ("(length > 1", "not closed"),
            ("text == \"open", "not closed"),
            ("length > 1 length", "unexpected"),
            ("text ~ 'x'", "unexpected character"),
            ("model contains 5", "string"),
        ] {
            let e = Condition::parse(src).unwrap_err();
            assert!(e.contains(says), "{src}: {e}");
        }
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Condition::parse(&deep).unwrap_err().contains("deeply"));
    }
}
