//! Settings and where each came from. Sources, highest first: command-line flags, the
//! environment (`GCP_ACCOUNT`, `GCLOUD_PROJECT`, `GCS_DIR`, `VM_INSTANCE`, `VM_USER`,
//! `CLOUDRUN_AGENT_BINARY`), `cloudrun.toml` in the project folder, the user's
//! `config.toml` under the XDG config dir (`~/.config/cloudrun/config.toml`).
//!
//! This module only gathers raw values with their sources and reads the two files; it
//! does not judge them (see `plan`, which turns them into a launch plan) and it never
//! touches the network. `[env]` tables merge key by key in the same order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The project file's name, looked up in the project folder.
pub const PROJECT_FILE: &str = "cloudrun.toml";
/// The user file's path under the XDG config dir.
pub const USER_FILE: &str = "cloudrun/config.toml";

/// Environment variables the seed set-up uses.
pub const ENV_ACCOUNT: &str = "GCP_ACCOUNT";
pub const ENV_PROJECT: &str = "GCLOUD_PROJECT";
pub const ENV_GCS_DIR: &str = "GCS_DIR";
pub const ENV_VM_INSTANCE: &str = "VM_INSTANCE";
pub const ENV_VM_USER: &str = "VM_USER";
/// Path of the static agent binary to upload.
pub const ENV_AGENT_BINARY: &str = "CLOUDRUN_AGENT_BINARY";
/// Where runs execute: `gce` (the default) or `local` (what `--local` sets).
pub const ENV_PROVIDER: &str = "CLOUDRUN_PROVIDER";
/// The user's data dir under which local runs keep their store and per-run folders.
pub const DATA_SUBDIR: &str = "cloudrun";

/// One layer of settings: the shape of `cloudrun.toml` and of the user config, and what
/// the flags fill in. Every key is optional here; `plan` says which are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `gce` (a Compute Engine VM, the default) or `local` (a detached agent here).
    pub provider: Option<String>,
    pub account: Option<String>,
    pub project: Option<String>,
    pub gcs_dir: Option<String>,
    pub vm_instance: Option<String>,
    pub vm_user: Option<String>,
    /// `l4`, `a100:2`, …
    pub gpu: Option<String>,
    pub machine_type: Option<String>,
    /// Zones to try, in order.
    pub zones: Option<Vec<String>>,
    pub spot: Option<bool>,
    /// `24h`, `90m`, … (humantime).
    pub max_time: Option<String>,
    /// US dollars.
    pub budget: Option<f64>,
    pub image_family: Option<String>,
    pub image_project: Option<String>,
    pub disk_gb: Option<u32>,
    /// The VM's service account e-mail (`default` for the project's default compute SA).
    pub service_account: Option<String>,
    /// A command run with `sh -c` before the job (e.g. `pip install -r requirements.txt`).
    pub setup: Option<String>,
    pub output_dirs: Option<Vec<String>>,
    /// Minutes every GPU must be idle before the run is stopped; 0 turns the check off.
    pub idle_minutes: Option<u64>,
    pub agent_binary: Option<PathBuf>,
    /// A prices.toml overriding the built-in price table.
    pub prices: Option<PathBuf>,
    /// Environment for the job.
    pub env: Option<BTreeMap<String, String>>,
    /// Advanced, file-only: the agent's stop policies and intervals in seconds, as in the
    /// run spec's `policies` (e.g. `[policies] stall_window_secs = 600`,
    /// `[policies] final_sync_secs = 120` or `[policies.intervals] output_sync_secs = 30`).
    /// Keys left out keep their defaults;
    /// `idle_minutes`, `budget` and `max_time` still win over what this sets.
    pub policies: Option<cloudrun::spec::Policies>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(String),
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// A settings file that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: PathBuf,
    pub message: String,
}

/// Every setting, resolved across the layers, with its source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub project_dir: PathBuf,
    pub provider: Option<Sourced<String>>,
    /// `$XDG_DATA_HOME/cloudrun` (or `~/.local/share/cloudrun`): local runs live here.
    pub data_dir: Option<PathBuf>,
    /// `$HOME`: never accepted as the project folder.
    pub home_dir: Option<PathBuf>,
    pub account: Option<Sourced<String>>,
    pub project: Option<Sourced<String>>,
    pub gcs_dir: Option<Sourced<String>>,
    pub vm_instance: Option<Sourced<String>>,
    pub vm_user: Option<Sourced<String>>,
    pub gpu: Option<Sourced<String>>,
    pub machine_type: Option<Sourced<String>>,
    pub zones: Option<Sourced<Vec<String>>>,
    pub spot: Option<Sourced<bool>>,
    pub max_time: Option<Sourced<String>>,
    pub budget: Option<Sourced<f64>>,
    pub image_family: Option<Sourced<String>>,
    pub image_project: Option<Sourced<String>>,
    pub disk_gb: Option<Sourced<u32>>,
    pub service_account: Option<Sourced<String>>,
    pub setup: Option<Sourced<String>>,
    pub output_dirs: Option<Sourced<Vec<String>>>,
    pub idle_minutes: Option<Sourced<u64>>,
    pub agent_binary: Option<Sourced<PathBuf>>,
    pub prices: Option<Sourced<PathBuf>>,
    pub env: BTreeMap<String, Sourced<String>>,
    pub policies: Option<Sourced<cloudrun::spec::Policies>>,
    /// The files looked at, and whether each existed.
    pub files: Vec<(PathBuf, bool)>,
    /// Files that exist but could not be used; reported before anything else.
    pub file_problems: Vec<FileProblem>,
}

/// Where to look for settings.
pub struct Inputs<'a> {
    /// Values from flags, and the flag that set each (`--project`).
    pub flags: Layer,
    /// The flag names, by layer key, for sources (`project` → `--project`).
    pub flag_names: &'a dyn Fn(&str) -> String,
    /// The process environment (injected for tests).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub project_dir: PathBuf,
    /// The user config file (`None` when there is no config dir).
    pub user_file: Option<PathBuf>,
}

/// The user config file under the XDG config dir (`$XDG_CONFIG_HOME` or `~/.config`).
pub fn default_user_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(x).join(USER_FILE));
    }
    if let Some(h) = env("HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(h).join(".config").join(USER_FILE));
    }
    directories::BaseDirs::new().map(|d| d.config_dir().join(USER_FILE))
}

/// The user's data dir for cloudrun (`$XDG_DATA_HOME/cloudrun`, else
/// `~/.local/share/cloudrun`), read from the given environment so tests can move it.
pub fn default_data_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(x) = env("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(x).join(DATA_SUBDIR));
    }
    if let Some(h) = env("HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(h).join(".local/share").join(DATA_SUBDIR));
    }
    directories::BaseDirs::new().map(|d| d.data_dir().join(DATA_SUBDIR))
}

fn read_layer(
    path: &Path,
    files: &mut Vec<(PathBuf, bool)>,
    problems: &mut Vec<FileProblem>,
) -> Layer {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            files.push((path.to_path_buf(), true));
            match toml::from_str::<Layer>(&text) {
                Ok(l) => l,
                Err(e) => {
                    problems.push(FileProblem {
                        path: path.to_path_buf(),
                        message: format!(
                            "{} is not a valid cloudrun settings file: {}",
                            path.display(),
                            e.to_string().trim_end()
                        ),
                    });
                    Layer::default()
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files.push((path.to_path_buf(), false));
            Layer::default()
        }
        Err(e) => {
            files.push((path.to_path_buf(), true));
            problems.push(FileProblem {
                path: path.to_path_buf(),
                message: format!("{}: cannot read it: {e}", path.display()),
            });
            Layer::default()
        }
    }
}

impl Settings {
    /// Resolve every setting from the inputs. Never fails: unreadable files land in
    /// `file_problems`, and `plan` reports them with everything else.
    pub fn resolve(inputs: &Inputs<'_>) -> Settings {
        let mut files = Vec::new();
        let mut file_problems = Vec::new();
        let project_path = inputs.project_dir.join(PROJECT_FILE);
        let project = read_layer(&project_path, &mut files, &mut file_problems);
        let user = match &inputs.user_file {
            Some(p) => read_layer(p, &mut files, &mut file_problems),
            None => Layer::default(),
        };
        let env = |var: &str| (inputs.env)(var).filter(|v| !v.trim().is_empty());
        let flags = &inputs.flags;
        let fname = inputs.flag_names;

        let user_path = inputs.user_file.clone().unwrap_or_default();
        macro_rules! from_files {
            ($field:ident) => {
                if let Some(v) = project.$field.clone() {
                    Some(Sourced {
                        value: v,
                        source: Source::File(project_path.clone()),
                    })
                } else {
                    user.$field.clone().map(|v| Sourced {
                        value: v,
                        source: Source::File(user_path.clone()),
                    })
                }
            };
        }
        macro_rules! from_flag {
            ($field:ident) => {
                flags.$field.clone().map(|v| Sourced {
                    value: v,
                    source: Source::Flag(fname(stringify!($field))),
                })
            };
        }
        macro_rules! pick {
            ($field:ident) => {
                from_flag!($field).or_else(|| from_files!($field))
            };
            ($field:ident, $var:expr) => {
                from_flag!($field)
                    .or_else(|| {
                        env($var).map(|v| Sourced {
                            value: v.trim().to_string().into(),
                            source: Source::Env($var),
                        })
                    })
                    .or_else(|| from_files!($field))
            };
        }

        let mut job_env = BTreeMap::new();
        let layers: [(&Layer, Source); 3] = [
            (&user, Source::File(user_path.clone())),
            (&project, Source::File(project_path.clone())),
            (flags, Source::Flag(fname("env"))),
        ];
        for (layer, source) in layers {
            for (k, v) in layer.env.iter().flatten() {
                job_env.insert(
                    k.clone(),
                    Sourced {
                        value: v.clone(),
                        source: source.clone(),
                    },
                );
            }
        }

        Settings {
            project_dir: inputs.project_dir.clone(),
            provider: pick!(provider, ENV_PROVIDER),
            data_dir: default_data_dir(inputs.env),
            home_dir: (inputs.env)("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            account: pick!(account, ENV_ACCOUNT),
            project: pick!(project, ENV_PROJECT),
            gcs_dir: pick!(gcs_dir, ENV_GCS_DIR),
            vm_instance: pick!(vm_instance, ENV_VM_INSTANCE),
            vm_user: pick!(vm_user, ENV_VM_USER),
            gpu: pick!(gpu),
            machine_type: pick!(machine_type),
            zones: pick!(zones),
            spot: pick!(spot),
            max_time: pick!(max_time),
            budget: pick!(budget),
            image_family: pick!(image_family),
            image_project: pick!(image_project),
            disk_gb: pick!(disk_gb),
            service_account: pick!(service_account),
            setup: pick!(setup),
            output_dirs: pick!(output_dirs),
            idle_minutes: pick!(idle_minutes),
            agent_binary: pick!(agent_binary, ENV_AGENT_BINARY),
            prices: pick!(prices),
            env: job_env,
            policies: from_files!(policies),
            files,
            file_problems,
        }
    }

    /// The resolved settings as `key = value  # source` lines, for `cloudrun-launch config`.
    /// Unset keys show `(not set)`.
    pub fn describe(&self) -> String {
        self.describe_with(&|_| None)
    }

    /// [`Settings::describe`], where an unset key that has a default shows the value that
    /// would be used (`defaults(key)`, already formatted) with `default` as its source.
    pub fn describe_with(&self, defaults: &dyn Fn(&str) -> Option<String>) -> String {
        let line =
            |out: &mut String, key: &str, v: Option<String>, src: Option<&Source>| match (v, src) {
                (Some(v), Some(src)) => {
                    out.push_str(&format!("{key:<16} = {v:<40} # {src}\n"));
                }
                _ => match defaults(key) {
                    Some(d) => out.push_str(&format!("{key:<16} = {d:<40} # default\n")),
                    None => out.push_str(&format!("{key:<16}   (not set)\n")),
                },
            };
        fn parts<T: fmt::Debug>(v: &Option<Sourced<T>>) -> (Option<String>, Option<&Source>) {
            match v {
                Some(s) => (Some(fmt_value(&s.value)), Some(&s.source)),
                None => (None, None),
            }
        }
        macro_rules! line {
            ($out:expr, $key:expr, $v:expr) => {{
                let (v, src) = parts($v);
                line($out, $key, v, src)
            }};
        }
        let mut out = String::new();
        out.push_str(&format!(
            "# project folder: {}\n",
            self.project_dir.display()
        ));
        for (p, found) in &self.files {
            out.push_str(&format!(
                "# settings file: {} ({})\n",
                p.display(),
                if *found { "read" } else { "absent" }
            ));
        }
        line!(&mut out, "provider", &self.provider);
        line!(&mut out, "account", &self.account);
        line!(&mut out, "project", &self.project);
        line!(&mut out, "gcs_dir", &self.gcs_dir);
        line!(&mut out, "vm_instance", &self.vm_instance);
        line!(&mut out, "vm_user", &self.vm_user);
        line!(&mut out, "gpu", &self.gpu);
        line!(&mut out, "machine_type", &self.machine_type);
        line!(&mut out, "zones", &self.zones);
        line!(&mut out, "spot", &self.spot);
        line!(&mut out, "max_time", &self.max_time);
        line!(&mut out, "budget", &self.budget);
        line!(&mut out, "image_family", &self.image_family);
        line!(&mut out, "image_project", &self.image_project);
        line!(&mut out, "disk_gb", &self.disk_gb);
        line!(&mut out, "service_account", &self.service_account);
        line!(&mut out, "setup", &self.setup);
        line!(&mut out, "output_dirs", &self.output_dirs);
        line!(&mut out, "idle_minutes", &self.idle_minutes);
        line!(&mut out, "agent_binary", &self.agent_binary);
        line!(&mut out, "prices", &self.prices);
        if self.env.is_empty() {
            out.push_str("[env]              (empty)\n");
        } else {
            out.push_str("[env]\n");
            for (k, v) in &self.env {
                out.push_str(&format!(
                    "{:<16} = {:<40} # {}\n",
                    k,
                    format!("{:?}", v.value),
                    v.source
                ));
            }
        }
        for p in &self.file_problems {
            out.push_str(&format!("# problem: {}\n", p.message));
        }
        out
    }
}

fn fmt_value<T: fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// How to set a setting, for error messages: the variable (if any), the flag and the key.
pub fn how_to_set(key: &str, example: &str) -> String {
    let var = match key {
        "account" => Some(ENV_ACCOUNT),
        "project" => Some(ENV_PROJECT),
        "gcs_dir" => Some(ENV_GCS_DIR),
        "vm_instance" => Some(ENV_VM_INSTANCE),
        "vm_user" => Some(ENV_VM_USER),
        "agent_binary" => Some(ENV_AGENT_BINARY),
        "provider" => Some(ENV_PROVIDER),
        _ => None,
    };
    let flag = format!("--{}", key.replace('_', "-"));
    match var {
        Some(var) => format!(
            "export {var}={example}, pass {flag} {example}, or set {key} = \"{example}\" in {PROJECT_FILE}"
        ),
        None => format!("pass {flag} {example} or set {key} = \"{example}\" in {PROJECT_FILE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag_name(k: &str) -> String {
        format!("--{}", k.replace('_', "-"))
    }

    #[test]
    fn flags_beat_env_beat_project_file_beat_user_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "project = \"from-project\"\nvm_user = \"proj-user\"\ngpu = \"l4\"\n[env]\nEPOCHS = \"5\"\nBATCH = \"64\"\n",
        )
        .unwrap();
        std::fs::write(
            &user,
            "vm_user = \"u\"\nspot = true\ngpu = \"t4\"\n[env]\nBATCH = \"8\"\nLR = \"0.1\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            ENV_PROJECT => Some("from-env".to_string()),
            ENV_GCS_DIR => Some("gs://b/p".to_string()),
            ENV_VM_INSTANCE => Some("  ".to_string()),
            _ => None,
        };
        let flags = Layer {
            project: Some("from-flag".into()),
            env: Some([("EPOCHS".to_string(), "50".to_string())].into()),
            ..Layer::default()
        };
        let s = Settings::resolve(&Inputs {
            flags,
            flag_names: &flag_name,
            env: &env,
            project_dir: dir.path().into(),
            user_file: Some(user.clone()),
        });
        assert_eq!(s.project.as_ref().unwrap().value, "from-flag");
        assert_eq!(
            s.project.as_ref().unwrap().source,
            Source::Flag("--project".into())
        );
        assert_eq!(s.gcs_dir.as_ref().unwrap().source, Source::Env(ENV_GCS_DIR));
        assert!(s.vm_instance.is_none(), "a blank variable counts as unset");
        assert_eq!(s.vm_user.as_ref().unwrap().value, "proj-user");
        assert_eq!(s.gpu.as_ref().unwrap().value, "l4");
        assert_eq!(s.spot.as_ref().unwrap().source, Source::File(user.clone()));
        let env: BTreeMap<_, _> = s
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(
            env,
            BTreeMap::from([("BATCH", "64"), ("EPOCHS", "50"), ("LR", "0.1")])
        );
        let text = s.describe();
        assert!(text.contains("flag --project"), "{text}");
        assert!(text.contains("env GCS_DIR"), "{text}");
        assert!(text.contains("vm_instance        (not set)"), "{text}");
    }

    #[test]
    fn a_malformed_or_misspelled_file_is_a_problem_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROJECT_FILE), "projcet = \"x\"\n").unwrap();
        let s = Settings::resolve(&Inputs {
            flags: Layer::default(),
            flag_names: &flag_name,
            env: &|_| None,
            project_dir: dir.path().into(),
            user_file: None,
        });
        assert_eq!(s.file_problems.len(), 1);
        let m = &s.file_problems[0].message;
        assert!(m.contains("cloudrun.toml") && m.contains("projcet"), "{m}");
    }

    #[test]
    fn the_user_file_follows_xdg() {
        let f = default_user_file(&|k| (k == "XDG_CONFIG_HOME").then(|| "/x/cfg".to_string()));
        assert_eq!(f, Some(PathBuf::from("/x/cfg/cloudrun/config.toml")));
        let f = default_user_file(&|k| (k == "HOME").then(|| "/home/me".to_string()));
        assert_eq!(
            f,
            Some(PathBuf::from("/home/me/.config/cloudrun/config.toml"))
        );
    }
}
