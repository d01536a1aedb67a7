//! Binding JSON `args` / `kwargs` to a task's typed parameters, with
//! Python-like rules and messages that name the offending argument.

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
                        "{task}() got an unexpected keyword argument `{name}`"
                    )));
                }
                Some(i) if i < args.len() => {
                    return Err(invalid(format!(
                        "{task}() got multiple values for argument `{name}`"
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
        serde_json::from_value(value).map_err(|e| invalid(format!("argument `{name}`: {e}")))
    }
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
