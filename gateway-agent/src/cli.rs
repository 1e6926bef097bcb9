//! Helpers shared by the binaries: flags merged with a TOML `--config` file (flags and
//! `SWITCHYARD_*` env override the file), logging setup, and the ops HTTP endpoint
//! (`/metrics`, `/healthz`).

use std::ffi::OsString;
use std::path::PathBuf;

use axum::Router;
use axum::routing::get;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
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
/// usage message on errors.
pub fn parse<T: Parser>() -> T {
    match parse_from(std::env::args_os()) {
        Ok(t) => t,
        Err(ConfigFileError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
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
        let m = cmd.try_get_matches_from(args)?;
        return Ok(T::from_arg_matches(&m)?);
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
    let m = cmd.try_get_matches_from(merged)?;
    Ok(T::from_arg_matches(&m)?)
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

/// Installs the tracing subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the Prometheus recorder for the `metrics` facade.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// `/metrics` (Prometheus text) and `/healthz`; merge more routes into it as needed.
pub fn ops_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Raises the soft open-file limit to the hard one and returns the limit now in force
/// (`None` = unlimited). Every connection costs a descriptor, and the usual soft default
/// (1 024; systemd gives services 1 024 soft under a 512 K hard limit) would refuse
/// logins long before `--capacity`; Go's runtime does the same at start-up.
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Serves `router` on an already-bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().expect("raising within the hard limit is allowed");
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit, now.maximum);
        assert_eq!(now.current, now.maximum);
    }

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
