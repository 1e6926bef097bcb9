//! What every Switchyard binary's command line shares (DESIGN contract 4): the etcd
//! connection flags ([`EtcdArgs`], flattened into each binary's flags), flags merged with a
//! TOML `--config` file (flags and `SWITCHYARD_*` env override the file), and the exit
//! codes.
//!
//! Exit codes, the same for every binary: [`EXIT_USAGE`] (2) for a bad flag, file or
//! value — fix the command line and retry — and [`EXIT_RUNTIME`] (1) for a failure while
//! running (etcd unreachable, port taken, lease lost).

use std::ffi::OsString;
use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::{ConnectError, EtcdConfig, KeyError, Prefix};

/// Exit status for a usage or configuration error: a bad flag, config file or value. The
/// same as clap's own, so a script can tell "fix the command" from "it failed".
pub const EXIT_USAGE: u8 = 2;

/// Exit status for a failure at run time (etcd unreachable, a port taken, a lost lease).
pub const EXIT_RUNTIME: u8 = 1;

/// Prints `<bin>: error: <err>` to stderr and returns the exit code for it; `main`
/// returns the code, so destructors (child processes, the lease) still run.
pub fn fail(bin: &str, code: u8, err: &dyn Display) -> ExitCode {
    eprintln!("{bin}: error: {err}");
    ExitCode::from(code)
}

/// The etcd connection, the same flags for every binary that talks to the registry
/// (`#[command(flatten)]`), so a flag added here (TLS, auth) reaches all of them.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "SWITCHYARD_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,
    /// Registry prefix in etcd.
    #[arg(long, env = "SWITCHYARD_PREFIX", default_value = "/switchyard")]
    pub prefix: String,
}

impl EtcdArgs {
    /// The validated etcd client settings.
    pub fn etcd_config(&self) -> Result<EtcdConfig, ConnectError> {
        EtcdConfig::new(&self.etcd)
    }

    /// The validated registry prefix.
    pub fn prefix(&self) -> Result<Prefix, KeyError> {
        Prefix::new(self.prefix.clone())
    }
}

/// True when the argument `id` was given on the command line, in its environment variable
/// or in the `--config` file, rather than left at its default.
pub fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A key that names no flag.
    #[error("config file {path}: unknown key {key:?} (keys are the long flag names)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of a kind no flag takes (a table, a date).
    #[error("config file {path}: key {key:?} must be a string, number, boolean or array")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The merged command line was refused.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// Parses the process's arguments like [`Parser::parse`], merging the TOML file named by a
/// `--config` flag (the struct must have a `config: Option<PathBuf>` field). Exits with a
/// usage message and [`EXIT_USAGE`] on errors (`--help` and `--version` exit 0).
pub fn parse<T: Parser>() -> T {
    parse_with_matches().0
}

/// [`parse`], also returning the matches so a binary can ask which values were [`given`].
pub fn parse_with_matches<T: Parser>() -> (T, ArgMatches) {
    let parsed =
        matches_from::<T, _>(std::env::args_os()).and_then(|m| Ok((T::from_arg_matches(&m)?, m)));
    match parsed {
        Ok(t) => t,
        Err(ConfigFileError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(i32::from(EXIT_USAGE));
        }
    }
}

/// [`parse`] over explicit arguments, returning errors. Keys in the file are long flag
/// names (`tcp-addr` or `tcp_addr`); values are strings, numbers, booleans (for switches)
/// or arrays (for repeated flags). A flag given on the command line or through its
/// environment variable wins over the file.
pub fn parse_from<T, I>(args: I) -> Result<T, ConfigFileError>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    Ok(T::from_arg_matches(&matches_from::<T, I>(args)?)?)
}

/// The matches of [`parse_from`].
fn matches_from<T, I>(args: I) -> Result<ArgMatches, ConfigFileError>
where
    T: CommandFactory,
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = T::command();
    // First pass only to find --config and where each value came from; required flags may
    // still be missing (they can be in the file).
    let first = cmd.clone().ignore_errors(true).try_get_matches_from(&args);
    let path = first
        .as_ref()
        .ok()
        .and_then(|m| m.try_get_one::<PathBuf>("config").ok().flatten().cloned());
    let (Some(path), Ok(first)) = (path, first) else {
        return Ok(cmd.try_get_matches_from(args)?);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigFileError::Toml {
        path: path.clone(),
        source,
    })?;
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            return Err(ConfigFileError::UnknownKey {
                path,
                key: key.clone(),
            });
        };
        if matches!(
            first.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = || ConfigFileError::BadValue {
            path: path.clone(),
            key: key.clone(),
        };
        let values = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v).ok_or_else(bad)?],
        };
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        for v in values {
            if switch {
                if v == "true" {
                    from_file.push(format!("--{long}").into());
                }
            } else {
                from_file.push(format!("--{long}={v}").into());
            }
        }
    }
    let mut merged = Vec::with_capacity(args.len() + from_file.len());
    merged.extend(args.first().cloned());
    merged.extend(from_file);
    merged.extend(args.into_iter().skip(1));
    Ok(cmd.try_get_matches_from(merged)?)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Parser)]
    struct Flags {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 10)]
        capacity: u64,
        #[arg(long)]
        takeover: bool,
        #[arg(long)]
        label: Vec<String>,
    }

    fn file(text: &str) -> tempfile_like::File {
        tempfile_like::File::new(text)
    }

    /// A throwaway file without a tempfile dependency.
    mod tempfile_like {
        pub(super) struct File(pub(super) std::path::PathBuf);
        impl File {
            pub(super) fn new(text: &str) -> Self {
                let n: u64 = rand::random();
                let p = std::env::temp_dir().join(format!("switchyard-cli-{n:x}.toml"));
                let mut f = std::fs::File::create(&p).unwrap();
                super::Write::write_all(&mut f, text.as_bytes()).unwrap();
                Self(p)
            }
        }
        impl Drop for File {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[derive(Debug, Parser)]
    struct WithEtcd {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        registry: EtcdArgs,
    }

    #[test]
    fn etcd_args_flatten_and_given_tells_values_from_defaults() {
        let m = matches_from::<WithEtcd, _>(["prog"]).unwrap();
        let a = WithEtcd::from_arg_matches(&m).unwrap();
        assert_eq!(a.registry.etcd, ["http://127.0.0.1:2379"]);
        assert!(!given(&m, "etcd"), "a default is not given");
        let f = file("etcd = \"http://10.0.0.1:2379,http://10.0.0.2:2379\"\n");
        let m = matches_from::<WithEtcd, _>(["prog", "--config", f.0.to_str().unwrap()]).unwrap();
        assert!(given(&m, "etcd"), "a file value is given");
        assert!(!given(&m, "prefix"));
        let a = WithEtcd::from_arg_matches(&m).unwrap();
        assert_eq!(a.registry.etcd.len(), 2);
        assert!(a.registry.etcd_config().is_ok());
        assert_eq!(a.registry.prefix().unwrap().as_str(), "/switchyard");
        let m = matches_from::<WithEtcd, _>(["prog", "--prefix", "nope"]).unwrap();
        let a = WithEtcd::from_arg_matches(&m).unwrap();
        assert!(given(&m, "prefix"));
        assert!(a.registry.prefix().is_err(), "validated on use");
    }

    #[test]
    fn file_values_fill_in_and_flags_win() {
        let f =
            file("id = \"gw-file\"\ncapacity = 500\ntakeover = true\nlabel = [\"a=1\", \"b=2\"]\n");
        let p = f.0.to_str().unwrap();
        let flags: Flags = parse_from(["prog", "--config", p]).unwrap();
        assert_eq!(flags.id, "gw-file");
        assert_eq!(flags.capacity, 500);
        assert!(flags.takeover);
        assert_eq!(flags.label, ["a=1", "b=2"]);
        let flags: Flags = parse_from(["prog", "--config", p, "--capacity", "7"]).unwrap();
        assert_eq!(flags.capacity, 7);
    }

    #[test]
    fn unknown_keys_and_bad_files_are_explained() {
        let f = file("idd = \"x\"\n");
        let e = parse_from::<Flags, _>(["prog", "--config", f.0.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown key \"idd\""), "{e}");
        let f = file("id = [\n");
        let e = parse_from::<Flags, _>(["prog", "--config", f.0.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
        let e = parse_from::<Flags, _>(["prog", "--config", "/nonexistent.toml"]).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert!(
            parse_from::<Flags, _>(["prog"]).is_err(),
            "--id is still required"
        );
    }
}
