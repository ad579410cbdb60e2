//! The small command-line parser the native programs share (`qwen-layered` in
//! `src/bin/cli.rs`, `qwen-layered-bench` in `src/bin/bench.rs`): `--name value` options and
//! `--flag`s, each at most once, and up to a given number of positional arguments; every misuse
//! is a [`Fail`] with exit code 2 and the program's usage text.

use std::process::ExitCode;

/// A failure: the message for stderr and the exit code (1: the work failed, 2: misuse).
pub struct Fail(pub String, pub u8);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string(), 1)
    }
}

/// A misuse: `msg`, then the usage text; exit code 2.
pub fn usage_error(usage: &str, msg: impl Into<String>) -> Fail {
    Fail(format!("{}\n\n{usage}", msg.into()), 2)
}

/// The exit code of a command's result, printing a failure's message to stderr.
pub fn exit_code(result: Result<(), Fail>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// A command's parsed arguments.
pub struct Options {
    /// The arguments not starting with `--`, in order.
    pub positional: Vec<String>,
    values: Vec<(String, String)>,
    flags: Vec<String>,
    usage: &'static str,
}

impl Options {
    /// Parses `args`: names in `with_value` take the next argument, names in `flags` take none;
    /// any other `--name`, a repeated name, or more than `max_positional` other arguments is a
    /// usage error.
    pub fn parse(
        args: &[String],
        with_value: &[&str],
        flags: &[&str],
        max_positional: usize,
        usage: &'static str,
    ) -> Result<Self, Fail> {
        let mut me = Options {
            positional: Vec::new(),
            values: Vec::new(),
            flags: Vec::new(),
            usage,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg.as_str();
            if !name.starts_with("--") && max_positional > 0 {
                if me.positional.len() == max_positional {
                    return Err(me.usage_error(format!("unexpected argument {name:?}")));
                }
                me.positional.push(arg.clone());
                continue;
            }
            let seen =
                me.values.iter().any(|(n, _)| n == name) || me.flags.iter().any(|f| f == name);
            if seen {
                return Err(me.usage_error(format!("{name} given twice")));
            }
            if with_value.contains(&name) {
                let value = it
                    .next()
                    .ok_or_else(|| me.usage_error(format!("{name} needs a value")))?;
                me.values.push((name.to_owned(), value.clone()));
            } else if flags.contains(&name) {
                me.flags.push(name.to_owned());
            } else {
                return Err(me.usage_error(format!("unknown option {name:?}")));
            }
        }
        Ok(me)
    }

    /// A usage error with this program's usage text.
    pub fn usage_error(&self, msg: impl Into<String>) -> Fail {
        usage_error(self.usage, msg)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or a usage error saying it is required.
    pub fn required(&self, name: &str) -> Result<&str, Fail> {
        self.get(name)
            .ok_or_else(|| self.usage_error(format!("{name} is required")))
    }

    /// The value of `name` parsed as a number, `default` when absent.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Fail> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.usage_error(format!("{name} {v:?} is not a valid number"))),
        }
    }

    /// Whether the flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The one positional argument, named `what` in the error when there is not exactly one.
    pub fn one_positional(&self, what: &str) -> Result<&str, Fail> {
        match self.positional.as_slice() {
            [p] => Ok(p),
            _ => Err(self.usage_error(format!("expected exactly one {what}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_values_flags_and_positionals_and_refuses_misuse() {
        let o = Options::parse(
            &args(&["in.bin", "--n", "3", "--zh"]),
            &["--n"],
            &["--zh"],
            1,
            "USAGE",
        )
        .unwrap_or_else(|f| panic!("{}", f.0));
        assert_eq!(o.one_positional("PATH").ok(), Some("in.bin"));
        assert_eq!(o.number("--n", 0usize).ok(), Some(3));
        assert_eq!(o.number("--m", 7usize).ok(), Some(7));
        assert!(o.flag("--zh") && !o.flag("--en"));
        let err = |a: &[&str], max| {
            let Err(Fail(msg, code)) = Options::parse(&args(a), &["--n"], &["--zh"], max, "USAGE")
            else {
                panic!("{a:?} should fail");
            };
            assert_eq!(code, 2);
            assert!(msg.ends_with("\n\nUSAGE"), "{msg}");
            msg
        };
        assert!(err(&["--n"], 0).contains("--n needs a value"));
        assert!(err(&["--zh", "--zh"], 0).contains("--zh given twice"));
        assert!(err(&["--x"], 0).contains("unknown option \"--x\""));
        assert!(err(&["a"], 0).contains("unknown option \"a\""));
        assert!(err(&["a", "b"], 1).contains("unexpected argument \"b\""));
        let o = Options::parse(&args(&["--n", "x"]), &["--n"], &[], 0, "USAGE")
            .unwrap_or_else(|f| panic!("{}", f.0));
        assert!(o.number("--n", 0u32).is_err());
        assert!(o.required("--m").is_err());
    }
}
