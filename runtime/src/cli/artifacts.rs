//! `kiln artifacts …` and `kiln registry …`: the registry's CLI over `kiln-registry`
//! (`cli::execute` and its renderers), the server, and its tokens. The registry is
//! `KILN_REGISTRY` (a path or a `postgres://` URL), else `<project>/.kiln/registry.db`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln_registry::cli::{self as rcli, Command as RCommand, Format};
use kiln_registry::server::{DEFAULT_ADDR, Server};
use kiln_registry::{Location, RegistryError, Store, VersionRef};

/// How a registry command ended; `cli/mod.rs` turns it into the exit code.
pub enum Outcome {
    Ok,
    /// The operation failed (a conflict, a revoked version, storage).
    Failed,
    /// The command names something wrong (an unknown bucket, a bad name, no registry).
    Usage,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Print JSON instead of tables (errors too, as {"error": {...}} on stdout).
    #[arg(long)]
    pub json: bool,
    /// The project whose .kiln/registry.db is used when KILN_REGISTRY is not set.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub project: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ArtifactsCommand {
    /// Buckets, or a page of one bucket's versions (newest first).
    List {
        bucket: Option<String>,
        /// Versions per page.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The page after this fingerprint (the previous page's last).
        #[arg(long, value_name = "FINGERPRINT")]
        before: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Everything about one version: builds, artifacts, channels, provenance.
    Show {
        bucket: String,
        /// A fingerprint (or a unique prefix), or @CHANNEL.
        #[arg(default_value = "@latest")]
        version: String,
        #[command(flatten)]
        common: Common,
    },
    /// A bucket's channels and their history.
    Channels {
        bucket: String,
        /// How many channel moves to show.
        #[arg(long, default_value_t = 10)]
        history: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Point a channel (dev, prod, ...) at a complete, unrevoked version.
    Promote {
        bucket: String,
        /// A fingerprint (or a unique prefix), or @CHANNEL to copy another channel.
        fingerprint: String,
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a version: builds from it fail, Terraform sees `revoked = true`.
    Revoke {
        bucket: String,
        fingerprint: String,
        /// Why (shown to everyone who uses it).
        #[arg(long)]
        reason: String,
        /// When it takes effect: RFC 3339, `now`, or a delay like `2h` (default now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Revoke every version built from it too.
        #[arg(long)]
        inherit: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Lift a version's own revocation (the history is kept).
    Restore {
        bucket: String,
        fingerprint: String,
        #[command(flatten)]
        common: Common,
    },
    /// Where a version comes from, and what was built from it (up to date or not).
    Ancestry {
        bucket: String,
        #[arg(default_value = "@latest")]
        version: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Serve the registry: JSON API, read-only Terraform state backend, web page.
    Serve {
        /// Address to listen on (loopback by default; reads are open to whoever reaches it).
        #[arg(long, default_value = DEFAULT_ADDR)]
        listen: SocketAddr,
        /// The project whose .kiln/registry.db is used when KILN_REGISTRY is not set.
        #[arg(long, default_value = ".", value_name = "DIR")]
        project: PathBuf,
    },
    /// Bearer tokens for the server's write endpoints.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// List tokens (names and ids, never secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Delete a token by name.
    Delete {
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn fail(e: &RegistryError, json: bool) -> Outcome {
    if json {
        print!("{}", rcli::render_error(e, Format::Json));
    } else {
        eprint!("{}", rcli::render_error(e, Format::Human));
    }
    if e.exit_code() == 2 {
        Outcome::Usage
    } else {
        Outcome::Failed
    }
}

/// Opens the registry. Reading commands refuse to create an empty SQLite file where
/// the user probably mistyped the project.
async fn open(project: &Path, create: bool) -> Result<Store, RegistryError> {
    let location = Location::from_env(project)?;
    if let Location::Sqlite(path) = &location
        && !create
        && !path.exists()
    {
        return Err(RegistryError::InvalidInput {
            field: "registry".into(),
            reason: format!(
                "there is no registry at {}: `kiln build` creates it when a build has a \
                 registry(...) post-processor; run from the project (or pass --project DIR), \
                 or set KILN_REGISTRY",
                path.display()
            ),
        });
    }
    Store::open_location(&location).await
}

/// `kiln artifacts …`.
pub fn run(cmd: ArtifactsCommand, machine_readable: bool) -> Outcome {
    let (cmd, common) = to_command(cmd);
    let json = common.json || machine_readable;
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e}");
            return Outcome::Failed;
        }
    };
    rt.block_on(async {
        let store = match open(&common.project, false).await {
            Ok(s) => s,
            Err(e) => return fail(&e, json),
        };
        match rcli::execute(&store, cmd, &rcli::default_actor()).await {
            Ok(out) => {
                print!(
                    "{}",
                    out.render(if json { Format::Json } else { Format::Human })
                );
                Outcome::Ok
            }
            Err(e) => fail(&e, json),
        }
    })
}

fn to_command(cmd: ArtifactsCommand) -> (RCommand, Common) {
    let v = |s: &str| VersionRef::parse(s);
    match cmd {
        ArtifactsCommand::List {
            bucket,
            limit,
            before,
            common,
        } => (
            RCommand::List {
                bucket,
                limit,
                before,
            },
            common,
        ),
        ArtifactsCommand::Show {
            bucket,
            version,
            common,
        } => (
            RCommand::Show {
                bucket,
                version: v(&version),
            },
            common,
        ),
        ArtifactsCommand::Channels {
            bucket,
            history,
            common,
        } => (RCommand::Channels { bucket, history }, common),
        ArtifactsCommand::Promote {
            bucket,
            fingerprint,
            channel,
            common,
        } => (
            RCommand::Promote {
                bucket,
                version: v(&fingerprint),
                channel,
            },
            common,
        ),
        ArtifactsCommand::Revoke {
            bucket,
            fingerprint,
            reason,
            at,
            inherit,
            common,
        } => (
            RCommand::Revoke {
                bucket,
                version: v(&fingerprint),
                reason,
                at,
                inherit,
            },
            common,
        ),
        ArtifactsCommand::Restore {
            bucket,
            fingerprint,
            common,
        } => (
            RCommand::Restore {
                bucket,
                version: v(&fingerprint),
            },
            common,
        ),
        ArtifactsCommand::Ancestry {
            bucket,
            version,
            common,
        } => (
            RCommand::Ancestry {
                bucket,
                version: v(&version),
            },
            common,
        ),
    }
}

/// `kiln registry …`.
pub fn registry(cmd: RegistryCommand, machine_readable: bool) -> Outcome {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e}");
            return Outcome::Failed;
        }
    };
    rt.block_on(async {
        match cmd {
            RegistryCommand::Serve { listen, project } => serve(&project, listen).await,
            RegistryCommand::Token(t) => token(t, machine_readable).await,
        }
    })
}

async fn serve(project: &Path, listen: SocketAddr) -> Outcome {
    let store = match open(project, true).await {
        Ok(s) => s,
        Err(e) => return fail(&e, false),
    };
    let location = store.location().to_string();
    let server = match Server::bind(store, listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return Outcome::Failed;
        }
    };
    let addr = server.local_addr();
    say!("Serving the registry {location} on http://{addr}/");
    say!(
        "Terraform: data \"terraform_remote_state\" \"x\" {{ backend = \"http\", config = {{ address = \"http://{addr}/terraform/BUCKET/CHANNEL\" }} }}"
    );
    say!("Writes need a token: kiln registry token create NAME");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    match server.run_until(stop).await {
        Ok(()) => {
            say!("Registry server stopped.");
            Outcome::Ok
        }
        Err(e) => {
            eprintln!("Error: {e}");
            Outcome::Failed
        }
    }
}

async fn token(cmd: TokenCommand, machine_readable: bool) -> Outcome {
    let (common, create) = match &cmd {
        TokenCommand::Create { common, .. } => (common.clone(), true),
        TokenCommand::List { common } | TokenCommand::Delete { common, .. } => {
            (common.clone(), false)
        }
    };
    let json = common.json || machine_readable;
    let store = match open(&common.project, create).await {
        Ok(s) => s,
        Err(e) => return fail(&e, json),
    };
    match cmd {
        TokenCommand::Create { name, .. } => match store.create_token(&name).await {
            Ok((info, secret)) => {
                if json {
                    say!(
                        "{}",
                        serde_json::json!({
                            "id": info.id, "name": info.name, "created_at": info.created_at,
                            "token": secret.expose(),
                        })
                    );
                } else {
                    say!(
                        "Created token {:?} (id {}). It is shown only now; keep it as a secret and send it as `Authorization: Bearer <token>`:",
                        info.name,
                        info.id
                    );
                    say!("{}", secret.expose());
                }
                Outcome::Ok
            }
            Err(e) => fail(&e, json),
        },
        TokenCommand::List { .. } => match store.tokens().await {
            Ok(list) => {
                if json {
                    say!(
                        "{}",
                        serde_json::to_string_pretty(&list).unwrap_or_default()
                    );
                } else if list.is_empty() {
                    say!("No tokens; create one with: kiln registry token create NAME");
                } else {
                    for t in list {
                        say!("{}  {}  {}", t.name, t.id, t.created_at);
                    }
                }
                Outcome::Ok
            }
            Err(e) => fail(&e, json),
        },
        TokenCommand::Delete { name, .. } => match store.delete_token(&name).await {
            Ok(true) => {
                say!("Deleted token {name:?}.");
                Outcome::Ok
            }
            Ok(false) => fail(
                &RegistryError::InvalidInput {
                    field: "token".into(),
                    reason: format!(
                        "no token named {name:?}; `kiln registry token list` shows them"
                    ),
                },
                json,
            ),
            Err(e) => fail(&e, json),
        },
    }
}
