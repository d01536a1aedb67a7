//! Binding JSON `args` / `kwargs` to a task's typed parameters, with
//! Python-like rules and messages that name the offending argument and
//! quote at most a bounded prefix of it (a 100 KB argument must not make a
//! 100 KB failure message).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::__private::Failure;
use crate::Error;

/// The decoded arguments of one call, consumed parameter by parameter.
#[derive(Debug)]
pub struct Input {
    task: &'static str,
    params: &'static [&'static str],
    args: Vec<Value>,
    kwargs: Map<String, Value>,
}

impl Input {
    /// Parse `args` (a JSON array) and `kwargs` (a JSON object) for a task
    /// with the given parameter names, rejecting extra positional arguments,
    /// unknown keyword arguments and arguments given twice.
    pub fn parse(
        task: &'static str,
        params: &'static [&'static str],
        args: &str,
        kwargs: &str,
    ) -> Result<Self, Failure> {
        let args = match parse_json(args, "args")? {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => {
                return Err(invalid(format!(
                    "{task}: args must be a JSON array, got {}",
                    kind_of(&other)
                )));
            }
        };
        let kwargs = match parse_json(kwargs, "kwargs")? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(invalid(format!(
                    "{task}: kwargs must be a JSON object, got {}",
                    kind_of(&other)
                )));
            }
        };
        if args.len() > params.len() {
            return Err(invalid(format!(
                "{task}() takes {} positional argument{} but {} were given",
                params.len(),
                if params.len() == 1 { "" } else { "s" },
                args.len()
            )));
        }
        for name in kwargs.keys() {
            match params.iter().position(|p| p == name) {
                None => {
                    return Err(invalid(format!(
                        "{task}() got an unexpected keyword argument `{}`",
                        bounded(name)
                    )));
                }
                Some(i) if i < args.len() => {
                    return Err(invalid(format!(
                        "{task}() got multiple values for argument `{}`",
                        bounded(name)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            task,
            params,
            args,
            kwargs,
        })
    }

    /// Take parameter `index`: positional if given, else by keyword, else
    /// `null` for types that accept it (such as `Option`).
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, Failure> {
        let name = self.params[index];
        let value = if index < self.args.len() {
            std::mem::take(&mut self.args[index])
        } else if let Some(v) = self.kwargs.remove(name) {
            v
        } else {
            return serde_json::from_value(Value::Null).map_err(|_| {
                invalid(format!(
                    "{}() missing required argument `{name}`",
                    self.task
                ))
            });
        };
        serde_json::from_value(value).map_err(|e| {
            invalid(format!(
                "argument `{name}`: {}",
                bound_quotes(&e.to_string())
            ))
        })
    }
}

/// Characters of an argument a failure message quotes; the rest becomes
/// `…`. Every SDK (Python, JavaScript, C) cuts at the same place.
pub const QUOTE_CHARS: usize = 64;

/// `text` cut to [`QUOTE_CHARS`] characters, marked with `…` when cut.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Cut every quoted span (`"…"` or `` `…` ``) of a serde message to
/// [`QUOTE_CHARS`] characters: serde quotes the whole offending value
/// (`invalid type: string "…", expected u32`).
fn bound_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        // Inside a span: copy up to the limit, then skip to its end. `"`
        // spans are Debug-escaped, so `\"` does not end one.
        let mut kept = 0;
        let mut escaped = false;
        for d in chars.by_ref() {
            let closes = d == c && !escaped;
            escaped = c == '"' && d == '\\' && !escaped;
            if closes {
                if kept > QUOTE_CHARS {
                    out.push('…');
                }
                out.push(d);
                break;
            }
            kept += 1;
            if kept <= QUOTE_CHARS {
                out.push(d);
            }
        }
    }
    out
}

/// Encode a plain return value.
pub fn encode_output<T: Serialize>(value: T) -> Result<String, Failure> {
    serde_json::to_string(&value)
        .map_err(|e| Error::fatal(format!("could not encode the result as JSON: {e}")).into())
}

/// Encode a `Result` return value, mapping its error onto a failure.
pub fn encode_result<T: Serialize, E: Into<Error>>(value: Result<T, E>) -> Result<String, Failure> {
    match value {
        Ok(v) => encode_output(v),
        Err(e) => Err(e.into().into()),
    }
}

fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(message: String) -> Failure {
    Error::invalid_input(message).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::__private::WitFailureKind;

    const PARAMS: &[&str] = &["a", "b"];

    fn message(r: Result<impl std::fmt::Debug, Failure>) -> String {
        let f = r.expect_err("expected a failure");
        assert_eq!(f.kind, WitFailureKind::InvalidInput);
        f.message
    }

    #[test]
    fn positional_and_keyword() {
        let mut input = Input::parse("add", PARAMS, "[1]", r#"{"b": 2}"#).unwrap();
        assert_eq!(input.take::<i64>(0).unwrap(), 1);
        assert_eq!(input.take::<i64>(1).unwrap(), 2);
    }

    #[test]
    fn optional_parameter_may_be_missing() {
        let mut input = Input::parse("f", PARAMS, "[1]", "{}").unwrap();
        assert_eq!(input.take::<Option<i64>>(1).unwrap(), None);
    }

    #[test]
    fn errors_name_the_argument() {
        let mut input = Input::parse("add", PARAMS, r#"[1, "x"]"#, "").unwrap();
        assert_eq!(input.take::<i64>(0).unwrap(), 1);
        assert!(message(input.take::<i64>(1)).starts_with("argument `b`: invalid type"));

        let mut input = Input::parse("add", PARAMS, "[1]", "").unwrap();
        input.take::<i64>(0).unwrap();
        assert_eq!(
            message(input.take::<i64>(1)),
            "add() missing required argument `b`"
        );
    }

    #[test]
    fn quotes_of_the_input_are_bounded() {
        let long = "x".repeat(100_000);
        let mut input = Input::parse("add", PARAMS, &format!(r#"[1, "{long}"]"#), "").unwrap();
        input.take::<i64>(0).unwrap();
        let msg = message(input.take::<i64>(1));
        let cut = "x".repeat(QUOTE_CHARS);
        assert_eq!(
            msg,
            format!(r#"argument `b`: invalid type: string "{cut}…", expected i64"#)
        );
        let msg = message(Input::parse(
            "add",
            PARAMS,
            "[]",
            &format!(r#"{{"{long}": 1}}"#),
        ));
        assert_eq!(
            msg,
            format!("add() got an unexpected keyword argument `{cut}…`")
        );
        // Short quotes, escapes and characters (not bytes) are kept whole.
        assert_eq!(
            bound_quotes(r#"invalid type: string "a\"b", expected `u8`"#),
            r#"invalid type: string "a\"b", expected `u8`"#
        );
        assert_eq!(bounded(&"é".repeat(64)), "é".repeat(64));
        assert_eq!(bounded(&"é".repeat(65)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            message(Input::parse("add", PARAMS, "[1,2,3]", "")),
            "add() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            message(Input::parse("add", PARAMS, "[1]", r#"{"a": 1}"#)),
            "add() got multiple values for argument `a`"
        );
        assert_eq!(
            message(Input::parse("add", PARAMS, "[]", r#"{"c": 1}"#)),
            "add() got an unexpected keyword argument `c`"
        );
        assert_eq!(
            message(Input::parse("add", PARAMS, "{}", "")),
            "add: args must be a JSON array, got an object"
        );
        assert!(
            message(Input::parse("add", PARAMS, "[1,", "")).starts_with("args is not valid JSON")
        );
    }
}
