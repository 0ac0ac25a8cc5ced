//! What every cbfs program does the same way on its command line:
//!
//! - `--version` names the crate version and every object format version
//!   the program writes and reads (`-V` only the crate version);
//! - `--config FILE` (or the program's environment variable) reads options
//!   from a TOML file with the same keys as the long options, so that a
//!   cron job or a unit does not carry a long command line. Top-level keys
//!   are options of the program, a `[SUBCOMMAND]` table holds the options
//!   of that subcommand; what the command line gives wins;
//! - `PROGRAM __dist man DIR` and `PROGRAM __dist completions DIR` write
//!   the man pages (one per subcommand) and the bash, zsh and fish
//!   completions, for `scripts/dist`.

#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{ArgAction, Command, CommandFactory, Parser};

/// The long `--version` text: the crate version, then the formats.
pub fn long_version() -> String {
    let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let list32 = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "{}\nobject formats (docs/FORMAT.md): writes / reads\n",
        env!("CARGO_PKG_VERSION")
    );
    for o in cbfs_format::versions::OBJECTS {
        out.push_str(&format!(
            "  {:<26} {:<28} writes {:<6} reads {}\n",
            o.object,
            o.brand,
            list(o.writes),
            list(o.reads)
        ));
    }
    out.push_str("signed documents (JSON):\n");
    for (name, writes, reads) in cbfs_core::DOCUMENTS {
        out.push_str(&format!(
            "  {:<55} writes {:<6} reads {}\n",
            name,
            list32(writes),
            list32(reads)
        ));
    }
    out.trim_end().to_owned()
}

/// The program's command, with the long version and, when the program
/// reads config files, the global `--config FILE` option.
pub fn command<P: CommandFactory>(config_env: Option<&str>) -> Command {
    let mut cmd = P::command().long_version(long_version());
    if let Some(env) = config_env {
        cmd = cmd.arg(
            clap::Arg::new(CONFIG_ID)
                .long("config")
                .global(true)
                .value_name("FILE")
                .help(format!(
                    "Read options from this TOML file (also ${env}): the long options' names as keys, [SUBCOMMAND] tables for a subcommand's; the command line wins"
                )),
        );
    }
    cmd
}

const CONFIG_ID: &str = "cbfs_cli_config";

/// Parses the program's command line as described in the crate's
/// documentation; exits with clap's codes (2 for a usage error) on a bad
/// command line or config file, and after `--help`, `--version`, `__dist`.
pub fn parse<P: Parser>(config_env: Option<&str>) -> P {
    let cmd = command::<P>(config_env);
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(OsString::as_os_str) == Some(OsStr::new("__dist")) {
        let code = match dist(cmd, &args[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("__dist: {e}");
                2
            }
        };
        std::process::exit(code);
    }
    let args = match config_env {
        Some(env) => match with_config(&cmd, args, env) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{}: {e}", cmd.get_name());
                std::process::exit(2);
            }
        },
        None => args,
    };
    let matches = cmd.get_matches_from(args);
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `__dist man DIR` or `__dist completions DIR`.
fn dist(mut cmd: Command, args: &[OsString]) -> Result<(), String> {
    let [what, dir] = args else {
        return Err("usage: __dist man|completions DIR".into());
    };
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    cmd.build();
    match what.to_str() {
        Some("man") => man_pages(&cmd, dir),
        Some("completions") => {
            let name = cmd.get_name().to_owned();
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut cmd, &name, dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Ok(())
        }
        _ => Err("usage: __dist man|completions DIR".into()),
    }
}

/// One page for the program and one for each subcommand, named as git
/// names its own (`cbfs-tier-out.1`).
fn man_pages(cmd: &Command, dir: &Path) -> Result<(), String> {
    fn write(cmd: Command, name: String, dir: &Path) -> Result<(), String> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        let subs: Vec<Command> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .cloned()
            .collect();
        clap_mangen::Man::new(
            cmd.clone()
                .name(name.clone())
                .bin_name(name.replace('-', " ")),
        )
        .render(&mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::write(&path, out).map_err(|e| format!("{}: {e}", path.display()))?;
        for sub in subs {
            let sub_name = format!("{name}-{}", sub.get_name());
            write(sub, sub_name, dir)?;
        }
        Ok(())
    }
    write(cmd.clone(), cmd.get_name().to_owned(), dir)
}

/// `args` with the options of the config file (named by `--config` or the
/// environment variable `env`) that the command line does not give.
pub fn with_config(cmd: &Command, args: Vec<OsString>, env: &str) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args).or_else(|| std::env::var_os(env)) else {
        return Ok(args);
    };
    let shown = Path::new(&path).display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config file {shown}: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {shown}: {e}"))?;
    let mut built = cmd.clone();
    built.build();
    // Which subcommand runs, where it is on the command line, and what the
    // command line gives it.
    let lenient = built
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok();
    let sub = lenient
        .as_ref()
        .and_then(|m| m.subcommand_name().map(str::to_owned));
    let sub_matches = lenient
        .as_ref()
        .and_then(|m| m.subcommand().map(|(_, m)| m.clone()));
    let sub_at = sub.as_ref().and_then(|name| {
        args.iter()
            .take_while(|a| a.as_os_str() != "--")
            .position(|a| a.to_str() == Some(name))
    });

    let mut top = Vec::new();
    let mut for_sub = Vec::new();
    let mut positional = Vec::new();
    for (key, value) in &table {
        if let toml::Value::Table(options) = value {
            let Some(sc) = built.find_subcommand(key) else {
                return Err(format!(
                    "config file {shown}: [{key}] is not a subcommand of {}",
                    built.get_name()
                ));
            };
            let running = sub.as_deref() == Some(key.as_str());
            for (k, v) in options {
                let words = option_args(sc, k, v, &args, &shown, sub_matches.as_ref())?;
                // Options of another subcommand: checked, not used.
                if running {
                    match words {
                        Words::Option(w) => for_sub.extend(w),
                        Words::Positional(w) => positional.extend(w),
                    }
                }
            }
        } else {
            match option_args(&built, key, value, &args, &shown, lenient.as_ref())? {
                Words::Option(w) => top.extend(w),
                Words::Positional(w) => positional.extend(w),
            }
        }
    }
    let mut out = args;
    out.extend(positional);
    if let Some(at) = sub_at {
        out.splice(at + 1..at + 1, for_sub);
    }
    out.splice(1..1, top);
    Ok(out)
}

/// The value of `--config FILE` or `--config=FILE` on the command line.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter().skip(1).take_while(|a| a.as_os_str() != "--");
    while let Some(a) = it.next() {
        if a.as_os_str() == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    None
}

/// Words for the command line: an option with its values (inserted after
/// the command it belongs to), or positional values (appended).
enum Words {
    Option(Vec<OsString>),
    Positional(Vec<OsString>),
}

/// The command-line words for option `key` = `value` of `cmd` (a long
/// option's name, or a positional argument's name), or none when the
/// command line gives that option itself.
fn option_args(
    cmd: &Command,
    key: &str,
    value: &toml::Value,
    args: &[OsString],
    shown: &str,
    matches: Option<&clap::ArgMatches>,
) -> Result<Words, String> {
    let Some(arg) = cmd.get_arguments().find(|a| {
        a.get_id() != CONFIG_ID
            && (a.get_long() == Some(key)
                || (a.is_positional() && a.get_id().as_str().replace('_', "-") == key))
    }) else {
        return Err(format!(
            "config file {shown}: `{key}` is not an option of {} (keys are the long options' names, without --, or a positional argument's name)",
            cmd.get_name()
        ));
    };
    if arg.is_positional() {
        let given = matches.is_some_and(|m| {
            m.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
        });
        if given {
            return Ok(Words::Positional(Vec::new()));
        }
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        let mut out: Vec<OsString> = Vec::new();
        for item in items {
            match item {
                toml::Value::String(s) => out.push(s.into()),
                toml::Value::Integer(i) => out.push(i.to_string().into()),
                _ => {
                    return Err(format!(
                        "config file {shown}: `{key}` must be a string or a list of strings"
                    ));
                }
            }
        }
        return Ok(Words::Positional(out));
    }
    let flag = format!("--{key}");
    let given = args.iter().take_while(|a| a.as_os_str() != "--").any(|a| {
        a.to_str()
            .is_some_and(|s| s == flag || s.starts_with(&format!("{flag}=")))
    });
    if given {
        return Ok(Words::Option(Vec::new()));
    }
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    );
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "config file {shown}: `{key}` must be a string, number or boolean, or a list of them"
            )),
        }
    };
    let mut out: Vec<OsString> = Vec::new();
    match value {
        toml::Value::Boolean(b) if !takes_value => {
            if *b {
                out.push(flag.into());
            }
        }
        _ if !takes_value => {
            return Err(format!(
                "config file {shown}: `{key}` is a switch: give true or false"
            ));
        }
        toml::Value::Array(items) => {
            for item in items {
                out.push(flag.clone().into());
                out.push(scalar(item)?.into());
            }
        }
        v => {
            out.push(flag.into());
            out.push(scalar(v)?.into());
        }
    }
    Ok(Words::Option(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    #[derive(Parser, Debug)]
    #[command(name = "toy")]
    struct Toy {
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Out {
            #[arg(long)]
            store: String,
            #[arg(long)]
            jobs: Option<u32>,
            #[arg(long = "rule")]
            rules: Vec<String>,
            #[arg(long)]
            dry_run: bool,
            path: Option<String>,
        },
        Ls {
            #[arg(long)]
            store: String,
        },
    }

    fn run(config: &str, argv: &[&str]) -> Result<Toy, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).unwrap();
        let mut args: Vec<OsString> = vec!["toy".into(), "--config".into(), path.clone().into()];
        args.extend(argv.iter().map(OsString::from));
        let cmd = command::<Toy>(Some("TOY_CONFIG"));
        let args = with_config(&cmd, args, "TOY_CONFIG")?;
        let m = cmd.try_get_matches_from(args).map_err(|e| e.to_string())?;
        Toy::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn options_come_from_the_file_and_the_command_line_wins() {
        let toy = run(
            "json = true\n[out]\nstore = \"/s\"\njobs = 4\nrule = [\"a\", \"b\"]\ndry-run = true\n[ls]\nstore = \"/other\"\n",
            &["out", "--jobs", "2", "p"],
        )
        .unwrap();
        assert!(toy.json);
        match toy.command {
            Sub::Out {
                store,
                jobs,
                rules,
                dry_run,
                path,
            } => {
                assert_eq!(store, "/s");
                assert_eq!(jobs, Some(2), "the command line wins");
                assert_eq!(rules, ["a", "b"]);
                assert!(dry_run);
                assert_eq!(path.as_deref(), Some("p"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_positional_argument_comes_from_the_file_unless_given() {
        let toy = run("[out]\nstore = \"/s\"\npath = \"/srv/tree\"\n", &["out"]).unwrap();
        assert!(matches!(toy.command, Sub::Out { path: Some(p), .. } if p == "/srv/tree"));
        let toy = run(
            "[out]\nstore = \"/s\"\npath = \"/srv/tree\"\n",
            &["out", "other"],
        )
        .unwrap();
        assert!(matches!(toy.command, Sub::Out { path: Some(p), .. } if p == "other"));
    }

    #[test]
    fn a_key_that_is_no_option_is_an_error_naming_it() {
        let err = run("[out]\nstor = \"/s\"\n", &["out"]).unwrap_err();
        assert!(err.contains("`stor` is not an option of out"), "{err}");
        // Checked even in the table of a subcommand not run.
        let err = run("[ls]\nnope = 1\n", &["out", "--store", "/s"]).unwrap_err();
        assert!(err.contains("`nope`"), "{err}");
        let err = run("[nothing]\nx = 1\n", &["out", "--store", "/s"]).unwrap_err();
        assert!(err.contains("[nothing] is not a subcommand"), "{err}");
        let err = run("json = \"yes\"\n[out]\nstore = \"/s\"\n", &["out"]).unwrap_err();
        assert!(err.contains("`json` is a switch"), "{err}");
        let err = run("this is not toml", &["out"]).unwrap_err();
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn no_file_no_change() {
        let cmd = command::<Toy>(Some("CBFS_CLI_TEST_UNSET_VARIABLE"));
        let args: Vec<OsString> = ["toy", "ls", "--store", "x"].map(OsString::from).to_vec();
        assert_eq!(
            with_config(&cmd, args.clone(), "CBFS_CLI_TEST_UNSET_VARIABLE").unwrap(),
            args
        );
    }

    #[test]
    fn the_long_version_names_every_format() {
        let v = long_version();
        for o in cbfs_format::versions::OBJECTS {
            assert!(v.contains(o.object), "{v}");
        }
        for (name, _, _) in cbfs_core::DOCUMENTS {
            assert!(v.contains(name), "{v}");
        }
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn man_pages_and_completions_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = command::<Toy>(None);
        dist(cmd.clone(), &["man".into(), dir.path().into()]).unwrap();
        for page in ["toy.1", "toy-out.1", "toy-ls.1"] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}: {text}");
        }
        dist(cmd, &["completions".into(), dir.path().into()]).unwrap();
        for file in ["toy.bash", "_toy", "toy.fish"] {
            assert!(dir.path().join(file).exists(), "{file}");
        }
    }
}
