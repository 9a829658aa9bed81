//! The daemon's configuration file (`/etc/bpfnet/config.toml`, or `bpfnet daemon --config
//! PATH`): every `bpfnet daemon` flag as a setting of the same name, flags given on the command
//! line win. Example:
//!
//! ```toml
//! uplink = ["eth0"]
//! docker-plugin = "/run/docker/plugins"
//! metrics = "127.0.0.1:9464"
//! ct-max = 262144
//! dns-upstream = ["192.0.2.53"]
//! trace = false
//! ```
//!
//! The file is read before the command line is parsed: its settings become flags, placed
//! before the user's, so one parser checks both and its messages name the setting.
use std::{ffi::OsString, path::PathBuf};

use anyhow::{bail, Context, Result};
use clap::ArgAction;

/// Read when it exists and no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/bpfnet/config.toml";

/// Settings that are no settings: what a run does, not how the daemon runs.
const NOT_SETTINGS: [&str; 3] = ["config", "cleanup", "help"];

/// `args` (the process's arguments) with the settings of the daemon's configuration file put in
/// as flags, when `args` start the daemon; otherwise `args` as they are.
pub fn merge(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>> {
    let Some(at) = args.iter().skip(1).position(|a| a == "daemon").map(|i| i + 1) else { return Ok(args) };
    let Some(daemon) = cli.find_subcommand("daemon") else { return Ok(args) };
    let given: Vec<String> = args[at + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let explicit = given.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config") {
        Some("") => Some(given.get(i + 1).cloned().unwrap_or_default()),
        Some(rest) => rest.strip_prefix('=').map(str::to_string),
        None => None,
    });
    let path = match explicit {
        Some(path) => PathBuf::from(path),
        None if std::path::Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(args),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the configuration file {}", path.display()))?;
    let flags = flags_of(&text, daemon).with_context(|| format!("in the configuration file {}", path.display()))?;
    // Flags the user gave win: their settings are left out.
    let flags = flags.into_iter().filter(|(name, _)| !given.iter().any(|a| a == &format!("--{name}") || a.starts_with(&format!("--{name}="))));
    let mut merged = args[..=at].to_vec();
    merged.extend(flags.map(|(_, flag)| OsString::from(flag)));
    merged.extend_from_slice(&args[at + 1..]);
    Ok(merged)
}

/// The flags (setting name, `--name[=value]`) the TOML `text` stands for, for `daemon`'s arguments.
fn flags_of(text: &str, daemon: &clap::Command) -> Result<Vec<(String, String)>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let mut flags = Vec::new();
    for (name, value) in table {
        let arg = daemon
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !NOT_SETTINGS.contains(&name.as_str()));
        let Some(arg) = arg else {
            let known: Vec<&str> = daemon.get_arguments().filter_map(|a| a.get_long()).filter(|l| !NOT_SETTINGS.contains(l)).collect();
            bail!("unknown setting {name:?}; the settings are the daemon's flags: {}", known.join(", "));
        };
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("setting {name:?}: expected a string, number or boolean, not {}", other.type_str()),
            })
        };
        match (arg.get_action(), &value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => flags.push((name.clone(), format!("--{name}"))),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, other) => bail!("setting {name:?} is true or false, not {other}"),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    flags.push((name.clone(), format!("--{name}={}", scalar(item)?)));
                }
            }
            (_, toml::Value::Array(_)) => bail!("setting {name:?} takes one value, not a list"),
            (_, v) => flags.push((name.clone(), format!("--{name}={}", scalar(v)?))),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(args: &[&str], file: &str) -> Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("bpfnet-config-test-{}-{}", std::process::id(), args.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, file).unwrap();
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        all.push("--config".into());
        all.push(path.clone().into());
        let out = merge(all, &crate::cli::command());
        std::fs::remove_dir_all(&dir).ok();
        out.map(|v| v.into_iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn settings_become_flags_and_flags_win() {
        let file = "ct-max = 4096\nuplink = [\"up0\", \"up1\"]\ntrace = true\ndns = \"off\"\nmetrics = \"127.0.0.1:9464\"\n";
        let out = merged(&["bpfnet", "daemon", "--ct-max", "128"], file).unwrap();
        assert!(out.contains(&"--uplink=up0".to_string()) && out.contains(&"--uplink=up1".to_string()), "{out:?}");
        assert!(out.contains(&"--trace".to_string()) && out.contains(&"--dns=off".to_string()), "{out:?}");
        assert!(!out.iter().any(|a| a == "--ct-max=4096"), "the command line's --ct-max wins: {out:?}");
        assert!(crate::cli::command().try_get_matches_from(&out).is_ok(), "{out:?}");
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let e = merged(&["bpfnet", "daemon"], "colour = \"blue\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown setting \"colour\""), "{e:#}");
        let e = merged(&["bpfnet", "daemon"], "ct-max = [1, 2]\n").unwrap_err();
        assert!(format!("{e:#}").contains("takes one value"), "{e:#}");
        let e = merged(&["bpfnet", "daemon"], "trace = \"yes\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("true or false"), "{e:#}");
        assert!(merged(&["bpfnet", "daemon"], "not toml [").is_err());
    }
}
