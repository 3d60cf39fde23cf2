//! Who the job runs as: `VM_USER` resolved to uid, gid and supplementary groups, the user
//! created with `useradd` when missing (root only), and the ownership of the work dir.
//!
//! `job.user = None` runs setup and job as the agent's own user (local runs, tests). A
//! named user that is the agent's own user needs no switch either. Switching to anyone
//! else needs root; an agent that is not root says so rather than run the job as itself.
//! The actual switch happens in the child ([`crate::process`]); this module only looks up.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The program that creates a missing user (overridable for tests and odd images).
pub const DEFAULT_USERADD: &str = "useradd";

/// A resolved user to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (what `initgroups` would set), looked up in the parent
    /// because NSS lookups are not safe between `fork` and `exec`.
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

/// Why `VM_USER` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("VM_USER {name:?} does not exist and the agent is not root, so it cannot create it: create the user, or run the agent as root")]
    UnknownNotRoot { name: String },
    #[error("VM_USER {name:?} does not exist and could not be created with {program}: {detail}")]
    CreateFailed {
        name: String,
        program: String,
        detail: String,
    },
    #[error("cannot run the job as {name:?}: switching users needs root and the agent runs as uid {uid}")]
    NotRoot { name: String, uid: u32 },
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: cannot give it to {name:?}: {detail}")]
    Chown {
        path: PathBuf,
        name: String,
        detail: String,
    },
}

/// Resolve `name` (or `None`: no switch). A missing user is created with `useradd`
/// (`--create-home --user-group --shell /bin/bash`) when the agent is root.
pub async fn resolve(name: Option<&str>, useradd: &Path) -> Result<Option<RunAs>, UserError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let euid = nix::unistd::geteuid();
    let user = match lookup(name)? {
        Some(u) => u,
        None if !euid.is_root() => {
            return Err(UserError::UnknownNotRoot { name: name.into() });
        }
        None => {
            create(name, useradd).await?;
            lookup(name)?.ok_or_else(|| UserError::CreateFailed {
                name: name.into(),
                program: useradd.display().to_string(),
                detail: "it exited 0 but the user still does not exist".into(),
            })?
        }
    };
    if user.uid == euid {
        return Ok(None);
    }
    if !euid.is_root() {
        return Err(UserError::NotRoot {
            name: name.into(),
            uid: euid.as_raw(),
        });
    }
    let cname = CString::new(name).map_err(|_| UserError::Lookup {
        name: name.into(),
        source: nix::Error::EINVAL,
    })?;
    let groups =
        nix::unistd::getgrouplist(&cname, user.gid).map_err(|source| UserError::Lookup {
            name: name.into(),
            source,
        })?;
    Ok(Some(RunAs {
        name: name.into(),
        uid: user.uid,
        gid: user.gid,
        groups,
        home: user.dir,
    }))
}

fn lookup(name: &str) -> Result<Option<User>, UserError> {
    User::from_name(name).map_err(|source| UserError::Lookup {
        name: name.into(),
        source,
    })
}

async fn create(name: &str, useradd: &Path) -> Result<(), UserError> {
    tracing::info!("creating user {name:?} with {}", useradd.display());
    let fail = |detail: String| UserError::CreateFailed {
        name: name.into(),
        program: useradd.display().to_string(),
        detail,
    };
    let out = tokio::process::Command::new(useradd)
        .args([
            "--create-home",
            "--user-group",
            "--shell",
            "/bin/bash",
            "--",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "{}: {}",
            out.status,
            cloudrun::http::short_body(err.trim().as_bytes())
        )));
    }
    Ok(())
}

/// Give `root` and everything under it to `user` (the code is pulled as root; the job
/// must be able to write checkpoints beside it). Symlinks are changed, not followed.
pub async fn chown_tree(root: &Path, user: &RunAs) -> Result<(), UserError> {
    let root = root.to_path_buf();
    let user = user.clone();
    tokio::task::spawn_blocking(move || chown_tree_blocking(&root, &user))
        .await
        .map_err(|e| UserError::Chown {
            path: PathBuf::new(),
            name: String::new(),
            detail: e.to_string(),
        })?
}

fn chown_tree_blocking(root: &Path, user: &RunAs) -> Result<(), UserError> {
    let err = |p: &Path, detail: String| UserError::Chown {
        path: p.to_path_buf(),
        name: user.name.clone(),
        detail,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| err(&p, e.to_string()))?;
        let meta = std::fs::symlink_metadata(&p).map_err(|e| err(&p, e.to_string()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| err(&p, e.to_string()))? {
                stack.push(e.map_err(|e| err(&p, e.to_string()))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_user_means_run_as_self() {
        assert_eq!(resolve(None, Path::new("/bin/false")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_agents_own_user_needs_no_switch() {
        let me = User::from_uid(nix::unistd::geteuid()).unwrap().unwrap();
        assert_eq!(
            resolve(Some(&me.name), Path::new("/bin/false"))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_unknown_user_that_cannot_be_created_is_a_clear_error() {
        let name = "cloudrun-no-such-user-9f3e";
        // As root the agent tries useradd: point it at a program that fails. As anyone
        // else it does not try at all.
        let err = resolve(Some(name), Path::new("/bin/false"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
        assert!(
            err.contains("could not be created") || err.contains("not root"),
            "{err}"
        );
        let err = resolve(Some(name), Path::new("/nonexistent/useradd"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }

    #[tokio::test]
    async fn another_existing_user_resolves_with_groups_when_root() {
        if !nix::unistd::geteuid().is_root() {
            let err = resolve(Some("root"), Path::new("/bin/false"))
                .await
                .unwrap_err();
            assert!(matches!(err, UserError::NotRoot { .. }), "{err}");
            return;
        }
        let Ok(Some(nobody)) = User::from_name("nobody") else {
            return;
        };
        let r = resolve(Some("nobody"), Path::new("/bin/false"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.uid, nobody.uid);
        assert_eq!(r.gid, nobody.gid);
        assert!(r.groups.contains(&nobody.gid));
    }
}
